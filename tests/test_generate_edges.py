"""`edm generate`'s rough edges found in a new user's trial: each bad input is refused once, before anything
is written, with one ``Error:`` line naming the flag typed (exit 2); 16-bit images and BOM-marked prompt
files are read as meant. Tiny runs of the shipped ``digits`` model (1x8x8)."""

from __future__ import annotations

import numpy as np
import pytest

from _support import assert_usage_error, invoke
from tools.cli import main
from tools.images import write_png

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
