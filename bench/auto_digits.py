"""Measure every ``--sampler auto`` candidate for the digits model on one set of seeds and write its shipped
auto table (format ``edm-samplers/auto-v2``) from those measurements alone.

Candidates, each scored by FD-digits of seeds ``0..num-1`` (a random class per seed) against the shipped
reference, all through the front end's own setup (``prepare_sampling``), so ``file:`` candidates go
through the same fingerprint checks as ``--sampler file:PATH``:

- registry pairs: the plausible few-step samplers (``SAMPLERS``) on ``SCHEDULES`` at every budget;
- the fitted solvers and tuned schedules shipped beside the table (``tools/solvers/auto_tables/digits/``),
  each at the NFE it was made for (a tuned schedule with the sampler it was tuned for);
- students (``--students digits-pd2,...``): models distilled from digits, each run as its record says
  (``config["sampling"]``: ``sampler``, ``steps``, ``schedule``, ``options`` and the range ``sigma_min``,
  ``sigma_max``, ``rho``) or as given (``NAME=SAMPLER:STEPS[:SCHEDULE]``, on the model's own range); a
  student that is not installed is reported and left out. A student row runs only where the digits
  record names the student (``config["students"]``; see ``tools.solvers.students``).

The table keeps, at each budget, the best row of each kind (registry pair, tuned schedule, fitted solver),
so that a budget between two rows still finds a row that runs there (a fitted solver runs only at its own
NFE); and a student row at each budget at or above the student's NFE where it beats every other row.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/auto_digits.py [--num 1000] [--budgets 3,4,5,8]
        [--students NAME,...] [--record] [--table PATH]

Measured cells are cached in ``OUT/auto_digits/cells.json`` (keyed by candidate and seeds), so a rerun
with students added measures only them. Writes ``OUT/auto_digits/cells.json`` and ``table.md`` and the
table (default: the shipped ``tools/solvers/auto_tables/digits.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

import samplers  # noqa: E402
from edm.checkpoint import atomic_write  # noqa: E402
from tools.solvers.auto import SHIPPED, save_auto_table  # noqa: E402
from tools.solvers.auto_rows import RANGE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tools" / "fid" / "refs" / "digits.npz"
FILES = SHIPPED / "digits"  # the fitted solvers and tuned schedules shipped with the table
SAMPLERS = ("ipndm", "ipndm_afs", "deis", "unipc", "dpmpp_2m", "dpmpp_3m", "lms")
# polyexponential is left out: at its default rho = 1 its levels are exponential's (to 3e-14 at 3-8 steps),
# and so were its FDs where both were measured (NFE 3 and 4)
SCHEDULES = ("karras", "exponential", "kl_optimal")
KINDS = ("registry", "schedule", "solver")  # the row kinds kept per budget (students come on top)


def fd_of(request, seeds: list[int], batch: int) -> tuple[float, int]:
    """FD-digits of a request's images of ``seeds`` and the NFE it ran at."""
    from tools.fid.scoring import score
    from tools.generate.runner import sample_images
    from tools.generate.sampling import prepare_sampling

    setup = prepare_sampling(request)
    batches = (sample_images(setup, seeds[i:i + batch]) for i in range(0, len(seeds), batch))
    return float(score(batches, str(REF), ["fd"], detector="digits", batch=batch)["fd_digits"]), setup.nfe


def candidates(budgets: list[int], names: tuple[str, ...] = SAMPLERS) -> list[dict]:
    """The shipped files at their own NFE, then every registry pair at every budget (the files first: they
    are the likely best, and a run cut short has them)."""
    found = []
    for path in sorted(FILES.glob("*.json")):
        record = json.loads(path.read_text())
        rel = f"file:{FILES.name}/{path.name}"
        if record.get("format") == "edm-samplers/solver-v1" and record["nfe"] in budgets:
            found.append({"kind": "solver", "nfe": record["nfe"], "sampler": rel, "schedule": "fitted"})
        elif record.get("format") == "edm-samplers/schedule-v1" and record.get("nfe") in budgets:
            found.append({"kind": "schedule", "nfe": record["nfe"], "sampler": record["sampler"],
                          "schedule": rel})
    for budget in budgets:
        for sampler in names:
            try:
                samplers.steps_for_nfe(sampler, budget)
            except ValueError:
                continue
            found += [{"kind": "registry", "nfe": budget, "sampler": sampler, "schedule": schedule}
                      for schedule in SCHEDULES]
    return found


