"""Image sources for FID (tools.fid.sources): folders, zips, arrays, digits, in-memory batches."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from tools.fid.sources import ImageSource, open_images, select_indices
from tools.fid.stats import compute_statistics


class PixelDetector:
    """A stand-in detector: the pixels themselves (plus their squares) as float features."""

    name = "pixels"

    def __init__(self, shape):
        self.dim = 2 * int(np.prod(shape))

    def __call__(self, images):
        x = images.reshape(images.shape[0], -1).double() / 255
        return torch.cat([x, x * x], dim=1)


def _images(n=23, shape=(8, 6, 3), seed=0) -> np.ndarray:
    """uint8 NHWC test images."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_folder(root, images, nested=True):
    root.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        folder = root / f"{i // 10:02d}" if nested else root
        folder.mkdir(exist_ok=True)
        Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(folder / f"img{i:04d}.png")
    return root


def _stats(source, detector):
    return compute_statistics(iter(source), detector, device="cpu").mean_cov()


def _all(source) -> np.ndarray:
    return torch.cat(list(source)).numpy()


def test_folder_png_statistics_equal_in_memory(tmp_path):
    images = _images()
    folder = _write_folder(tmp_path / "imgs", images)
    source = open_images(folder, batch=5)
    assert len(source) == 23 and source.shape == (3, 8, 6)
    nchw = images.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(_all(source), nchw)
    memory = ImageSource.from_batches(
        (torch.from_numpy(nchw[i : i + 5]) for i in range(0, 23, 5)), (3, 8, 6), 23
    )
    detector = PixelDetector(source.shape)
    (mu1, s1), (mu2, s2) = _stats(source, detector), _stats(memory, detector)
    np.testing.assert_allclose(mu1, mu2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)


def test_zip_equals_folder(tmp_path):
    images = _images(12)
    folder = _write_folder(tmp_path / "imgs", images)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*.png")):
            zf.write(path, str(path.relative_to(folder)))
        zf.writestr("notes.txt", "not an image")
    np.testing.assert_array_equal(_all(open_images(archive, batch=5)), _all(open_images(folder)))


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_arrays_nhwc_and_nchw(tmp_path, suffix, layout):
    images = _images(9, (5, 7, 3))
    array = images if layout == "NHWC" else images.transpose(0, 3, 1, 2)
    path = tmp_path / f"x{suffix}"
    if suffix == ".npz":
        np.savez(path, labels=np.zeros(9), images=array)
    else:
        np.save(path, array)
    source = open_images(path, batch=4)
    assert source.shape == (3, 5, 7)
    np.testing.assert_array_equal(_all(source), images.transpose(0, 3, 1, 2))


def test_npz_first_array_and_grayscale_nhw(tmp_path):
    gray = _images(4, (6, 6, 1))[..., 0]
    np.savez(tmp_path / "g.npz", gray)  # arr_0, NHW
    source = open_images(tmp_path / "g.npz")
    assert source.shape == (1, 6, 6)
    np.testing.assert_array_equal(_all(source)[:, 0], gray)


def test_grayscale_stays_one_channel_and_rgba_becomes_rgb(tmp_path):
    gray = _images(3, (8, 8, 1))
    source = open_images(_write_folder(tmp_path / "gray", gray))
    assert source.shape == (1, 8, 8)
    np.testing.assert_array_equal(_all(source), gray.transpose(0, 3, 1, 2))
    rgba = _images(3, (8, 8, 4))
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i, image in enumerate(rgba):
        Image.fromarray(image, "RGBA").save(folder / f"{i}.png")
    source = open_images(folder)
    assert source.shape == (3, 8, 8)
    np.testing.assert_array_equal(_all(source), rgba[..., :3].transpose(0, 3, 1, 2))


