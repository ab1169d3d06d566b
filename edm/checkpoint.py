"""Model checkpoints: safetensors weights beside a JSON config. Loading never unpickles.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` (the backbone's state dict) and ``NAME.json``:

    {"format": "edm-samplers/checkpoint-1",
     "network": {"name": "unet", "kwargs": {...}},            # edm.networks registry
     "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
     "data": {"shape": [1, 8, 8], "num_classes": 10, ...},     # num_classes 0: unconditional
     "command": "edm train ...", ...}                          # free-form extras are kept

Class-conditional networks take ``class_labels``, a ``[B, num_classes]`` one-hot tensor; all zeros is
the unconditional (label-dropped) input, as in NVlabs' networks.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .precond import Precond

FORMAT = "edm-samplers/checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or not ours; the message names the file."""


@dataclass
class Checkpoint:
    denoiser: Precond
    config: dict

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config["data"]["shape"])

    @property
    def num_classes(self) -> int:
        return int(self.config["data"].get("num_classes", 0))


def paths(path) -> tuple[Path, Path]:
    """``(weights, config)`` for a checkpoint given as NAME, NAME.json or NAME.safetensors."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The temporary file is hidden and ends in ``.tmp`` (it never matches the final name's pattern) and
    gets the usual mode of new files rather than mkstemp's 0600.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, _new_file_mode())
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path, backbone: torch.nn.Module, config: dict) -> tuple[Path, Path]:
    """Write the backbone's weights and ``config`` (``format`` is filled in) atomically.

    The JSON is written last, so a checkpoint whose JSON exists is complete.
    """
    weights, config_path = paths(path)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    text = json.dumps({"format": FORMAT, **config}, indent=2, sort_keys=True)
    atomic_write(config_path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return weights, config_path


def read_record(path: Path, fmt: str, what: str, error: type[Exception] = CheckpointError) -> dict:
    """The JSON object at ``path`` whose ``format`` is ``fmt``; else ``error`` with a one-line message
    naming the file (``what`` says what it should have been)."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"corrupt {what} {path}: {e}") from None
    if not isinstance(record, dict) or record.get("format") != fmt:
        raise error(f"{path} is not an edm-samplers {what} (format {fmt!r})")
    return record


def read_config(path) -> dict:
    _, config_path = paths(path)
    config = read_record(config_path, FORMAT, "checkpoint config")
    for key in ("network", "precond", "data"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"checkpoint config {config_path} lacks its {key!r} section")
    return config


def load_checkpoint(path, *, device="cpu", dtype=torch.float32) -> Checkpoint:
    """Build the network named in the config, load its weights and wrap it in ``Precond``."""
    from .networks import build_network  # the network registry imports torch.nn modules

    weights, config_path = paths(path)
    config = read_config(path)
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(weights, device=str(device))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"corrupt checkpoint weights {weights}: {e}") from None
    network = config["network"]
    try:
        backbone = build_network(network["name"], **network.get("kwargs", {}))
        backbone.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {weights} does not fit its config {config_path}: "
                              f"{str(e).splitlines()[0]}") from None
    backbone.to(device=device, dtype=dtype).eval().requires_grad_(False)
    precond = config["precond"]
    denoiser = Precond(backbone, precond.get("scheme", "edm"), **precond.get("params", {}))
    return Checkpoint(denoiser, config)
