"""``--guidance-method NAME``: how classifier-free guidance combines its conditional and negative predictions
(a rule of ``samplers.guidance.guiders``: cfg, APG, apg_mix, CFG-Zero*, TCFG, FDG, MAMBO-G), with each
rule's options as flags. Every method costs what CFG does: two evaluations (one call of ``2B``) per guided
denoiser call. ``pag``, ``slg`` and ``seg`` perturb the network's internals: their kind
(:mod:`tools.steering.perturbed`) builds them, with their own flags."""

from __future__ import annotations

from dataclasses import dataclass

from tools.common import BadInput, one_line

from .cfg import classifier_free
from .kind import Checking, Flag, SteeringKind
from .parse import number

__all__ = ["INTERNAL", "METHODS", "OPTIONS", "GuidanceMethodKind", "MethodOption"]

#: methods that need hooks into the network (perturbed attention, skipped layers, smoothed energy)
INTERNAL = ("pag", "slg", "seg")
METHODS = ("cfg", "apg", "apg_mix", "cfg_zero_star", "tcfg", "fdg", "mambo", *INTERNAL)


@dataclass(frozen=True)
class MethodOption:
    """A flag of one or more methods, and the rule option it sets (a list of numbers when ``listed``)."""

    flag: Flag
    methods: tuple[str, ...]
    option: str
    listed: bool = False


def _flag(name: str, help: str, type: type = float, metavar: str = "X", min: int | None = None) -> Flag:
    return Flag(name, "Guidance", help=help, type=type, metavar=metavar, min=min)


APG = ("apg", "apg_mix")
OPTIONS = (
    MethodOption(_flag("apg_eta", "APG (--guidance-method apg, apg_mix): weight in [0, 1] of the guidance "
                       "difference's part parallel to the conditional prediction (default 1; apg_mix 0).",
                       metavar="ETA"), APG, "eta"),
    MethodOption(_flag("apg_momentum", "APG: momentum in [-1, 1] of the guidance difference, averaged "
                       "over evaluations (0 is off; default 0, apg_mix -0.5).", metavar="M"),
                 APG, "momentum"),
    MethodOption(_flag("apg_norm_threshold", "APG: clip the guidance difference to this norm per sample "
                       "(0 is off; default 15, apg_mix 10).", metavar="R"), APG, "norm_threshold"),
    MethodOption(_flag("apg_mix_weight", "apg_mix: APG's weight (our w, diffusers' scale - 1) after the CFG "
                       "evaluations (default 9).", metavar="W"), ("apg_mix",), "apg_weight"),
    MethodOption(_flag("apg_mix_start_step", "apg_mix: evaluations 0..N use CFG, later ones APG "
                       "(default 5).", type=int, metavar="N", min=0), ("apg_mix",), "start_step"),
    MethodOption(_flag("zero_init_steps", "CFG-Zero* (--guidance-method cfg_zero_star): the first N "
                       "evaluations predict x0 = 0 (default 1; 0 is off).", type=int, metavar="N", min=0),
                 ("cfg_zero_star",), "zero_init_steps"),
    MethodOption(_flag("fdg_scales", "FDG (--guidance-method fdg): the guidance weight of each Laplacian "
                       "pyramid level, finest first (default --guidance W at every level).", type=str,
                       metavar="W1,W2,..."), ("fdg",), "weights", listed=True),
    MethodOption(_flag("fdg_levels", "FDG: pyramid levels (default 2, or as many as --fdg-scales).", type=int,
                       metavar="N", min=1), ("fdg",), "levels"),
    MethodOption(_flag("fdg_parallel_weights", "FDG: weight of the difference's part parallel to the "
                       "conditional level, one for all levels or one per level (default 1).", type=str,
                       metavar="P1,P2,..."), ("fdg",), "parallel_weights", listed=True),
    MethodOption(_flag("mambo_alpha", "MAMBO-G (--guidance-method mambo): damp the weight by exp(-ALPHA "
                       "|diff| / |negative|) per sample (default 8).", metavar="ALPHA"), ("mambo",), "alpha"),
)


def _value(option: MethodOption, method: str, value):
    """A flag's value checked against the rule's bounds for that option."""
    from samplers.guidance.guiders import RULES

    low, high = RULES[method].bounds[option.option]
    what = f"{method} {option.option.replace('_', ' ')}"
    if not option.listed:
        return number(value, what, option.flag.name, low, high)
    parts = str(value).split(",")
    return tuple(number(part.strip(), f"{what} (each of {value})", option.flag.name, low, high)
                 for part in parts)


class GuidanceMethodKind(SteeringKind):
    """The rule of classifier-free guidance, as ``settings["rule"]``: ``(name, options)`` (built afresh per
    denoiser: a rule holds per-run state)."""

    name = "guidance-method"
    flags = (Flag("guidance_method", "Guidance", choices=METHODS, metavar="NAME",
                  help="How guidance combines the conditional and negative predictions: cfg (default), apg, "
                       "apg_mix, cfg_zero_star, tcfg, fdg, mambo (each 2 network evaluations per call, as "
                       "cfg); pag, slg, seg (network internals)."),
             *(option.flag for option in OPTIONS))

    @staticmethod
    def method(c: Checking) -> str:
        return c.steering.guidance_method or "cfg"

    def requires(self, c: Checking) -> None:
        method = self.method(c)
        if method != "cfg" and method not in INTERNAL and not classifier_free(c):
            raise BadInput(f"--guidance-method {method} combines classifier-free guidance's predictions: "
                           "give --guidance W > 0 (and no --guide-model)", "guidance_method")
        for option in OPTIONS:
            if c.given(option.flag.name) and method not in option.methods:
                owners = " or ".join(option.methods)
                raise BadInput(f"{option.flag.flag} belongs to --guidance-method {owners}, not {method}",
                               option.flag.name)

    def check(self, c: Checking) -> None:
        method = self.method(c)
        if method == "cfg" or method in INTERNAL:
            return
        from samplers.guidance.guiders import check_pyramid, make_rule

        given = [option for option in OPTIONS if c.given(option.flag.name)]
        options = {o.option: _value(o, method, getattr(c.steering, o.flag.name)) for o in given}
        try:
            rule = make_rule(method, **options)
            if method == "fdg":
                check_pyramid(tuple(c.model.shape), rule.levels)
        except ValueError as e:
            raise BadInput(f"{one_line(e)}", given[-1].flag.name if given else "guidance_method") from None
        c.settings["rule"] = (method, options)
