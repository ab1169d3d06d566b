"""Helpers every part of ``tools`` needs, defined once: the error type of bad input, one-line error text,
JSON-able values, compact value formatting, and the checks of output folders and counts.

Nothing here imports torch at module level, so the CLI can use it and still start fast.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONTEXT", "BadInput", "check_writable_dir", "compact", "existing_file", "flagged", "format_value",
           "given_path", "jsonable", "lazy_exports", "one_line", "positive_int", "spelled_out"]

#: click settings of every command: -h as --help, and help as wide as 120 columns
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}


class BadInput(ValueError):
    """Bad input to a library call, found before any work is done.

    ``param`` names the argument at fault (``"model"``, ``"seeds"``, ``"class_label"``, ...), or is None
    when the fault lies in a combination of arguments. The CLI turns it into a usage error naming the flag.
    ``terms``: the library parameter names the message may spell as the library does (``sigma_min``,
    ``s_churn``): the CLI replaces each with the flag the user typed (see :func:`flagged`).
    """

    def __init__(self, message: str, param: str | None = None, *, terms: Sequence[str] = ()):
        super().__init__(message)
        self.param = param
        self.terms = tuple(terms)


def one_line(error: BaseException | str) -> str:
    """The first line of an error's message (or its type's name when it has none)."""
    if isinstance(error, str):
        text = error
    else:
        text = str(error)
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def format_value(value: Any) -> str:
    """An option value as a user would type it: 0.0 -> 0, 1e-3 -> 0.001, inf -> inf, ("a", "b") -> a, b
    (sets sorted), strings without quotes."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (set, frozenset)):
        value = sorted(value, key=str)
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def flagged(message: str, flags: Mapping[str, str]) -> str:
    """``message`` with each library parameter name of ``flags`` (a whole word: not part of a longer name,
    a flag or a ``SAMPLER.KEY``) replaced by its flag, in one pass so ``order`` never rewrites
    ``--max-order``."""
    if not flags:
        return message
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    return re.sub(rf"(?<![\w.-])({names})(?![\w-])", lambda m: flags[m.group(1)], message)


def compact(value: Any) -> str:
    """A one-line rendering of a setting for people: mappings as ``k=v`` pairs, lists in brackets, floats
    in ``%g``."""
    if isinstance(value, Mapping):
        return " ".join(f"{k}={compact(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON data.

    Non-finite floats become the strings "inf", "-inf", "nan"; tuples and sets become lists (sets sorted
    when they can be); a tensor becomes its list when it has at most 16 elements, else the text
    "tensor of shape [...]"; anything else unknown becomes its ``str``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        try:
            value = sorted(value)
        except TypeError:
            value = list(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is imported
    if torch is not None and isinstance(value, torch.Tensor):
        return jsonable(value.tolist()) if value.numel() <= 16 else f"tensor of shape {list(value.shape)}"
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return jsonable(value.item())  # numpy scalars
    return str(value)


def positive_int(value: Any, what: str, param: str | None = None) -> int:
    """``value`` as an int >= 1, else :class:`BadInput` (bools are not integers here)."""
    if isinstance(value, bool) or not (isinstance(value, int) or _is_numpy_int(value)) or value < 1:
        raise BadInput(f"{what} must be a positive integer, got {value!r}", param)
    return int(value)


def _is_numpy_int(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.integer)


def given_path(value, what: str, param: str | None = None, hint: str = "") -> Path:
    """``value`` as a Path; BadInput for an empty one, which ``Path("")`` would silently read as the current
    folder (``what`` names it in the message, "the output folder"; ``hint`` follows it)."""
    if value is None or (isinstance(value, str) and not value):
        raise BadInput(f"{what} is an empty path{hint}", param)
    return Path(value).expanduser()


def existing_file(value, what: str, param: str | None = None) -> Path:
    """``value`` as the Path of an existing file; BadInput saying which it is not: an empty path, a path that
    does not exist, or a directory (``what`` names it in the message: "mask")."""
    path = given_path(value, what, param)
    if path.is_dir():
        raise BadInput(f"{what} {path} is a directory, not a file", param)
    if not path.exists():
        raise BadInput(f"{what} {path} does not exist", param)
    if not path.is_file():
        raise BadInput(f"{what} {path} is not a regular file", param)
    return path


def check_writable_dir(path, param: str | None = None) -> Path:
    """``path`` as an absolute directory that exists and is writable, or could be created; else BadInput.

    Writability is probed with an anonymous temporary file in the nearest existing directory, so a
    read-only file system is caught too (as root, ``os.access`` says yes to everything) and nothing
    visible is left behind. Nothing is created.
    """
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise BadInput(f"{path} is not a directory" if candidate == path
                               else f"cannot create {path}: {candidate} is not a directory", param)
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise BadInput(f"cannot write to {path}: {candidate} is not writable", param)
            try:
                with tempfile.TemporaryFile(dir=candidate):
                    pass
            except OSError as e:
                raise BadInput(f"cannot write to {path}: {e.strerror or e}", param) from None
            return path
    raise BadInput(f"cannot create {path}", param)  # pragma: no cover - "/" always exists


def check_writable_file(path, param: str | None = None, example: str = "out.json") -> Path:
    """A file path whose folder exists and is writable or can be created; a directory is BadInput."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise BadInput(f"{path} is a directory: give a file name such as {example}", param)
    check_writable_dir(path.parent, param)
    return path


#: ``--schedule file:PATH`` and ``--sampler file:PATH`` name files this way
FILE_PREFIX = "file:"


def prefixed_path(name: Any, error: type[Exception], example: str) -> Path | None:
    """The path in a ``file:PATH`` name, None for any other name; ``error`` (one line, showing
    ``example``) for ``file:`` without a path."""
    if not isinstance(name, str) or not name.startswith(FILE_PREFIX):
        return None
    path = name[len(FILE_PREFIX):]
    if not path:
        raise error(f"file: needs a path, e.g. {example}")
    return Path(path).expanduser()


def lazy_exports(module: str, names: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """``(__getattr__, __dir__)`` for a package that exports ``names`` (name -> submodule) on first use.

    Packages that also hold a CLI module use this, so importing the CLI does not import torch.
    """
    package = sys.modules[module]

    def __getattr__(name: str):
        submodule = names.get(name)
        if submodule is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(submodule, module), name)
        setattr(package, name, value)
        return value

    def __dir__():
        return sorted(set(vars(package)) | set(names))

    return __getattr__, __dir__


def spelled_out(command: Sequence[str], params: Mapping[str, Any]) -> str:
    """``command`` with every option of ``params`` spelled out as its flag (``steps=4`` -> ``--steps 4``;
    True -> the bare flag; None/False left out; lists comma-joined): the canonical command a trained
    file records, so the run can be repeated from it."""
    import shlex

    words = list(command)
    for name, value in params.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            words.append(flag)
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        words += [flag, str(value)]
    return shlex.join(words)
