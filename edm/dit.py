"""A small Diffusion Transformer backbone (DiT, Peebles & Xie 2023) with the UNet's contract.

The denoiser only needs an output of the input's size, so a transformer over image patches can replace
the UNet: ``F(x, noise_labels, class_labels=None, text_tokens=None, cond_image=None)`` exactly as
:class:`edm.networks.UNet`, registered as ``build_network("dit", ...)``.

* patchify: the image is cut into ``p x p`` patches, each flattened and linearly embedded into a token
  of ``width`` channels, plus a fixed 2-D sin-cos positional embedding of the patch's (row, column);
* conditioning vector ``c = MLP(features(c_noise)) + W class_labels`` (the UNet's noise features);
* ``depth`` blocks ``x += gate_a * Attn(modulate(LN(x), shift_a, scale_a))``, then the same with an
  MLP, where ``(shift, scale, gate) = Linear(silu(c))`` (adaLN-Zero);
* a final ``Linear(modulate(LN(x), shift, scale))`` to ``p * p * out_channels`` per token, unpatchified.

adaLN-Zero: every modulation linear and the final linear start at zero, so each block is the identity
and a fresh network predicts ``F = 0`` (``Precond`` then gives ``D = c_skip x``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import (
    _zero,
    augment_modules,
    condition_vector,
    encode_text,
    image_size,
    join_image,
    noise_embedding,
    register_network,
    text_modules,
)

__all__ = ["DiT", "patchify", "unpatchify", "sincos_2d"]


def patchify(x: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W] -> [B, (H/p)(W/p), p*p*C]``: tokens in row-major patch order."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // patch, patch, W // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)


def unpatchify(tokens: Tensor, patch: int, channels: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: ``[B, N, p*p*C] -> [B, C, H, W]``."""
    B = tokens.shape[0]
    x = tokens.reshape(B, height // patch, width // patch, patch, patch, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(B, channels, height, width)


def _sincos_1d(positions: Tensor, channels: int) -> Tensor:
    """``[sin(pos w_i), cos(pos w_i)]``, ``w_i = 10000^(-i / (channels/2))``: ``[N, channels]``."""
    omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels // 2))
    angles = positions.to(torch.float64).reshape(-1, 1) * omega
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d(rows: int, cols: int, channels: int) -> Tensor:
    """Fixed 2-D positional embedding ``[rows*cols, channels]``: half the channels encode the row, half the
    column, so every patch position gets its own vector."""
    if channels % 4:
        raise ValueError(f"the 2-D sin-cos embedding needs width divisible by 4, got {channels}")
    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    emb = torch.cat([_sincos_1d(row, channels // 2), _sincos_1d(col, channels // 2)], dim=1)
    return emb.to(torch.float32)


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample ``[B, C]`` shift and scale."""
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``[B, N, C]``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Tokens ``[B, N, C]`` attend to the text features ``[B, L, T]``: ``x + proj(Attn(LN x, text))``, the
    output projection zero-initialised (a fresh block is the identity)."""

    def __init__(self, width: int, heads: int, context: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(context, 2 * width)
        self.proj = _zero(nn.Linear(width, width))

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        B, N, C = x.shape
        q = self.q(self.norm(x)).reshape(B, N, self.heads, C // self.heads).transpose(1, 2)
        k, v = self.kv(context).reshape(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(1, 2).reshape(B, N, C))


class DiTBlock(nn.Module):
    """``x + gate_a * Attn(mod(LN x)) -> x + gate_m * MLP(mod(LN x))``; shifts, scales, gates from ``c``;
    with ``text_width``, cross-attention to the text features between the two."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, text_width: int = 0):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, width))
        self.adaLN = _zero(nn.Linear(width, 6 * width))  # adaLN-Zero: the block starts as the identity
        if text_width:
            self.cross = CrossAttention(width, heads, text_width)

    def forward(self, x: Tensor, c: Tensor, text: Tensor | None = None) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(F.silu(c)).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attn(_modulate(self.norm1(x), shift_a, scale_a))
        if text is not None:
            x = self.cross(x, text)
        return x + gate_m[:, None] * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """``Linear(mod(LN x))`` to ``p*p*out_channels`` per token, both linears zero-initialised."""

    def __init__(self, width: int, out_features: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN = _zero(nn.Linear(width, 2 * width))
        self.linear = _zero(nn.Linear(width, out_features))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.adaLN(F.silu(c)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


@register_network("dit")
class DiT(nn.Module):
    """Diffusion Transformer backbone ``F(x, noise_labels, class_labels=None)`` (the UNet's contract).

    Args:
        in_channels, out_channels: image channels in and out (out defaults to in).
        resolution: input height and width, an int (square) or ``[height, width]``; each must be
            divisible by ``patch_size``.
        patch_size: side of the square patches that become tokens.
        depth, width, heads, mlp_ratio: transformer blocks, token channels (divisible by 4 and by
            ``heads``), attention heads, MLP hidden size as a multiple of ``width``.
        num_classes: 0 for an unconditional network, else the length of the one-hot ``class_labels``.
        label_dropout: probability of dropping a sample's class (training mode only), as the UNet.
        embedding: the noise level's features, ``"positional"`` or ``"fourier"``, as the UNet.
        text_length, text_width, text_layers: text conditioning as the UNet's (``text_tokens``; pooled
            into ``c``, and cross-attention in every block).
        cond_channels: channels of a ``cond_image`` concatenated to the input, as the UNet's.
        noise_aug: the network takes ``augment_labels``, the level of its conditioning image's noise
            augmentation, through a second noise-level embedding, as the UNet's.
        guidance_embed: the network takes ``guidance [B]``, a classifier-free guidance weight, as the UNet's.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        resolution: int = 32,
        patch_size: int = 2,
        depth: int = 4,
        width: int = 128,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        label_dropout: float = 0.0,
        embedding: str = "positional",
        text_length: int = 0,
        text_width: int = 64,
        text_layers: int = 1,
        cond_channels: int = 0,
        noise_aug: bool = False,
        guidance_embed: bool = False,
    ):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        height, width_px = image_size(resolution)
        if patch_size < 1 or height % patch_size or width_px % patch_size:
            raise ValueError(f"resolution {resolution} is not divisible by patch_size {patch_size}")
        if cond_channels < 0:
            raise ValueError(f"cond_channels must be >= 0, got {cond_channels}")
        if min(in_channels, out_channels, depth, heads) < 1 or width % heads or width % 4:
            raise ValueError(f"DiT needs channels, depth, heads >= 1 and width divisible by 4 and by heads "
                             f"(width {width}, heads {heads})")
        if not 0.0 <= label_dropout < 1.0 or num_classes < 0:
            raise ValueError("label_dropout must lie in [0, 1) and num_classes be >= 0")
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.patch_size, self.num_classes = patch_size, int(num_classes)
        self.label_dropout = float(label_dropout)
        self.height, self.width, self.cond_channels = height, width_px, int(cond_channels)

        self.embed_patch = nn.Linear(patch_size * patch_size * (in_channels + self.cond_channels), width)
        pos = sincos_2d(height // patch_size, width_px // patch_size, width)
        self.register_buffer("pos", pos, persistent=False)  # fixed, not learnt
        self.map_noise = noise_embedding(embedding, width)
        self.map_layer0 = nn.Linear(width, width)
        self.map_layer1 = nn.Linear(width, width)
        self.map_label = nn.Linear(num_classes, width, bias=False) if num_classes else None
        text_modules(self, text_length, text_width, text_layers, width)
        augment_modules(self, noise_aug, width, width, guidance_embed)
        cross = text_width if text_length else 0
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio, cross) for _ in range(depth))
        self.final = FinalLayer(width, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None = None,
                text_tokens: Tensor | None = None, cond_image: Tensor | None = None,
                augment_labels: Tensor | None = None, guidance: Tensor | None = None) -> Tensor:
        H, W, p = self.height, self.width, self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_channels or x.shape[2:] != (H, W):
            raise ValueError(f"expected input [B, {self.in_channels}, {H}, {W}], got {list(x.shape)}")
        text = encode_text(self, text_tokens, x.shape[0])
        c = condition_vector(self, noise_labels, class_labels, x.shape[0], text, augment_labels, guidance)
        h = self.embed_patch(patchify(join_image(self, x, cond_image), p)) + self.pos.to(x.dtype)
        for block in self.blocks:
            h = block(h, c, text)
        return unpatchify(self.final(h, c), p, self.out_channels, H, W)
