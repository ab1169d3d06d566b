"""The ``edm generate`` command (a click command object; ``tools.cli`` registers it).

Also runs on its own, e.g. under torchrun:
``torchrun --standalone --nproc_per_node 2 -m tools.generate.cli --outdir out``.
torch and the registries are imported when the command runs (or its help is shown).
"""

from __future__ import annotations

import os

import click

from tools.options import (
    RECORDED_DEFAULTS,
    cli_errors,
    command,
    option,
    report_ignored,
    sampling_options,
    sampling_request,
    seeds_option,
    sr_stage_options,
    sr_stage_request,
)

__all__ = ["generate"]


@command("generate")
@sampling_options(**RECORDED_DEFAULTS)
@sr_stage_options
@seeds_option("0-63", "Seeds, one image each: ranges and commas, e.g. 0-63,100.")
@option("Output", "--outdir", required=True, type=click.Path(file_okay=False), metavar="DIR",
        help="Where the images go: DIR/000042.png for seed 42 (created if missing). DIR/edm-generate.json "
             "records the settings; a rerun with other settings is refused.")
@option("Output", "--subdirs", is_flag=True,
        help="One subfolder per 1000 seeds: DIR/001000/001042.png. A folder keeps the layout its images "
             "were written in.")
@option("Output", "--grid", type=click.Path(dir_okay=False), default=None, metavar="PATH",
        help="Also tile all the images, in --seeds order, into one near-square PNG at PATH.")
@option("Output", "--overwrite", is_flag=True,
        help="Re-create images that already exist and record these settings (by default existing images are "
             "skipped, so reruns resume, and a folder made with other settings is refused).")
@option("Output", "--batch", type=click.IntRange(min=1), default=64, show_default=True, metavar="N",
        help="Images per batch: changes speed and memory, not the images.")
@option("Output", "--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def generate(seeds, outdir, subdirs, grid, overwrite, batch, progress, **flags):
    """Write one PNG per seed, sampled from a diffusion model.

    Each image depends on its seed alone: the same seed gives the same image whatever --batch, its
    place in the batch or the number of processes. Images are named by seed (DIR/000042.png). Existing
    images are skipped, so a rerun of an interrupted command finishes it; --overwrite redoes them.
    Every argument is checked before anything is written.

    \b
    Examples:
      edm generate --outdir out                         64 digits, heun, 18 steps
      edm generate --outdir out --seeds 0-9 --class 3 --grid grid.png
      edm generate --outdir out --sampler dpmpp_2m_sde --nfe 20 --eta 0.5
      edm generate --outdir out --sampler euler_ancestral --guidance 1.5
      edm generate --outdir out --model runs/ckpt.json --sampler edm --s-churn 40
      edm generate --outdir out --model runs/pd/student-2   a student: its recorded sampler, steps, schedule
      edm generate --outdir lcm --model diffusers:lcm --prompt "a cat" --guidance 7.5     LCM's own loop
      edm generate --outdir out --class 3 --guidance 1 --guide-model digits-weak     autoguidance
      edm generate --outdir out --unconditional --classifier digits-classifier --class 3
      edm generate --outdir edit --init-image out --strength 0.3 --unconditional    img2img
      edm generate --outdir fill --init-image out/000003.png --mask right.png --class 3
      edm generate --outdir text --model digits-text --prompt 2024 --seeds 0-7     digit strings, 8x40
      edm generate --outdir sr --model SR.json --low-res out --noise-aug 0.2     super-resolution
      edm generate --outdir cascade --model BASE.json --sr-model SR.json --sr-steps 12  base/ + final
      edm generate --outdir sd --model diffusers:sd15 --prompt "a red bicycle" --schedule diffusers \
          --sampler dpmpp_2m --steps 25 --seeds 0-3         Stable Diffusion (guidance: its default 6.5)
      torchrun --standalone --nproc_per_node 4 -m tools.cli generate \\
          --outdir out --seeds 0-49999 --subdirs        one share of the seeds per process

    `edm samplers` and `edm schedules` list what --sampler and --schedule accept, with each
    sampler's options; `edm info MODEL` describes a model.
    """
    from . import plan as planning
    from . import runner as running

    request = sampling_request(flags, "edm generate")
    request, sr = sr_stage_request(flags, request, "edm generate")
    output = planning.Output(seeds=seeds, outdir=outdir, batch=batch, subdirs=subdirs, grid=grid,
                             overwrite=overwrite, progress=progress)
    with cli_errors():
        plan = planning.prepare(request, output, sr)
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0:
        report_ignored(plan.sampling.model, plan.sampling.prompts, plan.sampling.auto,
                       plan.sampling.steer.notes)
    if progress and rank0:
        click.echo(f"Generating {plan.describe()}", err=True)
    with cli_errors(plan.sampling.device, plan.batch):
        summary = running.run(plan)
    if summary.rank == 0:
        click.echo(summary.line())


if __name__ == "__main__":
    generate()
