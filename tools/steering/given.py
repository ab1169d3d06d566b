"""The steering a run asks for, as given: :class:`Steering`, an immutable and comparable value of the
registered steering flags (:mod:`tools.steering.registry`)."""

from __future__ import annotations

import hashlib
import numbers
from pathlib import Path
from typing import Any

from .registry import flags

__all__ = ["Steering", "file_identity"]


class Steering:
    """The steering flags a run gives, by name: ``Steering(guide_model="digits-weak")``.

    Every registered flag reads as an attribute; one not given reads as None (False for a switch). A value
    not given (None or False) is not kept, so ``Steering(mask=None) == Steering()``. Immutable and
    compared by value; :meth:`replace` makes a changed copy. TypeError for a name no kind registers.
    """

    __slots__ = ("_values",)

    def __init__(self, **values: Any):
        known = flags()
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise TypeError(f"Steering() got unknown steering flag(s) {', '.join(unknown)}; registered: "
                            f"{', '.join(known)}")
        kept = tuple((name, values[name]) for name in known
                     if name in values and values[name] is not None and values[name] is not False)
        object.__setattr__(self, "_values", kept)

    @classmethod
    def _from_items(cls, items: tuple[tuple[str, Any], ...]) -> Steering:
        return cls(**dict(items))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        for key, value in self._values:
            if key == name:
                return value
        flag = flags().get(name)
        if flag is None:
            raise AttributeError(f"'Steering' object has no attribute {name!r} (no steering flag {name!r})")
        return flag.unset

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Steering is immutable: use .replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Steering is immutable")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Steering) and self._values == other._values

    def __hash__(self) -> int:
        return hash(self._values)

    def __reduce__(self):
        return (self._from_items, (self._values,))

    def __repr__(self) -> str:
        return f"Steering({', '.join(f'{k}={v!r}' for k, v in self._values)})"

    def items(self) -> tuple[tuple[str, Any], ...]:
        """The given flags as ``(name, value)`` pairs, in registration order."""
        return self._values

    def replace(self, **changes: Any) -> Steering:
        """A copy with ``changes`` (None takes a flag away)."""
        return Steering(**{**dict(self._values), **changes})

    def given(self) -> dict[str, Any]:
        """The settings asked for, as plain data (a folder's record; empty when nothing is asked): a file
        flag's path with its content's hash, a loaded model or classifier by its source."""
        known = flags()
        out = {}
        for key, value in self._values:
            flag = known.get(key)
            if flag is not None and flag.is_file:
                value = file_identity(Path(value))
            elif not isinstance(value, str | Path | numbers.Number | tuple | list):
                value = str(getattr(value, "source", type(value).__name__))
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def file_identity(path: Path) -> str:
    """A path as the record keeps it: absolute, and for a file its content's hash too, so an edited init
    image or mask is a different setting (a per-seed folder is kept by path)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        return str(path)
    return f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})"