def student_candidates(given: list[str]) -> list[dict]:
    """The students asked for that are installed, each at its recorded (or given) sampler and steps."""
    from tools.models import load_model
    from tools.models.base import ModelError

    found = []
    for item in given:
        name, _, how = item.partition("=")
        try:
            model = load_model(name)
        except ModelError as e:
            print(f"student {name}: left out ({e})", flush=True)
            continue
        sampling = (model.info.get("config") or {}).get("sampling") or {}
        if how:
            parts = how.split(":")
            sampling = {"sampler": parts[0], "steps": parts[1] if len(parts) > 1 else None,
                        "schedule": parts[2] if len(parts) > 2 else None}
        if sampling.get("steps") is None:
            print(f"student {name}: left out (its record gives no sampling steps: pass {name}=SAMPLER:STEPS)")
            continue
        found.append({"kind": "model", "model": name, "sampler": sampling.get("sampler") or "euler",
                      "steps": int(sampling["steps"]), "schedule": sampling.get("schedule") or "karras",
                      "options": dict(sampling.get("options") or {}),
                      **{key: float(sampling[key]) for key in RANGE if sampling.get(key) is not None}})
    return found


def key(cand: dict, num: int) -> str:
    parts = [cand.get("model") or "", cand["sampler"], cand["schedule"], str(cand.get("nfe") or ""),
             str(cand.get("steps") or ""), f"0-{num - 1}"]
    extra = {k: cand[k] for k in ("options", *RANGE) if cand.get(k)}
    return "|".join(parts) + (f"|{json.dumps(extra, sort_keys=True)}" if extra else "")


def measure(cands: list[dict], cache: dict, num: int, batch: int, cells_path: Path,
            cached_only: bool = False) -> list[dict]:
    from tools.request import SamplingRequest

    seeds = list(range(num))
    for cand in cands:
        k = key(cand, num)
        if k not in cache and not cached_only:
            sampler, schedule = cand["sampler"], cand["schedule"]
            if cand["kind"] == "solver":  # a path relative to the table, as its row names it
                sampler, schedule = f"file:{SHIPPED / sampler.removeprefix('file:')}", "karras"
            if cand["kind"] == "schedule":
                schedule = f"file:{SHIPPED / schedule.removeprefix('file:')}"
            request = SamplingRequest(model=cand.get("model", "digits"), sampler=sampler, schedule=schedule,
                                      nfe=cand.get("nfe"), steps=cand.get("steps"), device="cpu",
                                      dtype="float32", options=cand.get("options") or {},
                                      **{k: cand[k] for k in RANGE if k in cand})
            started = time.perf_counter()
            value, nfe = fd_of(request, seeds, batch)
            cache[k] = {**cand, "fd": value, "nfe_used": nfe, "num": num,
                        "seconds": round(time.perf_counter() - started, 2)}
            print(f"{k}: FD {value:.3f} ({cache[k]['seconds']} s)", flush=True)
            text = json.dumps(cache, indent=1) + "\n"
            atomic_write(cells_path, lambda tmp, text=text: Path(tmp).write_text(text))
    return [cache[key(cand, num)] for cand in cands if key(cand, num) in cache]


def row_of(cell: dict, budget: int, num: int, today: str) -> dict:
    row = {"nfe": budget, "sampler": cell["sampler"], "schedule": cell["schedule"], "options": {},
           "metric": "fd", "value": cell["fd"], "nfe_used": cell["nfe_used"], "num": num, "sample_size": num,
           "stochastic": False, "date": today}
    if cell["kind"] == "model":
        row.update(model=cell["model"], steps=cell["steps"], options=cell.get("options") or {},
                   **{k: cell[k] for k in RANGE if k in cell})
    return row


