"""The text-to-image model ``digits-text``, measured: does it draw the string it is asked for?

Units (``--units``, default all; run them in separate processes to use more cores, then ``--report``):

* ``accept:S`` for each held-out string S (``edm.digits_text.HELD_OUT``: never drawn in training): seeds
  ``0 .. num-1`` with the model's defaults, i.e. ``edm generate --model digits-text --prompt S`` (the
  default sampler, schedule and steps, and the model's default guidance weight);
* ``table:SAMPLER-STEPS`` for DDPM (``ddpm``: ancestral, Ho et al.'s Algorithm 2 in sigma form) at 1000,
  250 and 100 steps and DDIM (``ddim``, eta 0: deterministic) at 100, 50, 20 and 10 steps, each at CFG
  weights 0, 0.5, 1, 2, 4. Seed k draws held-out string k mod 5 (as ``--prompts FILE`` cycles its
  lines). Fewer seeds for the expensive rows (``TABLE_SEEDS``).

"The model's 1000 steps" are those of the DDPM discretisation the notes use, linear betas
``beta_t = 1e-4 .. 0.02`` over T = 1000 steps, in sigma form ``sigma_t = sqrt((1 - abar_t) / abar_t)``,
``abar_t = prod_{s<=t} (1 - beta_s)`` (sigma from 0.0100 to 156.6); N < 1000 steps take the timesteps
``round(linspace(T-1, 0, N))`` of that table (uniform spacing, both ends kept), then sigma 0. Our network
is continuous-time (EDM preconditioning), so every sigma of the table is a level it can be evaluated at.

Measures per unit: per-character accuracy (each 8x8 cell at its column, ``edm.digits_text.column_of``,
classified by the digits detector of ``edm fid``, argmax of its logits), whole-string accuracy (every
cell right), FD-digits of the cells against a class-matched reference (the detector's 64-d features of
the 1797 real digits, each class's statistics mixed in the proportions of the asked characters:
:func:`class_matched_reference`), NFE per image (counted network calls, not guessed) and wall time.

    PYTHONPATH=. python bench/digits_text.py [--num 500] [--units accept:7,table:ddim-10,...] \
        [--out DIR | --record]
    PYTHONPATH=. python bench/digits_text.py --report [--out DIR | --record]

Writes ``DIR/digits_text/<unit>.json``; ``--report`` writes ``DIR/digits_text.md`` and
``DIR/digits_text.png`` (rows: the held-out strings at the defaults, then "2024" under each CFG weight with
DDIM 50 steps; columns: seeds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from guidance import Counted  # noqa: E402 (bench/ is on sys.path when run)
from outdir import add_out_arguments, out_dir  # noqa: E402

from edm.checkpoint import atomic_write  # noqa: E402
from edm.digits_text import GLYPH, HELD_OUT, column_of  # noqa: E402
from tools.images import to_uint8, write_png  # noqa: E402

ARGS_MODEL = ["digits-text"]  # --model (a checkpoint path measures another text model)
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
T = 1000
#: seeds of each table row (all its CFG weights): fewer where a row costs more network calls
TABLE_SEEDS = {"ddpm-1000": 15, "ddpm-250": 25, "ddpm-100": 25,
               "ddim-100": 25, "ddim-50": 25, "ddim-20": 50, "ddim-10": 100}
BATCH = 250


def ddpm_sigmas(steps: int) -> torch.Tensor:
    """The decreasing sigmas (ending in 0) of ``steps`` of the linear-beta DDPM table (see the module doc)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, dim=0)
    table = ((1 - abar) / abar).sqrt()
    index = torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()
    return torch.cat([table[index], table.new_zeros(1)])


def _loaded():
    from tools.models import load_model

    model = load_model(ARGS_MODEL[0], device="cpu")
    return dataclasses.replace(model, denoiser=Counted(model.denoiser))


