"""The embedded class-conditional DiT (``digits-dit``) against the UNet (``digits``), side by side.

Both were trained by ``edm train`` on the same data (all 1797 digits) with the same budget (4000 steps of
128 images, EMA half-life 50 kimg, EDM loss, seed 0); their training commands are in their checkpoints.
Measured here, in one process, on the same seeds:

* parameters;
* training cost: seconds per training step (forward + backward + Adam + EMA on a batch of 128), the two
  networks timed alternately (``--step-repeats`` rounds of ``--step-count`` steps each, the minimum per
  network), so the ratio holds whatever the machine's load;
* sampling: FD-digits against the shipped reference (``tools.fid.score``) and class accuracy (an RBF SVM
  on raw pixels fitted on the real digits, as the tests use) on seeds ``0 .. num-1`` (class drawn from
  each seed as ``edm generate`` draws it), heun at NFE 35 (18 steps), Karras schedule, no guidance: the
  defaults of ``edm generate``; with the sampling wall time.

    PYTHONPATH=. python bench/digits_dit.py [--num 2000] [--out DIR | --record]

Writes ``DIR/digits_dit.md`` and ``DIR/digits_dit.json`` atomically. Targets (issue 22): the DiT's class
accuracy >= 0.95 and its FD-digits <= 1.2x the UNet's. Last line printed: ``targets met: X/Y``.
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

from edm.checkpoint import atomic_write, load_checkpoint  # noqa: E402
from edm.data import load_digits  # noqa: E402
from edm.loss import EDMLoss  # noqa: E402
from tools.models.base import parameter_count  # noqa: E402
from tools.models.checkpoint import builtin_path  # noqa: E402

MODELS = ("digits", "digits-dit")


def checkpoint_of(spec: str) -> Path:
    """The checkpoint stem of a built-in name or a checkpoint path (``RUN/network.json``)."""
    return builtin_path(spec) if spec in MODELS else Path(spec).with_suffix("")


def step_seconds(spec: str, count: int, generator_seed: int = 0) -> float:
    """Wall seconds per training step of the model ``spec``'s network (a copy in train mode), batch 128."""
    checkpoint = load_checkpoint(checkpoint_of(spec))
    precond = checkpoint.denoiser.train().requires_grad_(True)
    optimizer = torch.optim.Adam(precond.parameters(), lr=1e-4)
    data = load_digits()
    loss_fn = EDMLoss(sigma_data=precond.scheme.sigma_data)
    gen = torch.Generator().manual_seed(generator_seed)
    start = time.perf_counter()
    for _ in range(count):
        index = torch.randperm(len(data), generator=gen)[:128]
        loss = loss_fn(precond, data.images[index], labels=data.one_hot(index), generator=gen).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / count


def training_record(spec: str) -> dict:
    config = json.loads(checkpoint_of(spec).with_suffix(".json").read_text())
    return {"command": config["command"], "steps": config["training"]["step"],
            "batch": config["training"]["batch"], "loss": config["training"]["loss"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="seeds 0..num-1 for FD-digits and accuracy")
    parser.add_argument("--step-count", type=int, default=20, help="training steps per timing round")
    parser.add_argument("--step-repeats", type=int, default=3, help="timing rounds per network")
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=CHECKPOINT",
                        help="another checkpoint in the table (e.g. the DiT at another training length)")
    add_out_arguments(parser)
    args = parser.parse_args()
    folder = out_dir(args)
    folder.mkdir(parents=True, exist_ok=True)

    specs = {name: name for name in MODELS}
    specs.update(dict(item.split("=", 1) for item in args.also))
    rows = {label: {"model": label, **training_record(spec)} for label, spec in specs.items()}
    for label, spec in specs.items():
        rows[label]["parameters"] = parameter_count(load_checkpoint(checkpoint_of(spec)).denoiser.backbone)
    timings = {label: [] for label in specs}
    for _ in range(args.step_repeats):  # alternate, so that a change of load hits every network
        for label, spec in specs.items():
            timings[label].append(step_seconds(spec, args.step_count))
    for label in specs:
        rows[label]["step_seconds"] = min(timings[label])

    classify = svm()
    seeds = list(range(args.num))
    targets = drawn_classes(seeds)
    command = f"edm fid gen --num {args.num} --ref digits"
    for label, spec in specs.items():
        row, _ = run_point(label, 0, f"{command} --model {spec}", seeds, targets, classify, model=spec)
        rows[label].update({k: row[k] for k in ("fd_digits", "accuracy", "nfe", "seconds")})

    unet, dit = rows["digits"], rows["digits-dit"]
    targets_met = [dit["accuracy"] >= 0.95, dit["fd_digits"] <= 1.2 * unet["fd_digits"]]
    threads = torch.get_num_threads()
    lines = [
        "# `digits-dit` (Diffusion Transformer) against `digits` (UNet), side by side",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `PYTHONPATH=. python bench/digits_dit.py "
        f"{' '.join(sys.argv[1:])}`,",
        f"one process, {threads} torch thread(s), {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs; torch {torch.__version__}.",
        "",
        "| model | backbone | parameters | training | s / training step (batch 128) | steps x s/step "
        "| FD-digits | class accuracy | NFE | sampling s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        arch = "UNet" if label == "digits" else "DiT"
        lines.append(f"| `{label}` | {arch} | {r['parameters']:,} | {r['steps']} steps x {r['batch']} "
                     f"| {r['step_seconds']:.3f} | {r['steps'] * r['step_seconds']:.0f} s "
                     f"| {r['fd_digits']:.3f} | {r['accuracy']:.3f} | {r['nfe']} "
                     f"| {r['seconds']:.0f} |")
    lines += [
        "",
        f"FD-digits and accuracy: seeds 0..{args.num - 1}, class drawn from each seed, heun NFE 35, Karras "
        "schedule, no guidance (`edm fid gen --ref digits` defaults). Step times: the minimum of "
        f"{args.step_repeats} alternating rounds of {args.step_count} steps.",
        "",
        f"Ratios (DiT / UNet): FD-digits {dit['fd_digits'] / unet['fd_digits']:.2f}x, training step "
        f"{dit['step_seconds'] / unet['step_seconds']:.2f}x, "
        f"sampling {dit['seconds'] / unet['seconds']:.2f}x, "
        f"parameters {dit['parameters'] / unet['parameters']:.2f}x.",
        "",
        "Targets (issue 22): DiT class accuracy >= 0.95: "
        f"{'met' if targets_met[0] else 'MISSED'}; DiT FD-digits <= 1.2x the UNet's: "
        f"{'met' if targets_met[1] else 'MISSED'}.",
        "",
        "Training commands (from the checkpoints):",
        "",
    ]
    for label, r in rows.items():
        lines += [f"`{label}`:", "", "```bash", r["command"], "```", ""]
    atomic_write(folder / "digits_dit.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    atomic_write(folder / "digits_dit.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n"))
    print("\n".join(lines))
    print(f"targets met: {sum(targets_met)}/{len(targets_met)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
