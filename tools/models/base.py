"""What every model kind loads into: :class:`LoadedModel`, the class-label convention
(:class:`LabelledDenoiser`) and :class:`ModelError`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from samplers.protocol import forward_attribute
from tools.common import BadInput

__all__ = ["Autoencoder", "ClasslessDenoiser", "GuidanceInput", "LabelledDenoiser", "LoadedModel",
           "LowResConditioner", "ModelError", "RecordedSampling", "TextConditioner", "parameter_count"]

# Discrete-time models also expose their sigma <-> timestep maps.
_TIME_MAPS = ("sigma_to_t", "t_to_sigma")


class ModelError(BadInput):
    """A model spec that cannot be loaded; the message is one line naming the file and the remedy."""

    def __init__(self, message: str, param: str | None = "model"):
        super().__init__(message, param)


#: the types of a recorded sampling default's fields that are not numbers
_RECORDED_TYPES = {"sampler": str, "schedule": str, "steps": int, "options": Mapping}


def _recorded_fits(key: str, value) -> bool:
    kind = _RECORDED_TYPES.get(key, (int, float))
    return not isinstance(value, bool) and isinstance(value, kind) and not (key == "steps" and value < 1)


@dataclass(frozen=True)
class RecordedSampling:
    """The sampling a model's files record as its default (a distilled student's sampler, steps and
    schedule); each field None (``options`` empty) where nothing is recorded.

    How a request uses it (``tools.generate.sampling.with_recorded``): without ``--sampler`` the recorded
    sampler runs with its steps and options (``--steps`` / ``--nfe`` and given options override); with
    ``--sampler`` the recorded steps and options apply only when it names the recorded sampler. The
    recorded schedule and sigma range apply to every registered sampler unless given; the recorded rho
    only on the recorded schedule.
    """

    sampler: str | None = None
    steps: int | None = None
    schedule: str | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    #: the keys of a checkpoint's ``config["sampling"]`` read into these fields
    KEYS = ("sampler", "steps", "schedule", "sigma_min", "sigma_max", "rho", "options")

    @classmethod
    def read(cls, section: Mapping[str, Any], where: str) -> RecordedSampling | None:
        """The fields of a recorded ``sampling`` section (other keys are someone else's), None if it records
        none of them; ModelError naming ``where`` for a value of the wrong type."""
        given = {key: section[key] for key in cls.KEYS if section.get(key) is not None}
        if not given:
            return None
        bad = [key for key, value in given.items() if not _recorded_fits(key, value)]
        if bad:
            raise ModelError(f"{where}: sampling.{bad[0]} = {given[bad[0]]!r} does not fit (sampler and "
                             "schedule are names, steps a positive integer, options an object, sigma_min, "
                             "sigma_max and rho numbers)")
        floats = {key: float(value) for key, value in given.items() if key not in _RECORDED_TYPES}
        return cls(**{**given, **floats, "options": dict(given.get("options") or {})})

    def describe(self) -> str:
        """One line: ``euler, 2 steps, karras sigma 0.5...80 rho 7``."""
        parts = [self.sampler or "heun"]
        parts[0] += "".join(f" {k}={v}" for k, v in self.options.items())
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.schedule is not None or self.sigma_min is not None or self.sigma_max is not None:
            schedule = self.schedule or "karras"
            if self.sigma_min is not None or self.sigma_max is not None:
                low = "model's" if self.sigma_min is None else f"{self.sigma_min:g}"
                high = "model's" if self.sigma_max is None else f"{self.sigma_max:g}"
                schedule += f" sigma {low}...{high}"
            if self.rho is not None:
                schedule += f" rho {self.rho:g}"
            parts.append(schedule)
        return ", ".join(parts)


class GuidanceInput(Protocol):
    """A model that takes the classifier-free guidance weight ``w`` as an input of its network (a guided
    distillation student, an LCM UNet's ``time_cond_proj_dim`` embedding) instead of being guided by two
    evaluations: ``--guidance W`` becomes the denoiser's keyword arguments :meth:`kwargs`.

    ``range`` is the ``(lo, hi)`` of weights the network was trained on (None: not recorded); a weight
    outside it is warned about, not refused.
    """

    range: tuple[float, float] | None
    keys: tuple[str, ...]  # the keyword arguments :meth:`kwargs` gives

    def describe(self) -> str: ...

    def kwargs(self, w: float, batch: int, device, dtype) -> dict[str, Tensor]:
        """The denoiser's keyword arguments for weight ``w`` and a batch of ``batch``."""
        ...


@dataclass
class LoadedModel:
    denoiser: Callable  # D(x, sigma, class_labels=None) -> x0_hat
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0: unconditional
    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None  # ascending discrete table of a discrete-time model, else None
    kind: str  # 'checkpoint' | 'diffusers' | 'nvlabs'
    source: str  # what was loaded (path or name)
    info: dict = field(default_factory=dict)  # what `edm info` shows
    # The model's own x0 thresholding (a diffusers scheduler's clip_sample / thresholding), as keyword
    # arguments of samplers.guidance.Thresholded; applied after guidance, unless --threshold overrides.
    threshold: dict | None = None
    # Latent models: the autoencoder the sampler's space is decoded with (see :class:`Autoencoder`);
    # ``shape`` is then the latent shape. None: the sampler runs in pixel space.
    autoencoder: Any = None
    # Text models: turns prompts into the denoiser's keyword arguments (see :class:`TextConditioner`).
    conditioner: Any = None
    # The pipeline's default classifier-free guidance weight w (diffusers' guidance_scale - 1), if any.
    default_guidance: float | None = None
    # Super-resolution models: turns low-resolution images into the denoiser's keyword arguments (see
    # :class:`LowResConditioner`). None: the model takes no image.
    low_res: Any = None
    # The sampler, steps and schedule the model records as its default (see :class:`RecordedSampling`);
    # None: heun, 18 steps, karras on the model's range.
    sampling: RecordedSampling | None = None
    # A model that takes the guidance weight as a network input (see :class:`GuidanceInput`); None: the
    # weight is classifier-free guidance's, two evaluations per step.
    guidance_input: Any = None
    # How the guiders that perturb the network's insides (PAG, SEG, SLG) reach it: ``(kind, layers,
    # **options)`` -> the perturbation its hooks read (see :meth:`perturbation`). None: no such hooks.
    perturb: Callable | None = None

    def perturbation(self, kind: str, layers: Sequence[str] | None = None, **options):
        """The network perturbation ``kind`` ("pag", "seg", "slg") hooked into ``layers`` (None: the
        model's default), off until its ``rows(mask)`` says which rows of a call to perturb; BadInput
        naming the flag at fault when the model cannot be perturbed so."""
        if self.perturb is None:
            raise BadInput(f"{kind} guidance perturbs the network's insides, which this {self.kind} model "
                           "does not expose", "guidance_method")
        return self.perturb(kind, layers, **options)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images written: ``shape`` itself, or its decoding for a latent model."""
        return self.shape if self.autoencoder is None else self.autoencoder.image_shape(self.shape)

    @property
    def ignored(self) -> list[str]:
        """Settings of the model's files that the loader does not honour (each one line), for warnings."""
        return list(self.info.get("ignored") or [])


class Autoencoder(Protocol):
    """The latent space of a latent diffusion model (Stable Diffusion's VAE with its scaling and shift).

    Images are ``[B, C, H, W]`` floats in [-1, 1]; latents are in the sampler's space, i.e. already
    ``(z - shift_factor) * scaling_factor``. ``decode`` works in slices of ``slice_size`` samples so memory
    does not grow with the batch; its output is float32 whatever the network's dtype.
    """

    factor: int  # spatial downsampling of the latent (8 for SD)

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int]: ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]: ...

    def encode(self, images: Tensor, noise: Tensor | None = None) -> Tensor:
        """Latents of ``images``: the posterior mean, or ``mean + std * noise`` (diffusers'
        ``latent_dist.sample(generator)`` when ``noise`` is that generator's draw of the latent shape)."""
        ...

    def decode(self, latents: Tensor) -> Tensor: ...