def sample(model, seeds, *, prompt=None, prompts_file=None, sampler=None, steps=None, guidance=None,
           sigmas=None) -> tuple[np.ndarray, dict]:
    """uint8 ``[N, 8, 40]`` images of ``seeds`` through ``tools.generate.sampling.prepare_sampling`` (what
    ``edm generate`` runs), and what it cost."""
    from tools.generate.sampling import prepare_sampling
    from tools.request import Prompting, SamplingRequest

    fields = {k: v for k, v in (("sampler", sampler), ("steps", steps)) if v is not None}
    request = SamplingRequest(model=model, guidance=guidance, device="cpu",
                              prompting=Prompting(prompt=prompt, prompts=prompts_file), **fields)
    setup = prepare_sampling(request)
    if sigmas is not None:
        setup = dataclasses.replace(setup, sigmas=sigmas.to(setup.sigmas.dtype))
    setup.prompts.assign(seeds)
    model.denoiser.count = 0
    started = time.perf_counter()
    out = []
    with torch.no_grad():
        for start in range(0, len(seeds), BATCH):
            out.append(to_uint8(setup.images(seeds[start:start + BATCH]))[..., 0])
    seconds = time.perf_counter() - started
    calls = model.denoiser.count / len(seeds)
    guided = 2 if setup.steer.evaluations_per_call == 2 else 1
    schedule = setup.schedule if sigmas is None else "ddpm-linear"
    return np.concatenate(out), {"sampler": setup.sampler, "steps": len(setup.sigmas) - 1,
                                 "nfe": calls / guided, "evaluations": calls, "guidance": setup.guidance,
                                 "seconds": round(seconds, 1), "schedule": schedule}


def cells(images: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cells [M, 1, 8, 8], target digit [M], image index [M])`` of every character slot."""
    out, target, owner = [], [], []
    for i, (image, text) in enumerate(zip(images, texts)):
        for k, char in enumerate(text):
            start = column_of(len(text), k)
            out.append(image[:, start:start + GLYPH])
            target.append(int(char))
            owner.append(i)
    return np.stack(out)[:, None], np.array(target), np.array(owner)


_DETECTOR = None
_REAL = None


def class_matched_reference(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the detector features of the real digits (all 1797, through the generator's
    uint8 mapping) mixed in the class proportions of ``target``: the statistics of real cells drawn for
    the same characters. (A reference of all ten classes would charge a string of 7s for holding no 0.)"""
    global _REAL
    if _REAL is None:
        from edm.data import load_digits

        digits = load_digits()
        images = torch.from_numpy(to_uint8(digits.images)).permute(0, 3, 1, 2)
        with torch.no_grad():
            features = detector()(images).double().numpy()
        labels = digits.labels.numpy()
        _REAL = [(features[labels == c].mean(0), np.cov(features[labels == c], rowvar=False))
                 for c in range(10)]
    weights = np.bincount(target, minlength=10) / len(target)
    mu = sum(w * m for w, (m, _) in zip(weights, _REAL))
    second = sum(w * (s + np.outer(m, m)) for w, (m, s) in zip(weights, _REAL))
    return mu, second - np.outer(mu, mu)


def detector():
    global _DETECTOR
    if _DETECTOR is None:
        from tools.fid.detectors import get_detector

        _DETECTOR = get_detector("digits", device="cpu")
    return _DETECTOR


def score(images: np.ndarray, texts: list[str]) -> dict:
    """Per-character and whole-string accuracy and FD-digits of the cells of ``images`` drawn for
    ``texts``."""
    from tools.fid.frechet import frechet_distance

    grid, target, owner = cells(images, texts)
    batch = torch.from_numpy(grid)
    with torch.no_grad():
        predicted = detector().classify(batch).argmax(1).numpy()
        features = detector()(batch).double().numpy()
    right = predicted == target
    whole = np.ones(len(images), dtype=bool)
    np.logical_and.at(whole, owner, right)
    mu, sigma = class_matched_reference(target)
    fd = frechet_distance(features.mean(0), np.cov(features, rowvar=False), mu, sigma)
    return {"images": len(images), "cells": len(target), "char_acc": float(right.mean()),
            "string_acc": float(whole.mean()), "fd_cells": float(fd)}


# ---------------------------------------------------------------------------------------------------
# Units


def unit_accept(text: str, num: int) -> dict:
    model = _loaded()
    seeds = list(range(num))
    images, cost = sample(model, seeds, prompt=text)
    return {"unit": f"accept:{text}", "text": text, "seeds": f"0-{num - 1}", **cost,
            **score(images, [text] * num), "grid": images[:8].tolist()}


def unit_table(row: str, num: int | None) -> dict:
    sampler, steps = row.split("-")
    steps = int(steps)
    num = num or TABLE_SEEDS[row]
    seeds = list(range(num))
    texts = [HELD_OUT[s % len(HELD_OUT)] for s in seeds]
    model = _loaded()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.txt"
        prompts.write_text("\n".join(HELD_OUT) + "\n")
        for w in WEIGHTS:
            images, cost = sample(model, seeds, prompts_file=str(prompts), sampler=sampler, steps=steps,
                                  guidance=w, sigmas=ddpm_sigmas(steps))
            entry = {"guidance": w, **cost, **score(images, texts)}
            if row == "ddim-50":
                entry["grid"] = [images[i].tolist() for i in range(len(seeds)) if texts[i] == "2024"][:8]
            results.append(entry)
            print(f"{row} w={w}: {entry['char_acc']:.3f} / {entry['string_acc']:.3f}, "
                  f"{cost['seconds']} s", flush=True)
    return {"unit": f"table:{row}", "sampler": sampler, "steps": steps, "seeds": f"0-{num - 1}",
            "rows": results}


