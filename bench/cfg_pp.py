"""CFG++ against plain classifier-free guidance on the digits model, sampler by sampler at equal NFE.

For each sampler that declares CFG++ (``samplers.registry.cfg_pp_samplers``, or ``--samplers``) and each
weight w in {0.5, 1, 2}: FD-digits and class accuracy of plain CFG (``--guidance w``) beside CFG++
(``--guidance w --cfg-pp``), both on the same NFE budget (``--nfe``; CFG++ costs what CFG costs: one
``2B`` call per evaluation). Points are sampled, counted and scored as ``bench/guidance.py`` does
(``run_point``: the library call ``edm generate`` makes, an RBF SVM for the class, ``tools.fid.score``
against the shipped reference).

    PYTHONPATH=. python bench/cfg_pp.py [--num 500] [--nfe 10] [--samplers euler,dpmpp_2m]
                                        [--out DIR | --record]

Writes ``DIR/cfg_pp.json`` and ``DIR/cfg_pp.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance import drawn_classes, run_point, svm  # noqa: E402 (bench/ is on sys.path when run)
from outdir import add_out_arguments, out_dir  # noqa: E402

from edm.checkpoint import atomic_write  # noqa: E402
from samplers.registry import cfg_pp_samplers  # noqa: E402
from tools.steering import Steering  # noqa: E402

WEIGHTS = (0.5, 1.0, 2.0)
# CFG++'s paper guides with lambda = 1 + w in [0, 1]: these weights exist for CFG++ only (plain CFG takes
# w >= 0), so they are measured beside the unguided sampler.
LAMBDA_WEIGHTS = (-0.8, -0.4)
METHODS = {"CFG": None, "CFG++": Steering(cfg_pp=True)}


def measure(names, nfe: int, num: int) -> list[dict]:
    """One row per (sampler, weight, method): FD-digits, accuracy, NFE, evaluations, time."""
    classify = svm()
    seeds = list(range(num))
    targets = drawn_classes(seeds)
    rows = []
    for name in names:
        command = f"edm fid gen --num {num} --sampler {name} --nfe {nfe}"
        row, _ = run_point("none", 0.0, command, seeds, targets, classify, sampler=name, nfe=nfe)
        rows.append({"sampler": name, **row})
        points = [(w, m) for w in WEIGHTS for m in METHODS] + [(w, "CFG++") for w in LAMBDA_WEIGHTS]
        for w, method in points:
            steering = METHODS[method]
            flag = " --cfg-pp" if steering is not None else ""
            command = f"edm fid gen --num {num} --sampler {name} --nfe {nfe} --guidance {w:g}{flag}"
            row, _ = run_point(method, w, command, seeds, targets, classify, steering=steering,
                               sampler=name, nfe=nfe, guidance=w)
            rows.append({"sampler": name, **row})
    return rows


def report(rows: list[dict], num: int, nfe: int) -> str:
    lines = [f"# CFG++ against CFG on the digits model (`bench/cfg_pp.py`, {num} seeds per point, "
             f"NFE budget {nfe})", "",
             f"Run {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s). FD-digits against the shipped reference (lower is "
             "better); class accuracy of an RBF SVM on raw pixels (higher is better). Our w is ComfyUI's "
             "cfg - 1; CFG++'s paper writes lambda = 1 + w, its range [0, 1] being w in [-1, 0] (rows "
             "w < 0, CFG++ only, beside the unguided `none`).", "",
             "| sampler | w | method | NFE | network evals / image | FD-digits | class accuracy | command |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['weight']:g} | {r['method']} | {r['nfe']} "
                     f"| {r['evaluations']:.1f} | {r['fd_digits']:.3f} | {r['accuracy']:.3f} "
                     f"| `{r['command']}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=500, help="seeds per point (default 500)")
    parser.add_argument("--nfe", type=int, default=10, help="NFE budget of every point (default 10)")
    parser.add_argument("--samplers", default=None,
                        help="comma-separated samplers (default: every sampler that declares CFG++)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_out_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = cfg_pp_samplers() if args.samplers is None else [n.strip() for n in args.samplers.split(",")]
    refused = sorted(set(names) - set(cfg_pp_samplers()))
    if refused:
        parser.error(f"{', '.join(refused)} do(es) not take CFG++; valid: {', '.join(cfg_pp_samplers())}")
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    rows = measure(names, args.nfe, args.num)
    text = json.dumps({"num": args.num, "nfe": args.nfe, "threads": args.threads, "rows": rows}, indent=1)
    atomic_write(folder / "cfg_pp.json", lambda t: Path(t).write_text(text))
    markdown = report(rows, args.num, args.nfe)
    atomic_write(folder / "cfg_pp.md", lambda t: Path(t).write_text(markdown))
    print(f"wrote {folder / 'cfg_pp.md'}")


if __name__ == "__main__":
    main()
