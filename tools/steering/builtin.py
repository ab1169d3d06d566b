"""The built-in steering kinds, registered in this order: the order of their flags on the help page and of
their checks (their wrappers are ordered by layer: the unconditional switch around each network, then
the weight as a network input, classifier-free guidance or autoguidance, then classifier guidance, then
thresholding)."""

from __future__ import annotations

from .autoguidance import AutoguidanceKind
from .cfg import ClassifierFreeKind
from .cfg_pp import CFGPlusPlusKind
from .classifier import ClassifierGuidanceKind
from .corrector import CorrectorKind
from .guidance_input import GuidanceInputKind
from .img2img import Img2ImgKind
from .inpainting import InpaintingKind
from .interval import GuidanceIntervalKind
from .method import GuidanceMethodKind
from .negative_class import NegativeClassKind
from .perturbed import PerturbedKind
from .registry import register
from .rescale import GuidanceRescaleKind
from .threshold import ThresholdKind
from .unconditional import UnconditionalKind

__all__ = ["BUILTIN_KINDS"]

BUILTIN_KINDS = (GuidanceInputKind(), ClassifierFreeKind(), NegativeClassKind(), GuidanceIntervalKind(),
                 GuidanceRescaleKind(), GuidanceMethodKind(), PerturbedKind(), CFGPlusPlusKind(),
                 AutoguidanceKind(), UnconditionalKind(), ClassifierGuidanceKind(), ThresholdKind(),
                 Img2ImgKind(), InpaintingKind(), CorrectorKind())

for _kind in BUILTIN_KINDS:
    register(_kind)