def test_sixteen_bit_gray_is_scaled_as_generate_reads_it(tmp_path):
    """A 16-bit gray PNG reads as round(v * 255 / 65535), values by hand (PIL's convert clips 32768 to 255);
    mixed with 8-bit RGB in one folder it becomes three equal channels."""
    values = np.array([[0, 128, 129, 257], [1000, 30000, 32768, 65535]], dtype=np.uint16)
    expected = np.array([[0, 0, 1, 1], [4, 117, 128, 255]], dtype=np.uint8)
    folder = tmp_path / "g16"
    folder.mkdir()
    Image.fromarray(values).save(folder / "0.png")
    source = open_images(folder)
    assert source.shape == (1, 2, 4)
    np.testing.assert_array_equal(_all(source)[0, 0], expected)
    Image.fromarray(np.zeros((2, 4, 3), np.uint8), "RGB").save(folder / "1.png")
    mixed = _all(open_images(folder))
    assert mixed.shape == (2, 3, 2, 4)
    for channel in range(3):
        np.testing.assert_array_equal(mixed[0, channel], expected)


def _nvlabs_selection(count, num, seed):
    """NVlabs' Dataset(max_size=num, random_seed=seed) index rule, written out."""
    idx = np.arange(count, dtype=np.int64)
    if num is not None and idx.size > num:
        np.random.RandomState(seed % (1 << 31)).shuffle(idx)
        idx = np.sort(idx[:num])
    return idx


@pytest.mark.parametrize("num,seed", [(None, 0), (10, 0), (10, 7), (23, 3), (1, 123)])
def test_num_selection_follows_nvlabs(tmp_path, num, seed):
    images = _images(23, (4, 4, 3))
    np.save(tmp_path / "x.npy", images)
    source = open_images(tmp_path / "x.npy", num=num, seed=seed, batch=3)
    expected = _nvlabs_selection(23, num, seed)
    np.testing.assert_array_equal(source.indices, expected)
    np.testing.assert_array_equal(select_indices(23, num, seed), expected)
    np.testing.assert_array_equal(_all(source), images[expected].transpose(0, 3, 1, 2))


def test_shards_cover_the_selection(tmp_path):
    np.save(tmp_path / "x.npy", _images(17, (4, 4, 1)))
    source = open_images(tmp_path / "x.npy", num=11, seed=5, batch=2)
    parts = [source.shard(r, 3) for r in range(3)]
    assert sorted(np.concatenate([p.indices for p in parts]).tolist()) == source.indices.tolist()


def test_digits_uses_the_generator_mapping():
    from edm.data import load_digits
    from tools.images import to_uint8

    source = open_images("digits", batch=500)
    assert len(source) == 1797 and source.shape == (1, 8, 8)
    expected = to_uint8(load_digits().images).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(_all(source), expected)


def test_from_batches_numpy_nhwc_and_count_check():
    images = _images(6, (4, 4, 3))
    source = ImageSource.from_batches([images[:4], images[4:]], (3, 4, 4), 6)
    np.testing.assert_array_equal(_all(source), images.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="expected 7 images, got 6"):
        list(ImageSource.from_batches([images], (3, 4, 4), 7))
    with pytest.raises(ValueError, match="uint8 batches"):
        list(ImageSource.from_batches([images.astype(np.float32)], (3, 4, 4), 6))


def test_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        open_images(tmp_path / "empty")
    folder = _write_folder(tmp_path / "few", _images(3, (4, 4, 3)), nested=False)
    with pytest.raises(ValueError, match="found 3 images.*asks for 5"):
        open_images(folder, num=5)
    (folder / "zzz_bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="zzz_bad.png"):
        open_images(folder)
    (folder / "zzz_bad.png").unlink()
    Image.fromarray(_images(1, (5, 4, 3))[0]).save(folder / "zzz_big.png")
    with pytest.raises(ValueError, match="different sizes.*zzz_big.png"):
        open_images(folder)
    with pytest.raises(ValueError, match="not found"):
        open_images(tmp_path / "missing")
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        open_images(tmp_path / "f.npy")


def test_truncated_image_fails_when_read_naming_the_file(tmp_path):
    folder = _write_folder(tmp_path / "t", _images(2, (16, 16, 3)), nested=False)
    path = folder / "img0001.png"
    path.write_bytes(path.read_bytes()[:60])  # header intact, data cut
    source = open_images(folder)
    with pytest.raises(ValueError, match="img0001.png"):
        _all(source)
