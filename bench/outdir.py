"""Where a benchmark script writes: a scratch folder by default, the tracked ``bench/results/`` only when
asked (``--record``), so running a README command never overwrites the recorded results."""

from __future__ import annotations

import argparse
from pathlib import Path

RECORDED = Path(__file__).resolve().parent / "results"
SCRATCH = Path("bench-out")  # relative to where the script runs; ignored by git


def add_out_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, default=None,
                       help=f"output directory (default {SCRATCH}/, a scratch folder)")
    group.add_argument("--record", action="store_true",
                       help="write into bench/results, the recorded results the README quotes")


def out_dir(args: argparse.Namespace) -> Path:
    """The folder chosen by ``--out`` / ``--record`` (scratch by default)."""
    if args.record:
        return RECORDED
    return SCRATCH if args.out is None else args.out
