"""The ``edm fid`` commands: reference statistics, scores of image sets, and scores of a sampler.

* ``edm fid ref --data SRC --dest REF.npz``: the detector's feature mean and covariance of SRC, written
  as NVlabs' ``fid.py`` writes them (``mu``, ``sigma``; plus metadata), atomically.
* ``edm fid calc --images SRC --ref REF``: FD (``fd_<detector>``; also ``fid`` with the Inception
  detector), and with ``--metrics`` KID and precision/recall, of SRC against REF. REF is a statistics
  ``.npz`` (FD only) or an image source (every metric: they need the reference's features).
* ``edm fid gen --model M --sampler S --nfe N --num K --ref REF``: the same, for the images
  ``edm generate`` would write for seeds 0..K-1, made and scored in memory, batch by batch.
* ``edm fid train-detector``: trains the digits detector (``tools.fid.train_detector``).

A source is ``digits``, a folder or ``.zip`` of images, or a ``.npz``/``.npy`` uint8 array
(:mod:`tools.fid.sources`); ``--ref digits`` is the shipped ``tools/fid/refs/digits.npz``.
Progress goes to stderr; the result is the last line of stdout (``fd_digits 1.2345``), or one JSON
object with ``--json``. Under torchrun each rank takes every WORLD_SIZE-th image (or seed); the
statistics are summed across ranks and only rank 0 prints or writes. Runs on its own too:
``torchrun --standalone --nproc_per_node 2 -m tools.fid.cli ref --data digits --dest ref.npz``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 120}
REFS = Path(__file__).resolve().parent / "refs"
METRICS = ("fid", "kid", "pr")
FEATURE_METRICS = ("kid", "pr")
DETECTORS = ("digits", "inception")


def shipped_ref(name: str) -> Path | None:
    """The shipped reference statistics called ``name`` (``refs/NAME.npz``), or None."""
    path = REFS / f"{name}.npz"
    return path if path.is_file() else None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class _Failure(click.ClickException):
    """A one-line error, exit status 1 (bad data found while working; usage errors exit 2)."""


def _bad(param: str, error) -> click.BadParameter:
    return click.BadParameter(error if isinstance(error, str) else _one_line(error), param_hint=f"'{param}'")


# ---------------------------------------------------------------------------------------------------
# Pieces shared by the commands


def _device(name):
    import torch

    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise _bad("--device", f"unknown device {name!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise _bad("--device", "CUDA is not available on this machine: use --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif device.type != "cpu":
        raise _bad("--device", f"unsupported device {device} (use cpu or cuda)")
    return device


def _open(src, param: str, *, num=None, seed=0, batch=64):
    from .sources import open_images

    try:
        return open_images(src, num=num, seed=seed, batch=batch)
    except ValueError as e:
        raise _bad(param, e) from None


def _detector(name: str, weights, device, shape):
    """The detector, checked once on a blank batch of ``shape`` (wrong image size fails here)."""
    import torch

    from .detectors import DetectorWeightsMissing, get_detector

    try:
        detector = get_detector(name, device=device, weights=weights)
    except DetectorWeightsMissing as e:
        raise _Failure(_one_line(e)) from None
    except ValueError as e:
        raise _bad("--detector-weights" if weights else "--detector", e) from None
    try:
        detector(torch.zeros((1, *shape), dtype=torch.uint8))
    except (ValueError, RuntimeError) as e:
        raise _bad("--detector", f"{_one_line(e)} (images are {list(shape)})") from None
    return detector


def _default_detector(meta: dict | None, shape) -> str:
    """The reference's detector when it names one, else ``digits`` for 1x8x8 images, else ``inception``."""
    if meta and meta.get("detector") in DETECTORS:
        return meta["detector"]
    return "digits" if tuple(shape) == (1, 8, 8) else "inception"


