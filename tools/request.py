"""What a command asks to sample, as one frozen value: :class:`SamplingRequest`.

Every command that samples (``edm generate``, ``edm fid gen``, ``edm bench``, ``edm tune-schedule``,
``edm tune-solver``) builds one request from its command line (``tools.options.sampling_request``), and
Python code builds one directly; the layers below take the request whole instead of restating its fields.
A request is plain data: nothing is loaded or checked when it is made. The checks happen once, when
``tools.generate.prepare_sampling`` turns it into a checked setup for a loaded model.

:class:`Prompting` is the text part of a request (``--prompt``, ``--negative-prompt``, ``--prompts``,
``--width``, ``--height``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["STAGE_FIELDS", "Prompting", "SamplingRequest"]

#: the fields a cascade's super-resolution stage sets apart from the base stage's (``--sr-steps``); the
#: sampler's options too
STAGE_FIELDS = ("sampler", "steps", "nfe", "schedule", "sigma_min", "sigma_max", "rho", "guidance")


@dataclass(frozen=True)
class Prompting:
    """The text conditioning a run asks for; None is "not asked for"."""

    prompt: str | None = None
    negative_prompt: str | None = None
    prompts: str | None = None  # a file of prompts, one per line
    width: int | None = None
    height: int | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class SamplingRequest:
    """One way of sampling a model, as asked (unchecked).

    Attributes:
        model: a model spec for ``tools.models.load_model`` (``"digits"``, a checkpoint path,
            ``"diffusers:DIR"``, an NVlabs ``.pkl`` with ``trust_pickle``) or a loaded ``LoadedModel``.
        sampler, options: a registered sampler and the options to override (``samplers.get(name).options``);
            also ``file:PATH`` (a fitted solver) or ``auto`` (with ``nfe``). None: the model's recorded
            sampler (``LoadedModel.sampling``, a distilled student's) with its steps and options, else heun.
        schedule, rho, sigma_min, sigma_max: the sigma schedule; None: the model's recorded schedule, else
            karras; the range defaults to the model's recorded one, else the model's own; table schedules get
            the model's ``sigmas``, ``diffusers`` gives a diffusers model's own timesteps.
        steps, nfe: the number of steps (default: the recorded sampler's steps, else 18) or an NFE budget
            (the most steps within it). How recorded defaults combine with given fields:
            ``tools.generate.sampling.with_recorded``.
        class_label: the class of every image; None draws one per seed (class-conditional models).
        guidance: the guidance weight w >= 0 (0: none; diffusers' guidance_scale = 1 + w); None is a text
            model's pipeline default, else 0.
        steering: a ``tools.steering`` value: negative class, guidance interval and rescale, autoguidance,
            classifier guidance, thresholding, img2img, inpainting, a corrector.
        prompting: a text model's prompt(s), negative prompt and image size.
        low_res: a super-resolution model's low-resolution input: one PNG for every seed, or a folder of one
            PNG per seed named as ``edm generate`` names them (``NNNNNN.png``, flat or in subfolders).
        noise_aug, noise_level: the augmentation level of that input, for the model whose conditioner's
            ``level_flag`` names it (``noise_aug``: our checkpoints' sigma_aug; ``noise_level``: diffusers'
            x4 upscaler's integer level); None is the model's recorded default.
        device, dtype: where and in which precision the model runs (the sampler's state stays in float32,
            or float64 for a float64 model). Default device: cuda when available, else cpu.
        trust_pickle: allow loading a pickled (NVlabs) network.
    """

    model: Any = "digits"
    sampler: str | None = None
    schedule: str | None = None
    steps: int | None = None
    nfe: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    class_label: int | None = None
    guidance: float | None = None
    steering: Any = None
    prompting: Prompting | None = None
    low_res: Any = None
    noise_aug: float | None = None
    noise_level: float | None = None
    device: Any = None
    dtype: Any = "float32"
    trust_pickle: bool = False

    def __post_init__(self):
        # a read-only copy: the request is a value, and the caller's dict may change afterwards
        object.__setattr__(self, "options", MappingProxyType(dict(self.options or {})))

    def replace(self, **changes: Any) -> SamplingRequest:
        """This request with some fields changed."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, request: SamplingRequest | None = None, **fields: Any) -> SamplingRequest:
        """``request`` with ``fields`` changed, or a new request of ``fields``: what the public entry points
        take, so that ``generate(request)`` and ``generate("digits", sampler="euler")`` both work."""
        return cls(**fields) if request is None else request.replace(**fields)
