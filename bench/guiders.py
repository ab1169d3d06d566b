"""The guiders of diffusers and ComfyUI (``--guidance-method``) on the embedded digits model, side by side.

Every ``--guidance-method`` at its default options, at guidance weights w in ``--weights`` (default 0.5,
1, 2), heun with 18 steps (35 NFE, EDM's default): FD-digits, class accuracy, the NFE and the network
evaluations per image (counted, so the perturbed pass of PAG/SLG/SEG shows); the perturbed guiders also at
w = 0 (their own term alone). CFG++ is measured by ``bench/cfg_pp.py``.

Every point samples the seeds ``0 .. num-1`` (classes drawn from the seeds as ``edm generate`` does)
through the same library call ``edm generate`` makes (``tools.generate.sampling.prepare_sampling``), with the
helpers of ``bench/guidance.py`` (class accuracy: an RBF SVM on raw pixels fitted on the real digits;
FD-digits against the shipped reference).

    PYTHONPATH=. python bench/guiders.py [--num 1000] [--weights 0.5,1,2] [--out DIR | --record]

A rerun into the same folder with the same ``--num`` computes only the points its ``guiders.json`` lacks.

Writes ``DIR/guiders.json`` and ``DIR/guiders.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance import drawn_classes, run_point, svm  # noqa: E402 (bench/ is on sys.path)
from outdir import add_out_arguments, out_dir  # noqa: E402

from edm.checkpoint import atomic_write  # noqa: E402
from tools.steering import Steering  # noqa: E402

METHODS = ("cfg", "apg", "apg_mix", "cfg_zero_star", "tcfg", "fdg", "mambo", "pag", "slg", "seg")
PERTURBED = ("pag", "slg", "seg")
# Methods with options other than their defaults: (row label, method, flags). APG's defaults (diffusers':
# eta 1, no momentum, norm threshold 15) leave CFG unchanged on 8x8 digits, whose guidance differences
# stay below the threshold; the paper's choice is eta = 0 (the parallel part dropped).
# FDG's defaults (w at every pyramid level) are CFG itself; the paper guides the coarse level harder than
# the fine one: here w/2 on the finest level and 2w on the coarse one (a flag value may be a function of w).
VARIANTS = (("apg eta=0", "apg", {"apg_eta": 0.0}),
            ("apg eta=0 momentum=-0.5 threshold=1", "apg", {"apg_eta": 0.0, "apg_momentum": -0.5,
                                                             "apg_norm_threshold": 1.0}),
            ("fdg scales=w/2,2w", "fdg", {"fdg_scales": lambda w: f"{w / 2:g},{2 * w:g}"}))


def points(weights):
    """(label, method, flags, w) of every point, the perturbed guiders also at w = 0 (their term alone)."""
    out = []
    for method in METHODS:
        for w in ((0.0,) if method in PERTURBED else ()) + tuple(weights):
            out.append((method, method, {}, w))
    out += [(label, method, flags, w) for label, method, flags in VARIANTS for w in weights]
    return out


def measure(num, weights, classify, done):
    """Every point's row; ``done`` holds rows of an earlier run with these seeds, reused by (label, w)."""
    seeds = list(range(num))
    targets = drawn_classes(seeds)
    base = f"edm fid gen --num {num} --metrics fd"
    known = {(r["method"], r["weight"]): r for r in done}
    rows = [known.get(("none", 0)) or run_point("none", 0, base, seeds, targets, classify)[0]]
    for label, method, flags, w in points(weights):
        if (label, w) in known:
            rows.append(known[(label, w)])
            continue
        flags = {k: v(w) if callable(v) else v for k, v in flags.items()}
        extra = "".join(f" --{k.replace('_', '-')} {v:g}" if isinstance(v, float) else
                        f" --{k.replace('_', '-')} {v}" for k, v in flags.items())
        command = f"{base}{f' --guidance {w:g}' if w else ''} --guidance-method {method}{extra}"
        rows.append(run_point(label, w, command, seeds, targets, classify, guidance=w,
                              steering=Steering(guidance_method=method, **flags))[0])
    return rows


def table(rows) -> list[str]:
    out = ["| method | w | NFE | network evals / image | FD-digits | class accuracy | time (s) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['weight']:g} | {r['nfe']} | {r['evaluations']:.1f} | "
                   f"{r['fd_digits']:.3f} | {r['accuracy']:.3f} | {r['seconds']:.1f} |")
    return out


def report(rows: list[dict], num: int, threads: int) -> str:
    lines = [f"# Guiders on the digits model (`bench/guiders.py`, {num} seeds per point)", "",
             f"Run {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch {torch.__version__}, "
             f"{threads} thread(s), machine shared with other jobs (times are indicative; compare the "
             "evaluation counts across rows).", "",
             "Class-conditional model `digits`, heun, 18 steps (35 NFE), classes drawn from the seeds; "
             "`none` "
             "is the conditional model unguided. Every method at its default options (`edm generate "
             "--help`, section Guidance). The perturbed guiders (pag, slg, seg) add their term "
             "`s (D_cond - D_pert)` (default scales 3, 2.8, 2.8) to CFG's, in one batched call: their w = 0 "
             "rows are that term alone.", ""]
    lines += table(rows) + [""]
    best = {}
    for r in rows[1:]:
        if r["fd_digits"] < best.get(r["method"], (float("inf"),))[0]:
            best[r["method"]] = (r["fd_digits"], r["weight"], r["accuracy"])
    lines += ["Best FD-digits per method: " + "; ".join(
        f"{m} {fd:.3f} at w={w:g} (accuracy {acc:.3f})" for m, (fd, w, acc) in best.items()) + ".", "",
        "Each row is `edm fid gen --num N --metrics fd --guidance W --guidance-method NAME` (the json file "
        "records every command).", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1000, help="seeds per point (default 1000)")
    parser.add_argument("--weights", default="0.5,1,2", help="guidance weights w (default 0.5,1,2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_out_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    weights = [float(w) for w in args.weights.split(",")]
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)
    earlier = folder / "guiders.json"
    done = []
    if earlier.is_file():  # a rerun computes only the points it lacks
        data = json.loads(earlier.read_text())
        done = data["rows"] if data["num"] == args.num else []
    rows = measure(args.num, weights, svm(), done)
    text = json.dumps({"num": args.num, "threads": args.threads, "weights": weights, "rows": rows}, indent=1)
    atomic_write(folder / "guiders.json", lambda t: Path(t).write_text(text))
    markdown = report(rows, args.num, args.threads)
    atomic_write(folder / "guiders.md", lambda t: Path(t).write_text(markdown))
    print(f"wrote {folder / 'guiders.md'}")


if __name__ == "__main__":
    main()
