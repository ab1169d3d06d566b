"""The registry of steering kinds: registration order is the order of their flags on the help page and of
their checks; :attr:`SteeringKind.layer` (then registration order) is the order of their wrappers.

The built-in kinds are registered by :mod:`tools.steering.builtin` when ``tools.steering`` is imported;
another kind registers itself with :func:`register` (before the command line is built, for its flags to
be offered there).
"""

from __future__ import annotations

from .kind import Flag, SteeringKind

__all__ = ["RESERVED", "flags", "kinds", "register", "unregister"]

_KINDS: dict[str, SteeringKind] = {}
#: names a flag cannot have: the methods of ``tools.steering.Steering``, which reads flags as attributes
RESERVED = ("given", "items", "replace")


def register(kind: SteeringKind) -> SteeringKind:
    """Add ``kind`` (an instance) after the kinds registered so far; ValueError if its name or one of its
    flags is taken. Returns the kind, so a module can write ``KIND = register(MyKind())``."""
    if not isinstance(kind, SteeringKind) or not kind.name:
        raise ValueError(f"a steering kind is a named SteeringKind instance, got {kind!r}")
    if kind.name in _KINDS:
        raise ValueError(f"steering kind {kind.name!r} is registered already")
    taken = flags()
    for flag in kind.flags:
        if flag.name in taken or flag.name in RESERVED or not flag.name.isidentifier() or flag.name[0] == "_":
            raise ValueError(f"steering kind {kind.name!r}: flag {flag.flag} is taken or not a name")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove the kind ``name`` (tests that register a kind of their own); KeyError if there is none."""
    del _KINDS[name]


def kinds() -> tuple[SteeringKind, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS.values())


def flags() -> dict[str, Flag]:
    """Every registered flag by name, in registration order."""
    return {flag.name: flag for kind in _KINDS.values() for flag in kind.flags}
