"""Per-step overhead of our samplers against k-diffusion's, with a near-free denoiser.

The denoiser is ``D(x, sigma) = x * 0.5`` (one elementwise pass, the same function for both libraries), so
the time measured is the samplers' own: Python control flow, coefficient arithmetic, tensor updates and
noise generation. Batch 64x3x32x32 float32 on CPU, 50 steps of the Karras schedule (sigma 0.002..80).

For every row both libraries first run once as a warm-up that also checks they did the same work (steps
and denoiser calls counted, outputs compared where deterministic); then timed runs alternate ours,
k-diffusion, ours, k-diffusion, ... and each side's minimum (default) or median is reported.
``ms/step = time of one sampling call / solver steps it took`` (50 for fixed schedules; dpm_fast and
dpm_adaptive count their own steps, dpm_adaptive including rejected ones, as k-diffusion's info does).

Stochastic rows: ours with ``seeds=list(range(64))`` (per-seed noise streams; the SDE samplers our exact
lazily revealed Brownian path), k-diffusion with its defaults (``torch.randn_like``; for the SDE samplers
``BrownianTreeNoiseSampler``, torchsde).

    PYTHONPATH=. python bench/overhead.py [--quick] [--out DIR] [--only NAME,...] [--stat median|min]

Writes ``DIR/overhead.md`` and ``DIR/overhead.json`` (atomically). Exit code 0 even when a target is
missed; the last line printed is ``targets met: X/Y``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

import samplers

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import k_diffusion.sampling as K

BATCH = (64, 3, 32, 32)
STEPS = 50
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
SEEDS = list(range(BATCH[0]))
CHURN = 40.0

DETERMINISTIC, ANCESTRAL, SDE = "deterministic", "ancestral/churn", "SDE"
TARGETS = {DETERMINISTIC: 1.0, ANCESTRAL: 1.25, SDE: 0.1}

# Full / quick: repeats wanted, a row's time budget in seconds after which it stops repeating, and the
# fewest repeats a row gets whatever its cost (k-diffusion's dpmpp_sde takes tens of seconds a call).
MODES = {"full": {"repeats": 7, "row_budget_s": 30.0, "min_repeats": 2},
         "quick": {"repeats": 3, "row_budget_s": 6.0, "min_repeats": 1}}


def denoiser(x, sigma):
    """Near-free denoiser shared by both libraries: one elementwise pass over the batch."""
    return x * 0.5


class Counting:
    """Wraps a denoiser, counting its calls (used in the warm-up/check run only)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.fn(x, sigma)


@dataclass
class Row:
    name: str
    variant: str
    group: str
    ours: Any  # (denoiser, x, sigmas, callback) -> tensor
    theirs: Any  # same signature, k-diffusion
    target: float = field(init=False)

    def __post_init__(self):
        self.target = TARGETS[self.group]


def _ours(name, seeds=None, **options):
    def run(den, x, sigmas, callback=None):
        return samplers.sample(den, x, sigmas, name, seeds=seeds, callback=callback, **options)

    return run


def _kd(fn, **kwargs):
    def run(den, x, sigmas, callback=None):
        return fn(den, x, sigmas, callback=callback, disable=True, **kwargs)

    return run


def _ends(sigmas):
    """dpm_fast/dpm_adaptive take the schedule's ends: the last nonzero sigma and the first."""
    return float(sigmas[sigmas > 0].min()), float(sigmas[0])


def _kd_dpm_fast(den, x, sigmas, callback=None):
    sigma_min, sigma_max = _ends(sigmas)
    return K.sample_dpm_fast(den, x, sigma_min, sigma_max, len(sigmas) - 1, callback=callback, disable=True)


def _kd_dpm_adaptive(den, x, sigmas, callback=None):
    sigma_min, sigma_max = _ends(sigmas)
    return K.sample_dpm_adaptive(den, x, sigma_min, sigma_max, callback=callback, disable=True)


