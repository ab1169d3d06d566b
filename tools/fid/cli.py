"""The ``edm fid`` commands: reference statistics, scores of image sets, and scores of a sampler.

* ``edm fid ref --data SRC --dest REF.npz``: the detector's feature mean and covariance of SRC, written
  as NVlabs' ``fid.py`` writes them (``mu``, ``sigma``; plus metadata), atomically.
* ``edm fid calc --images SRC --ref REF``: FD (``fd_<detector>``; also ``fid`` with the Inception
  detector), and with ``--metrics`` KID and precision/recall, of SRC against REF. REF is a statistics
  ``.npz`` (FD only) or an image source (every metric: they need the reference's features).
* ``edm fid gen --model M --sampler S --nfe N --num K --ref REF``: the same, for the images
  ``edm generate`` would write with the same sampling options (one set, :mod:`tools.options`) for seeds
  0..K-1 (or ``--seeds``), made and scored in memory, batch by batch.
* ``edm fid train-detector``: trains the digits detector (``tools.fid.train_detector``).

A source is ``digits``, a folder or ``.zip`` of images, or a ``.npz``/``.npy`` uint8 array
(:mod:`tools.fid.sources`); ``--ref digits`` is the shipped ``tools/fid/refs/digits.npz``.
Every command is a thin layer over :func:`tools.fid.score` / :func:`tools.fid.make_reference`.
Progress goes to stderr; the result is the last line of stdout (``fd_digits 1.2345``), or one JSON
object with ``--json``. Under torchrun each rank takes every WORLD_SIZE-th image (or seed); the
statistics are summed across ranks and only rank 0 prints or writes. Runs on its own too:
``torchrun --standalone --nproc_per_node 2 -m tools.fid.cli ref --data digits --dest ref.npz``.
"""

from __future__ import annotations

import json
import math
import sys

import click

from tools.common import BadInput, one_line
from tools.options import (
    CONTEXT,
    DETECTORS,
    RECORDED_DEFAULTS,
    SectionedCommand,
    cli_errors,
    command,
    detector_option,
    detector_weights_option,
    option,
    progress_option,
    report_ignored,
    sampling_options,
    sampling_request,
    seeds_option,
    sr_stage_options,
    sr_stage_request,
    usage_error,
)

from . import KID_NOTE, MIN_IMAGES, TOO_FEW

#: what a cascade's report says of its super-resolution stage (from its record of settings)
CASCADE_INFO = ("model", "sampler", "steps", "guidance", "low_res", "seeds")


class _Failure(click.ClickException):
    """A one-line error, exit status 1 (bad data found while working; usage errors exit 2)."""


def _run(body, flags: dict[str, str] | None = None):
    """Run ``body()``: bad arguments are usage errors (exit 2), problems met while working one line (exit 1).
    ``flags``: the flag of a library argument where the command names it otherwise (``source``: --images).
    """
    try:
        return body()
    except click.ClickException:
        raise
    except BadInput as e:
        raise usage_error(e, (flags or {}).get(e.param)) from None
    except (ValueError, OSError) as e:  # unreadable images, missing detector weights, a full disk
        raise _Failure(one_line(e)) from None


def _report(result: dict, info: dict, as_json: bool) -> None:
    scores = {k: v for k, v in result.items() if k not in ("detector", "ref", "num")}
    if as_json:
        record = {**info, "detector": result["detector"], "ref": result["ref"], "num": result["num"],
                  **{k: (v if math.isfinite(v) else str(v)) for k, v in scores.items()}}
        click.echo(json.dumps(record))
    else:
        click.echo(" ".join(f"{k} {v:.6g}" for k, v in scores.items()))


def _started_ranks(device):
    from tools.device import resolve_device
    from tools.ranks import Ranks

    return Ranks().start(resolve_device(device))


# ---------------------------------------------------------------------------------------------------
# The group


