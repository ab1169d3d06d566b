"""``--guide-model SPEC``: autoguidance (Karras et al. 2024), ``D + w (D - D_weak)`` with a weaker version of
the model; ``--guidance W`` sets w."""

from __future__ import annotations

import os
from collections.abc import Callable

from tools.common import BadInput, one_line

from .kind import GUIDANCE, Building, Checking, Flag, SteeringKind
from .load import load

__all__ = ["AutoguidanceKind", "is_the_model", "load_guide"]


def is_the_model(guide, model) -> bool:
    """``guide`` (a spec or a loaded model) is ``model`` itself: the same object, or a spec naming the
    files it was loaded from (specs compared resolved, so ``digits`` is its checkpoint's path)."""
    if guide is model:
        return True
    source = getattr(model, "source", None)
    if not isinstance(guide, str | os.PathLike) or source is None:
        return False
    from tools.models import model_identity

    return model_identity(guide) == model_identity(source)


def load_guide(spec, model, device, dtype, trust_pickle: bool = False):
    """The guide model of ``spec`` (or given loaded); BadInput unless it makes the model's images and
    classes."""
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


class AutoguidanceKind(SteeringKind):
    """``samplers.guidance.Autoguidance`` over the model and the guide, each evaluated as the model is
    (its dtype, the NETWORK-layer wrappers): two network evaluations per guided call."""

    name = "autoguidance"
    layer = GUIDANCE
    flags = (Flag("guide_model", "Guidance", metavar="SPEC",
                  help="Autoguidance (Karras et al. 2024): guide with this weaker version of the model, e.g. "
                       "digits-weak; --guidance sets w. Costs a second network per step."),)

    def requires(self, c: Checking) -> None:
        c.requires("guide_model", bool(c.guidance), "guides with --guidance W: give a weight W > 0")
        guide = c.steering.guide_model
        if c.given("guide_model") and is_the_model(guide, c.model):  # D + w (D - D) = D, at twice the cost
            raise BadInput(f"{guide} is the model itself: autoguidance needs a weaker version of it (e.g. "
                           "digits-weak for digits); the same model cancels out at twice the cost",
                           "guide_model")

    def check(self, c: Checking) -> None:
        if c.given("guide_model"):
            c.settings["guide"] = load_guide(c.steering.guide_model, c.model, c.device, c.dtype,
                                             c.trust_pickle)

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        guide = b.settings.get("guide")
        if guide is None:
            return denoiser
        from samplers.guidance import Autoguidance

        weak = b.network(guide.denoiser)
        return Autoguidance(denoiser, weak, b.guidance, interval=b.settings.get("interval"))
