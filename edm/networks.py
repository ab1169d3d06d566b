"""Small reference backbones ``F(x_in, c_noise, **cond)`` and the registry checkpoints name them by.

``build_network("unet", **kwargs)`` builds the network a checkpoint's ``{"network": {"name", "kwargs"}}``
describes; new architectures join with ``@register_network("name")`` in their own module (``edm.dit``:
the Diffusion Transformer), which the users of the registry (training, checkpoint loading) import.

:class:`UNet` follows the layout of the ADM / EDM ("DhariwalUNet") networks, scaled down:

* the noise label ``c_noise`` (``ln(sigma) / 4`` under the EDM scheme) becomes positional (or
  random Fourier) features, then a two-layer MLP; an optional class embedding (a bias-free
  ``Linear`` of the one-hot ``class_labels``) is added to it;
* an encoder of group-normed residual blocks per resolution, each modulated by the embedding
  (``norm(h) * (1 + scale) + shift``), with self-attention at the chosen resolutions and a strided
  downsampling between resolutions; a middle block; a decoder that mirrors the encoder and consumes
  its activations as skip connections (concatenated), upsampling by nearest neighbour + conv;
* a zero-initialised output convolution, so a fresh network predicts ``F = 0``.

Class conditioning follows NVlabs: ``class_labels`` is ``[B, num_classes]`` float (one-hot, or all
zeros for "no class"). ``label_dropout`` zeroes the class embedding of each sample with that
probability in training mode only, so one model serves conditional, unconditional and
classifier-free-guided sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conditions import PAD, TextEncoder, drop_text
from .distributed import SampleDropout, sample_rand

__all__ = ["register_network", "build_network", "list_networks", "noise_embedding", "condition_vector",
           "UNet", "unet_resolutions", "image_size", "text_modules", "encode_text", "join_image",
           "augment_modules", "PositionalEmbedding", "FourierEmbedding", "CrossAttention"]

_NETWORKS: dict[str, Callable[..., nn.Module]] = {}


def register_network(name: str):
    """Class (or factory) decorator: ``@register_network("unet")`` makes it buildable by name."""

    def decorate(factory):
        if name in _NETWORKS:
            raise ValueError(f"network {name!r} is already registered")
        _NETWORKS[name] = factory
        return factory

    return decorate


def list_networks() -> list[str]:
    """Registered network names, sorted."""
    return sorted(_NETWORKS)


def build_network(name: str, **kwargs) -> nn.Module:
    """A fresh network ``name`` built with ``kwargs``; ValueError naming the valid choices otherwise."""
    try:
        factory = _NETWORKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown network {name!r}; valid: {', '.join(list_networks())}") from None
    return factory(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Building blocks


def _groups(channels: int, max_groups: int = 32, min_per_group: int = 4) -> int:
    """The largest group count <= ``max_groups`` that divides ``channels`` with >= 4 channels each."""
    for groups in range(min(max_groups, max(channels // min_per_group, 1)), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PositionalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar per sample: ``[cos(x f_i), sin(x f_i)]``,
    frequencies ``f_i = (1 / max_positions) ** (i / (n/2 - 1))`` (EDM's ``endpoint=True`` form)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"PositionalEmbedding needs an even number of channels, got {num_channels}")
        half = num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        self.register_buffer("freqs", (1.0 / max_positions) ** exponent, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        angles = x.reshape(-1, 1).to(self.freqs.dtype) * self.freqs
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[cos(2 pi x f_i), sin(2 pi x f_i)]``, ``f_i ~ N(0, scale^2)`` (NCSN++).

    The frequencies are a (persistent) buffer, so they travel with the checkpoint.
    """

    def __init__(self, num_channels: int, scale: float = 16.0):
        super().__init__()
        if num_channels % 2:
            raise ValueError(f"FourierEmbedding needs an even number of channels, got {num_channels}")
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = x.reshape(-1, 1).to(self.freqs.dtype) * (2 * math.pi * self.freqs)
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class ResBlock(nn.Module):
    """``x -> skip(x) + conv(act(norm(h) * (1 + scale) + shift))``, ``h = conv(act(norm(x)))``,
    with ``(scale, shift)`` a linear map of the (activated) embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm0 = _norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_channels, 2 * out_channels)
        self.norm1 = _norm(out_channels)
        self.dropout = SampleDropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, pre-normed, residual."""

    def __init__(self, channels: int, channels_per_head: int = 64):
        super().__init__()
        self.heads = max(channels // channels_per_head, 1)
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, self.heads, C // self.heads, H * W).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class CrossAttention(nn.Module):
    """Each pixel of a feature map attends to the text features, pre-normed, residual (zero-initialised
    output, so a fresh block is the identity). The queries also see a learned per-pixel position
    embedding, so a region knows where it is (which character slot it draws)."""

    def __init__(self, channels: int, context: int, size: tuple[int, int], channels_per_head: int = 64):
        super().__init__()
        self.heads = max(channels // channels_per_head, 1)
        self.norm = _norm(channels)
        self.position = nn.Parameter(torch.randn(1, channels, *size) * 0.5)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context, 2 * channels)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, C, H, W = x.shape
        heads = self.heads
        q = self.q(self.norm(x) + self.position).reshape(B, heads, C // heads, H * W).transpose(-1, -2)
        k, v = self.kv(context).reshape(B, -1, 2, heads, C // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return x + self.proj(out.transpose(-1, -2).reshape(B, C, H, W))


class Block(nn.Module):
    """A residual block, followed by self-attention where asked, then cross-attention to the text features
    when the network is text-conditioned (``cross`` is then ``(text_width, (height, width))``)."""

    def __init__(self, in_channels, out_channels, emb_channels, dropout, attention, channels_per_head,
                 cross=None):
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, emb_channels, dropout)
        self.attn = SelfAttention(out_channels, channels_per_head) if attention else None
        if cross is not None:
            self.cross = CrossAttention(out_channels, cross[0], cross[1], channels_per_head)

    def forward(self, x: Tensor, emb: Tensor, text: Tensor | None = None) -> Tensor:
        x = self.res(x, emb)
        x = self.attn(x) if self.attn is not None else x
        return self.cross(x, text) if text is not None else x


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------------------------------------------
# The UNet


def image_size(resolution) -> tuple[int, int]:
    """``(height, width)`` of a network's ``resolution``: an int (square) or ``[height, width]``."""
    if isinstance(resolution, (int, float)) and not isinstance(resolution, bool):
        return int(resolution), int(resolution)
    try:
        height, width = (int(r) for r in resolution)
    except (TypeError, ValueError):
        raise ValueError(f"resolution must be an int or [height, width], got {resolution!r}") from None
    return height, width


def unet_resolutions(resolution, channel_mult: Sequence[int]) -> list[int]:
    """The feature-map resolutions of a :class:`UNet`, highest first: ``resolution // 2**level`` for each
    level of ``channel_mult`` (8 and 4 for 8x8 input with ``channel_mult=(1, 2)``); ``attn_resolutions``
    must be among them. A non-square ``[height, width]`` names its levels by their height."""
    return [image_size(resolution)[0] >> level for level in range(len(channel_mult))]


def noise_embedding(kind: str, channels: int) -> nn.Module:
    """The noise level's features: ``positional`` (DDPM++ / EDM's default) or ``fourier`` (NCSN++)."""
    if kind == "positional":
        return PositionalEmbedding(channels)
    if kind == "fourier":
        return FourierEmbedding(channels)
    raise ValueError(f"unknown embedding {kind!r}; valid: fourier, positional")


def _per_sample(labels, batch: int, device, what: str) -> Tensor:
    labels = torch.as_tensor(labels, device=device).reshape(-1)
    if labels.shape[0] == 1 and batch != 1:
        labels = labels.expand(batch)
    if labels.shape[0] != batch:
        raise ValueError(f"{what} has {labels.shape[0]} entries for a batch of {batch}")
    return labels


def augment_modules(net: nn.Module, noise_aug: bool, features: int, emb_channels: int,
                    guidance_embed: bool = False) -> None:
    """Give ``net`` the second noise-level embedding of conditioning augmentation (``net.map_augment``:
    the noise label's features of ``augment_labels``, mapped into the first layer of the embedding MLP)
    when ``noise_aug``, and the embedding of a guidance weight (``net.map_guidance``: the features of ``w``
    mapped the same way) when ``guidance_embed``; the attributes exist only then, so other networks keep
    their state dicts. ``map_guidance`` starts at zero: a student initialised from a teacher without it
    starts as that teacher at every weight (LCM's ``time_cond_proj_dim``, Meng et al. 2023's w input)."""
    net.noise_aug = bool(noise_aug)
    if noise_aug:
        net.map_augment = nn.Linear(features, emb_channels)
    net.guidance_embed = bool(guidance_embed)
    if guidance_embed:
        net.map_guidance = nn.Linear(features, emb_channels)
        nn.init.zeros_(net.map_guidance.weight)
        nn.init.zeros_(net.map_guidance.bias)


def condition_vector(net: nn.Module, noise_labels: Tensor, class_labels: Tensor | None, batch: int,
                     text: Tensor | None = None, augment_labels: Tensor | None = None,
                     guidance: Tensor | None = None) -> Tensor:
    """``MLP(features(c_noise)) + W class_labels``, ``[B, D]``, of a network holding ``map_noise``,
    ``map_layer0/1``, ``map_label`` (None: unconditional), ``num_classes`` and ``label_dropout`` (the class
    is dropped with that probability in training). One ``c_noise`` serves the whole batch. ``text``
    (``[B, L, T]`` features of a :class:`~edm.conditions.TextEncoder`) adds ``net.map_text`` of their
    mean over the tokens. A network with ``noise_aug`` takes ``augment_labels`` (the label of the level its
    conditioning image was noised to), whose features join the noise level's before the MLP's activation;
    one with ``guidance_embed`` takes ``guidance``, the classifier-free guidance weight ``w`` per sample,
    the same way.
    """
    weight = net.map_layer0.weight
    noise_labels = _per_sample(noise_labels, batch, weight.device, "noise_labels")
    h = net.map_layer0(net.map_noise(noise_labels).to(weight.dtype))
    # the scalar inputs embedded like the noise level, each only by a network built to take it
    for flag, map_name, name, value, meaning, lacking in (
            ("noise_aug", "map_augment", "augment_labels", augment_labels,
             "the noise level of its conditioning image", "noise augmentation"),
            ("guidance_embed", "map_guidance", "guidance", guidance,
             "the classifier-free guidance weight w per sample", "a guidance embedding")):
        if not getattr(net, flag, False):
            if value is not None:
                raise ValueError(f"{name} given to a network without {lacking} ({flag}=False)")
            continue
        if value is None:
            raise ValueError(f"this network takes {name}: {meaning}")
        value = _per_sample(value, batch, weight.device, name)
        h = h + getattr(net, map_name)(net.map_noise(value).to(weight.dtype))
    c = net.map_layer1(F.silu(h))
    if text is not None:
        c = c + net.map_text(text.mean(dim=1))
    if class_labels is None:
        return c
    if net.map_label is None:
        raise ValueError("class_labels given to an unconditional network (num_classes=0)")
    labels = class_labels.to(weight.dtype)
    if labels.shape != (batch, net.num_classes):
        raise ValueError(f"class_labels must have shape [{batch}, {net.num_classes}] (one-hot), "
                         f"got {list(labels.shape)}")
    if net.training and net.label_dropout:
        keep = sample_rand((batch, 1), device=labels.device) >= net.label_dropout  # rows of a global draw
        labels = labels * keep.to(labels.dtype)
    return c + net.map_label(labels)


def text_modules(net: nn.Module, text_length: int, text_width: int, text_layers: int, emb_channels: int):
    """Give ``net`` a text encoder (``net.text``) and the map of its pooled features into the conditioning
    vector (``net.map_text``) when ``text_length`` > 0; the attributes exist only then, so networks
    without text keep their state dicts."""
    if text_length < 0:
        raise ValueError(f"text_length must be >= 0, got {text_length}")
    net.text_length = int(text_length)
    if text_length:
        net.text = TextEncoder(PAD + 1, text_length, text_width, text_layers, heads=max(text_width // 32, 1))
        net.map_text = nn.Linear(text_width, emb_channels)


def encode_text(net: nn.Module, text_tokens: Tensor | None, batch: int) -> Tensor | None:
    """The text features ``[B, L, T]`` of ``text_tokens`` (None on a network without text; a text network
    needs them), after condition dropout in training mode."""
    if not net.text_length:
        if text_tokens is not None:
            raise ValueError("text_tokens given to a network without text conditioning (text_length=0)")
        return None
    if text_tokens is None:
        raise ValueError(f"this network is text-conditioned: give text_tokens [B, {net.text_length}] "
                         "(all pads for the null text)")
    text_tokens = torch.as_tensor(text_tokens, device=net.map_layer0.weight.device)
    if text_tokens.shape[0] == 1 and batch != 1:
        text_tokens = text_tokens.expand(batch, -1)
    if text_tokens.shape[0] != batch:
        raise ValueError(f"text_tokens has {text_tokens.shape[0]} rows for a batch of {batch}")
    if net.training and net.label_dropout:
        text_tokens = drop_text(text_tokens, net.label_dropout, PAD)
    return net.text(text_tokens).to(net.map_layer0.weight.dtype)


def join_image(net: nn.Module, x: Tensor, cond_image: Tensor | None) -> Tensor:
    """``x`` with the conditioning image concatenated to its channels (networks with ``cond_channels``)."""
    if not net.cond_channels:
        if cond_image is not None:
            raise ValueError("cond_image given to a network without image conditioning (cond_channels=0)")
        return x
    expected = [x.shape[0], net.cond_channels, *x.shape[2:]]
    if cond_image is None or list(cond_image.shape) != expected:
        got = "none" if cond_image is None else list(cond_image.shape)
        raise ValueError(f"this network is image-conditioned: give cond_image {expected}, got {got}")
    return torch.cat([x, cond_image.to(x.dtype)], dim=1)


@register_network("unet")
class UNet(nn.Module):
    """EDM/ADM-style UNet backbone ``F(x, noise_labels, class_labels=None)``.

    Args:
        in_channels, out_channels: image channels in and out.
        resolution: input height and width, an int (square) or ``[height, width]``; each must be divisible
            by ``2**(len(channel_mult)-1)``.
        model_channels: channels at the first resolution; level ``i`` has
            ``model_channels * channel_mult[i]``.
        channel_mult: one multiplier per resolution level (each level after the first halves the size).
        num_blocks: residual blocks per level in the encoder (the decoder has one more per level).
        attn_resolutions: resolutions (e.g. ``(16, 8)``) whose blocks get self-attention; each must
            be one of the network's (:func:`unet_resolutions`), else ValueError naming the valid ones.
            Default (None): 16 when the network has that resolution, else none. The middle block
            always has attention.
        num_classes: 0 for an unconditional network, else the length of the one-hot ``class_labels``.
        label_dropout: probability of dropping a sample's class, or its text (training mode only).
        dropout: dropout inside the residual blocks.
        embedding: ``"positional"`` (EDM's default for its EDM-preconditioned nets) or ``"fourier"``.
        channels_per_head: attention head width.
        text_length: 0 (no text), else the network takes ``text_tokens [B, text_length]``
            (:func:`edm.conditions.tokenize`), read by a :class:`~edm.conditions.TextEncoder` of
            ``text_width`` channels and ``text_layers`` transformer layers; the pooled features join the
            conditioning vector and every block cross-attends to the token features.
        cond_channels: 0, else the network takes ``cond_image [B, cond_channels, H, W]``, concatenated
            to its input channels.
        noise_aug: the network takes ``augment_labels [B]``, the noise label of its conditioning image's
            augmentation level, through a second noise-level embedding (:func:`augment_modules`).
        guidance_embed: the network takes ``guidance [B]``, a classifier-free guidance weight, through an
            embedding like ``noise_aug``'s that starts at zero (a guided distillation student's input).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        resolution: int = 32,
        model_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 2,
        attn_resolutions: Sequence[int] | None = None,
        num_classes: int = 0,
        label_dropout: float = 0.0,
        dropout: float = 0.0,
        embedding: str = "positional",
        channels_per_head: int = 64,
        text_length: int = 0,
        text_width: int = 64,
        text_layers: int = 1,
        cond_channels: int = 0,
        noise_aug: bool = False,
        guidance_embed: bool = False,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        channel_mult = tuple(int(m) for m in channel_mult)
        if not channel_mult or min(channel_mult) < 1:
            raise ValueError(f"channel_mult must be a non-empty list of positive ints, got {channel_mult}")
        if min(in_channels, out_channels, model_channels, num_blocks) < 1:
            raise ValueError("in_channels, out_channels, model_channels and num_blocks must be >= 1")
        levels = len(channel_mult)
        height, width = image_size(resolution)
        if min(height, width) < 1 or height % (2 ** (levels - 1)) or width % (2 ** (levels - 1)):
            raise ValueError(f"resolution {resolution} is not divisible by 2**{levels - 1} "
                             f"(channel_mult has {levels} levels)")
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        resolutions = unet_resolutions(resolution, channel_mult)
        if attn_resolutions is None:
            attn_resolutions = [16] if 16 in resolutions else []
        attn_resolutions = {int(r) for r in attn_resolutions}
        if not attn_resolutions <= set(resolutions):
            bad = ", ".join(map(str, sorted(attn_resolutions - set(resolutions))))
            what = f"resolutions {bad} are" if "," in bad else f"resolution {bad} is"
            raise ValueError(f"attention {what} not among this UNet's resolutions "
                             f"{', '.join(map(str, resolutions))} (input {height}x{width}, halved "
                             f"at each level of channel_mult {list(channel_mult)} after the first)")
        if not 0.0 <= label_dropout < 1.0 or not 0.0 <= dropout < 1.0:
            raise ValueError("label_dropout and dropout must lie in [0, 1)")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.num_classes, self.label_dropout = int(num_classes), float(label_dropout)
        self.height, self.width, self.cond_channels = height, width, int(cond_channels)

        # Embedding of the noise level (and class).
        emb_channels = 4 * model_channels
        self.map_noise = noise_embedding(embedding, model_channels)
        self.map_layer0 = nn.Linear(model_channels, emb_channels)
        self.map_layer1 = nn.Linear(emb_channels, emb_channels)
        self.map_label = nn.Linear(num_classes, emb_channels, bias=False) if num_classes else None
        text_modules(self, text_length, text_width, text_layers, emb_channels)
        augment_modules(self, noise_aug, model_channels, emb_channels, guidance_embed)

        def block(cin, cout, level, attention=None):
            cross = (text_width, (height >> level, width >> level)) if text_length else None
            attention = (height >> level) in attn_resolutions if attention is None else attention
            return Block(cin, cout, emb_channels, dropout, attention, channels_per_head, cross)

        # Encoder: remember the channel count of every activation handed to the decoder.
        channels = model_channels * channel_mult[0]
        self.conv_in = nn.Conv2d(in_channels + self.cond_channels, channels, 3, padding=1)
        self.enc = nn.ModuleList()
        skips = [channels]
        for level, mult in enumerate(channel_mult):
            if level > 0:
                self.enc.append(Downsample(channels))
                skips.append(channels)
            for _ in range(num_blocks):
                self.enc.append(block(channels, model_channels * mult, level))
                channels = model_channels * mult
                skips.append(channels)

        # Middle.
        self.mid = nn.ModuleList([block(channels, channels, levels - 1, attention=True),
                                  block(channels, channels, levels - 1, attention=False)])

        # Decoder.
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_blocks + 1):
                self.dec.append(block(channels + skips.pop(), model_channels * mult, level))
                channels = model_channels * mult
            if level > 0:
                self.dec.append(Upsample(channels))
        assert not skips
        self.norm_out = _norm(channels)
        self.conv_out = _zero(nn.Conv2d(channels, out_channels, 3, padding=1))

    def embed(self, noise_labels: Tensor, class_labels: Tensor | None, batch: int,
              text: Tensor | None = None, augment_labels: Tensor | None = None,
              guidance: Tensor | None = None) -> Tensor:
        """The activated embedding ``silu(MLP(features(c_noise)) + W class_labels)``, ``[B, 4 C]``."""
        return F.silu(condition_vector(self, noise_labels, class_labels, batch, text, augment_labels,
                                       guidance))

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None,
                text_tokens: Tensor | None = None, cond_image: Tensor | None = None,
                augment_labels: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (self.height, self.width):
            raise ValueError(f"expected input [B, {self.in_channels}, {self.height}, {self.width}], "
                             f"got {list(x.shape)}")
        text = encode_text(self, text_tokens, x.shape[0])
        emb = self.embed(noise_labels, class_labels, x.shape[0], text, augment_labels, guidance)
        h = self.conv_in(join_image(self, x, cond_image))
        skips = [h]
        for layer in self.enc:
            h = layer(h, emb, text) if isinstance(layer, Block) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb, text)
        for layer in self.dec:
            if isinstance(layer, Block):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb, text)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))