def build_rows() -> list[Row]:
    churn = {"s_churn": CHURN}
    rows = [
        Row("euler", "churn off", DETERMINISTIC, _ours("euler"), _kd(K.sample_euler)),
        Row("heun", "churn off", DETERMINISTIC, _ours("heun"), _kd(K.sample_heun)),
        Row("dpm_2", "churn off", DETERMINISTIC, _ours("dpm_2"), _kd(K.sample_dpm_2)),
        Row("lms", "order 4", DETERMINISTIC, _ours("lms"), _kd(K.sample_lms)),
        Row("dpmpp_2m", "", DETERMINISTIC, _ours("dpmpp_2m"), _kd(K.sample_dpmpp_2m)),
        Row("dpm_fast", f"n={STEPS}", DETERMINISTIC, _ours("dpm_fast"), _kd_dpm_fast),
        Row("dpm_adaptive", "order 3, rtol 0.05", DETERMINISTIC, _ours("dpm_adaptive"), _kd_dpm_adaptive),
        Row("edm", "churn off, vs sample_heun", DETERMINISTIC, _ours("edm"), _kd(K.sample_heun)),
        Row("ddim", "eta=0, vs euler_ancestral(eta=0)", DETERMINISTIC, _ours("ddim"),
            _kd(K.sample_euler_ancestral, eta=0.0)),
        Row("euler_ancestral", "eta=1", ANCESTRAL, _ours("euler_ancestral", SEEDS),
            _kd(K.sample_euler_ancestral)),
        Row("dpm_2_ancestral", "eta=1", ANCESTRAL, _ours("dpm_2_ancestral", SEEDS),
            _kd(K.sample_dpm_2_ancestral)),
        Row("dpmpp_2s_ancestral", "eta=1", ANCESTRAL, _ours("dpmpp_2s_ancestral", SEEDS),
            _kd(K.sample_dpmpp_2s_ancestral)),
        Row("ddpm", "vs euler_ancestral(eta=1)", ANCESTRAL, _ours("ddpm", SEEDS),
            _kd(K.sample_euler_ancestral, eta=1.0)),
    ]
    for name, kfn in [("euler", K.sample_euler), ("heun", K.sample_heun), ("dpm_2", K.sample_dpm_2),
                      ("edm", K.sample_heun)]:
        variant = f"s_churn={CHURN:g}" + (", vs sample_heun" if name == "edm" else "")
        rows.append(Row(name, variant, ANCESTRAL, _ours(name, SEEDS, **churn), _kd(kfn, **churn)))
    rows += [
        Row("dpmpp_sde", "eta=1, r=1/2", SDE, _ours("dpmpp_sde", SEEDS), _kd(K.sample_dpmpp_sde)),
        Row("dpmpp_2m_sde", "eta=1, midpoint", SDE, _ours("dpmpp_2m_sde", SEEDS, solver_type="midpoint"),
            _kd(K.sample_dpmpp_2m_sde, solver_type="midpoint")),
        Row("dpmpp_3m_sde", "eta=1", SDE, _ours("dpmpp_3m_sde", SEEDS), _kd(K.sample_dpmpp_3m_sde)),
    ]
    return rows


def check_run(run, x, sigmas):
    """One untimed call (the warm-up) that counts solver steps (callbacks) and denoiser calls."""
    den = Counting(denoiser)
    steps = 0

    def callback(info):
        nonlocal steps
        steps += 1

    out = run(den, x, sigmas, callback)
    return out, steps, den.calls


def timed(run, x, sigmas) -> float:
    gc.collect()
    start = time.perf_counter()
    run(denoiser, x, sigmas)
    return time.perf_counter() - start