def table_rows(cells: list[dict], budgets: list[int], num: int) -> list[dict]:
    """Per budget: the best row of each kind, then the students' where they beat all of those."""
    today = dt.date.today().isoformat()
    rows = []
    for budget in budgets:
        here = []
        for kind in KINDS:
            mine = [c for c in cells if c["kind"] == kind and c["nfe"] == budget]
            if mine:
                here.append(row_of(min(mine, key=lambda c: c["fd"]), budget, num, today))
        best = min((row["value"] for row in here), default=float("inf"))
        here += [row_of(c, budget, num, today) for c in cells
                 if c["kind"] == "model" and c["nfe_used"] <= budget and c["fd"] < best]
        rows += sorted(here, key=lambda row: row["value"])
    return rows


def markdown(cells: list[dict], rows: list[dict], budgets: list[int]) -> list[str]:
    lines = ["| NFE | picked by `--sampler auto` | FD-digits |", "|---|---|---:|"]
    for budget in budgets:
        row = min((r for r in rows if r["nfe"] == budget), key=lambda r: r["value"])
        lines.append(f"| {budget} | {describe(row)} | {row['value']:.3f} |")
    lines += ["", "| candidate | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
              "|---|" + "---:|" * len(budgets)]
    labels = dict.fromkeys(describe(c) for c in cells if c["kind"] != "model")
    for label in labels:
        values = {c["nfe"]: c["fd"] for c in cells if c["kind"] != "model" and describe(c) == label}
        lines.append(f"| {label} | " + " | ".join(f"{values[b]:.3f}" if b in values else "-" for b in budgets)
                     + " |")
    for c in cells:
        if c["kind"] == "model":
            lines.append(f"| {describe(c)} | FD {c['fd']:.3f} at {c['nfe_used']} NFE |"
                         + " |" * (len(budgets) - 1))
    return lines


def describe(cell: dict) -> str:
    if cell.get("model"):
        return f"student {cell['model']} ({cell['sampler']} / {cell['schedule']}, {cell['steps']} steps)"
    if cell["sampler"].startswith("file:"):
        return f"fitted solver {cell['sampler'].removeprefix('file:')}"
    if cell["schedule"].startswith("file:"):
        return f"{cell['sampler']} / tuned schedule {cell['schedule'].removeprefix('file:')}"
    return f"{cell['sampler']} / {cell['schedule']}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=1000, help="seeds 0..num-1 (default 1000)")
    parser.add_argument("--budgets", default="3,4,5,8", help="NFE budgets (default 3,4,5,8)")
    parser.add_argument("--students", default="",
                        help="comma-separated students, NAME[=SAMPLER:STEPS[:SCHEDULE]]")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help=f"the registered samplers to measure (default {','.join(SAMPLERS)})")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--table", type=Path, default=SHIPPED / "digits.json", help="the table to write")
    parser.add_argument("--cached-only", action="store_true",
                        help="measure nothing: write the table from the cells measured so far")
    add_out_arguments(parser)
    args = parser.parse_args(argv)
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    out = out_dir(args) / "auto_digits"
    out.mkdir(parents=True, exist_ok=True)
    cells_path = out / "cells.json"
    cache = json.loads(cells_path.read_text()) if cells_path.is_file() else {}
    started = time.perf_counter()
    students = student_candidates([name for name in args.students.split(",") if name])
    cands = candidates(budgets, tuple(args.samplers.split(","))) + students
    cells = measure(cands, cache, args.num, args.batch, cells_path, args.cached_only)
    rows = table_rows(cells, budgets, args.num)

    from tools.models import load_model
    from tools.solvers.file import fingerprints

    prints = fingerprints(load_model("digits").denoiser)
    conditions = {"seeds": f"0-{args.num - 1}", "num": args.num, "dtype": "float32", "device": "cpu",
                  "detector": "digits", "ref": "digits", "batch": args.batch}
    path = save_auto_table(rows, model="digits", fingerprint=prints[0], fingerprints=prints, metric="fd",
                           conditions=conditions, path=args.table)
    lines = [f"{dt.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, Python {platform.python_version()}, "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
             f"{time.perf_counter() - started:.0f} s this run", "", *markdown(cells, rows, budgets)]
    text = "\n".join(lines) + "\n"
    atomic_write(out / "table.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    print(f"auto table -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
