"""The pipeline family registry: family name -> :class:`~.base.PipelineFamily`, and every pipeline class
name a family answers to.

A family module registers its family with ``@register`` on the class; the package imports each family
module, so a new family is one module plus its line in the package's imports. Registration checks what
would otherwise fail only when a model loads: a name or pipeline class registered twice, a network the
family does not require, a component both required and optional, a scheduler that is no SchedulerKind.
"""

from __future__ import annotations

from .base import PipelineFamily, SchedulerKind

__all__ = ["FAMILIES", "PIPELINES", "for_pipeline", "register"]

#: family name -> family, in registration order
FAMILIES: dict[str, PipelineFamily] = {}

#: model_index.json ``_class_name`` -> (family name, the pipeline's default guidance_scale), in
#: registration order (the order messages list the supported pipelines in)
PIPELINES: dict[str, tuple[str, float]] = {}


def register(cls: type[PipelineFamily]) -> type[PipelineFamily]:
    """Class decorator: add an instance of the family ``cls`` to the registry; ValueError if its name or
    one of its pipeline classes is taken, if it does not require its own network, VAE and scheduler, if a
    component is both required and optional, or if its scheduler is no :class:`~.base.SchedulerKind`."""
    family = cls()
    if family.name in FAMILIES:
        raise ValueError(f"pipeline family {family.name!r} is already registered")
    taken = [name for name in family.pipelines if name in PIPELINES]
    if taken:
        raise ValueError(f"pipeline family {family.name!r}: {', '.join(taken)} already belong to "
                         f"{', '.join(sorted({PIPELINES[name][0] for name in taken}))}")
    unlisted = [name for name in (family.network, "vae", "scheduler") if name not in family.required]
    if unlisted:
        raise ValueError(f"pipeline family {family.name!r} must require {', '.join(unlisted)}")
    both = [name for name in family.optional if name in family.required]
    if both:
        raise ValueError(f"pipeline family {family.name!r}: {', '.join(both)} both required and optional")
    if not isinstance(getattr(family, "scheduler", None), SchedulerKind):
        raise ValueError(f"pipeline family {family.name!r}: its scheduler must be a SchedulerKind instance")
    FAMILIES[family.name] = family
    for name, guidance_scale in family.pipelines.items():
        PIPELINES[name] = (family.name, guidance_scale)
    return cls


def for_pipeline(class_name) -> PipelineFamily | None:
    """The family of the pipeline class ``class_name`` (a model_index.json ``_class_name``), None if no
    registered family has it."""
    entry = PIPELINES.get(class_name) if isinstance(class_name, str) else None
    return None if entry is None else FAMILIES[entry[0]]
