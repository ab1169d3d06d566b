"""Where the time of a text-to-image run goes, and what decoding costs in memory, on a tiny Stable Diffusion
pipeline built here with random weights (``tests/pipelines_tiny.py``; no real weights can be fetched).

Parts:

* ``time``: one ``edm generate``-equivalent run (``tools.generate.sampling.prepare_sampling``, the sampler
  and prompts of the README's command) split into text encoding, denoising (all sampler steps, CFG's
  batch of 2B included) and VAE decoding, in float32 and in bfloat16 (the networks; the sampler state
  stays float32), measured side by side in one process, best of ``--repeats``.
* ``memory``: the peak resident memory of decoding ``--batch 1`` against ``--batch 8`` latents, each in
  a fresh subprocess (the peak RSS over the process's baseline after loading): decoding runs in slices of
  one sample, so the peak should not grow with the batch. The unsliced decode of the 8 latents is
  measured beside it as the anchor.

    PYTHONPATH=. python bench/text_to_image.py [--size 64] [--steps 10] [--repeats 3] [--out DIR | --record]

Writes ``DIR/text_to_image.md`` and ``DIR/text_to_image.json`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from outdir import add_out_arguments, out_dir  # noqa: E402

from edm.checkpoint import atomic_write  # noqa: E402

PROMPT, NEGATIVE, GUIDANCE, SAMPLER = "a red bicycle", "blurry", 6.5, "dpmpp_2m"


def build(directory: Path) -> Path:
    import pipelines_tiny

    os.environ["HF_HUB_OFFLINE"] = "1"
    if not (directory / "model_index.json").is_file():
        pipelines_tiny.build_sd(directory)
    return directory


def setup_for(directory: Path, dtype: str, size: int, steps: int):
    from tools.generate.sampling import prepare_sampling
    from tools.request import Prompting, SamplingRequest

    text = Prompting(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size)
    return prepare_sampling(SamplingRequest(model=f"diffusers:{directory}", sampler=SAMPLER,
                                            schedule="diffusers", steps=steps, guidance=GUIDANCE,
                                            device="cpu", dtype=dtype, prompting=text))


def time_part(directory: Path, size: int, steps: int, repeats: int, batch: int) -> list[dict]:
    """Seconds of text encoding, denoising and decoding per dtype (best of ``repeats``)."""
    rows = []
    seeds = list(range(batch))
    for dtype in ("float32", "bfloat16"):
        setup = setup_for(directory, dtype, size, steps)
        prompts, vae = setup.prompts, setup.model.autoencoder
        best = {"encode": float("inf"), "denoise": float("inf"), "decode": float("inf")}
        for _ in range(repeats):
            with torch.no_grad():
                tick = time.perf_counter()
                prompts.cond(seeds, setup.device, setup.state_dtype)  # the batch's prompts (then cached)
                encoded = time.perf_counter()
                latents = setup.sample(seeds)
                sampled = time.perf_counter()
                vae.decode(latents)
                decoded = time.perf_counter()
            prompts._cache.clear()
            prompts.negative_cond(setup.device, setup.state_dtype)  # CFG's negative, encoded when prepared
            print(f"{dtype}: encode {encoded - tick:.3f} s, denoise {sampled - encoded:.3f} s, "
                  f"decode {decoded - sampled:.3f} s", file=sys.stderr, flush=True)
            best["encode"] = min(best["encode"], encoded - tick)
            best["denoise"] = min(best["denoise"], sampled - encoded)
            best["decode"] = min(best["decode"], decoded - sampled)
        total = sum(best.values())
        rows.append({"dtype": dtype, **best, "total": total, "nfe": setup.nfe,
                     "evaluations": setup.evaluations})
    return rows


MEMORY_CHILD = r"""
import os, resource, sys, torch
sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
os.environ["HF_HUB_OFFLINE"] = "1"
torch.set_num_threads(1)
from tools.models import load_model
from tools.models.pipelines import resized
model = resized(load_model("diffusers:" + {directory!r}), {size}, {size})
vae = model.autoencoder
latents = torch.randn({batch}, *model.shape, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    vae.decode(latents[:1])  # warm up: allocator pools and lazy initialisation
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if {unsliced}:
        vae.vae.decode(latents.to(vae.run_dtype) / vae.scaling_factor + vae.shift_factor)
    else:
        vae.decode(latents)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((peak - base) / 1024)
"""


def memory_part(directory: Path, size: int) -> list[dict]:
    rows = []
    for batch, unsliced in ((1, False), (8, False), (8, True)):
        code = MEMORY_CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"), directory=str(directory),
                                   size=size, batch=batch, unsliced=unsliced)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        rows.append({"batch": batch, "decode": "whole batch (diffusers' vae.decode)" if unsliced else
                     "edm: slices of 1", "peak_mib": float(out.stdout.strip().splitlines()[-1])})
    return rows


def report(result: dict) -> str:
    lines = ["# Text-to-image: where the time goes, and decoding memory", "",
             f"Tiny random-weight Stable Diffusion pipeline (`tests/pipelines_tiny.py`: UNet 32/64 channels, "
             f"VAE factor 2, CLIP 32-d), {result['size']}x{result['size']} images, {SAMPLER}, "
             f"`--schedule diffusers`, {result['steps']} steps, CFG w={GUIDANCE:g} (one batch of 2B per "
             f"step), batch {result['batch']}. CPU, {result['threads']} threads, {result['machine']}; the "
             "machine is shared and its load varies, so compare the shares and the ratio within one run, "
             "not the seconds across runs.", "",
             "| networks | text encoding | denoising | decoding | total | encoding / denoising / decoding |",
             "|---|---|---|---|---|---|"]
    for row in result["time"]:
        shares = " / ".join(f"{100 * row[k] / row['total']:.1f}%" for k in ("encode", "denoise", "decode"))
        lines.append(f"| {row['dtype']} | {row['encode']:.3f} s | {row['denoise']:.3f} s | "
                     f"{row['decode']:.3f} s | {row['total']:.3f} s | {shares} |")
    f32, bf16 = (row["total"] for row in result["time"])
    lines += ["", f"bfloat16 / float32 total time: {bf16 / f32:.2f}x (CPU bfloat16 kernels; on a GPU the "
              "ratio differs).", "", "Peak resident memory of decoding (MiB over the process after "
              f"loading, fresh process each, {result['memory_size']}x{result['memory_size']} images):", "",
              "| latents | decoding | peak MiB |", "|---|---|---|"]
    for row in result["memory"]:
        lines.append(f"| {row['batch']} | {row['decode']} | {row['peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image width and height")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--memory-size", type=int, default=256,
                        help="image width and height of the decoding-memory part (large enough to see)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    add_out_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = out_dir(args)
    with tempfile.TemporaryDirectory() as tmp:
        directory = build(Path(tmp) / "tiny-sd")
        result = {"size": args.size, "steps": args.steps, "batch": args.batch, "threads": args.threads,
                  "machine": f"{platform.machine()}, torch {torch.__version__}",
                  "time": time_part(directory, args.size, args.steps, args.repeats, args.batch),
                  "memory_size": args.memory_size, "memory": memory_part(directory, args.memory_size)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "text_to_image.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    text = report(result)
    atomic_write(out / "text_to_image.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


if __name__ == "__main__":
    main()
