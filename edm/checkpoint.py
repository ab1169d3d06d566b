"""Model checkpoints: safetensors weights beside a JSON config. Loading never unpickles.

A checkpoint ``NAME`` is two files, ``NAME.safetensors`` (the backbone's state dict) and ``NAME.json``:

    {"format": "edm-samplers/checkpoint-1",
     "network": {"name": "unet", "kwargs": {...}},            # edm.networks registry
     "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
     "objective": {"name": "edm", "params": {...}},            # edm.objectives registry; absent: edm
     "data": {"shape": [1, 8, 8], "num_classes": 10, ...},     # num_classes 0: unconditional
     "command": "edm train ...", ...}                          # free-form extras are kept

Class-conditional networks take ``class_labels``, a ``[B, num_classes]`` one-hot tensor; all zeros is
the unconditional (label-dropped) input, as in NVlabs' networks.

The denoiser is the one the training objective builds (``ddpm``: :class:`edm.DiscreteTimeDenoiser`);
a config without an ``objective`` (written before objectives existed) is wrapped as its ``precond``
section says.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .objectives import denoiser_from_config
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


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``);
    elsewhere by setting and restoring it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def new_file_mode() -> int:
    """The mode a new regular file gets under the current umask (``0o666 & ~umask``: 0644 under 022)."""
    return 0o666 & ~_umask()


def atomic_write_all(files: Iterable[tuple[Path, Callable[[str], object]]]) -> None:
    """Write several files so that each either keeps its old content or gets its complete new one.

    ``files`` is a sequence of ``(path, write)``: every ``write(tmp_path)`` runs first, each into a
    hidden temporary file beside its ``path`` (named ``.NAME.XXXXXX.tmp``, so it never matches the
    final name's pattern); only when all of them succeeded are the temporary files renamed onto their
    paths, in order. If a writer fails (disk full, ...) every temporary file is removed, no ``path``
    is touched, and the error propagates (safetensors' I/O errors as the ``OSError`` they report).

    Whatever mode the writer leaves (mkstemp's 0600; safetensors replaces the file with a 0600 one),
    each file gets the usual mode of new files, ``0o666 & ~umask``, before the rename.
    """
    mode = new_file_mode()
    done: list[tuple[str, Path]] = []
    tmp = None
    try:
        for path, write in files:
            path = Path(path)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                write(tmp)
            except SafetensorError as e:  # safetensors reports a full disk as its own error type
                raise _os_error(e, path) from e
            _chmod(tmp, mode)
            done.append((tmp, path))
            tmp = None
        for tmp_path, path in done:
            os.replace(tmp_path, path)
    except BaseException:
        for tmp_path in [t for t, _ in done] + ([tmp] if tmp is not None else []):
            Path(tmp_path).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a partial file.

    The temporary file is hidden and ends in ``.tmp`` (it never matches the final name's pattern); it
    is removed if ``write`` fails. The file gets the usual mode of new files (``0o666 & ~umask``),
    whatever mode ``write`` created it with. See :func:`atomic_write_all` for several files at once.
    """
    atomic_write_all([(path, write)])


def _os_error(error: Exception, path: Path) -> Exception:
    """The ``OSError`` a safetensors error reports ("... I/O error: No space left on device (os error
    28)"), or ``error`` itself when it names none."""
    found = re.search(r"\(os error (\d+)\)", str(error))
    if found is None:
        return error
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))


def _chmod(path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as e:  # file systems without Unix modes (some network mounts) refuse: keep the file
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise


def checkpoint_files(path, backbone: torch.nn.Module,
                     config: dict) -> list[tuple[Path, Callable[[str], object]]]:
    """``[(weights, writer), (config, writer)]`` for :func:`atomic_write_all`, the JSON last."""
    weights, config_path = paths(path)
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()}
    text = json.dumps({"format": FORMAT, **config}, indent=2, sort_keys=True)
    return [(weights, lambda tmp: save_file(state, tmp)),
            (config_path, lambda tmp: Path(tmp).write_text(text + "\n"))]


def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "adam.") -> tuple[dict, dict]:
    """``(tensors, record)``: an optimizer's per-parameter state as tensors named ``{prefix}{index}.{key}``
    (for safetensors) and the rest as JSON data (``adam_param_groups``, ``adam_state_keys``), so that a
    saved state never needs pickle. :func:`restore_optimizer` reads it back."""
    optim = optimizer.state_dict()
    tensors = {f"{prefix}{index}.{key}": torch.as_tensor(value).detach().contiguous().cpu()
               for index, state in optim["state"].items() for key, value in state.items()}
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
              for group in optim["param_groups"]]
    keys = {str(index): sorted(state) for index, state in optim["state"].items()}
    return tensors, {"adam_param_groups": groups, "adam_state_keys": keys}


def restore_optimizer(optimizer: torch.optim.Optimizer, record: dict, tensors: dict,
                      prefix: str = "adam.") -> None:
    """Load what :func:`optimizer_state` saved into ``optimizer`` (built on the same parameters)."""
    state = {int(index): {key: tensors[f"{prefix}{index}.{key}"] for key in keys}
             for index, keys in record["adam_state_keys"].items()}
    groups = [{**group, **({"betas": tuple(group["betas"])} if "betas" in group else {})}
              for group in record["adam_param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(path, backbone: torch.nn.Module, config: dict) -> tuple[Path, Path]:
    """Write the backbone's weights and ``config`` (``format`` is filled in) atomically.

    Both files are written in full before either replaces an existing checkpoint, and the JSON is
    renamed last, so a checkpoint whose JSON exists is complete, and a failed save (disk full, ...)
    leaves the previous checkpoint, if any, as it was and no temporary file behind.
    """
    files = checkpoint_files(path, backbone, config)
    atomic_write_all(files)
    return files[0][0], files[1][0]


def read_record(path: Path, fmt: str | tuple[str, ...], what: str,
                error: type[Exception] = CheckpointError) -> dict:
    """The JSON object at ``path`` whose ``format`` is ``fmt`` (or one of them: the versions still read,
    the newest first); else ``error`` with a one-line message naming the file (``what`` says what it
    should have been)."""
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if path.is_dir():  # "not found" would send the user looking for a file that is there
        raise error(f"{what} {path} is a directory, not a file")
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"corrupt {what} {path}: {e}") from None
    if not isinstance(record, dict) or record.get("format") not in formats:
        raise error(f"{path} is not an edm-samplers {what} (format {formats[0]!r})")
    return record


def read_config(path) -> dict:
    _, config_path = paths(path)
    config = read_record(config_path, FORMAT, "checkpoint config")
    for key in ("network", "precond", "data"):
        if not isinstance(config.get(key), dict):
            raise CheckpointError(f"checkpoint config {config_path} lacks its {key!r} section")
    return config


def load_checkpoint(path, *, device="cpu", dtype=torch.float32) -> Checkpoint:
    """Build the network named in the config, load its weights and wrap it in the denoiser of its
    objective (:func:`edm.objectives.denoiser_from_config`)."""
    from . import dit  # noqa: F401  (registers "dit" in the network registry)
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
    return Checkpoint(denoiser_from_config(backbone, config), config)
