"""Training objectives compared on digits at an equal budget (``edm train --objective``, edm.objectives).

Two parts:

* ``train``: trains the same small class-conditional UNet on ``digits`` once per objective (``edm``,
  ``ddpm``, ``v-cosine``, ``sigmoid``) with the same seed, batch, steps, optimizer and EMA, each as an
  ``edm train`` process on one torch thread, at most ``--parallel`` at a time, into ``RUNS/<objective>``
  (``RUNS`` = ``/work/runs/objectives`` by default; keep it outside the repository). Each run's wall time
  goes to ``RUNS/<objective>/wall.json``; its log to ``train.log``.
* ``measure``: samples each trained model on seeds 0..N-1 (class ``seed % 10``, no guidance) with

  - ``heun``, 18 steps (NFE 35), the Karras schedule (rho 7) over the model's own sigma range
    (0.002..80 for the continuous objectives, DDPM's table ends 0.0100..157 for ``ddpm``);
  - ``ddim``, 50 steps, the same Karras schedule; for ``ddpm`` also the DDIM "uniform" timestep
    schedule on its own table (``ddim_uniform``);

  and scores FD-digits against the shipped reference ``tools/fid/refs/digits.npz`` (all 1797 digits,
  detector ``digits``) and class accuracy (the digits detector's ``classify``: the share of samples
  whose argmax class is the requested one).

    PYTHONPATH=. python bench/objectives.py train [--steps 1200] [--seed 0] [--runs /work/runs/objectives]
    PYTHONPATH=. python bench/objectives.py measure [--num 1000] [--runs ...] [--reuse] [--record]

``measure`` writes each run's numbers to ``RUNS/<objective>/measure.json`` (``--reuse`` takes them from
there instead of measuring again), then ``DIR/objectives.json`` (every number) and
``DIR/objectives_table.md`` (the table), DIR being ``bench-out`` or, with ``--record``, ``bench/results``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

import samplers  # noqa: E402
from edm.checkpoint import atomic_write  # noqa: E402

OBJECTIVES = ("edm", "ddpm", "v-cosine", "sigmoid")
RUNS = Path("/work/runs/objectives")
REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tools" / "fid" / "refs" / "digits.npz"
# Identical for every objective: the network, optimizer, EMA, seed and length.
COMMON = ["--data", "digits", "--batch", "128", "--lr", "0.002", "--warmup", "200", "--ema", "50.0",
          "--channels", "16", "--channel-mult", "1,2", "--blocks", "2", "--attn", "4",
          "--label-dropout", "0.1", "--device", "cpu", "--threads", "1", "--no-progress"]
# The data std for the objectives whose preconditioning uses one (DDPM's scaling fixes it to 1).
SIGMA_DATA = {"edm": "0.752", "v-cosine": "0.752", "sigmoid": "0.752"}
# (label, sampler, steps, schedule): schedule "karras" spans the model's own sigma range.
CELLS = (("heun 18", "heun", 18, "karras"), ("ddim 50", "ddim", 50, "karras"))
DDPM_EXTRA = (("ddim 50 uniform", "ddim", 50, "ddim_uniform"),)


def environment() -> str:
    now = dt.datetime.now(dt.timezone.utc)
    return (f"{now:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} CPU cores shared with other "
            f"jobs, Python {platform.python_version()}, torch {torch.__version__}")


def train_command(objective: str, steps: int, outdir: Path, seed: int = 0) -> list[str]:
    args = ["--objective", objective, "--outdir", str(outdir), "--steps", str(steps), "--seed", str(seed),
            "--checkpoint-every", str(max(steps // 3, 1)), *COMMON]
    if objective in SIGMA_DATA:
        args += ["--sigma-data", SIGMA_DATA[objective]]
    return [sys.executable, "-m", "tools.train_cli", *args]


def train(args) -> int:
    """Run the trainings, ``args.parallel`` at a time; each writes ``wall.json`` when it ends."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    pending = list(args.objectives)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    failed = 0
    while pending or running:
        while pending and len(running) < args.parallel:
            objective = pending.pop(0)
            run = args.runs / objective
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "train.log", "w")  # noqa: SIM115 (closed when the process ends)
            command = train_command(objective, args.steps, run, args.seed)
            log.write(" ".join(command) + "\n")
            log.flush()
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[objective] = (process, time.perf_counter(), log)
            print(f"started {objective} (pid {process.pid})", flush=True)
        time.sleep(5)
        for objective, (process, started, log) in list(running.items()):
            if process.poll() is None:
                continue
            seconds = time.perf_counter() - started
            log.close()
            record = {"objective": objective, "returncode": process.returncode, "seconds": round(seconds, 1),
                      "environment": environment()}
            (args.runs / objective / "wall.json").write_text(json.dumps(record, indent=2) + "\n")
            print(f"finished {objective}: exit {process.returncode}, {seconds:.0f} s", flush=True)
            failed += process.returncode != 0
            del running[objective]
    return 1 if failed else 0


