"""Perturbation hooks for diffusers networks: PAG, SEG and SLG (``samplers.guidance.perturbed``) on a
``UNet2DConditionModel`` (Stable Diffusion) and an ``SD3Transformer2DModel``.

Layers are named as diffusers' PAG pipelines name them, read exactly (not as a pattern):

* UNet: ``mid`` (the mid block), ``down.N`` / ``up.N`` (down or up block N), ``down.N.M`` / ``up.N.M``
  (attention M of that block);
* SD3 transformer: ``blocks.N`` (joint transformer block N).

What each kind does to the rows the perturbation's mask selects, in the layers named:

* ``pag``: every self-attention's map is the identity: a UNet's self-attention gives its value path
  (diffusers' ``PAGIdentitySelfAttnProcessor2_0``); SD3's joint attention lets each image token attend to
  itself and the text tokens only (diffusers' ``PAGCFGJointAttnProcessor2_0``);
* ``seg``: every self-attention's queries (``to_q``) are blurred over the token grid by
  ``blur_queries(q, height, width, blur_sigma)``;
* ``slg``: the transformer blocks are skipped (each gives its input back).

The other rows run the network unchanged, and a network whose perturbation is removed is as it was (the
attention processors restored, the hooks removed).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from samplers.guidance.perturbed import RowPerturbation, blur_queries

__all__ = ["NETWORKS", "LayerNaming", "available_layers", "install", "hooks", "naming_of"]


@dataclass(frozen=True)
class LayerNaming:
    """How the layers of one network class are named: ``groups`` maps a name's first word to the module
    path (``down`` -> ``down_blocks``), ``inner`` is the path between a block index and an inner index
    (``attentions``; None: names take no inner index), and ``defaults`` the layers each kind perturbs when
    none are named (diffusers' pipeline defaults)."""

    groups: dict[str, str]
    inner: str | None
    defaults: dict[str, tuple[str, ...]]
    blocks: tuple[str, ...]  # the class names of the blocks SLG skips


NETWORKS = {
    "UNet2DConditionModel": LayerNaming(
        {"mid": "mid_block", "down": "down_blocks", "up": "up_blocks"}, "attentions",
        {"pag": ("mid",), "seg": ("mid",), "slg": ("mid",)}, ("BasicTransformerBlock",)),
    "SD3Transformer2DModel": LayerNaming(
        {"blocks": "transformer_blocks"}, None,
        {"pag": ("blocks.1",), "seg": ("blocks.1",), "slg": ("blocks.7", "blocks.8", "blocks.9")},
        ("JointTransformerBlock",)),
}


def naming_of(network: nn.Module) -> LayerNaming | None:
    """The layer naming of ``network``'s class; None for a network without these hooks."""
    return NETWORKS.get(type(network).__name__)


def _path(naming: LayerNaming, layer: str) -> str | None:
    """The module path of ``layer`` (``down.1.0`` -> ``down_blocks.1.attentions.0``), None if not a name."""
    word, *indices = layer.split(".")
    if word not in naming.groups or not all(i.isdigit() for i in indices):
        return None
    if word == "mid" and not indices:
        return naming.groups[word]
    if word == "mid" or not 1 <= len(indices) <= (2 if naming.inner else 1):
        return None
    path = f"{naming.groups[word]}.{indices[0]}"
    return f"{path}.{naming.inner}.{indices[1]}" if len(indices) == 2 else path


def _self_attention(module: nn.Module) -> bool:
    from diffusers.models.attention_processor import Attention

    return isinstance(module, Attention) and not module.is_cross_attention


def _targets(kind: str, naming: LayerNaming) -> Callable[[nn.Module], bool]:
    if kind == "slg":
        return lambda module: type(module).__name__ in naming.blocks
    return _self_attention


def available_layers(network: nn.Module, kind: str) -> list[str]:
    """The layer names of ``network`` that hold something ``kind`` perturbs, block by block."""
    naming = naming_of(network)
    if naming is None:
        return []
    found = _targets(kind, naming)
    names = []
    reverse = {path: word for word, path in naming.groups.items()}
    for name, module in network.named_modules():
        if not found(module):
            continue
        parts = name.split(".")
        word = reverse.get(parts[0])
        if word is None:
            continue
        layer = word if word == "mid" else f"{word}.{parts[1]}"
        if layer not in names:
            names.append(layer)
    return names


def _modules(network: nn.Module, kind: str, layers: Sequence[str]) -> list[nn.Module]:
    naming = naming_of(network)
    if naming is None:
        raise ValueError(f"{type(network).__name__} has no perturbation hooks (they exist for "
                         f"{', '.join(NETWORKS)})")
    found = _targets(kind, naming)
    chosen: list[nn.Module] = []
    for layer in layers:
        path = _path(naming, layer)
        hits = [] if path is None else [m for name, m in network.named_modules()
                                        if found(m) and (name == path or name.startswith(path + "."))]
        if not hits:
            raise ValueError(f"no layer {layer!r} with {kind} targets in this {type(network).__name__}; "
                             f"its layers: {', '.join(available_layers(network, kind)) or 'none'}")
        chosen += [m for m in hits if all(m is not c for c in chosen)]
    return chosen


def _take(value, rows: Tensor):
    """The ``rows`` of a batched tensor argument; anything else as it is."""
    if isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == rows.shape[0]:
        return value[rows]
    return value


def _merge(kept, perturbed, rows: Tensor):
    """The outputs of the kept and perturbed rows as one batch (tuples element by element)."""
    if isinstance(kept, tuple):
        return tuple(_merge(k, p, rows) for k, p in zip(kept, perturbed, strict=True))
    if kept is None:
        return None
    out = kept.new_empty((rows.shape[0], *kept.shape[1:]))
    out[~rows], out[rows] = kept, perturbed
    return out


def _identity_mask(tokens: int, attended: int, like: Tensor) -> Tensor:
    """An additive attention mask over ``attended`` keys letting each of the first ``tokens`` queries see
    only itself among the first ``tokens`` keys (the keys after them stay visible)."""
    mask = torch.zeros(attended, attended, dtype=like.dtype, device=like.device)
    mask[:tokens, :tokens] = float("-inf")
    mask[:tokens, :tokens].fill_diagonal_(0)
    return mask


def _identity_self_attention(attn, processor, hidden: Tensor, context, attention_mask, **kwargs):
    """A UNet self-attention with the identity map: the original processor under a mask that lets each
    token attend to itself only (so its output is the value path, as diffusers' PAG processor gives)."""
    tokens = hidden.shape[1] if hidden.ndim == 3 else hidden.shape[2] * hidden.shape[3]
    mask = _identity_mask(tokens, tokens, hidden).expand(hidden.shape[0], tokens, tokens)
    return processor(attn, hidden, context, mask, **kwargs)


def _identity_joint_attention(attn, processor, hidden: Tensor, context, attention_mask, **kwargs):
    """SD3's joint attention with each image token attending to itself and the text tokens only."""
    batch, tokens = hidden.shape[:2]
    heads = attn.heads

    def project(x, to_q, to_k, to_v, norm_q, norm_k):
        q, k, v = (p(x).view(batch, -1, heads, p.out_features // heads).transpose(1, 2)
                   for p in (to_q, to_k, to_v))
        return (q if norm_q is None else norm_q(q)), (k if norm_k is None else norm_k(k)), v

    q, k, v = project(hidden, attn.to_q, attn.to_k, attn.to_v, attn.norm_q, attn.norm_k)
    if context is not None:
        cq, ck, cv = project(context, attn.add_q_proj, attn.add_k_proj, attn.add_v_proj,
                             attn.norm_added_q, attn.norm_added_k)
        q, k, v = torch.cat([q, cq], dim=2), torch.cat([k, ck], dim=2), torch.cat([v, cv], dim=2)
    mask = _identity_mask(tokens, q.shape[2], q)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(batch, -1, heads * q.shape[-1]).to(q.dtype)
    image = attn.to_out[1](attn.to_out[0](out[:, :tokens]))
    if context is None:
        return image
    text = out[:, tokens:]
    return image, (text if attn.context_pre_only else attn.to_add_out(text))


class _RowsProcessor:
    """An attention processor running ``processor`` on the unperturbed rows and ``perturbed`` (same
    signature, plus the original processor) on the rows the perturbation selects."""

    def __init__(self, processor, perturbation: RowPerturbation, perturbed: Callable):
        self.processor, self.perturbation, self.perturbed = processor, perturbation, perturbed

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        rows = self.perturbation.selected(hidden_states.shape[0])
        if rows is None:
            return self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        part = {name: _take(value, rows) for name, value in kwargs.items()}
        perturbed = self.perturbed(attn, self.processor, hidden_states[rows],
                                   _take(encoder_hidden_states, rows), _take(attention_mask, rows), **part)
        if bool(rows.all()):
            return perturbed
        keep = ~rows
        rest = {name: _take(value, keep) for name, value in kwargs.items()}
        kept = self.processor(attn, hidden_states[keep], _take(encoder_hidden_states, keep),
                              _take(attention_mask, keep), **rest)
        return _merge(kept, perturbed, rows)


def _install_pag(network, modules, perturbation) -> None:
    for attn in modules:
        original = attn.processor
        joint = getattr(attn, "add_q_proj", None) is not None
        form = _identity_joint_attention if joint else _identity_self_attention
        attn.processor = _RowsProcessor(original, perturbation, form)
        perturbation.on_remove(lambda attn=attn, original=original: setattr(attn, "processor", original))


def _grid(tokens: int, height: int, width: int) -> tuple[int, int]:
    """The token grid of a layer with ``tokens`` tokens in a network whose input is ``height x width``:
    the input halved (rounding up, as strided convolutions do) until it has that many cells."""
    for level in range(12):
        h, w = math.ceil(height / 2 ** level), math.ceil(width / 2 ** level)
        if h * w == tokens:
            return h, w
    raise ValueError(f"seg: {tokens} query tokens do not form a grid of the {height} x {width} input")


def _install_seg(network, modules, perturbation) -> None:
    size: dict[str, tuple[int, int]] = {}
    sigma = float(perturbation.options.get("blur_sigma", math.inf))

    def record(module, args, kwargs):
        x = kwargs.get("hidden_states", kwargs.get("sample", args[0] if args else None))
        size["input"] = tuple(x.shape[-2:])

    def blur(module, args, output):
        rows = perturbation.selected(output.shape[0])
        if rows is None:
            return output
        height, width = _grid(output.shape[1], *size["input"])
        out = output.clone()
        out[rows] = blur_queries(output[rows], height, width, sigma)
        return out

    handles = [network.register_forward_pre_hook(record, with_kwargs=True)]
    handles += [attn.to_q.register_forward_hook(blur) for attn in modules]
    for handle in handles:
        perturbation.on_remove(handle.remove)


def _install_slg(network, modules, perturbation) -> None:
    def skip(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        rows = perturbation.selected(hidden.shape[0])
        if rows is None:
            return output
        column = rows.view(-1, *([1] * (hidden.ndim - 1)))
        if not isinstance(output, tuple):  # a UNet's BasicTransformerBlock: the hidden states
            return torch.where(column, hidden, output)
        context_out, hidden_out = output  # SD3's JointTransformerBlock: (context, hidden states)
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        if context_out is not None:
            context_out = torch.where(rows.view(-1, *([1] * (context.ndim - 1))), context, context_out)
        return context_out, torch.where(column, hidden, hidden_out)

    for block in modules:
        perturbation.on_remove(block.register_forward_hook(skip, with_kwargs=True).remove)


_INSTALLERS = {"pag": _install_pag, "seg": _install_seg, "slg": _install_slg}


def install(network: nn.Module, kind: str, layers: Sequence[str] | None = None, **options) -> RowPerturbation:
    """Hook ``network`` for ``kind`` in ``layers`` (None: the network's defaults), with SEG's option
    ``blur_sigma`` (tokens; default inf: the queries' mean), and return the
    :class:`RowPerturbation` its hooks read (``remove()`` takes them out again). ValueError (one line)
    for a network without hooks, an unknown layer name or a bad option."""
    if kind not in _INSTALLERS:
        raise ValueError(f"perturbation kind must be one of {', '.join(_INSTALLERS)}, got {kind!r}")
    unknown = set(options) - ({"blur_sigma"} if kind == "seg" else set())
    if unknown:
        raise ValueError(f"{kind} takes no option {', '.join(sorted(unknown))}")
    if kind == "seg":
        sigma = float(options.get("blur_sigma", math.inf))
        if not sigma > 0:
            raise ValueError(f"seg blur sigma must be positive (inf: the mean), got {sigma:g}")
        options = {"blur_sigma": sigma}
    naming = naming_of(network)
    if layers is None and naming is not None:
        layers = naming.defaults[kind]
    modules = _modules(network, kind, list(layers or ()))
    perturbation = RowPerturbation(kind, options)
    _INSTALLERS[kind](network, modules, perturbation)
    return perturbation


def hooks(network: nn.Module) -> Callable[..., RowPerturbation] | None:
    """``LoadedModel.perturb_hooks`` for ``network``: :func:`install` bound to it, None for a network of a
    class without hooks."""
    if naming_of(network) is None:
        return None
    return functools.partial(install, network)
