"""A :class:`Steering` checked for one model: :func:`check_steering` runs every registered kind's checks and
gives a :class:`CheckedSteering`, which builds the denoiser chain and each batch's start."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import torch

from samplers.editing import img2img_steps
from tools.labels import check_class

from .edit import EditImages, edit_start, plain_start
from .given import Steering
from .interval import steps_interval
from .kind import NETWORK, Building, Checking, SteeringKind
from .registry import kinds as registered_kinds

__all__ = ["CheckedSteering", "check_steering", "compose"]

#: what the class error adds for a model without classes that classifier guidance could give some (a text
#: model has none to give)
CLASSIFIER_HINT = " (give --classifier to guide towards one)"


def compose(kinds: Sequence[SteeringKind], settings: Mapping[str, Any], guidance: float, model,
            dtype: torch.dtype) -> tuple[Callable, int]:
    """``(denoiser, evaluations)``: the model's denoiser evaluated in ``dtype`` inside each kind's wrapper,
    innermost layer first, and the network evaluations one call of it costs (1, plus ``evaluations - 1``
    of each wrapper that declares ``evaluations``)."""
    ordered = sorted(kinds, key=lambda kind: kind.layer)  # stable: registration order within a layer
    build = Building(model=model, dtype=dtype, guidance=guidance, settings=settings,
                     network_kinds=tuple(k for k in ordered if k.layer <= NETWORK))
    denoiser = build.network(model.denoiser)
    evaluations = 1
    for kind in ordered:
        if kind.layer <= NETWORK:
            continue
        wrapped = kind.wrap(denoiser, build)
        if wrapped is not denoiser:
            evaluations += int(getattr(wrapped, "evaluations", 1)) - 1
        denoiser = wrapped
    return denoiser, evaluations


@dataclass(frozen=True)
class CheckedSteering:
    """A :class:`Steering` checked against one model: what the kinds' checks found (``settings``), the
    class (checked against ``num_classes``: the model's, or the classifier's for an unconditional model;
    None: drawn per seed), and the network evaluations of one denoiser call (an upper bound with a
    guidance interval, outside which a call is one pass)."""

    steering: Steering
    guidance: float
    num_classes: int
    class_label: int | None
    settings: Mapping[str, Any]
    kinds: tuple[SteeringKind, ...]
    evaluations_per_call: int
    autoencoder: Any = None  # a latent model's: init images are encoded, masks downsampled
    notes: tuple[str, ...] = field(default=())  # warnings for the user (one line each): the kinds' "warnings"

    @property
    def edit(self) -> EditImages | None:
        """The images of img2img / inpainting."""
        return self.settings.get("edit")

    @property
    def corrector(self):
        """The predictor-corrector's ``samplers.langevin.LangevinCorrector``, if any."""
        return self.settings.get("corrector")

    @property
    def resample(self) -> tuple[int, int] | None:
        """RePaint's ``(jump, count)``, if any."""
        return self.settings.get("resample")

    @property
    def threshold(self) -> dict | None:
        """The keyword arguments of ``samplers.guidance.Thresholded`` (the flags' or the model's own)."""
        return self.settings.get("threshold")

    def check_sampler(self, spec) -> None:
        """BadInput (one line naming the flag) when a kind's wrapper needs what sampler ``spec`` lacks."""
        for kind in self.kinds:
            kind.check_sampler(spec, self.settings)

    def denoiser(self, model, dtype: torch.dtype) -> Callable:
        """The model's denoiser evaluated in ``dtype`` with guidance and thresholding (editing is per run)."""
        return compose(self.kinds, self.settings, self.guidance, model, dtype)[0]

    def run_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The part of the schedule a run takes (img2img starts part-way down)."""
        if self.edit is None or self.edit.strength == 1:
            return sigmas
        return sigmas[len(sigmas) - 1 - img2img_steps(len(sigmas) - 1, self.edit.strength):]

    def for_schedule(self, sigmas: torch.Tensor) -> CheckedSteering:
        """This steering for a run on ``sigmas`` (its :meth:`run_sigmas`): ``--guidance-start/stop``'s steps
        made a sigma interval (``settings["interval"]``); BadInput when they leave no step to guide."""
        window = self.settings.get("steps_window")
        if window is None:
            return self
        interval = steps_interval(sigmas, window, self.settings.get("interval"))
        return replace(self, settings=MappingProxyType({**self.settings, "interval": interval}))

    def start(self, denoiser: Callable, latents: torch.Tensor, sigmas: torch.Tensor, seeds: Sequence[int],
              start_scale: float | None = None):
        """``(x, sigmas, denoiser, finish)`` of one batch: the start state, the schedule it runs, the
        denoiser (inpainting wraps it) and what to do with the result (inpainting pastes the kept region).

        The start is ``start_scale * latents`` (default ``sigmas[0]``, EDM's); at ``sigmas[0] = inf`` it
        is the latents themselves (``samplers.sample``'s convention for a start at infinity)."""
        if self.edit is None:
            return plain_start(denoiser, latents, sigmas, start_scale)
        return edit_start(self.edit, self.autoencoder, denoiser, latents, sigmas, seeds, start_scale)


def check_steering(steering: Steering | None, model, *, guidance: float, class_label: int | None, device,
                   dtype, trust_pickle: bool = False, prompts=None) -> CheckedSteering:
    """``steering`` checked against ``model`` (and the guidance weight and class); BadInput (one line naming
    the flag) for anything that does not fit. Every registered kind checks its flag combinations first,
    then its values (loading the guide model and the classifier); then the class is checked, against the
    model's classes or, for an unconditional model, the classifier's. ``prompts``
    (:class:`tools.generate.prompts.Prompts`): the model is conditioned on text, and classifier-free
    guidance's negative condition is the negative prompt."""
    steering = steering or Steering()
    kinds = registered_kinds()
    c = Checking(steering=steering, model=model, guidance=float(guidance), device=device, dtype=dtype,
                 trust_pickle=trust_pickle, prompts=prompts, class_label=class_label,
                 num_classes=model.num_classes)
    for kind in kinds:
        kind.requires(c)
    for kind in kinds:
        kind.check(c)
    class_label = check_class(c.num_classes, class_label, "" if c.text else CLASSIFIER_HINT)
    settings = MappingProxyType(dict(c.settings))
    _, evaluations = compose(kinds, settings, c.guidance, model, dtype)
    return CheckedSteering(steering=steering, guidance=c.guidance, num_classes=c.num_classes,
                           class_label=class_label, settings=settings, kinds=kinds,
                           evaluations_per_call=evaluations, autoencoder=getattr(model, "autoencoder", None),
                           notes=tuple(settings.get("warnings", ())))
