"""Seed lists in NVlabs' syntax: ``0-63,100`` is seeds 0..63 (inclusive) and 100."""

from __future__ import annotations

import re

__all__ = ["MAX_SEED", "MAX_SEEDS", "format_seeds", "parse_seeds"]

MAX_SEED = (1 << 63) - 1  # per-seed generators take seeds in [0, 2**63)
MAX_SEEDS = 10_000_000  # a typo such as 0-1000000000 should fail fast, not fill memory

_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+))?")


def parse_seeds(text) -> list[int]:
    """``'0-63,100'`` -> ``[0, 1, ..., 63, 100]``; an int (or a list of ints) is accepted as is.

    Items are separated by commas (spaces around them are ignored); ``A-B`` is the inclusive range.
    Raises ValueError, with a one-line message, on bad syntax, negative numbers, reversed ranges, an
    empty list, a seed listed twice, or more than ``MAX_SEEDS`` seeds.
    """
    if isinstance(text, bool):
        raise ValueError(f"seeds must be a string such as '0-63,100', got {text!r}")
    if isinstance(text, int):
        text = str(text)
    elif isinstance(text, (list, tuple, range)):
        text = ",".join(str(s) for s in text)
    if not isinstance(text, str):
        raise ValueError(f"seeds must be a string such as '0-63,100', got {text!r}")
    if not text.strip():
        raise ValueError("no seeds given: expected a list such as '0-63,100'")
    seeds: list[int] = []
    for item in text.split(","):
        item = item.strip()
        match = _ITEM.fullmatch(item)
        if match is None:
            hint = "seeds must be non-negative" if item.startswith("-") else "expected N or A-B"
            raise ValueError(f"bad seed {item!r} in {text!r}: {hint} (e.g. '0-63,100')")
        first = int(match.group(1))
        last = first if match.group(2) is None else int(match.group(2))
        if last < first:
            raise ValueError(f"reversed seed range {item!r} in {text!r}: write {last}-{first}")
        if last > MAX_SEED:
            raise ValueError(f"seed {last} is too large: seeds must be below 2**63")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"too many seeds in {text!r}: at most {MAX_SEEDS:,} per run")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        seen: set[int] = set()
        twice = next(s for s in seeds if s in seen or seen.add(s))
        raise ValueError(f"seed {twice} is listed twice in {text!r}")
    return seeds


def format_seeds(seeds) -> str:
    """The shortest NVlabs-syntax string for ``seeds`` (in their order): ``[0, 1, 2, 5]`` -> ``'0-2,5'``."""
    items: list[str] = []
    seeds = list(seeds)
    i = 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        items.append(str(seeds[i]) if i == j else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(items)
