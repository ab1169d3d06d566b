"""Classifier-free guidance (Ho & Salimans 2022), the guidance of ``--guidance W`` without
``--guide-model``: ``D + w (D - D_neg)``, the negative condition the dropped class label, a text model's
negative prompt or ``--negative-class``'s class (:mod:`tools.steering.negative_class`), limited by
``--guidance-interval``, rescaled by ``--guidance-rescale``, its two predictions combined by
``--guidance-method``'s rule (:mod:`tools.steering.method`), CFG++ under ``--cfg-pp``. It declares no flag
of its own."""

from __future__ import annotations

from collections.abc import Callable

from tools.common import BadInput

from .kind import GUIDANCE, Building, Checking, SteeringKind

__all__ = ["ClassifierFreeKind", "classifier_free"]


def classifier_free(c: Checking) -> bool:
    """The guidance weight is classifier-free guidance's (given, and neither a guide model nor the model's
    own network takes it: :mod:`tools.steering.guidance_input`)."""
    network_takes_it = getattr(c.model, "guidance_input", None) is not None
    return bool(c.guidance) and not c.given("guide_model") and not network_takes_it


class ClassifierFreeKind(SteeringKind):
    """``samplers.guidance.ClassifierFreeGuidance`` under ``--guidance W``; one call of ``2B`` (two
    network evaluations per sample) per guided evaluation."""

    name = "classifier-free"
    layer = GUIDANCE

    def requires(self, c: Checking) -> None:
        uses_class = bool(c.model.num_classes) and not c.steering.unconditional
        if classifier_free(c) and not uses_class and not c.text:
            why = ("--unconditional takes the class away" if c.steering.unconditional
                   else "this model is unconditional")
            raise BadInput(f"classifier-free guidance needs the model's class, and {why}; --guide-model "
                           "guides without a class", "guidance")

    def check(self, c: Checking) -> None:
        c.settings["classifier_free"] = classifier_free(c)
        if c.text and classifier_free(c):
            from tools.device import state_dtype

            c.settings.setdefault("negative", c.prompts.negative_cond(c.device, state_dtype(c.dtype)))

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        if not b.settings.get("classifier_free"):
            return denoiser
        from samplers.guidance import CFGPlusPlus, ClassifierFreeGuidance
        from samplers.guidance.guiders import make_rule

        guider = CFGPlusPlus if b.settings.get("cfg_pp") else ClassifierFreeGuidance  # --cfg-pp
        rule = b.settings.get("rule")  # --guidance-method's (tools.steering.method); a fresh one per build
        return guider(denoiser, b.guidance, b.settings.get("negative"), interval=b.settings.get("interval"),
                      rescale=b.settings.get("rescale", 0.0),
                      rule=None if rule is None else make_rule(rule[0], **rule[1]))