def _metrics(text: str) -> list[str]:
    names = [m.strip().lower() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        what = ", ".join(unknown) or repr(text)
        raise _bad("--metrics", f"unknown metric {what}; valid: {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


class _Ref:
    """``--ref``: statistics (``mu``, ``sigma``, metadata) or an image source."""

    def __init__(self, stats=None, meta=None, source=None, name=""):
        self.stats, self.meta, self.source, self.name = stats, meta or {}, source, name


def _load_stats(path: Path) -> _Ref:
    from .stats import load_ref, load_ref_metadata

    try:
        mu, sigma = load_ref(path)
    except (ValueError, OSError, KeyError) as e:
        raise _bad("--ref", f"{path}: {_one_line(e)}") from None
    try:
        meta = load_ref_metadata(path) or {}
    except (ValueError, OSError, KeyError):
        meta = {}
    return _Ref(stats=(mu, sigma), meta=dict(meta), name=str(path))


def _npz_has_stats(path: Path) -> bool | None:
    """True: keys mu and sigma; False: an array of uint8 images; None: neither (or unreadable)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.keys())
            if {"mu", "sigma"} <= keys:
                return True
            return any(data[k].dtype == np.uint8 and data[k].ndim in (3, 4) for k in keys)  # images
    except Exception:  # a broken file: load_ref names the problem
        return None


def _resolve_ref(ref: str, need_features: bool, detector: str | None, *, num, seed, batch) -> _Ref:
    """``--ref``: ``digits`` (shipped statistics, or the dataset when features are needed or the
    shipped file is for another detector), a statistics ``.npz``, or any image source."""
    if ref == "digits":
        shipped = shipped_ref("digits")
        if shipped is not None and not need_features and detector in (None, "digits") and num is None:
            return _load_stats(shipped)
        return _Ref(source=_open("digits", "--ref", num=num, seed=seed, batch=batch), name="digits")
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".npz" and path.is_file():
        kind = _npz_has_stats(path)
        if kind is not False:  # statistics, or a file that is neither: load_ref says what is wrong
            stats = _load_stats(path)
            if need_features:
                raise _bad("--ref", f"{path} holds statistics (mu, sigma) only: KID and precision/recall "
                           "need the reference images; give an image source as --ref")
            return stats
    return _Ref(source=_open(ref, "--ref", num=num, seed=seed, batch=batch), name=str(path))


def _ranks(device):
    from tools.generate import Ranks

    ranks = Ranks()
    ranks.start(device)
    return ranks


def _statistics(source, detector, device, ranks, *, keep: bool, progress: bool, desc: str = ""):
    """Feature statistics of this rank's share of ``source`` (an :class:`ImageSource`), summed over ranks."""
    from .stats import compute_statistics

    if source.indices is not None:
        mine = source.shard(ranks.rank, ranks.world)
        count = len(mine)
    else:  # made on the fly, already this rank's share
        mine, count = source, getattr(source, "mine", len(source))
    try:
        return compute_statistics(iter(mine), detector, device=device, keep=len(source) if keep else 0,
                                  progress=progress and ranks.rank == 0,
                                  total=math.ceil(count / source.batch))  # batches, for the bar
    except ValueError as e:
        raise _Failure(_one_line(e)) from None


def _check_dims(ref: _Ref, detector) -> None:
    mu, sigma = ref.stats
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise _bad("--ref", f"{ref.name}: mu {list(mu.shape)} and sigma {list(sigma.shape)} do not match")
    if mu.shape[0] != detector.dim:
        made = f" (made with detector {ref.meta['detector']!r})" if ref.meta.get("detector") else ""
        raise _bad("--ref", f"{ref.name} has {mu.shape[0]}-d features{made}, detector {detector.name!r} "
                   f"gives {detector.dim}-d: use the same detector as the reference")


def _check_detector_matches(ref: _Ref, detector_name: str) -> None:
    made = ref.meta.get("detector")
    if made and made != detector_name:
        raise _bad("--detector", f"{ref.name} was made with detector {made!r}, not {detector_name!r}")


def _scores(stats, ref: _Ref, ref_stats, detector, metrics) -> dict:
    from .frechet import frechet_distance, kid, precision_recall

    mu, sigma = stats.mean_cov()
    mu_ref, sigma_ref = ref.stats if ref_stats is None else ref_stats.mean_cov()
    result = {}
    if "fid" in metrics:
        fd = float(frechet_distance(mu, sigma, mu_ref, sigma_ref))
        result[f"fd_{detector.name}"] = fd
        if detector.name == "inception":
            result["fid"] = fd
    if "kid" in metrics:
        result["kid"] = float(kid(stats.features(), ref_stats.features()))
    if "pr" in metrics:
        precision, recall = precision_recall(ref_stats.features(), stats.features())
        result["precision"], result["recall"] = float(precision), float(recall)
    return result


def _report(result: dict, info: dict, as_json: bool) -> None:
    if as_json:
        record = {**info, **{k: (v if math.isfinite(v) else str(v)) for k, v in result.items()}}
        click.echo(json.dumps(record))
    else:
        click.echo(" ".join(f"{k} {v:.6g}" for k, v in result.items()))


def _reference(ref_arg: str, shape, *, need_features: bool, detector_name, detector_weights, device, seed,
               batch, ranks, progress: bool):
    """``(ref, ref_stats, detector)`` for scoring images of ``shape`` against ``--ref``: the reference, its
    feature statistics when it is a set of images (else None) and the checked detector."""
    ref = _resolve_ref(ref_arg, need_features, detector_name, num=None, seed=seed, batch=batch)
    name = detector_name or _default_detector(ref.meta, shape)
    if ref.stats is not None:
        _check_detector_matches(ref, name)
    elif tuple(ref.source.shape) != tuple(shape):
        raise _bad("--ref", f"{ref.name} holds {list(ref.source.shape)} images, the images are "
                   f"{list(shape)}")
    detector = _detector(name, detector_weights, device, shape)
    if ref.stats is not None:
        _check_dims(ref, detector)
    ref_stats = None
    if ref.source is not None:
        ref_stats = _statistics(ref.source, detector, device, ranks, keep=need_features, progress=progress)
    return ref, ref_stats, detector


def fd_reference(ref: str, shape, *, detector: str | None = None, detector_weights=None, device="cpu",
                 batch: int = 64, progress: bool = False):
    """For other tools (``edm bench``): what `edm fid gen` scores images of ``shape`` against by FD.

    Returns ``(detector, mu, sigma, name)``: the checked detector, the reference's feature mean and
    covariance and its name. Raises the fid commands' one-line click errors (naming --ref, --detector or
    --detector-weights). One process: an image reference is read whole.
    """
    import types

    one_process = types.SimpleNamespace(rank=0, world=1)
    found, ref_stats, det = _reference(str(ref), tuple(shape), need_features=False, detector_name=detector,
                                       detector_weights=detector_weights, device=device, seed=0, batch=batch,
                                       ranks=one_process, progress=progress)
    mu, sigma = found.stats if ref_stats is None else ref_stats.mean_cov()
    return det, mu, sigma, found.name


def _score(source, ref_arg: str, *, metrics, detector_name, detector_weights, device, num, seed, batch,
           ranks, progress: bool, as_json: bool, info: dict) -> None:
    """Score ``source`` against ``--ref``; prints on rank 0."""
    need_features = any(m in FEATURE_METRICS for m in metrics)
    ref, ref_stats, detector = _reference(ref_arg, source.shape, need_features=need_features,
                                          detector_name=detector_name, detector_weights=detector_weights,
                                          device=device, seed=seed, batch=batch, ranks=ranks,
                                          progress=progress)
    name = detector.name
    stats = _statistics(source, detector, device, ranks, keep=need_features, progress=progress)
    if ranks.rank == 0:
        result = _scores(stats, ref, ref_stats, detector, metrics)
        _report(result, {**info, "detector": name, "ref": ref.name, "num": len(source)}, as_json)


def _run(body):
    """Run ``body(ranks)`` with torch.distributed set up when under torchrun; errors as one line."""
    try:
        return body()
    except click.ClickException:
        raise
    except (ValueError, OSError) as e:
        raise _Failure(_one_line(e)) from None


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
detector_weights_option = click.option("--detector-weights", type=click.Path(), default=None, metavar="PATH",
                                       help="Read the detector's weights from PATH.")
device_option = click.option("--device", default=None,
                             help="cpu or cuda[:N].  [default: cuda when available]")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Progress bars on stderr.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object instead of the result line.")


def selection_options(command):
    """--num and --seed: a seeded subset of the images, chosen as NVlabs' fid.py does."""
    command = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Seed of the --num choice.")(command)
    return click.option("--num", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Use N of the images, chosen by a seeded shuffle as NVlabs does.  "
                             "[default: all]")(command)


@fid.command("ref", context_settings=CONTEXT)
@click.option("--data", required=True, metavar="SRC", help=f"The reference images: {_source_help}.")
@click.option("--dest", required=True, type=click.Path(dir_okay=False), metavar="REF.npz",
              help="Where to write the statistics (mu, sigma, as NVlabs' fid.py).")
@click.option("--detector", type=click.Choice(DETECTORS), default=None,
              help="Feature network.  [default: digits for 1x8x8 images, else inception]")
@detector_weights_option
@selection_options
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch.")
@device_option
@progress_option
def ref_command(data, dest, detector, detector_weights, num, seed, batch, device, progress):
    """Compute reference statistics of a set of images and write them to REF.npz."""
    from tools.generate import GenerateError, check_writable_dir

    from .stats import save_ref

    def body():
        dest_path = Path(dest).expanduser()
        try:
            check_writable_dir(dest_path.parent, "dest")
        except GenerateError as e:
            raise _bad("--dest", e) from None
        dev = _device(device)
        source = _open(data, "--data", num=num, seed=seed, batch=batch)
        name = detector or _default_detector(None, source.shape)
        det = _detector(name, detector_weights, dev, source.shape)
        ranks = _ranks(dev)
        try:
            stats = _statistics(source, det, dev, ranks, keep=False, progress=progress)
            if ranks.rank == 0:
                mu, sigma = stats.mean_cov()
                meta = dict(detector=name, dim=int(det.dim), num=len(source), source=source.name,
                            seed=seed if num is not None else None)
                save_ref(dest_path, mu, sigma, **{k: v for k, v in meta.items() if v is not None})
                click.echo(f"{len(source)} images, detector {name} ({det.dim}-d) -> {dest_path}", err=True)
            ranks.barrier()
        finally:
            ranks.close()

    _run(body)


@fid.command("calc", context_settings=CONTEXT)
@click.option("--images", required=True, metavar="SRC", help=f"The images to score: {_source_help}.")
@click.option("--ref", "ref", required=True, metavar="REF",
              help="Reference: statistics .npz (FD only), 'digits' (the shipped statistics), or an image "
                   "source (every metric).")
@click.option("--metrics", default="fid", show_default=True,
              help="Comma-separated: fid (FD), kid, pr (precision/recall); kid and pr need reference images.")
@click.option("--detector", type=click.Choice(DETECTORS), default=None,
              help="Feature network.  [default: the reference's; else digits for 1x8x8, else inception]")
@detector_weights_option
@selection_options
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True, help="Images per batch.")
@device_option
@progress_option
@json_option
def calc_command(images, ref, metrics, detector, detector_weights, num, seed, batch, device, progress,
                 as_json):
    """Score a set of images against a reference: FD / FID, and optionally KID and precision/recall."""
    def body():
        wanted = _metrics(metrics)
        dev = _device(device)
        source = _open(images, "--images", num=num, seed=seed, batch=batch)
        ranks = _ranks(dev)
        try:
            _score(source, ref, metrics=wanted, detector_name=detector, detector_weights=detector_weights,
                   device=dev, num=num, seed=seed, batch=batch, ranks=ranks, progress=progress,
                   as_json=as_json, info={"images": source.name})
        finally:
            ranks.close()

    _run(body)


@fid.command("gen", context_settings=CONTEXT)
@click.option("--model", default="digits", show_default=True, metavar="SPEC",
              help="The model, as for `edm generate`.")
@click.option("--sampler", default="heun", show_default=True, metavar="NAME", help="The sampler.")
@click.option("--nfe", type=click.IntRange(min=1), default=None, metavar="N",
              help="Denoiser evaluations per image (the most steps that fit).")
@click.option("--steps", type=click.IntRange(min=1), default=None, metavar="N",
              help="Number of steps instead of --nfe.  [default: 18]")
@click.option("--num", type=click.IntRange(min=1), required=True, metavar="K", help="Images to generate.")
@click.option("--seed-offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds are OFFSET .. OFFSET+K-1.")
@click.option("--ref", "ref", required=True, metavar="REF",
              help="Reference: statistics .npz (FD only), 'digits', or an image source (every metric).")
@click.option("--metrics", default="fid", show_default=True, help="Comma-separated: fid, kid, pr.")
@click.option("--detector", type=click.Choice(DETECTORS), default=None,
              help="Feature network.  [default: the reference's; else digits for 1x8x8, else inception]")
@detector_weights_option
@click.option("--batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Images per batch (generation and features).")
@device_option
@click.option("--trust-pickle", is_flag=True, help="Allow loading an NVlabs pickle (runs its code).")
@progress_option
@json_option
def gen_command(model, sampler, nfe, steps, num, seed_offset, ref, metrics, detector, detector_weights, batch,
                device, trust_pickle, progress, as_json):
    """Score a sampler: generate K images in memory (those `edm generate` writes for seeds 0..K-1, a
    random class per seed, no guidance) and score them batch by batch, writing nothing."""
    from tools.generate import GenerateError, prepare, sample_images

    from .sources import ImageSource

    def body():
        wanted = _metrics(metrics)
        dev = _device(device)
        seeds = list(range(seed_offset, seed_offset + num))
        try:  # the outdir is only probed (an anonymous temporary file); nothing is written
            plan = prepare(model, seeds, tempfile.gettempdir(), sampler=sampler, steps=steps, nfe=nfe,
                           batch=batch, device=dev, progress=False, trust_pickle=trust_pickle)
        except GenerateError as e:
            flag = {"model": "--model", "sampler": "--sampler", "steps": "--steps", "nfe": "--nfe",
                    "batch": "--batch", "device": "--device"}.get(e.param)
            raise (_bad(flag, e) if flag else click.UsageError(_one_line(e))) from None
        ranks = _ranks(dev)
        try:
            mine = seeds[ranks.rank::ranks.world]

            def batches():
                for start in range(0, len(mine), plan.batch):
                    yield sample_images(plan, mine[start:start + plan.batch])

            source = ImageSource.from_batches(batches(), plan.model.shape, len(mine), name=f"{model}")
            source.batch = plan.batch
            info = {"model": str(model), "sampler": plan.sampler, "steps": plan.steps, "nfe": plan.nfe,
                    "seeds": f"{seed_offset}-{seed_offset + num - 1}"}
            _score(_Counted(source, num), ref, metrics=wanted, detector_name=detector,
                   detector_weights=detector_weights, device=dev, num=None, seed=0, batch=batch, ranks=ranks,
                   progress=progress, as_json=as_json, info=info)
        finally:
            ranks.close()

    _run(body)


class _Counted:
    """This rank's in-memory source, reporting the total over all ranks as its length."""

    def __init__(self, source, total: int):
        self.source, self.total = source, total
        self.shape, self.name, self.indices, self.batch = source.shape, source.name, None, source.batch

    def __len__(self) -> int:
        return self.total

    def __iter__(self):
        return iter(self.source)

    @property
    def mine(self) -> int:
        return len(self.source)


if __name__ == "__main__":
    fid(prog_name="python -m tools.fid.cli")
    sys.exit(0)
