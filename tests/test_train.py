"""Training loop, training state / resume, datasets and the ``edm train`` command."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import samplers
from _support import error_lines, invoke
from edm import data as edm_data
from edm import train as edm_train
from edm.checkpoint import load_checkpoint
from edm.data import load_dataset
from edm.train import load_training_state, train
from tools.train_cli import train as train_command

TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
        "label_dropout": 0.25, "dropout": 0.1}


def _train(outdir, steps, **kwargs):
    options = {"batch": 16, "lr": 2e-3, "warmup": 2, "ema_halflife_kimg": 0.05, "seed": 3,
               "network_kwargs": TINY, "progress": False, "sigma_data": "auto"}
    options.update(kwargs)
    return train("digits", outdir, steps=steps, **options)


def _files(path):
    return sorted(p.name for p in path.iterdir())


@pytest.mark.slow
def test_train_writes_checkpoint_that_loads_and_samples(tmp_path):
    result = _train(tmp_path, 4, command="edm train --test")
    assert result.step == 4 and np.isfinite(result.loss)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.shape == (1, 8, 8) and ckpt.num_classes == 10
    config = ckpt.config
    assert config["command"] == "edm train --test"
    assert config["seed"] == 3 and config["training"]["step"] == 4
    assert config["data"]["name"] == "digits"
    assert config["precond"]["params"]["sigma_data"] == pytest.approx(0.752)
    assert config["network"]["kwargs"]["num_classes"] == 10

    seeds = list(range(4))
    sigmas = samplers.schedules.get("karras")(4, 0.002, 80.0)
    x = samplers.noise.latents(seeds, ckpt.shape) * sigmas[0]
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 10).float()
    images = samplers.sample(ckpt.denoiser, x, sigmas, "heun", seeds=seeds, cond={"class_labels": onehot})
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


@pytest.mark.slow
def test_training_is_reproducible_and_resume_is_exact(tmp_path):
    straight = _train(tmp_path / "straight", 6)
    again = _train(tmp_path / "again", 6)
    half = _train(tmp_path / "resumed", 3)
    assert half.step == 3
    resumed = train(resume=tmp_path / "resumed", steps=6, progress=False)
    assert resumed.step == 6

    ref, ref_tensors = load_training_state(straight.state)
    _, again_tensors = load_training_state(again.state)
    res, res_tensors = load_training_state(resumed.state)
    assert ref["step"] == res["step"] == 6
    assert ref_tensors.keys() == res_tensors.keys()
    for key, value in ref_tensors.items():
        assert torch.equal(value, again_tensors[key]), key  # same seed: same run, bit for bit
        torch.testing.assert_close(res_tensors[key], value, rtol=0, atol=1e-6, msg=key)
    ema = load_file(straight.checkpoint.with_suffix(".safetensors"))
    ema_resumed = load_file(resumed.checkpoint.with_suffix(".safetensors"))
    for key, value in ema.items():
        torch.testing.assert_close(ema_resumed[key], value, rtol=0, atol=1e-6)

    different = _train(tmp_path / "other-seed", 2, seed=4)
    _, other = load_training_state(different.state)
    _, two = load_training_state(_train(tmp_path / "two", 2).state)
    assert not torch.equal(other["net.conv_in.weight"], two["net.conv_in.weight"])


@pytest.mark.slow
def test_checkpoint_files_are_atomic(tmp_path, monkeypatch):
    _train(tmp_path, 4, checkpoint_every=2)
    assert _files(tmp_path) == ["network.json", "network.safetensors", "training-state-00000004.safetensors",
                                "training-state.json"]
    record = json.loads((tmp_path / "training-state.json").read_text())
    assert record["step"] == 4 and record["tensors"] == "training-state-00000004.safetensors"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(edm_train, "save_file", crash)  # the training state's tensors fail to write
    with pytest.raises(OSError, match="disk full"):
        train(resume=tmp_path, steps=6, progress=False)
    # No temporary file is left behind and the previous state is intact and resumable.
    assert not [name for name in _files(tmp_path) if name.endswith(".tmp")]
    record, tensors = load_training_state(tmp_path)
    assert record["step"] == 4 and "adam.0.exp_avg" in tensors
    monkeypatch.undo()
    assert train(resume=tmp_path / "training-state.json", steps=6, progress=False).step == 6
    assert "training-state-00000004.safetensors" not in _files(tmp_path)


def test_resume_errors(tmp_path):
    with pytest.raises(ValueError, match="training state not found"):
        train(resume=tmp_path, steps=2)
    (tmp_path / "training-state.json").write_text("{}")
    with pytest.raises(ValueError, match="not an edm-samplers training state"):
        train(resume=tmp_path, steps=2)


# ---------------------------------------------------------------------------------------------------
# Datasets


def test_digits_dataset():
    ds = load_dataset("digits")
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1 and ds.images.max() == 1
    assert ds.labels.dtype == torch.int64 and ds.num_classes == 10
    assert ds.std() == pytest.approx(0.752, abs=1e-3)


def test_array_datasets(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", images=nhwc, labels=np.array([0, 2, 1, 2, 0]))
    ds = load_dataset(tmp_path / "a.npz")
    assert ds.images.shape == (5, 3, 6, 6) and ds.num_classes == 3
    torch.testing.assert_close(ds.images[1, 2], torch.from_numpy(nhwc[1, :, :, 2]).float() / 127.5 - 1)
    np.save(tmp_path / "b.npy", nhwc.transpose(0, 3, 1, 2))
    ds = load_dataset(str(tmp_path / "b.npy"))
    assert ds.images.shape == (5, 3, 6, 6) and ds.labels is None and ds.num_classes == 0
    np.save(tmp_path / "gray.npy", nhwc[..., 0])
    assert load_dataset(tmp_path / "gray.npy").images.shape == (5, 1, 6, 6)


def test_image_folder_dataset(tmp_path):
    from PIL import Image

    for name, value in [("cat/a.png", 0), ("cat/sub/b.png", 255), ("dog/c.jpg", 128)]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (6, 6), value).save(tmp_path / name)
    ds = load_dataset(tmp_path)
    assert ds.images.shape == (3, 1, 6, 6) and ds.num_classes == 2
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    Image.new("RGB", (6, 6), (255, 0, 0)).save(tmp_path / "top.png")  # not in a class folder: no labels
    ds = load_dataset(tmp_path)
    assert ds.images.shape == (4, 3, 6, 6) and ds.labels is None


def test_bad_datasets(tmp_path):
    from PIL import Image

    with pytest.raises(ValueError, match="not found.*missing"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images.*empty"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (5, 4)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match=r"b\.png is 5x4.*same size"):
        load_dataset(tmp_path / "mixed")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*x\.png"):
        load_dataset(tmp_path / "broken")
    np.save(tmp_path / "float.npy", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"float\.npy.*uint8"):
        load_dataset(tmp_path / "float.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"empty\.npy holds no images"):
        load_dataset(tmp_path / "empty.npy")
    np.savez(tmp_path / "keys.npz", a=np.zeros((2, 4, 4), np.uint8), b=np.zeros(2))
    with pytest.raises(ValueError, match=r"keys\.npz has no image array"):
        load_dataset(tmp_path / "keys.npz")
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"bad\.npz"):
        load_dataset(tmp_path / "bad.npz")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(ValueError, match=r"unsupported dataset file .*data\.csv"):
        load_dataset(tmp_path / "data.csv")
    # non-square images give the network [height, width] (it refused them before text models needed 8x40)
    rect = edm_train.default_network_kwargs(edm_data.Dataset(torch.zeros(1, 1, 4, 6), None, 0, "rect"))
    assert rect["resolution"] == [4, 6]


# ---------------------------------------------------------------------------------------------------
# The command


@pytest.mark.slow
def test_cli_trains(tmp_path):
    out = tmp_path / "run"
    result = invoke(train_command, "--outdir", out, "--steps", 2, "--batch", 8, "--channels", 8,
                    "--channel-mult", "1,2", "--blocks", 1, "--seed", 5, "--sigma-data", "auto",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "network.json").read_text())
    assert config["command"].startswith("edm train ")
    assert "--seed 5" in config["command"] and "--steps 2" in config["command"]
    assert config["seed"] == 5 and config["training"]["step"] == 2
    result = invoke(train_command, "--resume", str(out), "--steps", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "network.json").read_text())["training"]["step"] == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "no-such-dir"], "neither 'digits' nor an existing"),
        (["--steps", "0"], "--steps"),
        (["--channel-mult", "1,x"], "comma-separated positive integers"),
        (["--sigma-data", "-1"], "positive number or 'auto'"),
        (["--lr", "0"], "--lr"),
        (["--label-dropout", "1.5"], "--label-dropout"),
        (["--device", "nonsense"], "unknown device"),
        (["--steps", "3", "--kimg", "1"], "not both"),
        (["--attn", "4,a"], "comma-separated resolutions"),
    ],
)
def test_cli_usage_errors(tmp_path, args, message):
    result = invoke(train_command, "--outdir", str(tmp_path / "run"), *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_cli_usage_errors_from_training(tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["--data", str(tmp_path / "empty"), "--outdir", str(tmp_path / "r")]
    result = invoke(train_command, *args)
    assert result.exit_code == 2 and "no images" in result.output and "Traceback" not in result.output
    result = invoke(train_command, "--steps", "2")
    assert result.exit_code == 2 and "--outdir is required" in result.output
    assert len(error_lines(result)) == 1


# ---------------------------------------------------------------------------------------------------
# The command: attention resolutions, an unusable --outdir, a full disk

FAST = ["--steps", "2", "--batch", "8", "--channels", "8", "--channel-mult", "1", "--blocks", "1",
        "--no-progress"]


def _no_training(monkeypatch):
    """Make any training step fail loudly, to show that a check ran before training started."""

    def boom(*args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(edm_train, "_learning_rate", boom)


def _one_error_line(result, exit_code):
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit)  # a click error, not a crash
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = error_lines(result)
    assert len(errors) == 1, result.output
    if exit_code == 1:  # a problem met while working: just the error line (usage errors add usage lines)
        assert lines == errors, result.output
    return errors[0]


@pytest.mark.slow
def test_attention_resolution_the_network_lacks_is_rejected(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    out = tmp_path / "run"
    # digits are 8x8: with --channel-mult 1,2 the UNet works at 8 and 4, so 5 would be silently ignored.
    result = invoke(train_command, "--outdir", str(out), *FAST, "--channel-mult", "1,2",
                    "--attn", "4,5")
    line = _one_error_line(result, 2)
    assert "attention resolution 5 is not among" in line and "8, 4" in line
    assert not out.exists()
    with pytest.raises(ValueError, match="resolutions 2, 16 are not among this UNet's resolutions 8, 4"):
        train("digits", out, steps=1, progress=False,
              network_kwargs={**TINY, "attn_resolutions": [16, 2]})
    assert not out.exists()
    monkeypatch.undo()
    result = invoke(train_command, "--outdir", str(out), *FAST, "--channel-mult", "1,2",
                    "--attn", "8,4")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "network.json").read_text())
    assert config["network"]["kwargs"]["attn_resolutions"] == [8, 4]


def test_outdir_under_a_file_is_a_one_line_error(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke(train_command, "--outdir", str(blocker / "run"), *FAST)
    line = _one_error_line(result, 1)
    assert line.startswith(f"Error: cannot create output folder {blocker / 'run'}: ")
    assert blocker.read_text() == "not a folder" and _files(tmp_path) == ["file"]
    with pytest.raises(edm_train.OutdirError, match="cannot create output folder") as info:
        train("digits", blocker / "run", steps=1, network_kwargs=TINY, progress=False)
    assert info.value.errno == errno.ENOTDIR


def _writable(folder) -> bool:
    try:
        (folder / "probe").touch()
    except OSError:
        return False
    (folder / "probe").unlink()
    return True


@pytest.mark.parametrize("sub", ["", "run"], ids=["existing", "to-create"])
def test_read_only_outdir_is_a_one_line_error(tmp_path, monkeypatch, sub):
    _no_training(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if _writable(locked):  # root (or CAP_DAC_OVERRIDE) ignores permission bits: nothing to refuse
            pytest.skip("this user can write to a mode 0o500 folder (root ignores permission bits); "
                        "test_simulated_read_only_file_system_is_a_one_line_error covers the error path")
        result = invoke(train_command, "--outdir", str(locked / sub), *FAST)
        line = _one_error_line(result, 1)
        assert "Permission denied" in line and str(locked) in line
        assert _files(locked) == []
    finally:
        locked.chmod(0o700)


def _read_only_file_system(monkeypatch, root):
    """Make creating anything under ``root`` fail as on a read-only mount (EROFS)."""
    root = os.path.abspath(root)
    real_mkdir, real_open = os.mkdir, os.open

    def inside(path):
        return os.path.abspath(os.fspath(path)).startswith(root + os.sep)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            if os.path.exists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    def open_(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and inside(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", open_)


@pytest.mark.parametrize("sub, message", [("mnt", "cannot write to output folder"),
                                          ("mnt/a/b", "cannot create output folder")])
def test_simulated_read_only_file_system_is_a_one_line_error(tmp_path, monkeypatch, sub, message):
    _no_training(monkeypatch)
    (tmp_path / "mnt").mkdir()
    _read_only_file_system(monkeypatch, tmp_path / "mnt")
    result = invoke(train_command, "--outdir", str(tmp_path / sub), *FAST)
    line = _one_error_line(result, 1)
    assert line == f"Error: {message} {tmp_path / sub}: Read-only file system"
    monkeypatch.undo()
    assert _files(tmp_path / "mnt") == []


def _full_disk_writer(written: list, as_safetensors: bool = False):
    """A ``save_file`` that writes part of the file and then finds the disk full; it raises the
    ``OSError``, or the ``SafetensorError`` the real ``save_file`` raises then."""
    from safetensors import SafetensorError

    def save_file(tensors, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        written.append(path)
        if as_safetensors:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save_file


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_full_disk_while_saving_is_a_one_line_error_and_leaves_nothing_half_written(tmp_path, monkeypatch):
    from edm import checkpoint

    out = tmp_path / "run"
    written = []
    monkeypatch.setattr(checkpoint, "save_file", _full_disk_writer(written, as_safetensors=True))
    result = invoke(train_command, "--outdir", str(out), *FAST)
    line = _one_error_line(result, 1)
    assert line == f"Error: cannot save checkpoint in {out}: No space left on device"
    assert len(written) == 1 and written[0].endswith(".tmp")  # it did write part of a file...
    assert _files(out) == []  # ...which is gone, and no checkpoint JSON without its weights
    monkeypatch.undo()

    # A complete run, then a resumed one whose training-state tensors meet a full disk: the previous
    # checkpoint and state stay exactly as they were (all four files are replaced together or not at all).
    assert invoke(train_command, "--outdir", str(out), *FAST).exit_code == 0
    before = _contents(out)
    assert sorted(before) == ["network.json", "network.safetensors", "training-state-00000002.safetensors",
                              "training-state.json"]
    written.clear()
    monkeypatch.setattr(edm_train, "save_file", _full_disk_writer(written))
    result = invoke(train_command, "--resume", str(out), "--steps", "3", "--no-progress")
    assert _one_error_line(result, 1) == f"Error: cannot save checkpoint in {out}: No space left on device"
    assert len(written) == 1 and _contents(out) == before
    with pytest.raises(edm_train.OutdirError) as info:
        train(resume=out, steps=3, progress=False)
    assert info.value.errno == errno.ENOSPC and _contents(out) == before
    monkeypatch.undo()
    assert train(resume=out, steps=3, progress=False).step == 3
    assert _files(out) == ["network.json", "network.safetensors", "training-state-00000003.safetensors",
                           "training-state.json"]