class _FidGroup(click.Group):
    """``train-detector`` is imported only when it is asked for (or listed)."""

    LAZY = {"train-detector": ("tools.fid.train_detector", "train_detector")}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx, name):
        if name in self.LAZY:
            import importlib

            module, attr = self.LAZY[name]
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError):
                return None
        return super().get_command(ctx, name)


@click.group("fid", cls=_FidGroup, context_settings=CONTEXT)
def fid() -> None:
    """Score images: Frechet distance (FID / FD), KID and precision/recall against a reference.

    `edm fid ref` computes reference statistics, `edm fid calc` scores a set of images, `edm fid gen`
    scores a sampler without writing its images. Detectors: `inception` (the standard FID network;
    its weights are read from a local file, never downloaded) and `digits` (for the built-in model).
    """


_source_help = "'digits', a folder or .zip of images, or a .npz/.npy uint8 array"


# Options shared by ref, calc and gen (one definition each, so their flags and help stay alike).
ref_option = option("Reference", "--ref", "ref", required=True, metavar="REF",
                    help="Reference: statistics .npz (FD only), 'digits' (the shipped statistics), or an "
                         "image "
                         "source (every metric).")
metrics_option = option("Reference", "--metrics", default="fid", show_default=True, metavar="LIST",
                        help="Comma-separated: fid (FD), kid, pr (precision/recall); kid and pr need "
                             "reference "
                             "images. " + KID_NOTE)
device_option = option("Device", "--device", default=None,
                       help="cpu, cuda or cuda:N.  [default: cuda if available, else cpu]")
json_option = option("Other", "--json", "as_json", is_flag=True,
                     help="Print one JSON object instead of the result line.")
batch_option = option("Other", "--batch", type=click.IntRange(min=1), default=64, show_default=True,
                      metavar="N", help="Images per batch.")


def _image_count(ctx, param, value):
    """A number of images (--num): at least MIN_IMAGES, checked before any is read or made."""
    if value is not None and value < MIN_IMAGES:
        raise click.BadParameter(f"{value}: {TOO_FEW}", ctx=ctx, param=param)
    return value


def selection_options(command):
    """--num and --seed: a seeded subset of the images, chosen as NVlabs' fid.py does."""
    command = option("Other", "--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the --num choice.")(command)
    return option("Other", "--num", type=int, callback=_image_count, default=None, metavar="N",
                  help="Use N of the images, chosen by a seeded shuffle as NVlabs does.  "
                       "[default: all]")(command)


@fid.command("ref", cls=SectionedCommand, context_settings=CONTEXT)
@option("Reference", "--data", required=True, metavar="SRC", help=f"The reference images: {_source_help}.")
@option("Output", "--dest", required=True, type=click.Path(dir_okay=False), metavar="REF.npz",
        help="Where to write the statistics (mu, sigma, as NVlabs' fid.py); its folder is created.")
@option("Reference", "--detector", type=click.Choice(DETECTORS), default=None,
        help="Feature network.  [default: digits for 1x8x8 images, else inception]")
@detector_weights_option
@selection_options
@batch_option
@device_option
@progress_option
def ref_command(data, dest, detector, detector_weights, num, seed, batch, device, progress):
    """Compute reference statistics of a set of images and write them to REF.npz."""
    from .scoring import make_reference

    def body():
        ranks = _started_ranks(device)
        with ranks:
            result = make_reference(data, dest, detector=detector, detector_weights=detector_weights,
                                    device=device, batch=batch, num=num, seed=seed, ranks=ranks,
                                    progress=progress)
            if ranks.rank == 0:
                meta = result["meta"]
                click.echo(f"{meta['num']} images, detector {meta['detector']} ({meta['dim']}-d) -> {dest}",
                           err=True)
            ranks.barrier()

    _run(body)


