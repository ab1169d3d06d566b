"""Pipeline families (text-to-image, DiT's class-conditional one and the x4 upscaler): each a
:class:`~.base.PipelineFamily` in a module of its own, registered by name in :mod:`.registry` when this
package imports it.

Adding a family: a module here with a ``PipelineFamily`` subclass under ``@register`` (its pipeline class
names and guidance scales, components, network, scheduler kind, backbone and conditioner), and its import
below. The import order is the registration order, the order messages list supported pipelines in.
"""

from .registry import FAMILIES, PIPELINES, for_pipeline, register

# Importing a family module registers it. This order is the registration order, which messages list the
# supported pipelines in: isort must keep it.
# isort: off
from . import sd, sdxl, sd3, dit, pixart, upscale, lcm  # noqa: F401
# isort: on

__all__ = ["FAMILIES", "PIPELINES", "for_pipeline", "register"]
