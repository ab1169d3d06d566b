"""Perturbations inside this project's backbones, for the guiders that push a prediction away from the
same network's perturbed one (``D + s (D - D_perturbed)``):

* ``pag`` (perturbed-attention guidance, Ahn et al. 2024): a self-attention map replaced by the identity,
  so each token's output is its own value;
* ``seg`` (smoothed-energy guidance, Hong 2024): the self-attention queries blurred over the token grid by
  a Gaussian of std ``blur_sigma`` (default infinite: every query the mean query);
* ``slg`` (skip-layer guidance, Hyung et al. 2024): a block skipped, i.e. it returns its input.

:func:`perturb` hooks the named layers of a network with one
:class:`~samplers.guidance.perturbed.RowPerturbation` and returns it. The hooks read its ``mask`` at
forward time and perturb the masked rows only; the other rows are computed as usual, so the perturbed
prediction runs in one batch with the unperturbed ones, and each row still depends on its own inputs
alone. With the mask None a hooked network computes bit for bit what it computes unhooked;
:func:`unperturb` removes the hooks.

Layers are named as the network names its modules (:func:`perturbable_layers`):

* :class:`~edm.networks.UNet`: for pag and seg its blocks with self-attention (``enc.3``, ``mid.0``,
  ``dec.1``, ...); for slg its blocks whose input and output have one shape (the decoder's blocks take the
  encoder's activations concatenated, so none of them can return its input);
* :class:`~edm.dit.DiT`: ``blocks.0`` ... ``blocks.{depth - 1}`` for all three.

Without named layers the middle one is perturbed (:func:`default_layers`). Another network class joins
with :func:`register_anatomy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from samplers.guidance.perturbed import RowPerturbation, blur_queries

from .dit import DiT
from .networks import Block, UNet

__all__ = ["AttentionLayer", "Anatomy", "PerturbationError", "KINDS", "default_layers", "perturb",
           "perturbable_layers", "register_anatomy", "unperturb"]


class PerturbationError(ValueError):
    """A perturbation that cannot be made; ``field`` names what is at fault: ``"kind"``, ``"layers"`` or
    an option's name."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class AttentionLayer:
    """A self-attention layer as the hooks see it: ``module.qkv`` gives queries, keys and values
    concatenated in that order along ``channel_dim``, and ``module.proj`` takes the attention output laid
    out as the values are. ``grid`` is the ``(height, width)`` of the tokens (row-major), or None when the
    activations are feature maps ``[B, C, H, W]``, their own grid."""

    module: nn.Module
    channel_dim: int
    grid: tuple[int, int] | None = None

    def blurred(self, q: Tensor, sigma: float) -> Tensor:
        """Queries ``q`` (as ``qkv`` lays them out) blurred over the token grid."""
        if self.grid is not None:
            return blur_queries(q, *self.grid, sigma)
        B, C, H, W = q.shape
        return blur_queries(q.flatten(2).transpose(1, 2), H, W, sigma).transpose(1, 2).reshape(B, C, H, W)


@dataclass(frozen=True)
class Anatomy:
    """Where a network class can be perturbed: its self-attention layers and the blocks that may return
    their input, each by layer name in the network's order, and the layer perturbed when none is named."""

    attention: Callable[[nn.Module], dict[str, AttentionLayer]]
    blocks: Callable[[nn.Module], dict[str, nn.Module]]
    default: Callable[[nn.Module], str]


_ANATOMIES: dict[type, Anatomy] = {}


def register_anatomy(cls: type, anatomy: Anatomy) -> None:
    """Make networks of ``cls`` (and its subclasses) perturbable."""
    _ANATOMIES[cls] = anatomy


def _anatomy(network: nn.Module) -> Anatomy | None:
    return next((_ANATOMIES[cls] for cls in type(network).__mro__ if cls in _ANATOMIES), None)


register_anatomy(UNet, Anatomy(
    attention=lambda net: {name: AttentionLayer(m.attn, channel_dim=1) for name, m in net.named_modules()
                           if isinstance(m, Block) and m.attn is not None},
    # a block keeps its input's shape exactly when its residual block's skip is the identity
    blocks=lambda net: {name: m for name, m in net.named_modules()
                        if isinstance(m, Block) and isinstance(m.res.skip, nn.Identity)},
    default=lambda net: "mid.0"))