def bench_row(row: Row, x, sigmas, sigmas_kd, mode: dict, stat: str) -> dict:
    torch.manual_seed(0)
    out_ours, steps_ours, nfe_ours = check_run(row.ours, x, sigmas)
    out_kd, steps_kd, nfe_kd = check_run(row.theirs, x, sigmas_kd)
    rel_diff = None
    if row.group == DETERMINISTIC:
        rel_diff = float((out_ours - out_kd).abs().max() / out_kd.abs().max())

    times_ours, times_kd = [], []
    row_start = time.perf_counter()
    for r in range(mode["repeats"]):
        times_ours.append(timed(row.ours, x, sigmas))
        times_kd.append(timed(row.theirs, x, sigmas_kd))
        if r + 1 >= mode["min_repeats"] and time.perf_counter() - row_start > mode["row_budget_s"]:
            break

    pick = statistics.median if stat == "median" else min
    ms_ours = 1e3 * pick(times_ours) / steps_ours
    ms_kd = 1e3 * pick(times_kd) / steps_kd
    ratio = ms_ours / ms_kd
    return {
        "sampler": row.name, "variant": row.variant, "group": row.group,
        "steps_ours": steps_ours, "steps_kd": steps_kd, "nfe_ours": nfe_ours, "nfe_kd": nfe_kd,
        "same_work": steps_ours == steps_kd and nfe_ours == nfe_kd,
        "max_rel_diff": rel_diff, "dtype_ours": str(out_ours.dtype), "dtype_kd": str(out_kd.dtype),
        "ms_per_step_ours": ms_ours, "ms_per_step_kd": ms_kd, "ratio": ratio,
        "target": row.target, "pass": ratio <= row.target,
        "repeats": len(times_ours),
        "times_s_ours": times_ours, "times_s_kd": times_kd,
    }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _pair(a, b) -> str:
    return str(a) if a == b else f"{a} / {b}"


HEADER = ["sampler", "variant", "steps", "NFE", "ms/step ours", "ms/step k-diff", "ours/k-diff", "target",
          "result"]


def table_cells(r: dict) -> list[str]:
    result = "pass" if r["pass"] else "FAIL"
    if not r["same_work"]:
        result += " (work differs!)"
    return [r["sampler"], r["variant"], _pair(r["steps_ours"], r["steps_kd"]),
            _pair(r["nfe_ours"], r["nfe_kd"]),
            f"{r['ms_per_step_ours']:.3f}", f"{r['ms_per_step_kd']:.3f}", f"{r['ratio']:.3f}",
            f"<= {r['target']:g}", result]


