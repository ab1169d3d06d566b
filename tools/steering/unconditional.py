"""``--unconditional``: the model samples without its class (the class then only names the classifier's
target). Also the switch that an unconditional model guided by a classifier takes (the classifier kind
sets ``settings["drop_labels"]``)."""

from __future__ import annotations

from collections.abc import Callable

from tools.common import BadInput

from .kind import NETWORK, Building, Checking, Flag, SteeringKind

__all__ = ["UnconditionalKind"]


class UnconditionalKind(SteeringKind):
    """``samplers.guidance.WithoutLabels`` around every network (the model and a guide model): the class
    label zeroed, or removed for a model that takes none."""

    name = "unconditional"
    layer = NETWORK
    flags = (Flag("unconditional", "Guidance", type=bool,
                  help="The model gets no class; --class then names only the classifier's target."),)

    def requires(self, c: Checking) -> None:
        if not c.steering.unconditional or c.given("classifier"):
            return
        if not c.model.num_classes:
            raise BadInput("--unconditional: this model is unconditional already", "unconditional")
        if c.class_label is not None:  # the class would be dropped, yet recorded as the run's
            raise BadInput(f"{c.class_label}: an unconditional run takes no class unless --classifier steers "
                           "it towards one: drop --class, or add --classifier", "class_label")

    def check(self, c: Checking) -> None:
        if c.steering.unconditional:
            c.settings["drop_labels"] = True

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        if not b.settings.get("drop_labels"):
            return denoiser
        from samplers.guidance import WithoutLabels

        return WithoutLabels(denoiser, remove=not b.model.num_classes)