@fid.command("calc", cls=SectionedCommand, context_settings=CONTEXT)
@option("Reference", "--images", required=True, metavar="SRC", help=f"The images to score: {_source_help}.")
@ref_option
@metrics_option
@detector_option
@detector_weights_option
@selection_options
@batch_option
@device_option
@progress_option
@json_option
def calc_command(images, ref, metrics, detector, detector_weights, num, seed, batch, device, progress,
                 as_json):
    """Score a set of images against a reference: FD / FID, and optionally KID and precision/recall."""
    from .scoring import score

    def body():
        ranks = _started_ranks(device)
        with ranks:
            result = score(images, ref, metrics, detector=detector, detector_weights=detector_weights,
                           device=device, batch=batch, num=num, seed=seed, ranks=ranks, progress=progress)
            if ranks.rank == 0:
                _report(result, {"images": str(images)}, as_json)

    _run(body, {"source": "--images"})


@command("gen")
@sampling_options(**RECORDED_DEFAULTS)
@sr_stage_options
@seeds_option(None, "Instead of --num: the seeds of the images, e.g. 0-49999 or 0-63,100 (NVlabs' syntax).")
@option("Seeds and classes", "--num", type=int, callback=_image_count, default=None, metavar="K",
        help="Images to generate: seeds OFFSET .. OFFSET+K-1.")
@option("Seeds and classes", "--seed-offset", type=click.IntRange(min=0), default=0, show_default=True,
        help="With --num: the first seed.")
@ref_option
@metrics_option
@detector_option
@detector_weights_option
@batch_option
@progress_option
@json_option
def gen_command(seeds, num, seed_offset, ref, metrics, detector, detector_weights, batch, progress, as_json,
                **flags):
    """Score a sampler: generate images in memory (those `edm generate` writes with the same sampling
    options and seeds) and score them batch by batch, writing nothing."""
    from tools.generate.cascade import prepare_stages
    from tools.generate.runner import sample_images
    from tools.seeds import format_seeds

    from .scoring import open_reference, score

    if (seeds is None) == (num is None):
        raise click.UsageError("give --num (seeds OFFSET..OFFSET+K-1) or --seeds, one of them")
    if seeds is not None and seed_offset:
        raise click.UsageError("--seed-offset goes with --num, not with --seeds")
    if seeds is not None and len(seeds) < MIN_IMAGES:
        raise click.BadParameter(f"{len(seeds)} seed: {TOO_FEW}", param_hint="'--seeds'")
    request = sampling_request(flags, "edm fid gen")
    request, sr = sr_stage_request(flags, request, "edm fid gen")
    seeds = seeds if seeds is not None else list(range(seed_offset, seed_offset + num))

    def body():
        reference = open_reference(ref, metrics, detector=detector, batch=batch)  # before the model loads
        setup = prepare_stages(request, sr)  # with --sr-model: a cascade, scored on its final images
        setup.check_seeds(seeds)
        if setup.prompts is not None:
            setup.prompts.assign(seeds)
        ranks = _started_ranks(setup.device)
        if ranks.rank == 0:
            report_ignored(setup.model, setup.prompts, setup.auto,
                           setup.steer.notes)
        with ranks, cli_errors(setup.device, batch):
            mine = ranks.share(seeds)
            batches = (sample_images(setup, mine[start:start + batch]) for start in range(0, len(mine),
                                                                                          batch))
            result = score(batches, reference, metrics, detector=detector, detector_weights=detector_weights,
                           device=setup.device, batch=batch, ranks=ranks, progress=progress)
            if ranks.rank == 0:
                info = {"model": str(request.model), "sampler": setup.sampler, "options": setup.options,
                        "schedule": setup.schedule, "steps": setup.steps, "nfe": setup.nfe,
                        "class": setup.class_label, "guidance": setup.guidance, "seeds": format_seeds(seeds),
                        "network_evaluations": setup.evaluations,
                        **getattr(setup, "base", setup).settings().get("steering", {})}  # a cascade's base
                if sr is not None:
                    info["sr"] = {key: setup.settings()["sr"][key] for key in CASCADE_INFO}
                _report(result, info, as_json)

    _run(body)


fid.add_command(gen_command)


if __name__ == "__main__":
    fid(prog_name="python -m tools.fid.cli")
    sys.exit(0)
