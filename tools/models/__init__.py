"""Models for the front end: ``load_model(spec)`` -> :class:`LoadedModel` (see :mod:`tools.models.loader`).

Names are imported on first use, so ``tools.models.cli`` (``edm info``) loads without torch.
"""

from tools.common import lazy_exports

_EXPORTS = {
    "LoadedModel": ".base", "LabelledDenoiser": ".base", "ModelError": ".base",
    "BUILTIN": ".checkpoint", "list_builtin": ".checkpoint",
    "KINDS": ".loader", "describe_specs": ".loader", "load_model": ".loader",
    "model_identity": ".loader",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