register_anatomy(DiT, Anatomy(
    attention=lambda net: {f"blocks.{i}": AttentionLayer(b.attn, -1, (net.height // net.patch_size,
                                                                         net.width // net.patch_size))
                           for i, b in enumerate(net.blocks)},
    blocks=lambda net: {f"blocks.{i}": b for i, b in enumerate(net.blocks)},
    default=lambda net: f"blocks.{len(net.blocks) // 2}"))


# ---------------------------------------------------------------------------------------------------
# The hooks: each reads the perturbation's mask when its layer runs


def _rows(perturbation: RowPerturbation, like: Tensor) -> Tensor | None:
    """The perturbation's mask as a column over ``like``'s rows, None when it is off."""
    mask = perturbation.mask
    if mask is None:
        return None
    if tuple(mask.shape) != (like.shape[0],):
        raise ValueError(f"the {perturbation.kind} mask has shape {list(mask.shape)} for a batch of "
                         f"{like.shape[0]}")
    return mask.to(like.device, torch.bool).reshape(-1, *[1] * (like.ndim - 1))


def _identity_attention(layer: AttentionLayer, perturbation: RowPerturbation) -> list[RemovableHandle]:
    """PAG: the attention output of the masked rows replaced by their values on its way into ``proj``."""
    kept: dict[str, Tensor] = {}

    def keep_values(module, args, out):
        if perturbation.mask is not None:
            kept["values"] = out.chunk(3, dim=layer.channel_dim)[2]

    def values_as_output(module, args):
        rows = _rows(perturbation, args[0])
        return None if rows is None else (torch.where(rows, kept.pop("values"), args[0]), *args[1:])

    return [layer.module.qkv.register_forward_hook(keep_values),
            layer.module.proj.register_forward_pre_hook(values_as_output)]


def _blurred_queries(layer: AttentionLayer, perturbation: RowPerturbation) -> list[RemovableHandle]:
    """SEG: the queries of the masked rows blurred as they leave ``qkv``."""

    def blur(module, args, out):
        rows = _rows(perturbation, out)
        if rows is None:
            return None
        q, k, v = out.chunk(3, dim=layer.channel_dim)
        q = torch.where(rows, layer.blurred(q, perturbation.options["blur_sigma"]), q)
        return torch.cat([q, k, v], dim=layer.channel_dim)

    return [layer.module.qkv.register_forward_hook(blur)]


def _skipped(block: nn.Module, perturbation: RowPerturbation) -> list[RemovableHandle]:
    """SLG: the block's output of the masked rows replaced by its input."""

    def skip(module, args, kwargs, out):
        rows = _rows(perturbation, out)
        return None if rows is None else torch.where(rows, args[0] if args else kwargs["x"], out)

    return [block.register_forward_hook(skip, with_kwargs=True)]


def _no_options(kind: str, options: dict) -> dict:
    if options:
        raise PerturbationError(f"{kind} takes no options, got {', '.join(sorted(options))}",
                                next(iter(options)))
    return {}


def _blur_options(kind: str, options: dict) -> dict:
    options = dict(options)
    sigma = options.pop("blur_sigma", math.inf)
    if options:
        raise PerturbationError(f"{kind} takes only blur_sigma, got {', '.join(sorted(options))}",
                                next(iter(options)))
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        sigma = math.nan
    if not sigma > 0:
        raise PerturbationError(f"{kind}'s blur_sigma must be a positive number (inf: every query the mean), "
                                f"got {sigma!r}", "blur_sigma")
    return {"blur_sigma": sigma}


@dataclass(frozen=True)
class _Kind:
    sites: str  # the Anatomy field naming the layers it hooks
    what: str  # those layers, in messages
    hook: Callable[..., list[RemovableHandle]]
    options: Callable[[str, dict], dict]


_KINDS = {
    "pag": _Kind("attention", "self-attention layers", _identity_attention, _no_options),
    "seg": _Kind("attention", "self-attention layers", _blurred_queries, _blur_options),
    "slg": _Kind("blocks", "blocks that can return their input", _skipped, _no_options),
}
KINDS = tuple(_KINDS)

#: the hooks :func:`perturb` put on each network, for :func:`unperturb`
_HANDLES: WeakKeyDictionary[nn.Module, list[RemovableHandle]] = WeakKeyDictionary()


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise PerturbationError(f"unknown perturbation {kind!r}; valid: {', '.join(KINDS)}", "kind")
    return _KINDS[kind]


def _sites(network: nn.Module, kind: str) -> dict:
    anatomy = _anatomy(network)
    return {} if anatomy is None else getattr(anatomy, _kind(kind).sites)(network)


def perturbable_layers(network: nn.Module, kind: str) -> list[str]:
    """The names of the layers of ``network`` that ``kind`` can perturb, in the network's order (none for a
    network class without a registered :class:`Anatomy`)."""
    return list(_sites(network, kind))


def default_layers(network: nn.Module, kind: str) -> list[str]:
    """The layers perturbed when none are named: the middle block's (``mid.0`` of a UNet, the middle block
    of a DiT)."""
    anatomy = _anatomy(network)
    return [] if anatomy is None or not _sites(network, kind) else [anatomy.default(network)]


def perturb(network: nn.Module, kind: str, layers: Sequence[str] | str | None = None,
            **options) -> RowPerturbation:
    """Hook ``layers`` of ``network`` (names, or one comma-separated string; default
    :func:`default_layers`) with a new perturbation of ``kind``
    and return it: switched off (mask None) until its ``rows(mask)`` says which rows to perturb.
    :class:`PerturbationError` (one line) for an unknown kind, layer or option, or a network without
    such layers."""
    spec = _kind(kind)
    sites = _sites(network, kind)
    if not sites:
        known = ", ".join(cls.__name__ for cls in _ANATOMIES)
        raise PerturbationError(f"{kind} needs {spec.what}, and none are known in a {type(network).__name__} "
                                f"(known: those of {known})", "kind")
    if isinstance(layers, str):  # "enc.3,mid.0", as a flag gives them
        layers = [name.strip() for name in layers.split(",")]
    names = default_layers(network, kind) if layers is None else list(layers)
    unknown = [name for name in names if name not in sites]
    if unknown or not names:
        given = f"unknown layer {unknown[0]!r}" if unknown else "no layers given"
        raise PerturbationError(f"{given} for {kind}; valid: {', '.join(sites)}", "layers")
    perturbation = RowPerturbation(kind, spec.options(kind, options))
    handles = _HANDLES.setdefault(network, [])
    for name in dict.fromkeys(names):  # a layer named twice is hooked once
        handles.extend(spec.hook(sites[name], perturbation))
    return perturbation


def unperturb(network: nn.Module) -> None:
    """Remove every hook :func:`perturb` put on ``network``: it computes as before."""
    for handle in _HANDLES.pop(network, []):
        handle.remove()
