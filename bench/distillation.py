"""One- and few-step generation on the digits, measured: the distilled students of ``digits`` (progressive
distillation ``digits-pd1/2/4``, consistency distillation ``digits-cd``, the guided progressive student)
beside the converged teacher, the registry's samplers, tuned schedules and fitted solvers, all on the same
evaluation seeds.

Every row samples the seeds ``0 .. num-1`` (a class drawn from each seed as ``edm generate`` does) through
the library call ``edm generate`` makes (``tools.generate.sampling.prepare_sampling``) and scores the images
with the ``digits`` detector: FD-digits against the shipped reference (``tools.fid.score``) and class accuracy
(the detector's class against the drawn one). Rows:

* ``teacher``: ``digits`` with heun, 40 steps (79 NFE): converged;
* ``registry``: sampler x schedule pairs at NFE 1-10 (the plot's lines);
* ``fitted``: the fitted solvers of ``edm tune-solver`` at 3, 4, 5 NFE and the tuned schedules of
  ``edm tune-schedule`` (ipndm) at the same budgets (``bench/results/few_step/``);
* ``students``: each student at its recorded sampler and steps, and at others (``--students``);
* ``guided``: the guided student at w in {0, 1, 2}, 2 steps, against the teacher guided at w (heun, 79 NFE,
  classifier-free: two evaluations per step).

    PYTHONPATH=. python bench/distillation.py [--num 2000] [--parts teacher,registry,fitted,students,guided] \
        [--students digits-pd1,...] [--guided-student PATH] [--out DIR | --record]

Each part writes ``DIR/distillation/<part>.json``; once they are all there, ``DIR/distillation.md`` and
``DIR/distillation.png`` (FD-digits against NFE). Targets (issue 24): the best student at 1 NFE <= 1.5x
converged, at 2 NFE <= 1.15x, at 4 NFE <= 1.05x, class accuracy >= 95% at each; the guided student's FD-digits
and accuracy within 1.2x of the guided teacher's at each w. Last line printed: ``targets met: X/Y``.
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

from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

from edm.checkpoint import atomic_write  # noqa: E402
from tools.fid import score  # noqa: E402
from tools.fid.detectors import get_detector  # noqa: E402
from tools.generate.sampling import prepare_sampling  # noqa: E402
from tools.images import to_uint8  # noqa: E402
from tools.labels import class_labels  # noqa: E402
from tools.models import load_model  # noqa: E402
from tools.models.checkpoint import builtin_path  # noqa: E402
from tools.request import SamplingRequest  # noqa: E402

PARTS = ("teacher", "registry", "fitted", "students", "guided")
FEW_STEP = Path(__file__).resolve().parent / "results" / "few_step"
BATCH = 500
#: sampler x schedule pairs of the plot (the best registered ones at few NFE in the project's tables)
PAIRS = (("euler", "karras"), ("dpmpp_2m", "karras"), ("ipndm", "kl_optimal"), ("ipndm_afs", "exponential"),
         ("deis", "karras"), ("unipc", "kl_optimal"))
REGISTRY_NFE = (2, 3, 4, 5, 6, 8, 10)
STUDENTS = ("digits-pd1", "digits-pd2", "digits-pd4", "digits-pd8", "digits-cd")
WEIGHTS = (0.0, 1.0, 2.0)
TARGETS = {1: 1.5, 2: 1.15, 4: 1.05}  # NFE -> the largest FD ratio to converged a student may have
ACCURACY = 0.95


def run(name: str, model, seeds, *, part: str, **sampling) -> dict:
    """Sample ``seeds`` with ``SamplingRequest(model=model, **sampling)``; FD-digits, class accuracy, NFE."""
    loaded = load_model(model) if isinstance(model, str) else model
    setup = prepare_sampling(SamplingRequest(model=loaded, **sampling))
    start = time.perf_counter()
    images = torch.cat([setup.sample(seeds[i:i + BATCH]) for i in range(0, len(seeds), BATCH)])
    seconds = time.perf_counter() - start
    uint8 = to_uint8(images).transpose(0, 3, 1, 2)
    logits = get_detector("digits").classify(torch.from_numpy(uint8))
    truth = class_labels(seeds, 10, (1, 8, 8))
    row = {"method": name, "part": part, "model": model if isinstance(model, str) else loaded.source,
           "nfe": setup.nfe, "num": len(seeds), "seconds": round(seconds, 1),
           "settings": {k: v for k, v in sampling.items() if v is not None},
           "fd_digits": score(uint8, "digits", ("fd",))["fd_digits"],
           "accuracy": float((logits.argmax(1) == torch.as_tensor(truth)).float().mean())}
    print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
    return row


def part_teacher(seeds, args) -> list[dict]:
    return [run("digits, heun 40 steps (converged)", "digits", seeds, part="teacher", sampler="heun",
                steps=40)]


def part_registry(seeds, args) -> list[dict]:
    rows = []
    for sampler, schedule in PAIRS:
        for nfe in REGISTRY_NFE:
            try:
                rows.append(run(f"{sampler} / {schedule}", "digits", seeds, part="registry", sampler=sampler,
                                nfe=nfe, schedule=schedule))
            except ValueError as e:  # a budget the sampler cannot take
                print(f"skip {sampler} at {nfe}: {e}", flush=True)
    return rows


def part_fitted(seeds, args) -> list[dict]:
    rows = []
    for nfe in (3, 4, 5):
        rows.append(run(f"fitted solver ({nfe} NFE)", "digits", seeds, part="fitted",
                        sampler=f"file:{FEW_STEP / f'digits-{nfe}.json'}"))
        rows.append(run("ipndm, tuned schedule", "digits", seeds, part="fitted", sampler="ipndm", steps=nfe,
                        schedule=f"file:{FEW_STEP / 'schedules' / f'digits-ipndm-nfe{nfe}.json'}"))
    return rows


def _recorded(model: str) -> dict:
    loaded = load_model(model)
    return dict(loaded.info.get("config", {}).get("sampling") or {})


def part_students(seeds, args) -> list[dict]:
    rows = []
    for student in args.students:
        record = _recorded(student)
        settings = {k: record[k] for k in ("sampler", "steps", "schedule", "sigma_min", "sigma_max", "rho")
                    if k in record}
        shown = args.names.get(student, student)
        rows.append(run(f"{shown} ({record.get('sampler')}, recorded)", student, seeds, part="students",
                        options=record.get("options") or {}, **settings))
        for extra in args.student_extra.get(student, ()):
            rows.append(run(f"{shown} ({extra.get('label', extra['sampler'])})", student, seeds,
                            part="students", **{k: v for k, v in extra.items() if k != "label"}))
    return rows


def part_guided(seeds, args) -> list[dict]:
    seeds = seeds[:args.num_guided]
    rows = []
    for w in WEIGHTS:
        rows.append(run(f"digits guided, heun 40 steps, w={w:g}", "digits", seeds, part="guided",
                        sampler="heun", steps=40, guidance=w))
        record = _recorded(args.guided_student)
        settings = {k: record[k] for k in ("sampler", "steps", "schedule", "sigma_min", "sigma_max", "rho")
                    if k in record}
        rows.append(run(f"guided student, w={w:g}", args.guided_student, seeds, part="guided", guidance=w,
                        **settings))
    return rows


RUNNERS = {"teacher": part_teacher, "registry": part_registry, "fitted": part_fitted,
           "students": part_students, "guided": part_guided}


def _ratio(row, converged) -> float:
    return row["fd_digits"] / converged


def report(results: dict, args) -> tuple[list[str], list[bool]]:
    converged = results["teacher"][0]["fd_digits"]
    lines = ["# One- and few-step generation: distilled students of `digits`", "",
             f"FD-digits of seeds 0-{args.num - 1} (a class drawn per seed) against the shipped reference, "
             "class accuracy by the `digits` detector; every row on the same seeds, in one run of "
             "`bench/distillation.py`. Conditions: "
             f"{results.get('conditions', '')}.", "",
             f"Converged (digits, heun 40 steps, 79 NFE): **{converged:.3f}**.", "",
             "| method | part | NFE | FD-digits | / converged | class accuracy | seconds |",
             "|---|---|---|---|---|---|---|"]
    rows = [r for part in PARTS if part != "guided" for r in results.get(part, [])]
    for r in sorted(rows, key=lambda r: (r["nfe"], r["fd_digits"])):
        lines.append(f"| {r['method']} | {r['part']} | {r['nfe']} | {r['fd_digits']:.3f} | "
                     f"{_ratio(r, converged):.2f}x | {100 * r['accuracy']:.1f}% | {r['seconds']} |")
    checks = []
    lines += ["", "## Targets", ""]
    students = results.get("students", [])
    for nfe, bound in TARGETS.items():
        at = [r for r in students if r["nfe"] == nfe]
        if not at:
            lines.append(f"- {nfe} NFE: no student measured")
            checks.append(False)
            continue
        best = min(at, key=lambda r: r["fd_digits"])
        ok = _ratio(best, converged) <= bound and best["accuracy"] >= ACCURACY
        checks.append(ok)
        lines.append(f"- {nfe} NFE: best student {best['method']}: FD-digits {best['fd_digits']:.3f} = "
                     f"{_ratio(best, converged):.2f}x converged (target <= {bound}x), class accuracy "
                     f"{100 * best['accuracy']:.1f}% (target >= 95%): **{'met' if ok else 'MISSED'}**")
    guided = results.get("guided", [])
    if guided:
        lines += ["", "## The guided student (2 steps) against the guided teacher (79 NFE)", "",
                  "| w | teacher FD-digits | student FD-digits | ratio | teacher accuracy | "
                  "student accuracy |",
                  "|---|---|---|---|---|---|"]
        for teacher, student in zip(guided[::2], guided[1::2]):
            w = teacher["settings"]["guidance"]
            ratio = student["fd_digits"] / teacher["fd_digits"]
            ok = ratio <= 1.2 and student["accuracy"] >= teacher["accuracy"] / 1.2
            checks.append(ok)
            lines.append(f"| {w:g} | {teacher['fd_digits']:.3f} | {student['fd_digits']:.3f} | {ratio:.2f}x "
                         f"({'met' if ok else 'MISSED'}) | {100 * teacher['accuracy']:.1f}% | "
                         f"{100 * student['accuracy']:.1f}% |")
    lines += ["", "## Training cost", "",
              "Wall time of the training that made each student, from `digits`, all rounds included (the "
              "students record it as `training.seconds`, and their command, shown by `edm info`). One "
              "thread per run on a 2-core x86_64 CPU shared with 2-3 other runs and test suites (load 5-8), "
              "so an idle machine is faster; a CPU-minute here is one minute of one such thread.", "",
              "| method | training (CPU-minutes) | command |", "|---|---|---|"]
    for name in STUDENTS + ("digits-pd2-guided",):
        try:
            record = json.loads(builtin_path(name).with_suffix(".json").read_text())
        except OSError:
            continue
        seconds = record.get("training", {}).get("seconds")
        minutes = "?" if seconds is None else f"{seconds / 60:.0f}"
        lines.append(f"| {name} | {minutes} | `{record.get('command', '')}` |")
    lines += [f"| {name} | {cost} | {how} |" for name, cost, how in FITTING_COSTS]
    notes = Path(__file__).resolve().parent / "results" / "distillation_notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    return lines, checks


#: what the solvers and schedules of this table cost to fit (bench/results/few_step.md)
FITTING_COSTS = (
    ("fitted solvers (3, 4, 5 NFE)", "94 (47 min, 2 threads)",
     "`edm tune-solver` via `bench/few_step.py digits --calibration 256` (3 and 4 NFE; 5 NFE refitted on "
     "1024 seeds in 52 min, 1 thread)"),
    ("tuned schedules (ipndm, 3-5 NFE)", "part of the above", "`edm tune-schedule`, 16 seeds, 100 runs each"),
    ("registry samplers", "0", "no training"),
)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    converged = results["teacher"][0]["fd_digits"]
    fig, ax = plt.subplots(figsize=(8, 5))
    by_method: dict[str, list] = {}
    for r in results.get("registry", []):
        by_method.setdefault(r["method"], []).append((r["nfe"], r["fd_digits"]))
    for name, points in by_method.items():
        points.sort()
        ax.plot(*zip(*points), marker=".", lw=1, alpha=0.7, label=name)
    for part, marker in (("fitted", "s"), ("students", "*")):
        for r in results.get(part, []):
            ax.scatter(r["nfe"], r["fd_digits"], marker=marker, s=90 if marker == "*" else 40, zorder=3)
            ax.annotate(r["method"].split(" (")[0] if part == "students" else r["method"][:22],
                        (r["nfe"], r["fd_digits"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.axhline(converged, color="k", ls="--", lw=1, label=f"converged (heun, 79 NFE): {converged:.2f}")
    for nfe, bound in TARGETS.items():
        ax.plot([nfe - 0.3, nfe + 0.3], [bound * converged] * 2, color="r", lw=2)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("NFE (network evaluations per image)")
    ax.set_ylabel("FD-digits (lower is better)")
    ax.set_title("digits: FD-digits against NFE (red bars: the students' targets)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--student-extra", default="{}",
                        help="JSON: student -> list of extra settings to measure it with")
    parser.add_argument("--names", default="{}", help="JSON: student spec -> the name the report shows")
    parser.add_argument("--guided-student", default="digits-pd2")
    parser.add_argument("--num-guided", type=int, default=1000,
                        help="seeds of the guided part (its teacher costs two evaluations per step)")
    add_out_arguments(parser)
    args = parser.parse_args()
    args.students = [s for s in args.students.split(",") if s]
    args.student_extra = json.loads(args.student_extra)
    args.names = json.loads(args.names)
    folder = out_dir(args) / "distillation"
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    seeds = list(range(args.num))
    conditions = (f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), torch "
                  f"{torch.__version__}, float32, {time.strftime('%Y-%m-%d')}")
    for part in [p for p in args.parts.split(",") if p]:
        rows = RUNNERS[part](seeds, args)
        record = {"part": part, "num": args.num, "conditions": conditions, "rows": rows}
        text = json.dumps(record, indent=1) + "\n"
        atomic_write(folder / f"{part}.json", lambda tmp, text=text: Path(tmp).write_text(text))
    results = {}
    for part in PARTS:
        path = folder / f"{part}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            results[part] = record["rows"]
            results["conditions"] = record["conditions"]
    if "teacher" not in results:
        print("targets met: 0/0 (no teacher row yet)")
        return 0
    lines, checks = report(results, args)
    text = "\n".join(lines) + "\n"
    atomic_write(folder.parent / "distillation.md", lambda tmp: Path(tmp).write_text(text))
    plot(results, folder.parent / "distillation.png")
    print(f"targets met: {sum(checks)}/{len(checks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
