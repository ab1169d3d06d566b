"""A folder's record of how its images were made (``edm-generate.json``), so that a rerun into it with
other settings is refused instead of silently keeping old images or mixing two settings in one folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edm.checkpoint import atomic_write, read_record
from tools.common import BadInput, format_value, jsonable

__all__ = ["FORMAT", "RECORD_NAME", "check_record", "differences", "write_record"]

RECORD_NAME = "edm-generate.json"
FORMAT = "edm-samplers/generate-v1"


def _show(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={format_value(v)}" for k, v in value.items()) + "}" if value else "none"
    return "none" if value is None else format_value(value)


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"sampler heun -> euler"`` for each setting that differs (the sigma levels as one item)."""
    keys = [key for key in dict.fromkeys([*new, *old]) if old.get(key) != new.get(key)]
    if len(keys) > 1 and "sigmas" in keys:  # other differences explain the levels
        keys.remove("sigmas")
    return ["sigma levels differ" if key == "sigmas" else f"{key} {_show(old.get(key))} -> "
                                                          f"{_show(new.get(key))}"
            for key in keys]


def _read(outdir: Path) -> dict[str, Any] | None:
    path = outdir / RECORD_NAME
    if not path.exists():
        return None
    try:
        record = read_record(path, FORMAT, "generation record", BadInput)
    except BadInput as e:
        raise BadInput(f"{e}; use another --outdir, or --overwrite to replace it", "outdir") from None
    record.pop("format", None)
    return record


def check_record(outdir, settings: Mapping[str, Any], overwrite: bool) -> None:
    """Refuse, naming what differs, when ``outdir`` holds images made with other settings.

    ``--overwrite`` is the way out: the run then re-creates its images and records its own settings.
    A folder without a record (new, or from an older version) is accepted.
    """
    if overwrite:
        return
    old = _read(Path(outdir))
    if old is None:
        return
    found = differences(old, jsonable(dict(settings)))
    if found:
        raise BadInput(f"{outdir} holds images made with other settings ({'; '.join(found)}): use another "
                       "--outdir, or --overwrite to re-create these seeds' images", "outdir")


def write_record(outdir, settings: Mapping[str, Any]) -> Path:
    """Write the settings as ``outdir/edm-generate.json`` (atomically)."""
    path = Path(outdir) / RECORD_NAME
    text = json.dumps({"format": FORMAT, **jsonable(dict(settings))}, indent=1, allow_nan=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))
    return path
