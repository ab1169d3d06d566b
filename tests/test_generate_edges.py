"""`edm generate`'s rough edges found in a new user's trial: each bad input is refused once, before anything
is written, with one ``Error:`` line naming the flag typed (exit 2); 16-bit images and BOM-marked prompt
files are read as meant. Tiny runs of the shipped ``digits`` model (1x8x8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from _support import assert_usage_error, invoke, plan_of
from tools.cli import main
from tools.common import BadInput
from tools.generate.prompts import read_prompts
from tools.images import read_png, to_uint8, write_png
from tools.steering import Steering

pytestmark = pytest.mark.usefixtures("one_thread")


def generate(*args):
    return invoke(main, "generate", "--no-progress", *args)


def ok(*args):
    result = generate(*args)
    assert result.exit_code == 0, result.output
    return result


def files(root) -> list[str]:
    """Every path under ``root`` (folders too), relative: what a refused run must leave unchanged."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(root, *args, fragments=()):
    """A usage error (see ``assert_usage_error``) that wrote nothing under ``root``; returns its line."""
    before = files(root)
    line = assert_usage_error(generate(*args), *fragments)
    assert files(root) == before
    return line


@pytest.fixture
def digit_png(tmp_path_factory):
    """One 8-bit 8x8 gray PNG, as `edm generate` writes them (an init image for the digits model)."""
    path = tmp_path_factory.mktemp("init") / "init.png"
    write_png(path, np.full((8, 8, 1), 100, np.uint8))
    return path


# 1. --outdir ''


def test_empty_outdir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where an empty outdir used to put the images
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", "", fragments=("'--outdir'", "empty"))


# 2. --grid naming a folder


@pytest.mark.parametrize("where", ["outdir", "outdir's parent", "existing folder", "an image", "the record",
                                   "a subdir"])
def test_grid_on_a_folder_or_an_output_file_is_refused(tmp_path, where):
    out = tmp_path / "new" / "out"
    (tmp_path / "existing").mkdir()
    grid = {"outdir": out, "outdir's parent": tmp_path / "new", "existing folder": tmp_path / "existing",
            "an image": out / "000000" / "000001.png", "the record": out / "edm-generate.json",
            "a subdir": out / "000000"}[where]
    refused(tmp_path, "--steps", 2, "--seeds", "0-1", "--subdirs", "--outdir", out, "--grid", grid,
            fragments=("'--grid'",))


def test_grid_beside_the_images_is_written(tmp_path):
    result = ok("--steps", 2, "--seeds", "0-1", "--outdir", tmp_path, "--grid", tmp_path / "grid.png")
    assert "grid 16x8" in result.output and (tmp_path / "grid.png").is_file()


# 3. 16-bit images

# 16-bit gray values and their 8-bit values by hand: round(v * 255 / 65535) = round(v / 257), e.g.
# 128/257 = 0.498, 129/257 = 0.502, 1000/257 = 3.89, 30000/257 = 116.7, 32768/257 = 127.5
SIXTEEN = [0, 128, 129, 257, 1000, 30000, 32768, 65535]
EIGHT = [0, 0, 1, 1, 4, 117, 128, 255]


def sixteen_bit_png(path, values=SIXTEEN):
    """An 8x8 16-bit gray PNG (PIL opens it as mode I;16), ``values`` repeated row by row."""
    array = np.resize(np.array(values, np.uint16), (8, 8))
    Image.fromarray(array).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I")
    return path


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    path = sixteen_bit_png(tmp_path / "init16.png")
    expected = np.resize(np.array(EIGHT, np.uint8), (8, 8))[:, :, None]
    np.testing.assert_array_equal(read_png(path), expected)
    plan = plan_of("digits", [0], tmp_path / "out", steps=2,
                   steering=Steering(init_image=str(path), strength=0.5))
    np.testing.assert_array_equal(to_uint8(plan.sampling.steer.edit.init)[0], expected)


def test_16_bit_mask_reads_as_its_8_bit_values(tmp_path, digit_png):
    mask = sixteen_bit_png(tmp_path / "mask16.png")  # 30000 keeps (117), 32768 generates (128)
    plan = plan_of("digits", [0], tmp_path / "out", steps=2,
                   steering=Steering(init_image=str(digit_png), mask=str(mask)))
    generates = np.resize(np.array(EIGHT) >= 128, (8, 8))
    np.testing.assert_array_equal(plan.sampling.steer.edit.mask[0, 0].numpy(), generates)