def text_table(rows: list[dict]) -> str:
    cells = [HEADER] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown(meta: dict, rows: list[dict], summary: str) -> str:
    lines = [
        "# Sampler overhead: ours vs k-diffusion",
        "",
        f"- date: {meta['date']}",
        f"- machine: {meta['cpu']} ({meta['cpu_count']} logical CPUs), {meta['platform']}",
        f"- torch {meta['torch']}, threads {meta['threads']}, k-diffusion {meta['k_diffusion']}, "
        f"Python {meta['python']}",
        f"- mode: {meta['mode']} ({meta['repeats']} repeats wanted, at least {meta['min_repeats']}, "
        f"{meta['row_budget_s']:g} s per row), statistic: {meta['stat']} of repeats per side",
        f"- workload: batch {'x'.join(map(str, meta['batch']))} float32 on CPU, {meta['steps']} steps of the "
        f"karras schedule (sigma {meta['sigma_min']}..{meta['sigma_max']}), denoiser `x * 0.5`",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    lines += ["| " + " | ".join(table_cells(r)) + " |" for r in rows]
    lines += [
        "",
        f"**{summary}**",
        "",
        "Notes:",
        "",
        "- ms/step = one sampling call / solver steps taken (dpm_fast: its own uniform-lambda steps for "
        "n = 50 denoiser calls; dpm_adaptive: attempted steps, rejected ones included). "
        "Steps and NFE are counted in an untimed warm-up call; `a / b` means ours / k-diffusion differ.",
        "- Both get the same karras schedule: ours as float64 (our schedules' dtype), k-diffusion as float32 "
        "(its own get_sigmas_karras' dtype; float64 sigmas make it compute in float64). Both outputs are "
        "float32.",
        "- Timed calls alternate ours, k-diffusion, ours, ... (a row stops repeating after its time "
        "budget once it has its minimum number of repeats).",
        "- Stochastic rows: ours with `seeds=list(range(64))` (per-seed noise; exact lazily revealed "
        "Brownian path for the SDE samplers), k-diffusion with its default noise (`torch.randn_like`; "
        "`BrownianTreeNoiseSampler` for the SDE samplers).",
        "- Targets: deterministic <= 1.0, ancestral and churn <= 1.25, SDE <= 0.1 (ratio ours/k-diffusion).",
        "- Timings depend on what else the machine runs; compare the ratios, taken in one interleaved run.",
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it an ordinary file's mode
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller time budget per row")
    add_out_arguments(parser)
    parser.add_argument("--only", default="", help="comma-separated sampler names to run (default all)")
    parser.add_argument("--stat", choices=["median", "min"], default="min",
                        help="statistic of the repeats per side (default min: on a shared 2-core VM the "
                             "fastest repeat is the one least disturbed by other work, as timeit advises)")
    args = parser.parse_args(argv)
    args.out = out_dir(args)

    mode_name = "quick" if args.quick else "full"
    mode = MODES[mode_name]
    rows = build_rows()
    if args.only:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - {row.name for row in rows}
        if unknown:
            parser.error(f"no benchmark row for {', '.join(sorted(unknown))}")
        rows = [row for row in rows if row.name in wanted]

    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "k_diffusion": _version("k-diffusion"), "python": platform.python_version(),
        "mode": mode_name, **mode, "stat": args.stat,
        "batch": list(BATCH), "steps": STEPS, "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX,
        "denoiser": "x * 0.5", "seeds_ours": "list(range(64)) for stochastic rows",
    }
    print(f"sampler overhead, ours vs k-diffusion -- {meta['date']}")
    print(f"cpu: {meta['cpu']} ({meta['cpu_count']} logical), torch {meta['torch']}, "
          f"threads {meta['threads']}, k-diffusion {meta['k_diffusion']}")
    print(f"mode {mode_name}: {mode['repeats']} repeats (min {mode['min_repeats']}, "
          f"{mode['row_budget_s']:g} s/row), {args.stat}; batch {'x'.join(map(str, BATCH))} float32, "
          f"{STEPS} karras steps", flush=True)

    sigmas = samplers.schedules.get("karras")(STEPS, SIGMA_MIN, SIGMA_MAX)
    # k-diffusion gets the same schedule in its native dtype (float32, as K.get_sigmas_karras returns):
    # given float64 sigmas, its to_d broadcasts a [1, 1, 1, 1] float64 sigma and silently runs the whole
    # trajectory in float64 (about 3x slower), which is not how it is used.
    sigmas_kd = sigmas.to(torch.float32)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, generator=gen) * float(sigmas[0])

    # Global warm-up: first calls pay for lazy initialisation in torch and both libraries.
    _ours("euler")(denoiser, x, sigmas)
    _kd(K.sample_euler)(denoiser, x, sigmas_kd)

    # torchsde warns when k-diffusion's float32 sigma_min rounds just below its tree's float start.
    warnings.filterwarnings("ignore", message="Should have ta>=t0", category=UserWarning)
    results = []
    start = time.perf_counter()
    for row in rows:
        result = bench_row(row, x, sigmas, sigmas_kd, mode, args.stat)
        results.append(result)
        flag = "" if result["same_work"] else "  WORK DIFFERS"
        print(f"  {row.name:<18} {row.variant:<34} ours {result['ms_per_step_ours']:8.3f}  "
              f"k-diff {result['ms_per_step_kd']:9.3f} ms/step  ratio {result['ratio']:6.3f}  "
              f"({result['repeats']} rep){flag}", flush=True)
    meta["bench_seconds"] = round(time.perf_counter() - start, 1)

    met = sum(r["pass"] for r in results)
    summary = f"targets met: {met}/{len(results)}"
    print()
    print(text_table(results))
    for r in results:
        if not r["same_work"]:
            print(f"warning: {r['sampler']} ({r['variant']}): steps/NFE differ between the libraries")
        if r["dtype_ours"] != "torch.float32" or r["dtype_kd"] != "torch.float32":
            print(f"warning: {r['sampler']} ({r['variant']}): output dtypes "
                  f"{r['dtype_ours']} / {r['dtype_kd']}")
        if r["max_rel_diff"] is not None and r["max_rel_diff"] > 1e-3:
            print(f"warning: {r['sampler']} ({r['variant']}): outputs differ "
                  f"(max rel {r['max_rel_diff']:.2g})")

    out = Path(args.out)
    write_atomic(out / "overhead.md", markdown(meta, results, summary))
    write_atomic(out / "overhead.json", json.dumps({"meta": meta, "summary": summary, "rows": results},
                                                   indent=2) + "\n")
    print(f"\nwrote {out / 'overhead.md'} and {out / 'overhead.json'} ({meta['bench_seconds']} s)")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
