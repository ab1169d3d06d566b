"""What steers or edits a sample beyond its sampler, schedule, class and guidance weight, checked once for
every command that samples: the guidance family (negative class, interval, rescale, autoguidance,
classifier guidance, an unconditional model), x0 thresholding, img2img and inpainting, and a Langevin
corrector.

:class:`Steering` is the plain-data request (what the flags say); :func:`check_steering` turns it, for a
loaded model, into a :class:`Steer` that builds the denoiser (``samplers.guidance`` transforms in the
design's order: model -> guidance -> thresholding -> editing) and the per-seed start of a run.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from samplers import guidance as g
from samplers.editing import Inpainting, img2img_start, img2img_steps, paste
from samplers.langevin import LangevinCorrector
from samplers.noise import LATENT_STREAM, stream_seed
from tools.common import BadInput, one_line
from tools.device import ModelDtype, state_dtype
from tools.images import from_uint8, image_path, read_png
from tools.labels import check_class

__all__ = ["CORRECTORS", "DEFAULT_CLASSIFIER_SCALE", "Steer", "Steering", "check_steering", "load"]

#: the classifier scale of `--classifier` when `--classifier-scale` is not given: the best measured on
#: the digits models (bench/results/guidance.md)
DEFAULT_CLASSIFIER_SCALE = 2.0
CORRECTORS = ("langevin",)


@dataclass(frozen=True)
class Steering:
    """The steering and editing a run asks for; None (or False) is "not asked for"."""

    negative_class: int | None = None
    guidance_interval: tuple[float, float] | None = None
    guidance_rescale: float | None = None
    guide_model: Any = None  # a model spec, or a loaded model
    unconditional: bool = False
    classifier: Any = None  # a classifier spec ('digits-classifier', a path), or a loaded classifier
    classifier_scale: float | None = None
    threshold: str | None = None
    threshold_percentile: float | None = None
    init_image: str | None = None
    strength: float | None = None
    mask: str | None = None
    resample: tuple[int, int] | None = None
    corrector: str | None = None
    corrector_steps: int | None = None
    snr: float | None = None

    def given(self) -> dict[str, Any]:
        """The settings asked for, as plain data (a folder's record; empty when nothing is asked)."""
        out = {}
        for key, value in asdict(self).items():
            if value is None or value is False:
                continue
            if key in ("init_image", "mask"):
                value = _file_identity(Path(value))
            elif key in ("guide_model", "classifier") and not isinstance(value, str | Path):
                value = str(getattr(value, "source", type(value).__name__))
            out[key] = list(value) if isinstance(value, tuple) else value
        return out


def _file_identity(path: Path) -> str:
    """A path as the record keeps it: absolute, and for a file its content's hash too, so an edited init
    image or mask is a different setting (a per-seed folder is kept by path)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        return str(path)
    import hashlib

    return f"{path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]})"


def _number(value, what: str, param: str, low: float | None = None, high: float | None = None,
            low_open: bool = False) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{what} must be a number, got {value!r}", param) from None
    bad_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or bad_low or (high is not None and value > high):
        lo = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
        hi = "" if high is None else f" <= {high:g}"
        raise BadInput(f"{what} must satisfy {lo}value{hi}, got {value:g}", param)
    return value


def _requires(given, needed: bool, flag_text: str, needs: str, param: str) -> None:
    if given is not None and given is not False and not needed:
        raise BadInput(f"{flag_text} {needs}", param)


def parse_interval(interval) -> tuple[float, float]:
    """``"LO,HI"`` (HI may be inf) or a pair -> ``(lo, hi)`` with ``0 <= lo < hi``."""
    if isinstance(interval, str):
        interval = interval.split(",")
    try:
        return g.wrapper.check_interval(interval)
    except ValueError as e:
        raise BadInput(f"{one_line(e)} (give LO,HI in sigma, e.g. 0.28,5.42)", "guidance_interval") from None


@dataclass
class EditImages:
    """The init image(s) and mask of an edit, as float tensors in the model's data space."""

    init: torch.Tensor | None  # [1, C, H, W] for one PNG; None when per seed (a folder)
    folder: Path | None
    mask: torch.Tensor | None  # [1, 1, H, W] of 0/1 (1: generate)
    shape: tuple[int, ...]
    strength: float

    def check_seeds(self, seeds: Sequence[int]) -> None:
        """Every seed's init image exists and has the model's shape (a folder of per-seed images)."""
        if self.folder is None:
            return
        for seed in seeds:
            self._seed_image(seed)

    def _seed_image(self, seed: int) -> torch.Tensor:
        for subdirs in (False, True):
            path = image_path(self.folder, seed, subdirs)
            if path.is_file():
                return load_image(path, self.shape, "init_image")
        expected = image_path(self.folder, seed)
        raise BadInput(f"no init image for seed {seed} in {self.folder} (expected {expected}"
                       " as `edm generate` writes them)", "init_image")

    def init_for(self, seeds: Sequence[int], device, dtype) -> torch.Tensor:
        if self.init is not None:
            return self.init.to(device=device, dtype=dtype).expand(len(seeds), *self.shape)
        return torch.cat([self._seed_image(s) for s in seeds]).to(device=device, dtype=dtype)


def load_image(path: Path, shape: Sequence[int], param: str) -> torch.Tensor:
    """A PNG as ``[1, C, H, W]`` in [-1, 1]; BadInput unless it has ``shape`` (C, H, W)."""
    try:
        array = read_png(path)
    except ValueError as e:
        raise BadInput(one_line(e), param) from None
    got = (array.shape[2], array.shape[0], array.shape[1])
    if got != tuple(shape):
        raise BadInput(f"{path} is {got[0]}x{got[1]}x{got[2]} (channels x height x width); the model's "
                       f"images are {shape[0]}x{shape[1]}x{shape[2]}", param)
    return from_uint8(array[None])


def load_mask(path: Path, shape: Sequence[int]) -> torch.Tensor:
    """A mask PNG (white = generate, black = keep; a pixel >= 128 in every channel generates) as
    ``[1, 1, H, W]`` of 0/1; BadInput unless its size is the model's."""
    try:
        array = read_png(path)
    except ValueError as e:
        raise BadInput(one_line(e), "mask") from None
    if array.shape[:2] != tuple(shape[1:]):
        raise BadInput(f"mask {path} is {array.shape[0]}x{array.shape[1]}; the model's images are "
                       f"{shape[1]}x{shape[2]}", "mask")
    colour = array[:, :, :3] if array.shape[2] in (3, 4) else array[:, :, :1]
    generate = (colour >= 128).all(axis=2)
    return torch.from_numpy(generate).float()[None, None]


def _load_edit(steering: Steering, shape: Sequence[int]) -> EditImages | None:
    _requires(steering.strength, steering.init_image is not None, "--strength", "needs --init-image",
              "strength")
    _requires(steering.mask, steering.init_image is not None, "--mask", "needs --init-image (the image whose "
              "black region it keeps)", "mask")
    _requires(steering.resample, steering.mask is not None, "--resample", "is RePaint's resampling for "
              "inpainting: it needs --mask", "resample")
    if steering.init_image is None:
        return None
    strength = 1.0 if steering.strength is None else _number(steering.strength, "strength", "strength", 0, 1,
                                                             low_open=True)
    path = Path(steering.init_image).expanduser()
    if path.is_dir():
        init, folder = None, path
    elif path.is_file():
        init, folder = load_image(path, shape, "init_image"), None
    else:
        raise BadInput(f"init image {path} does not exist (give a PNG, or a folder of NNNNNN.png per seed)",
                       "init_image")
    mask = None
    if steering.mask is not None:
        mask_path = Path(steering.mask).expanduser()
        if not mask_path.is_file():
            raise BadInput(f"mask {mask_path} does not exist", "mask")
        mask = load_mask(mask_path, shape)
    return EditImages(init=init, folder=folder, mask=mask, shape=tuple(shape), strength=strength)


_MODEL_FIELDS = ("denoiser", "shape", "num_classes", "sigma_min", "sigma_max", "sigmas")


def load(model, device, dtype, trust_pickle: bool = False):
    """A model spec loaded with ``tools.models.load_model``, or an already loaded model checked."""
    if not isinstance(model, (str, os.PathLike)):
        for attr in _MODEL_FIELDS:
            if not hasattr(model, attr):
                raise BadInput(f"model must be a model spec or a LoadedModel; {model!r} has no {attr}",
                               "model")
        return model
    from tools.models import load_model

    return load_model(str(model), device=device, dtype=dtype, trust_pickle=trust_pickle)


def _load_guide(spec, model, device, dtype, trust_pickle):
    try:
        guide = load(spec, device, dtype, trust_pickle)
    except BadInput as e:
        raise BadInput(f"guide model: {one_line(e)}", "guide_model") from None
    if tuple(guide.shape) != tuple(model.shape) or guide.num_classes != model.num_classes:
        raise BadInput(f"the guide model {guide.source} makes {list(guide.shape)} images with "
                       f"{guide.num_classes} classes; the model makes {list(model.shape)} with "
                       f"{model.num_classes}: autoguidance needs a weaker version of the same model",
                       "guide_model")
    return guide


def _load_classifier(spec, model, device):
    if not isinstance(spec, str | Path):
        return spec
    from tools.models.classifier import load_classifier_spec

    classifier = load_classifier_spec(str(spec), device=device, dtype=torch.float32)
    shape = tuple(getattr(classifier, "shape", model.shape))
    if shape != tuple(model.shape):
        raise BadInput(f"the classifier {spec} takes {list(shape)} images; the model makes "
                       f"{list(model.shape)}", "classifier")
    if model.num_classes and classifier.num_classes != model.num_classes:
        raise BadInput(f"the classifier {spec} has {classifier.num_classes} classes; the model has "
                       f"{model.num_classes}", "classifier")
    return classifier


@dataclass
class Steer:
    """A checked :class:`Steering` for one model: builds the denoiser and each run's start."""

    steering: Steering
    guidance: float
    num_classes: int  # classes of the conditioning (the model's; the classifier's for an unconditional one)
    class_label: int | None = None  # checked against num_classes; None: drawn per seed
    guide: Any = None
    classifier: Any = None
    classifier_scale: float = 0.0
    negative: dict | None = None  # CFG's negative conditioning: None (the dropped label) or a replacement
    interval: tuple[float, float] | None = None
    rescale: float = 0.0
    threshold: dict | None = None  # keyword arguments of samplers.guidance.Thresholded
    edit: EditImages | None = None
    corrector: LangevinCorrector | None = None
    resample: tuple[int, int] | None = None
    autoencoder: Any = None  # a latent model's: init images are encoded, masks downsampled
    drop_labels: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def evaluations_per_call(self) -> int:
        """Network passes per denoiser call: one, plus one for CFG (its batch of 2B) or autoguidance (the
        weak model), plus one for classifier guidance (a classifier forward + backward); an upper bound
        with a guidance interval, outside which a call is one pass."""
        classifier = bool(self.classifier_scale) and self.classifier is not None
        return 1 + bool(self.guidance) + classifier

    def denoiser(self, model, dtype: torch.dtype) -> Callable:
        """The model's denoiser evaluated in ``dtype`` with guidance and thresholding (editing is per run)."""
        denoiser = _in_dtype(model.denoiser, dtype)
        if self.drop_labels:
            denoiser = g.WithoutLabels(denoiser, remove=not model.num_classes)
        if self.guide is not None:
            weak = _in_dtype(self.guide.denoiser, dtype)
            if self.drop_labels:
                weak = g.WithoutLabels(weak, remove=not model.num_classes)
            denoiser = g.Autoguidance(denoiser, weak, self.guidance, interval=self.interval)
        elif self.guidance:
            denoiser = g.ClassifierFreeGuidance(denoiser, self.guidance, self.negative,
                                                interval=self.interval, rescale=self.rescale)
        if self.classifier is not None and self.classifier_scale:
            classifier = self.classifier
            if isinstance(classifier, torch.nn.Module):  # evaluated in its own precision, like the model
                classifier = ModelDtype(classifier, next(classifier.parameters()).dtype)
            denoiser = g.ClassifierGuidance(denoiser, classifier, self.classifier_scale,
                                            interval=self.interval)
        if self.threshold is not None:
            denoiser = g.Thresholded(denoiser, **self.threshold)
        return denoiser

    def run_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The part of the schedule a run takes (img2img starts part-way down)."""
        if self.edit is None or self.edit.strength == 1:
            return sigmas
        return sigmas[len(sigmas) - 1 - img2img_steps(len(sigmas) - 1, self.edit.strength):]

    def start(self, denoiser: Callable, latents: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int],
              start_scale: float | None = None):
        """``(x, sigmas, denoiser, finish)`` of one batch: the start state, the schedule it runs, the
        denoiser (inpainting wraps it) and what to do with the result (inpainting pastes the kept region).

        The start is ``start_scale * latents`` (default ``sigmas[0]``, EDM's); at ``sigmas[0] = inf`` it
        is the latents themselves (``samplers.sample``'s convention for a start at infinity)."""
        if self.edit is None:
            if math.isinf(float(sigmas[0])):
                return latents, sigmas, denoiser, lambda x: x
            scale = float(sigmas[0]) if start_scale is None else float(start_scale)
            return latents * scale, sigmas, denoiser, lambda x: x
        init = self.edit.init_for(seeds, latents.device, latents.dtype)
        mask = self.edit.mask
        start = None
        if self.autoencoder is not None:  # into latent space, as diffusers' img2img / inpaint pipelines
            posterior, latents = seed_draws(seeds, latents.shape[1:], 2, latents.device, latents.dtype)
            with torch.no_grad():
                init = self.autoencoder.encode(init, noise=posterior).to(latents.dtype)
            if mask is not None:  # nearest-neighbour downsampling, as the pipelines
                mask = torch.nn.functional.interpolate(mask, size=tuple(latents.shape[2:]))
            # the pipelines blend the known region in after each step, not before the first
            start = float(sigmas[0]) if self.edit.strength == 1 else None
        x, run = img2img_start(init, latents, sigmas, self.edit.strength, start_scale)
        if mask is None:
            return x, run, denoiser, lambda out: out
        mask = mask.to(device=latents.device, dtype=latents.dtype)
        if start is None:
            x = torch.where(mask.bool(), x, init + latents * float(run[0]))  # the kept region starts noised
        inpainting = Inpainting(denoiser, init, mask, latents, start=start)
        return x, run, inpainting, lambda out: paste(out, init, mask)


def seed_draws(seeds: Sequence[int], shape: Sequence[int], count: int, device, dtype) -> list[torch.Tensor]:
    """The first ``count`` float32 standard normal draws of ``shape`` from each seed's latent generator
    (the one whose first draw is ``samplers.noise.latents``'), each as a ``[B, *shape]`` batch: a diffusers
    pipeline called with ``torch.Generator().manual_seed(seed)`` draws its VAE posterior sample first and
    its start noise second."""
    draws = [[] for _ in range(count)]
    device = torch.device(device)
    for seed in seeds:
        gen = torch.Generator(device=device).manual_seed(stream_seed(int(seed), LATENT_STREAM))
        for row in draws:
            row.append(torch.randn((1, *shape), generator=gen, device=device))
    return [torch.cat(row).to(device=device, dtype=dtype) for row in draws]


def _in_dtype(fn: Callable, dtype: torch.dtype) -> Callable:
    return ModelDtype(fn, dtype) if dtype != state_dtype(dtype) else fn


def check_steering(steering: Steering | None, model, *, guidance: float, class_label: int | None, device,
                   dtype, trust_pickle: bool = False, prompts=None) -> Steer:
    """``steering`` checked against ``model`` (and the guidance weight and class); BadInput (one line naming
    the flag) for anything that does not fit. Loads the guide model and the classifier. The class is
    checked here, against the model's classes or, for an unconditional model, the classifier's.
    ``prompts`` (:class:`tools.generate.prompts.Prompts`): the model is conditioned on text, and CFG's
    negative condition is the negative prompt."""
    text = prompts is not None
    steering = steering or Steering()
    s = steering
    uses_class = bool(model.num_classes) and not s.unconditional
    autoguided = s.guide_model is not None
    cfg = bool(guidance) and not autoguided
    _requires(s.guide_model, bool(guidance), "--guide-model", "guides with --guidance W: give a weight W > 0",
              "guide_model")
    if cfg and not uses_class and not text:
        why = "--unconditional takes the class away" if s.unconditional else "this model is unconditional"
        raise BadInput(f"classifier-free guidance needs the model's class, and {why}; --guide-model guides "
                       "without a class", "guidance")
    if s.unconditional and not model.num_classes and s.classifier is None:
        raise BadInput("--unconditional: this model is unconditional already", "unconditional")
    _requires(s.negative_class, cfg, "--negative-class", "is the negative condition of classifier-free "
              "guidance: give --guidance W > 0 (and no --guide-model)", "negative_class")
    _requires(s.guidance_rescale, cfg, "--guidance-rescale", "rescales classifier-free guidance: give "
              "--guidance W > 0 (and no --guide-model)", "guidance_rescale")
    _requires(s.classifier_scale, s.classifier is not None, "--classifier-scale", "needs --classifier",
              "classifier_scale")
    _requires(s.guidance_interval, bool(guidance) or s.classifier is not None, "--guidance-interval",
              "limits guidance: give --guidance W > 0 or --classifier", "guidance_interval")
    _requires(s.threshold_percentile, s.threshold == "dynamic", "--threshold-percentile",
              "is dynamic thresholding's: give --threshold dynamic", "threshold_percentile")
    _requires(s.corrector_steps, s.corrector is not None, "--corrector-steps", "needs --corrector langevin",
              "corrector_steps")
    _requires(s.snr, s.corrector is not None, "--snr", "is the corrector's: give --corrector langevin", "snr")

    classifier = None if s.classifier is None else _load_classifier(s.classifier, model, device)
    num_classes = model.num_classes or (classifier.num_classes if classifier is not None else 0)
    class_label = check_class(num_classes, class_label, " (give --classifier to guide towards one)")
    steer = Steer(steering=s, guidance=float(guidance), num_classes=num_classes, class_label=class_label,
                  classifier=classifier,
                  drop_labels=bool(s.unconditional) or (not model.num_classes and classifier is not None))
    if classifier is not None:
        steer.classifier_scale = (DEFAULT_CLASSIFIER_SCALE if s.classifier_scale is None else
                                  _number(s.classifier_scale, "classifier scale", "classifier_scale", 0))
    if text and cfg:
        steer.negative = prompts.negative_cond(device, state_dtype(dtype))
    if s.negative_class is not None:
        k = s.negative_class
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < model.num_classes:
            raise BadInput(f"negative class {k!r} is out of range: this model has classes "
                           f"0..{model.num_classes - 1}", "negative_class")
        one_hot = torch.nn.functional.one_hot(torch.tensor([int(k)]), model.num_classes)
        steer.negative = {"class_labels": one_hot.to(device=device, dtype=state_dtype(dtype))}
    if s.guidance_interval is not None:
        steer.interval = parse_interval(s.guidance_interval)
    if s.guidance_rescale is not None:
        steer.rescale = _number(s.guidance_rescale, "guidance rescale phi", "guidance_rescale", 0, 1)
    if autoguided:
        steer.guide = _load_guide(s.guide_model, model, device, dtype, trust_pickle)
    steer.threshold = _threshold(s) if s.threshold is not None else getattr(model, "threshold", None)
    steer.edit = _load_edit(s, getattr(model, "image_shape", model.shape))
    steer.autoencoder = getattr(model, "autoencoder", None)
    if s.corrector is not None:
        if s.corrector not in CORRECTORS:
            raise BadInput(f"unknown corrector {s.corrector!r}; valid: {', '.join(CORRECTORS)}", "corrector")
        try:
            steer.corrector = LangevinCorrector(
                **{k: v for k, v in (("steps", s.corrector_steps), ("snr", s.snr)) if v is not None})
        except ValueError as e:
            raise BadInput(one_line(e), "corrector_steps" if "steps" in str(e) else "snr") from None
    if s.resample is not None:
        steer.resample = _resample(s.resample)
    return steer


def _threshold(s: Steering) -> dict:
    if s.threshold not in g.THRESHOLDS:
        raise BadInput(f"unknown thresholding {s.threshold!r}; valid: {', '.join(g.THRESHOLDS)}", "threshold")
    if s.threshold == "static":
        return {"kind": "static"}
    percentile = 0.995 if s.threshold_percentile is None else _number(
        s.threshold_percentile, "threshold percentile", "threshold_percentile", 0, 1, low_open=True)
    return {"kind": "dynamic", "percentile": percentile}


def _resample(value) -> tuple[int, int]:
    if isinstance(value, str):
        value = value.split(",")
    try:
        jump, count = (int(v) for v in value)
    except (TypeError, ValueError):
        raise BadInput(f"resample must be JUMP,COUNT (two positive integers), got {value!r}",
                       "resample") from None
    if jump < 1 or count < 1:
        raise BadInput(f"resample must be JUMP,COUNT (two positive integers), got {jump},{count}", "resample")
    return jump, count
