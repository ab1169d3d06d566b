"""``--negative-class K``: classifier-free guidance away from class K instead of from the unconditional
model (the negative condition of :mod:`tools.steering.cfg`)."""

from __future__ import annotations

from tools.common import BadInput

from .cfg import classifier_free
from .kind import Checking, Flag, SteeringKind

__all__ = ["NegativeClassKind"]


class NegativeClassKind(SteeringKind):
    """The one-hot class K as classifier-free guidance's negative conditioning."""

    name = "negative-class"
    flags = (Flag("negative_class", "Guidance", type=int, metavar="K",
                  help="Classifier-free guidance away from class K instead of from the unconditional "
                       "model."),)

    def requires(self, c: Checking) -> None:
        c.requires("negative_class", classifier_free(c), "is the negative condition of classifier-free "
                   "guidance: give --guidance W > 0 (and no --guide-model)")
        k = c.steering.negative_class
        if k is not None and k == c.class_label:  # D + w (D - D) = D, at twice the evaluations
            raise BadInput(f"{k} equals --class {k}: the guidance would cancel (D + w (D - D) = D) at twice "
                           "the cost; give another class, or none to guide away from the unconditional "
                           "model", "negative_class")

    def check(self, c: Checking) -> None:
        k = c.steering.negative_class
        if k is None:
            return
        import torch

        from tools.device import state_dtype
        from tools.labels import check_class

        classes = c.model.num_classes
        k = check_class(classes, k, param="negative_class", what="negative class")
        one_hot = torch.nn.functional.one_hot(torch.tensor([int(k)]), classes)
        c.settings["negative"] = {"class_labels": one_hot.to(device=c.device, dtype=state_dtype(c.dtype))}
