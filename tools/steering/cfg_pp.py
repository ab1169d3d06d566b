"""``--cfg-pp``: CFG++ (Chung et al. 2024), classifier-free guidance whose sampler steps to the guided x0
but re-noises along the unconditional prediction (``samplers.guidance.CFGPlusPlus``, built by
:mod:`tools.steering.cfg` when ``settings["cfg_pp"]`` is set). Only the samplers that declare it in the
registry run it (``samplers.get(name).cfg_pp``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tools.common import BadInput

from .cfg import classifier_free
from .kind import Checking, Flag, SteeringKind
from .method import INTERNAL

__all__ = ["CFGPlusPlusKind"]


class CFGPlusPlusKind(SteeringKind):
    """The CFG++ switch, as ``settings["cfg_pp"]``; it costs what classifier-free guidance costs."""

    name = "cfg-pp"
    flags = (Flag("cfg_pp", "Guidance", type=bool,
                  help="CFG++ (Chung et al. 2024): step to the guided x0 but re-noise along the "
                       "unconditional one; needs --guidance W != 0 (W >= -1: the paper's lambda is 1 + W, "
                       "its range [0, 1] is W in [-1, 0]) and a sampler that takes it (`edm samplers` "
                       "column cfg++). ComfyUI's cfg is 1 + W."),)

    def requires(self, c: Checking) -> None:
        c.requires("cfg_pp", not c.given("guide_model"),
                   "is classifier-free guidance's, not autoguidance's: drop --guide-model")
        c.requires("cfg_pp", not c.given("classifier"),
                   "does not take classifier guidance: drop --classifier")
        c.requires("cfg_pp", (c.steering.guidance_method or "cfg") not in INTERNAL,
                   "steps along classifier-free guidance's negative prediction: it does not combine with "
                   "--guidance-method pag, slg or seg")
        c.requires("cfg_pp", classifier_free(c),
                   "needs classifier-free guidance: give --guidance W != 0 (W >= -1)")

    def check(self, c: Checking) -> None:
        if c.given("cfg_pp"):
            c.settings["cfg_pp"] = True

    def check_sampler(self, spec: Any, settings: Mapping[str, Any]) -> None:
        if settings.get("cfg_pp") and not spec.cfg_pp:
            from samplers.registry import cfg_pp_samplers

            raise BadInput(f"sampler {spec.name!r} does not take CFG++ (--cfg-pp); the samplers that do: "
                           f"{', '.join(cfg_pp_samplers())}", "cfg_pp")
