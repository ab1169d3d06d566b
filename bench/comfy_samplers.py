"""ComfyUI's newer samplers on the embedded digits model, at equal NFE, beside the usual anchors.

For each sampler of ``--samplers`` and each budget of ``--nfe``: the sampler on the class-conditional
``digits`` model, as many steps as the budget allows (``samplers.steps_for_nfe``), the ``--schedule``
schedule, no guidance, on seeds ``0 .. num-1`` (class drawn from each seed as ``edm generate`` draws it),
through the library call ``edm generate`` makes (``bench/guidance.py``'s ``run_point``). Per cell:
FD-digits against the shipped reference (``tools.fid.score``), class accuracy (an RBF SVM on raw pixels
fitted on the real digits, as the tests use), the NFE the sampler spends and the network evaluations
counted per image, and the wall time; beside them the converged value (heun at ``--converged-nfe``) on the
same seeds. The table prints each cell's equivalent ``edm bench`` command.

A sampler that is not registered (the default list names samplers that land from other branches) or
whose cheapest step exceeds a budget is listed as skipped, so the script runs on any checkout.

    PYTHONPATH=. python bench/comfy_samplers.py [--samplers a,b,...] [--nfe 5,10,20] [--num 2000]
        [--schedule karras] [--converged-nfe 79] [--out DIR | --record]

Writes ``DIR/comfy_samplers.json`` (every number) and ``DIR/comfy_samplers.md`` (the table) atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance import drawn_classes, run_point, svm  # noqa: E402 (bench/ is on sys.path when run)
from outdir import add_out_arguments, out_dir  # noqa: E402

import samplers  # noqa: E402
from edm.checkpoint import atomic_write  # noqa: E402
from samplers.registry import nfe_on  # noqa: E402

NEW = ("er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "gradient_estimation",
       "res_multistep_ancestral", "ipndm_v", "heunpp2")
ANCHORS = ("euler", "heun", "dpmpp_2m", "dpmpp_2m_sde", "unipc")
DEFAULT_SAMPLERS = NEW + ANCHORS
DEFAULT_BUDGETS = (5, 10, 20)
CONVERGED = "heun"


def names(value: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give at least one name")
    return items


def budgets(value: str) -> list[int]:
    try:
        items = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"NFE budgets must be integers, got {value!r}") from None
    if not items or items[0] < 1:
        raise argparse.ArgumentTypeError(f"NFE budgets must be positive integers, got {value!r}")
    return items


def skip_reason(name: str, budget: int, schedule: str) -> str | None:
    """Why sampler ``name`` has no cell at ``budget`` (not registered, adaptive, or too expensive)."""
    if name not in samplers.list():
        return "not registered"
    if samplers.get(name).adaptive and samplers.get(name).count_nfe is None:
        return "adaptive"
    steps = samplers.steps_for_nfe(name, budget) if budget >= samplers.get(name).step_costs()[1] else 0
    sigmas = samplers.schedules.get(schedule)(max(steps, 1), 0.002, 80.0).tolist()
    if steps < 1 or nfe_on(name, sigmas) > budget:
        return f"needs more than {budget} NFE"
    return None


def cell(name: str, budget: int, args, seeds, targets, classify) -> dict:
    command = (f"edm bench --out bench-out/comfy --model digits --sampler {name} --nfe {budget} "
               f"--schedule {args.schedule} --num {args.num} --metrics fd")
    reason = skip_reason(name, budget, args.schedule)
    if reason is not None:
        print(json.dumps({"sampler": name, "budget": budget, "status": f"skipped: {reason}"}), flush=True)
        return {"sampler": name, "budget": budget, "command": command, "status": f"skipped: {reason}"}
    row, _ = run_point(name, budget, command, seeds, targets, classify, sampler=name, nfe=budget,
                       schedule=args.schedule)
    return {"sampler": name, "budget": budget, "status": "ok", "stochastic": samplers.get(name).stochastic,
            "order": samplers.get(name).order,
            **{k: row[k] for k in ("command", "nfe", "evaluations", "fd_digits", "accuracy", "seconds")}}


def table(cells: list[dict], converged: dict | None, args) -> list[str]:
    by_key = {(c["sampler"], c["budget"]): c for c in cells}
    columns = " | ".join(f"NFE {b}: FD-digits / accuracy (NFE)" for b in args.nfe)
    header = f"| sampler | order | {columns} |"
    lines = [
        "# ComfyUI's newer samplers on `digits`, at equal NFE",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `PYTHONPATH=. python bench/comfy_samplers.py "
        f"{' '.join(sys.argv[1:])}`,",
        f"one process, {torch.get_num_threads()} torch thread(s), "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other jobs; "
        f"torch {torch.__version__}.",
        "",
        f"Seeds 0..{args.num - 1} (class drawn from each seed), {args.schedule} schedule, no guidance. "
        "FD-digits against the shipped reference (lower is better); class accuracy of an RBF SVM on "
        "pixels; in brackets the NFE spent (at most the budget).",
        "",
        header,
        "|---|---|" + "---|" * len(args.nfe),
    ]
    for name in args.samplers:
        entries = []
        for budget in args.nfe:
            c = by_key[(name, budget)]
            entries.append(c["status"] if c["status"] != "ok" else
                           f"{c['fd_digits']:.3f} / {c['accuracy']:.3f} ({c['nfe']})")
        order = samplers.get(name).order if name in samplers.list() else "-"
        lines.append(f"| `{name}` | {order} | " + " | ".join(entries) + " |")
    if converged is not None:
        lines += ["", f"Converged: `{CONVERGED}` at {converged['nfe']} NFE, FD-digits "
                      f"{converged['fd_digits']:.3f}, accuracy {converged['accuracy']:.3f} (same seeds)."]
    lines += ["", "Each cell's equivalent command:", ""]
    lines += [f"- `{c['command']}`" for c in cells if c["status"] == "ok"]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", type=names, default=list(DEFAULT_SAMPLERS),
                        help=f"comma-separated sampler names (default {','.join(DEFAULT_SAMPLERS)})")
    parser.add_argument("--nfe", type=budgets, default=list(DEFAULT_BUDGETS),
                        help="comma-separated NFE budgets (default 5,10,20)")
    parser.add_argument("--num", type=int, default=2000, help="seeds 0..num-1 per cell")
    parser.add_argument("--schedule", default="karras", choices=samplers.schedules.list(),
                        help="sigma schedule of every cell (default karras)")
    parser.add_argument("--converged-nfe", type=int, default=79,
                        help=f"NFE of the converged {CONVERGED} reference row (0: none)")
    add_out_arguments(parser)
    args = parser.parse_args()
    if args.num < 2:
        parser.error("--num must be at least 2 (FD needs a covariance)")
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)

    classify = svm()
    seeds = list(range(args.num))
    targets = drawn_classes(seeds)
    cells = [cell(name, budget, args, seeds, targets, classify)
             for name in args.samplers for budget in args.nfe]
    converged = None
    if args.converged_nfe:
        converged = cell(CONVERGED, args.converged_nfe, args, seeds, targets, classify)
    record = {"num": args.num, "schedule": args.schedule, "budgets": args.nfe, "samplers": args.samplers,
              "cells": cells, "converged": converged}
    lines = table(cells, converged if converged and converged["status"] == "ok" else None, args)
    atomic_write(folder / "comfy_samplers.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
    atomic_write(folder / "comfy_samplers.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
