"""``--classifier SPEC`` and ``--classifier-scale S``: classifier guidance (Dhariwal & Nichol 2021),
``D + s sigma^2 grad log p(class | x, sigma)`` from a noise-aware classifier."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tools.common import BadInput

from .kind import CORRECTION, Building, Checking, Flag, SteeringKind
from .parse import number

__all__ = ["DEFAULT_CLASSIFIER_SCALE", "ClassifierGuidanceKind", "load_classifier"]

#: the classifier scale of `--classifier` when `--classifier-scale` is not given: the best measured on
#: the digits models (bench/results/guidance.md)
DEFAULT_CLASSIFIER_SCALE = 2.0


def load_classifier(spec, model, device):
    """The classifier of ``spec`` (or given loaded); BadInput unless it takes the model's images and (for
    a class-conditional model) has its classes."""
    if not isinstance(spec, str | Path):
        return spec
    import torch

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


class ClassifierGuidanceKind(SteeringKind):
    """``samplers.guidance.ClassifierGuidance`` over the guided denoiser (a classifier forward and
    backward per call: two evaluations). An unconditional model gets the classifier's classes, and
    samples without them."""

    name = "classifier"
    layer = CORRECTION
    flags = (
        Flag("classifier", "Guidance", metavar="SPEC",
             help="Classifier guidance (Dhariwal & Nichol 2021): D + s sigma^2 grad log p(class | x, sigma) "
                  "from a noise-aware classifier: 'digits-classifier' (built in) or a file written by `edm "
                  "train-classifier`. Costs a backward pass per step."),
        Flag("classifier_scale", "Guidance", type=float, metavar="S",
             help="Classifier guidance scale s >= 0 (1: the exact posterior for an exact classifier).  "
                  "[default: 2, the best measured on digits: 96% of the asked class, the lowest FD]"),
    )

    def requires(self, c: Checking) -> None:
        c.requires("classifier_scale", c.given("classifier"), "needs --classifier")

    def check(self, c: Checking) -> None:
        if not c.given("classifier"):
            return
        classifier = load_classifier(c.steering.classifier, c.model, c.device)
        c.settings["classifier"] = classifier
        if not c.model.num_classes:
            c.num_classes = classifier.num_classes
            c.settings["drop_labels"] = True
        scale = c.steering.classifier_scale
        c.settings["classifier_scale"] = (DEFAULT_CLASSIFIER_SCALE if scale is None else
                                          number(scale, "classifier scale", "classifier_scale", 0))

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        classifier, scale = b.settings.get("classifier"), b.settings.get("classifier_scale")
        if classifier is None or not scale:
            return denoiser
        import torch

        from samplers.guidance import ClassifierGuidance
        from tools.device import ModelDtype

        if isinstance(classifier, torch.nn.Module):  # evaluated in its own precision, like the model
            classifier = ModelDtype(classifier, next(classifier.parameters()).dtype)
        return ClassifierGuidance(denoiser, classifier, scale, interval=b.settings.get("interval"))