def schedule_of(model, steps: int, schedule: str) -> torch.Tensor:
    """The ``steps``-step ``schedule`` over the model's sigma range (ending in 0), float64."""
    options = {"sigmas": model.sigmas} if schedule == "ddim_uniform" else {}
    sigmas = samplers.schedules.get(schedule)(steps, model.sigma_min, model.sigma_max, **options)
    return torch.as_tensor(sigmas, dtype=torch.float64)


def sample_model(model, sampler: str, sigmas: torch.Tensor, seeds: list[int], batch: int) -> np.ndarray:
    """uint8 images ``[N, 8, 8, 1]`` (NHWC, as ``edm generate`` writes them) of ``model`` on ``seeds``
    (class ``seed % 10``)."""
    from tools.images import to_uint8

    out = []
    for start in range(0, len(seeds), batch):
        part = seeds[start:start + batch]
        x = samplers.noise.latents(part, model.shape) * sigmas[0].float()
        onehot = torch.nn.functional.one_hot(torch.tensor(part) % 10, 10).float()
        with torch.no_grad():
            images = samplers.sample(model.denoiser, x, sigmas, sampler, seeds=part,
                                     cond={"class_labels": onehot})
        out.append(to_uint8(images))
    return np.concatenate(out)


def score(images: np.ndarray, seeds: list[int], scratch: Path) -> tuple[float, float]:
    """``(FD-digits against the shipped reference, class accuracy by the digits detector)``."""
    from tools.fid.detectors import get_detector
    from tools.fid.scoring import score as fd_score

    path = scratch / "samples.npy"
    np.save(path, images)
    fd = float(fd_score(str(path), str(REFERENCE), ["fd"], detector="digits", batch=250)["fd_digits"])
    logits = get_detector("digits").classify(torch.from_numpy(images).permute(0, 3, 1, 2))
    accuracy = float((logits.argmax(dim=1).numpy() == np.array(seeds) % 10).mean())
    return fd, accuracy


def measure_run(run: Path, objective: str, seeds: list[int], batch: int) -> dict:
    """Every cell of one trained model: FD-digits, class accuracy, NFE, seconds; plus its training facts."""
    from tools.models import load_model

    model = load_model(str(run / "network"))
    config = model.info["config"]
    wall = json.loads((run / "wall.json").read_text()) if (run / "wall.json").is_file() else {}
    entry = {"command": config["command"], "objective": config.get("objective"),
             "parameters": model.info["parameters"], "steps": config["training"]["step"],
             "loss": config["training"]["loss"], "train_seconds": wall.get("seconds"),
             "seeds": f"0..{len(seeds) - 1}", "environment": environment(), "cells": {}}
    for label, sampler, steps, schedule in CELLS + (DDPM_EXTRA if objective == "ddpm" else ()):
        started = time.perf_counter()
        sigmas = schedule_of(model, steps, schedule)
        images = sample_model(model, sampler, sigmas, seeds, batch)
        fd, accuracy = score(images, seeds, run)
        entry["cells"][label] = {"sampler": sampler, "steps": steps, "schedule": schedule,
                                 "nfe": samplers.registry.nfe_on(sampler, sigmas), "fd_digits": fd,
                                 "accuracy": accuracy, "seconds": round(time.perf_counter() - started, 1)}
        print(objective, label, entry["cells"][label], flush=True)
    return entry


def measure(args) -> int:
    """Measure each run (``RUNS/<objective>/measure.json``; kept and reused with ``--reuse``), then write
    the table of all of them."""
    torch.set_num_threads(1)
    seeds = list(range(args.num))
    record: dict = {"runs": {}}
    rows = []
    for objective in args.objectives:
        run = args.runs / objective
        saved = run / "measure.json"
        if args.reuse and saved.is_file():
            entry = json.loads(saved.read_text())
        else:
            entry = measure_run(run, objective, seeds, args.batch)
            saved.write_text(json.dumps(entry, indent=2) + "\n")
        record["runs"][objective] = entry
        for label, cell in entry["cells"].items():
            rows.append(f"| {objective} | {label} ({cell['schedule']}) | {cell['nfe']} "
                        f"| {cell['fd_digits']:.3f} | {cell['accuracy']:.3f} |")
    out = out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    atomic_write(out / "objectives.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    table = ["| objective | sampler (schedule) | NFE | FD-digits | class accuracy |",
             "|---|---|---|---|---|", *rows]
    atomic_write(out / "objectives_table.md", lambda tmp: Path(tmp).write_text("\n".join(table) + "\n"))
    print("\n".join(table))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    p_train = sub.add_parser("train")
    p_train.add_argument("--steps", type=int, default=1200)
    p_train.add_argument("--parallel", type=int, default=2)
    p_train.add_argument("--seed", type=int, default=0, help="training seed (the same for every objective)")
    p_measure = sub.add_parser("measure")
    p_measure.add_argument("--num", type=int, default=1000)
    p_measure.add_argument("--batch", type=int, default=250)
    p_measure.add_argument("--reuse", action="store_true",
                           help="take a run's measure.json when it has one instead of measuring again")
    add_out_arguments(p_measure)
    for p in (p_train, p_measure):
        p.add_argument("--runs", type=Path, default=RUNS)
        p.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    args = parser.parse_args(argv)
    return train(args) if args.part == "train" else measure(args)


if __name__ == "__main__":
    sys.exit(main())