def all_units() -> list[str]:
    return [f"accept:{t}" for t in HELD_OUT] + [f"table:{r}" for r in TABLE_SEEDS]


def run_unit(unit: str, num: int, table_num: int | None) -> dict:
    kind, _, name = unit.partition(":")
    if kind == "accept" and name in HELD_OUT:
        return unit_accept(name, num)
    if kind == "table" and name in TABLE_SEEDS:
        return unit_table(name, table_num)
    raise SystemExit(f"unknown unit {unit!r}; valid: {', '.join(all_units())}")


# ---------------------------------------------------------------------------------------------------
# Report


def _grid_png(rows: list[list], path: Path, scale: int = 4) -> None:
    """Rows of ``[8, 40]`` uint8 images, 2-pixel gaps (mid grey), enlarged ``scale`` times."""
    height, width, gap = 8, 40, 2
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (height + gap) + gap, cols * (width + gap) + gap), 128, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = gap + i * (height + gap), gap + j * (width + gap)
            canvas[y:y + height, x:x + width] = np.asarray(image, dtype=np.uint8)
    canvas = canvas.repeat(scale, 0).repeat(scale, 1)
    write_png(path, canvas[:, :, None])


def report(folder: Path) -> str:
    parts = {p.stem: json.loads(p.read_text()) for p in sorted((folder / "digits_text").glob("*.json"))}
    accept = [parts[f"accept-{t}"] for t in HELD_OUT if f"accept-{t}" in parts]
    lines = ["# digits-text: strings of digits from a prompt", ""]
    meta = next(iter(parts.values()), {}).get("meta", {})
    lines += [f"Measured {meta.get('date', '?')} on this shared 2-core CPU, one thread per process "
              f"(torch {meta.get('torch', '?')}); model `digits-text` (edm/weights/digits-text.*). "
              "Regenerate: `PYTHONPATH=. python bench/digits_text.py --record` (or units in parallel, then "
              "`--report --record`).", "",
              "Cells: each 8x8 slot of the 8x40 image at the column its character is drawn in "
              "(a string of k characters starts at column 4(5-k)), classified by the digits detector "
              "(`edm fid`'s `digits` CNN, argmax). Whole string: every cell right. FD-digits: the detector's "
              "64-d features of all cells against the real digits (all 1797, through the same uint8 "
              "mapping) with each class's mean and covariance mixed in the proportions of the asked "
              "characters (class-matched: a reference of all ten classes would charge a string of 7s for "
              "holding no 0); FD grows as n shrinks, compare rows of similar cell counts. NFE: network "
              "calls per image counted (CFG doubles the evaluations: one batch of 2B per call).", ""]
    if accept:
        first = accept[0]
        lines += ["## Acceptance: held-out strings, the model's defaults", "",
                  f"`edm generate --model digits-text --prompt S --seeds 0-{first['images'] - 1}`: sampler "
                  f"`{first['sampler']}`, {first['steps']} steps (NFE {first['nfe']:g}), guidance "
                  f"{first['guidance']:g} (the model's default). Strings never drawn in training.", "",
                  "| string | images | per-character accuracy | whole-string accuracy | FD-digits (cells) | "
                  "NFE | wall s |", "|---|---|---|---|---|---|---|"]
        for a in accept:
            lines.append(f"| `{a['text']}` | {a['images']} | {a['char_acc']:.2%} | {a['string_acc']:.2%} | "
                         f"{a['fd_cells']:.2f} ({a['cells']} cells) | {a['nfe']:g} | {a['seconds']:g} |")
        cells_total = sum(a["cells"] for a in accept)
        chars = sum(a["char_acc"] * a["cells"] for a in accept) / cells_total
        strings = sum(a["string_acc"] * a["images"] for a in accept) / sum(a["images"] for a in accept)
        total = sum(a["images"] for a in accept)
        lines += [f"| **all** | {total} | **{chars:.2%}** | **{strings:.2%}** | | | |",
                  "", f"Targets: per-character >= 95% (goal 99%): {'met' if chars >= 0.95 else 'NOT met'}"
                  f"{' (goal met)' if chars >= 0.99 else ''}; whole-string >= 85%: "
                  f"{'met' if strings >= 0.85 else 'NOT met'}.", ""]
    rows = [parts[f"table-{r}"] for r in TABLE_SEEDS if f"table-{r}" in parts]
    if rows:
        lines += ["## DDPM (ancestral) vs DDIM (deterministic) x CFG weight", "",
                  "Sigmas from the linear-beta DDPM table (T = 1000, beta 1e-4 .. 0.02; N steps take "
                  "timesteps round(linspace(999, 0, N)), then 0). Seed k draws held-out string k mod 5. CFG: "
                  "`D_neg + (1 + w)(D - D_neg)`, the negative the null text (w = 0: no guidance, one call of "
                  "B). Cells: per-character accuracy / whole-string accuracy / FD-digits.", "",
                  "| sampler | steps | seeds | NFE | w=" + " | w=".join(f"{w:g}" for w in WEIGHTS) + " |",
                  "|---|---|---|---|" + "---|" * len(WEIGHTS)]
        for r in rows:
            entries = {e["guidance"]: e for e in r["rows"]}
            cols = []
            for w in WEIGHTS:
                e = entries.get(w)
                cols.append("-" if e is None else
                            f"{e['char_acc']:.1%} / {e['string_acc']:.0%} / {e['fd_cells']:.1f}")
            nfe = r["rows"][0]["nfe"]
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['seeds']} | {nfe:g} | " + " | ".join(cols)
                         + " |")
        walls = [f"{r['sampler']}-{r['steps']} {sum(e['seconds'] for e in r['rows']):.0f} s" for r in rows]
        means = []
        for w in WEIGHTS:
            found = [e for r in rows for e in r["rows"] if e["guidance"] == w]
            if found:
                means.append(f"w={w:g}: {np.mean([e['char_acc'] for e in found]):.1%} of cells, FD "
                              f"{np.mean([e['fd_cells'] for e in found]):.1f}")
        lines += ["", "Averaged over the rows: " + "; ".join(means) + ". Guidance buys the asked digit "
                  "(w = 0.5 already fixes most wrong cells) and, beyond that, costs the glyphs' variety: "
                  "the cells' FD-digits grows with w."]
        lines += ["", "Network evaluations per image: NFE at w = 0, 2 NFE at w > 0. Wall time per row (all "
                  "five weights): " + ", ".join(walls) + ".", ""]
    grid = [a["grid"] for a in accept]
    if "table-ddim-50" in parts:
        grid += [e["grid"] for e in parts["table-ddim-50"]["rows"]]
    if grid:
        _grid_png(grid, folder / "digits_text.png")
        lines += ["![grid](digits_text.png)", "",
                  f"`digits_text.png`: rows 1-{len(accept)}: the held-out strings "
                  f"{', '.join(t for t in HELD_OUT)} at the defaults (seeds 0-7); then `2024` with DDIM 50 "
                  "steps at w = " + ", ".join(f"{w:g}" for w in WEIGHTS) + " (its seeds of the table run).",
                  ""]
    missing = [u for u in all_units() if u.replace(":", "-") not in parts]
    if missing:
        lines += [f"Not measured (units not run): {', '.join(missing)}.", ""]
    text = "\n".join(lines)
    atomic_write(folder / "digits_text.md", lambda tmp: Path(tmp).write_text(text))
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=500, help="seeds per held-out string (accept units)")
    parser.add_argument("--table-num", type=int, default=None,
                        help="seeds of every table row (default: TABLE_SEEDS, per row)")
    parser.add_argument("--units", default=None, help="comma-separated units (default: all)")
    parser.add_argument("--model", default="digits-text", help="the text model (default: the built-in)")
    parser.add_argument("--report", action="store_true", help="only assemble the report from the units' JSON")
    add_out_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ARGS_MODEL[0] = args.model
    folder = out_dir(args)
    (folder / "digits_text").mkdir(parents=True, exist_ok=True)
    if not args.report:
        units = args.units.split(",") if args.units else all_units()
        for unit in units:
            started = time.perf_counter()
            result = run_unit(unit, args.num, args.table_num)
            wall = round(time.perf_counter() - started)
            result["meta"] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
                              "python": platform.python_version(), "wall_s": wall}
            path = folder / "digits_text" / f"{unit.replace(':', '-')}.json"
            atomic_write(path, lambda tmp, r=result: Path(tmp).write_text(json.dumps(r)))
            print(f"{unit}: {result.get('char_acc', '')} in {result['meta']['wall_s']} s", flush=True)
    text = report(folder)
    print(text.splitlines()[-1] if text else "", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
