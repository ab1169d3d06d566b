"""``--guidance-method pag | slg | seg``: guidance by the model's own network perturbed inside
(``samplers.guidance.PerturbedGuidance``): ``D_cond + w (D_cond - D_neg) + s (D_cond - D_pert)``, ``w`` from
``--guidance`` (0: no negative rows), ``s`` from the method's ``--*-scale``, the layers perturbed from its
``--*-layers`` (the network's names: ``mid``, ``down.1``, ``up.0.1`` on a UNet, ``blocks.N`` on a
transformer; the network's defaults when not given). One network call of ``3B`` per step (``2B`` at
``w = 0``); ``--guidance-interval`` limits both terms."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from tools.common import BadInput, one_line

from .kind import GUIDANCE, Building, Checking, Flag, SteeringKind

__all__ = ["METHODS", "PerturbedKind", "PerturbedMethod"]


@dataclass(frozen=True)
class PerturbedMethod:
    """One perturbed guider: its default scale (diffusers'), what it perturbs (for messages) and its
    options beyond scale and layers: ``(flag name, option of LoadedModel.perturbation, default)``."""

    default_scale: float
    needs: str
    options: tuple[tuple[str, str, float], ...] = ()


METHODS = {
    "pag": PerturbedMethod(3.0, "self-attention hooks"),
    "slg": PerturbedMethod(2.8, "transformer-block hooks"),
    "seg": PerturbedMethod(2.8, "self-attention query hooks", (("seg_blur_sigma", "blur_sigma", math.inf),)),
}


def _flags(method: str) -> tuple[Flag, ...]:
    name = method.upper()
    flags = (Flag(f"{method}_scale", "Guidance", type=float, metavar="S",
                  help=f"{name}'s weight s in D + w (D - D_neg) + s (D - D_perturbed) "
                       f"(default {METHODS[method].default_scale:g}); with --guidance-method {method}."),
             Flag(f"{method}_layers", "Guidance", metavar="LAYERS",
                  help=f"The layers {name} perturbs, comma-separated (mid, down.1, up.0.1 on a UNet; "
                       f"blocks.N on a transformer); default: the network's."))
    if method == "seg":
        flags += (Flag("seg_blur_sigma", "Guidance", type=float, metavar="SIGMA",
                       help="SEG's Gaussian blur of the attention queries, in tokens (default inf: their "
                            "mean)."),)
    return flags


def _layers(text: str | None) -> list[str] | None:
    if text is None:
        return None
    layers = [part for part in re.split(r"[,\s]+", text.strip()) if part]
    return layers or None


class PerturbedKind(SteeringKind):
    """PAG, SLG and SEG under ``--guidance-method``; the model's network hooked through
    ``LoadedModel.perturbation`` while checking (the hooks do nothing until a guided call sets rows)."""

    name = "perturbed-guidance"
    layer = GUIDANCE
    flags = _flags("pag") + _flags("slg") + _flags("seg")

    def requires(self, c: Checking) -> None:
        method = c.steering.guidance_method
        for flag in self.flags:
            c.requires(flag.name, flag.name.startswith(f"{method}_"),
                       f"needs --guidance-method {flag.name.split('_')[0]}")
        if method in METHODS:  # two guiders of one weight: which one --guidance W sets would be a guess
            c.requires("guide_model", False, f"does not combine with --guidance-method {method}")

    def check(self, c: Checking) -> None:
        method = c.steering.guidance_method
        if method not in METHODS:
            return
        spec = METHODS[method]
        scale = getattr(c.steering, f"{method}_scale")
        scale = spec.default_scale if scale is None else float(scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise BadInput(f"must be a finite number >= 0, got {scale:g}", f"{method}_scale")
        options = {}
        for flag, option, default in spec.options:
            value = getattr(c.steering, flag)
            options[option] = default if value is None else float(value)
            if not options[option] > 0:
                raise BadInput(f"must be > 0 (inf: the mean), got {value:g}", flag)
        layers = _layers(getattr(c.steering, f"{method}_layers"))
        try:
            perturbation = c.model.perturbation(method, layers, **options)
        except ValueError as e:
            default = "" if layers else " (the network's default layers; name others)"
            raise BadInput(f"{one_line(e)}{default}", f"{method}_layers") from None
        if perturbation is None:
            raise BadInput(f"--guidance-method {method} needs a network with {spec.needs}: "
                           f"{c.model.source} has none (they exist for diffusers UNet2DConditionModel "
                           "and SD3Transformer2DModel networks and this project's UNet and DiT checkpoints)")
        # the perturbed guider takes over the weight of classifier-free guidance
        w = c.guidance if c.settings.get("classifier_free") else 0.0
        c.settings["classifier_free"] = False
        c.settings["perturbed"] = (perturbation, scale, w)

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        chosen = b.settings.get("perturbed")
        if chosen is None:
            return denoiser
        from samplers.guidance.perturbed import PerturbedGuidance

        perturbation, scale, w = chosen
        return PerturbedGuidance(denoiser, perturbation, scale, w, b.settings.get("negative"),
                                 interval=b.settings.get("interval"), rescale=b.settings.get("rescale", 0.0))
