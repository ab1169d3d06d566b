"""Guidance and x0 transforms: denoisers wrapping denoisers, so each works with every sampler.

Compose them innermost first: the model -> guidance (classifier-free with a negative condition, interval,
rescale and a rule combining its two predictions, ``guiders``: APG, CFG-Zero*, ...; CFG++ (``CFGPlusPlus``);
the perturbed guiders PAG, SLG, SEG (``perturbed``); autoguidance; classifier guidance) -> x0 thresholding
-> editing (``samplers.editing``). Each keeps the per-seed property: sample i's output depends on sample
i's inputs only.
"""

from .auto import Autoguidance
from .cfg import ClassifierFreeGuidance, cfg_rescale, drop_class_labels, guided
from .cfg_pp import CFGPlusPlus
from .classifier import ClassifierGuidance, WithoutLabels, class_log_likelihood_grad
from .guiders import RULES, GuidanceRule, make_rule
from .threshold import THRESHOLDS, Thresholded, dynamic_threshold, static_threshold
from .wrapper import DenoiserWrapper

__all__ = ["RULES", "THRESHOLDS", "Autoguidance", "CFGPlusPlus", "ClassifierFreeGuidance",
           "ClassifierGuidance", "DenoiserWrapper", "GuidanceRule", "Thresholded", "WithoutLabels",
           "cfg_rescale", "class_log_likelihood_grad", "drop_class_labels", "dynamic_threshold", "guided",
           "make_rule", "static_threshold"]
