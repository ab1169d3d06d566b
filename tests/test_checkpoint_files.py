"""Files written by ``edm.checkpoint``: atomic replacement, clean-up after a failed write, file modes."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import torch
from safetensors import SafetensorError

from edm import checkpoint
from edm.checkpoint import atomic_write, atomic_write_all, load_checkpoint, new_file_mode, save_checkpoint
from edm.networks import UNet


def _net():
    torch.manual_seed(0)
    return UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1,), num_blocks=1,
                attn_resolutions=())


def _config():
    return {"network": {"name": "unet", "kwargs": {"in_channels": 1, "resolution": 8, "model_channels": 8,
                                                   "channel_mult": [1], "num_blocks": 1,
                                                   "attn_resolutions": []}},
            "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
            "data": {"shape": [1, 8, 8], "num_classes": 0}}


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert new_file_mode() == mode
    weights, config = save_checkpoint(tmp_path / "model", _net(), _config())
    # safetensors writes its own 0600 file and renames it over ours: the mode is set after the writer.
    assert (_mode(weights), _mode(config)) == (mode, mode)
    assert load_checkpoint(tmp_path / "model").shape == (1, 8, 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_atomic_write_sets_the_mode_whatever_the_writer_does(tmp_path, umask):
    umask(0o022)

    def replace_with_private_file(tmp):  # like safetensors: a new 0600 file renamed onto tmp
        private = tmp_path / "private"
        private.write_text("data")
        private.chmod(0o600)
        os.replace(private, tmp)

    atomic_write(tmp_path / "a.txt", replace_with_private_file)
    atomic_write(tmp_path / "b.txt", lambda tmp: os.chmod(tmp, 0o755))
    assert (tmp_path / "a.txt").read_text() == "data"
    assert _mode(tmp_path / "a.txt") == _mode(tmp_path / "b.txt") == 0o644
    umask(0o027)
    atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("new"))  # an existing file, too
    assert _mode(tmp_path / "a.txt") == 0o640 and (tmp_path / "a.txt").read_text() == "new"


def _fail_after_writing(error):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise error

    return write


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
], ids=["OSError", "SafetensorError"])
def test_failed_write_leaves_nothing_behind(tmp_path, error):
    target = tmp_path / "file.bin"
    with pytest.raises(OSError) as info:  # safetensors' error comes out as the OSError it reports
        atomic_write(target, _fail_after_writing(error))
    assert info.value.errno == errno.ENOSPC and "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(OSError):
        atomic_write(target, _fail_after_writing(error))
    assert list(tmp_path.iterdir()) == [target] and target.read_bytes() == b"old"


def test_atomic_write_all_replaces_all_files_or_none(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("old a")
    with pytest.raises(OSError, match="No space"):
        atomic_write_all([(a, lambda tmp: open(tmp, "w").write("new a")),
                          (b, _fail_after_writing(OSError(errno.ENOSPC, "No space left on device")))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"] and a.read_text() == "old a"
    atomic_write_all([(a, lambda tmp: open(tmp, "w").write("new a")),
                      (b, lambda tmp: open(tmp, "w").write("new b"))])
    assert (a.read_text(), b.read_text()) == ("new a", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_failed_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    weights, config = save_checkpoint(tmp_path / "model", _net(), _config())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(tensors, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "model", _net(), {**_config(), "command": "changed"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(OSError, match="No space"):  # a new name: no JSON without weights appears
        save_checkpoint(tmp_path / "other", _net(), _config())
    assert sorted(before) == sorted(p.name for p in tmp_path.iterdir())