class TextConditioner(Protocol):
    """Prompts -> the denoiser's keyword arguments, through the model's own tokenizer(s) and encoder(s).

    ``encode(prompts, height=, width=)`` gives batched tensors (leading dimension ``len(prompts)``) for
    ``D(x, sigma, **cond)``. A prompt of ``None`` is "no negative prompt given": the pipeline's own default
    (the empty prompt, or zeros where the pipeline's config says ``force_zeros_for_empty_prompt``).
    """

    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]: ...


class LowResConditioner(Protocol):
    """A super-resolution model's low-resolution input (SR3 / CDM, diffusers' x4 upscaler): images ->
    the denoiser's keyword arguments.

    ``shape`` is ``(C, h, w)`` of the low-resolution images it takes (pixels in [-1, 1], as PNGs read
    by ``tools.images``); ``level_flag`` names the request field and flag of its augmentation level
    (``"noise_aug"``: our checkpoints' sigma_aug; ``"noise_level"``: diffusers' integer noise level) and
    ``default_level`` its default (the model's recorded best). ``encode`` noises each row of ``images``
    to ``level`` with noise from that row's seed (stream ``samplers.noise.AUGMENT_STREAM``, or the
    pipeline's own generator order) and returns ``D(x, sigma, **cond)``'s keyword arguments, batched
    like ``images``. A conditioner whose pipeline draws the start latents after the image noise from
    one generator also has ``start_latents(seeds, shape, device, dtype)``.
    """

    shape: tuple[int, int, int]
    level_flag: str
    default_level: float

    def describe(self) -> str: ...

    def check_level(self, level) -> float:
        """The level as a number, or BadInput naming ``level_flag`` when it is out of range."""
        ...

    def encode(self, images: Tensor, level: float, seeds: Sequence[int]) -> dict[str, Tensor]: ...