@pytest.mark.parametrize("dtype, mode", [(np.int32, "I"), (np.float32, "F")])
def test_images_without_a_fixed_range_are_refused(tmp_path, digit_png, dtype, mode):
    path = tmp_path / "wide.tiff"
    Image.fromarray(np.full((8, 8), 1000, dtype)).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    for flag, args in (("--init-image", ["--init-image", path]),
                       ("--mask", ["--init-image", digit_png, "--mask", path])):
        refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out", *args,
                fragments=(f"'{flag}'", f"mode {mode}"))


# 4. img2img's strength rounding to no step


def test_too_low_strength_names_strength_and_steps(tmp_path, digit_png):
    line = refused(tmp_path, "--seeds", 0, "--outdir", tmp_path / "out", "--init-image", digit_png,
                   "--strength", 0.1, "--steps", 4, fragments=("'--strength'", "--steps", "0.25", "10"))
    assert "--resample" not in line


def test_too_low_strength_under_an_nfe_budget_names_nfe(tmp_path, digit_png):
    line = refused(tmp_path, "--seeds", 0, "--outdir", tmp_path / "out", "--init-image", digit_png,
                   "--strength", 0.1, "--nfe", 7, fragments=("'--strength'", "--nfe"))
    assert "--resample" not in line and "--steps" not in line


# 5. a prompts file with a byte-order mark


def test_prompts_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("a red bicycle\nä blue car\n".encode("utf-8-sig"))
    assert read_prompts(path) == ["a red bicycle", "ä blue car"]


@pytest.mark.slow
def test_prompts_file_with_a_byte_order_mark_records_clean_prompts(tmp_path, tiny_pipeline, offline):
    path = tmp_path / "prompts.txt"
    path.write_bytes("a red bicycle\n".encode("utf-8-sig"))
    ok("--model", f"diffusers:{tiny_pipeline('sd')}", "--prompts", path, "--steps", 2, "--seeds", 0,
       "--outdir", tmp_path / "out")
    record = json.loads((tmp_path / "out" / "edm-generate.json").read_text())
    assert record["text"]["prompts"] == ["a red bicycle"]


# 6. a rerun in the other layout


def test_subdirs_rerun_into_a_flat_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    ok("--steps", 2, "--seeds", "0-3", "--outdir", out)
    refused(tmp_path, "--steps", 2, "--seeds", "0-3", "--outdir", out, "--subdirs",
            fragments=("'--subdirs'", "flat"))
    refused(tmp_path, "--steps", 2, "--seeds", "4-5", "--outdir", out, "--subdirs", "--overwrite",
            fragments=("'--subdirs'",))
    assert "0 images written, 4 skipped" in ok("--steps", 2, "--seeds", "0-3", "--outdir", out).output


def test_flat_rerun_into_a_subdirs_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    ok("--steps", 2, "--seeds", "0-1", "--outdir", out, "--subdirs")
    refused(tmp_path, "--steps", 2, "--seeds", "0-1", "--outdir", out,
            fragments=("'--outdir'", "--subdirs", "1000"))
    assert "0 images written, 2 skipped" in ok("--steps", 2, "--seeds", "0-1", "--outdir", out,
                                               "--subdirs").output


# 7. a folder where a file is expected


def test_mask_that_is_a_folder_says_so(tmp_path, digit_png):
    (tmp_path / "masks").mkdir()
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out", "--init-image", digit_png,
            "--mask", tmp_path / "masks", fragments=("'--mask'", "is a directory"))
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out", "--init-image", digit_png,
            "--mask", tmp_path / "nope.png", fragments=("'--mask'", "does not exist"))


def test_init_image_folder_whose_seed_image_is_a_folder_says_so(tmp_path):
    (tmp_path / "inits" / "000000.png").mkdir(parents=True)
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out",
            "--init-image", tmp_path / "inits", fragments=("'--init-image'", "is a directory"))
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out",
            "--init-image", tmp_path / "nope", fragments=("'--init-image'", "does not exist"))


@pytest.mark.parametrize("flag", ["--init-image", "--mask", "--grid"])
def test_empty_path_is_refused(tmp_path, digit_png, monkeypatch, flag):
    monkeypatch.chdir(tmp_path)
    args = ["--init-image", digit_png] if flag == "--mask" else []
    refused(tmp_path, "--steps", 2, "--seeds", 0, "--outdir", tmp_path / "out", *args, flag, "",
            fragments=(f"'{flag}'", "empty"))


def test_prompts_file_that_is_a_folder_says_so(tmp_path):
    for path, words in ((tmp_path, "is a directory"), (tmp_path / "nope.txt", "does not exist")):
        with pytest.raises(BadInput, match=words) as caught:
            read_prompts(path)
        assert caught.value.param == "prompts"
