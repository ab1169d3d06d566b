"""The sampler names people type elsewhere, as (sampler, schedule, CFG++) of this library.

* A1111 / Forge's names ("DPM++ 2M Karras"): the sampler, and the schedule the suffix names (" Karras",
  " Exponential"); without a suffix the schedule is None: the command's default (the model's own).
* ComfyUI's ``*_cfg_pp`` names: the sampler run with CFG++ (``samplers.guidance.CFGPlusPlus``); A1111's
  "DDIM CFG++" likewise. ComfyUI's other names are this registry's own, but for ``uni_pc_bh2``.

Matching is case-insensitive (:func:`resolve`). Every alias names a registered sampler and schedule
(``tests/test_sampler_aliases.py`` checks both ways). A registry name is never an alias of another sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["ALIASES", "Alias", "resolve"]


@dataclass(frozen=True)
class Alias:
    """``name`` as typed elsewhere means ``sampler`` on ``schedule`` (None: the model's default), with
    CFG++ when ``cfg_pp``; ``source`` says whose name it is."""

    name: str
    sampler: str
    schedule: str | None = None
    cfg_pp: bool = False
    source: str = "A1111"


SUFFIXES = {"karras": " Karras", "exponential": " Exponential"}  # A1111's schedule suffixes


def _a1111(name: str, sampler: str, *schedules: str) -> tuple[Alias, ...]:
    """A1111's ``name`` (the model's schedule) and its suffixed forms, one per schedule A1111 offers."""
    return (Alias(name, sampler), *(Alias(name + SUFFIXES[s], sampler, s) for s in schedules))


def _comfy_cfg_pp(*names: str) -> tuple[Alias, ...]:
    return tuple(Alias(f"{name}_cfg_pp", name, cfg_pp=True, source="ComfyUI") for name in names)


_TABLE: tuple[Alias, ...] = (
    *_a1111("Euler", "euler"),
    *_a1111("Euler a", "euler_ancestral"),
    *_a1111("LMS", "lms", "karras"),
    *_a1111("Heun", "heun"),
    *_a1111("DPM2", "dpm_2", "karras"),
    *_a1111("DPM2 a", "dpm_2_ancestral", "karras"),
    *_a1111("DPM++ 2S a", "dpmpp_2s_ancestral", "karras"),
    *_a1111("DPM++ 2M", "dpmpp_2m", "karras"),
    *_a1111("DPM++ SDE", "dpmpp_sde", "karras"),
    *_a1111("DPM++ 2M SDE", "dpmpp_2m_sde", "karras", "exponential"),
    *_a1111("DPM++ 3M SDE", "dpmpp_3m_sde", "karras", "exponential"),
    *_a1111("DPM fast", "dpm_fast"),
    *_a1111("DPM adaptive", "dpm_adaptive"),
    *_a1111("DDIM", "ddim"),
    Alias("DDIM CFG++", "ddim", cfg_pp=True),
    *_a1111("DDPM", "ddpm"),
    *_a1111("UniPC", "unipc"),
    *_a1111("Restart", "restart"),
    *_a1111("LCM", "lcm"),
    *_a1111("iPNDM", "ipndm"),
    *_a1111("DEIS", "deis"),
    Alias("uni_pc_bh2", "unipc", source="ComfyUI"),
    *_comfy_cfg_pp("euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2s_ancestral", "res_multistep",
                   "res_multistep_ancestral", "gradient_estimation"),
    # --- aliases of samplers landing from other branches go here, once they are registered ---------------
    # er_sde, seeds_2, seeds_3, sa_solver, ipndm_v, heunpp2: ComfyUI names them as this registry will
    # (so no alias is needed), A1111 has no names for them and ComfyUI no *_cfg_pp forms; add an entry
    # here only if one of them gets a name of its own elsewhere.
)

#: alias (case-folded) -> :class:`Alias`
ALIASES: Mapping[str, Alias] = MappingProxyType({alias.name.casefold(): alias for alias in _TABLE})


def resolve(name: str) -> Alias | None:
    """The alias ``name`` stands for (case-insensitive), or None when it is no alias (a registry name, or
    an unknown one, which the registry's lookup then names)."""
    if not isinstance(name, str):
        return None
    return ALIASES.get(name.strip().casefold())