def parameter_count(module) -> int:
    if isinstance(module, nn.Module):
        return sum(p.numel() for p in module.parameters())
    return 0


def _one_hot(labels: Tensor) -> dict:
    return {"class_labels": labels}


class LabelledDenoiser(nn.Module):
    """``D(x, sigma, class_labels=None)`` over a denoiser with its own class input.

    ``class_labels`` is ``None`` (unconditional) or a ``[B, num_classes]`` one-hot tensor whose
    all-zero rows are unconditional.  ``convert(labels)`` turns a checked ``[B, K]`` float tensor
    into the keyword arguments of ``inner``; unconditional models get no class argument at all.
    The output has the dtype of ``x`` (NVlabs' networks answer in float32 whatever they get). Other keyword
    arguments go to ``inner`` as they are (a network's guidance weight, :class:`GuidanceInput`).
    The protocol's optional attributes of ``inner`` (``samplers.protocol.OPTIONAL_ATTRIBUTES``) and its
    discrete-time maps (``sigma_to_t``, ``t_to_sigma``) are exposed unchanged.
    """

    def __init__(self, inner, num_classes: int, convert: Callable[[Tensor], dict] | None = None):
        super().__init__()
        self.inner = inner
        self.num_classes = int(num_classes)
        self._convert = convert or _one_hot

    def labels(self, x: Tensor, class_labels) -> dict:
        if self.num_classes == 0:
            if class_labels is not None and bool(torch.as_tensor(class_labels).ne(0).any()):
                raise ValueError("this model is unconditional: class_labels must be None")
            return {}
        batch = x.shape[0]
        if class_labels is None:
            labels = torch.zeros(batch, self.num_classes, device=x.device, dtype=x.dtype)
        else:
            labels = torch.as_tensor(class_labels, device=x.device)
            if labels.ndim != 2 or labels.shape[1] != self.num_classes or labels.shape[0] not in (1, batch):
                raise ValueError(f"class_labels must be a [B, {self.num_classes}] one-hot tensor, "
                                 f"got shape {list(labels.shape)}")
            labels = labels.to(x.dtype).expand(batch, -1)
        return self._convert(labels)

    def forward(self, x: Tensor, sigma, class_labels=None, **network) -> Tensor:
        # ``network``: inputs the network itself takes besides the class (a guidance weight, GuidanceInput)
        out = self.inner(x, sigma, **self.labels(x, class_labels), **network)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _TIME_MAPS:
                return getattr(self.inner, name)
            return forward_attribute(self.inner, name)


class ClasslessDenoiser(nn.Module):
    """Base of a checkpoint's ``D(x, sigma, class_labels=None, **cond)`` conditioned on something other than a
    class (a text, a low-resolution image): class labels may only be None or all zero (the message says
    what the model takes: :attr:`takes`), the output has the dtype of ``x``, and the protocol's optional
    attributes of ``inner`` are exposed. Subclasses check their own keyword arguments and call
    :meth:`evaluate`, passing on those the network itself takes (a guidance weight: GuidanceInput)."""

    what = "model"
    takes = "its own condition"
    #: attributes of ``inner`` exposed as they are, beyond the protocol's optional ones
    passed_through: tuple[str, ...] = ()

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.num_classes = 0

    def refuse_classes(self, class_labels) -> None:
        if class_labels is not None and bool(torch.as_tensor(class_labels).ne(0).any()):
            raise ValueError(f"this {self.what} takes {self.takes}, not class labels")

    def evaluate(self, x: Tensor, sigma, **cond) -> Tensor:
        out = self.inner(x, sigma, **cond)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in type(self).passed_through:
                return getattr(self.inner, name)
            return forward_attribute(self.inner, name)
