"""The guidance weight as a network input: a model that takes ``w`` itself (``LoadedModel.guidance_input``:
a guided distillation student, an LCM pipeline's UNet) is evaluated once per step with ``--guidance W``
among its keyword arguments, instead of classifier-free guidance's two evaluations. Classifier-free
guidance is then off (:func:`tools.steering.cfg.classifier_free`), and so are the flags that shape it: a
guidance interval, rescale, negative class or prompt, or another guide model would mean something the
network was not trained for. It declares no flag of its own."""

from __future__ import annotations

from collections.abc import Callable

from tools.common import BadInput

from .kind import GUIDANCE, Building, Checking, SteeringKind

__all__ = ["GuidanceInputKind", "WeightInput", "takes_weight"]

#: the flags that shape two-evaluation guidance, which a model taking the weight refuses
_REFUSED = ("guidance_interval", "guidance_start", "guidance_stop", "guidance_rescale", "guidance_method",
            "cfg_pp", "negative_class", "guide_model")


def takes_weight(model) -> bool:
    """The model takes the guidance weight as an input of its network."""
    return getattr(model, "guidance_input", None) is not None


class WeightInput:
    """``D(x, sigma, **cond)`` with the weight's keyword arguments (``GuidanceInput.kwargs``) added, for
    the batch of each call; one network evaluation per call."""

    def __init__(self, inner: Callable, guidance_input, w: float):
        self.inner, self.guidance_input, self.w = inner, guidance_input, float(w)

    def __call__(self, x, sigma, **cond):
        weight = self.guidance_input.kwargs(self.w, x.shape[0], x.device, x.dtype)
        return self.inner(x, sigma, **cond, **weight)

    def __getattr__(self, name):
        if name == "inner":  # not set yet (copying): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class GuidanceInputKind(SteeringKind):
    """Feeds ``--guidance W`` to a model that takes it (``settings["guidance_input"]``); a weight outside
    the model's trained range is a warning (``settings["warnings"]``), not an error."""

    name = "guidance-input"
    layer = GUIDANCE

    def requires(self, c: Checking) -> None:
        if not takes_weight(c.model):
            return
        for name in _REFUSED:
            c.requires(name, False, "shapes classifier-free guidance, but this model takes the guidance "
                       "weight as an input (one evaluation per step): drop it")
        if c.text and c.prompts.negative is not None:
            raise BadInput("--negative-prompt is classifier-free guidance's negative condition, but this "
                           "model takes the guidance weight as an input (one evaluation per step): drop it",
                           "negative_prompt")

    def check(self, c: Checking) -> None:
        if not takes_weight(c.model):
            return
        c.settings["guidance_input"] = c.model.guidance_input
        trained = c.model.guidance_input.range
        if trained is not None and not trained[0] <= c.guidance <= trained[1]:
            c.settings["warnings"] = (*c.settings.get("warnings", ()),
                                      f"--guidance {c.guidance:g} is outside the weights this model was "
                                      f"trained on ({trained[0]:g}...{trained[1]:g})")

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        guidance_input = b.settings.get("guidance_input")
        return denoiser if guidance_input is None else WeightInput(denoiser, guidance_input, b.guidance)
