"""What a new user reads: no stray library warnings, error lines in the words and flags they typed, and help
pages that list only flags the command takes."""

from __future__ import annotations

import logging

import pytest

from _support import invoke
from tools.generate.cli import generate

# ---------------------------------------------------------------------------------------------------
# diffusers' "should be kept in float32" warning


class _Records(logging.Handler):
    """Every record diffusers' logger emits (its own handler writes them to the stderr it bound at import,
    which click's runner does not capture)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def diffusers_log():
    records = _Records()
    logger = logging.getLogger("diffusers")
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)


@pytest.fixture(scope="module")
def unet_dir(tmp_path_factory):
    """A tiny random-weight UNet2DModel and its scheduler, saved as a diffusers pipeline folder."""
    import diffusers
    import pipelines_tiny

    path = tmp_path_factory.mktemp("unet")
    pipelines_tiny.random_unet2d(8, 2).save_pretrained(path / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_end=0.005).save_pretrained(path / "scheduler")
    return path


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_diffusers_unet_loads_without_cast_warning(unet_dir, tmp_path, offline, diffusers_log, dtype):
    result = invoke(generate, "--model", f"diffusers:{unet_dir}", "--outdir", tmp_path / "out",
                    "--seeds", "0", "--steps", 2, "--dtype", dtype, "--no-progress")
    assert result.exit_code == 0, result.output
    assert not [m for m in diffusers_log if "should be kept in float32" in m], diffusers_log
    assert (tmp_path / "out" / "000000.png").is_file()
