"""The VAE of a latent diffusion pipeline (diffusers' ``AutoencoderKL``) as an :class:`~.base.Autoencoder`.

The sampler's space is diffusers' latent space: ``(z - shift_factor) * scaling_factor`` with ``z`` the VAE's
latent (SD 1.x/2.x/SDXL have no shift, SD3 has one). ``decode`` gives what the pipelines hand to their image
processor: float32 images nominally in [-1, 1] but *not clamped* (the pipeline's postprocessing clamps when
it converts to pixels; so does this library's image writer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tools.common import BadInput

__all__ = ["VAE"]


def _config_number(config, key: str, default: float) -> float:
    value = config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)
    return default if value is None else float(value)


class VAE(nn.Module):
    """``encode`` / ``decode`` between images in [-1, 1] and the scaled latents of the sampler.

    Args:
        vae: a diffusers ``AutoencoderKL`` (anything with its ``encode(x).latent_dist`` /
            ``decode(z).sample`` and ``config``).
        dtype: the dtype the pipeline's networks run in.
        force_upcast: the VAE's ``config.force_upcast``: with ``dtype`` float16 it runs in float32 instead
            (the SD VAEs overflow in float16), as diffusers' pipelines do.
        slice_size: samples per VAE call, so memory does not grow with the batch.
    """

    def __init__(self, vae, *, dtype: torch.dtype, force_upcast: bool, slice_size: int = 1):
        super().__init__()
        if int(slice_size) < 1:
            raise ValueError(f"slice_size must be >= 1, got {slice_size}")
        self.vae = vae
        config = vae.config
        self.scaling_factor = _config_number(config, "scaling_factor", 0.18215)
        self.shift_factor = _config_number(config, "shift_factor", 0.0)
        self.force_upcast = bool(force_upcast)
        self.run_dtype = torch.float32 if (self.force_upcast and dtype == torch.float16) else dtype
        self.slice_size = int(slice_size)
        blocks = config.get("block_out_channels") if hasattr(config, "get") else config.block_out_channels
        self.factor = 2 ** (len(blocks) - 1)
        self.latent_channels = int(config.get("latent_channels", 4))
        self.image_channels = int(config.get("out_channels", 3))
        if any(p.dtype != self.run_dtype for p in vae.parameters()):
            vae.to(dtype=self.run_dtype)
        vae.eval().requires_grad_(False)

    @property
    def out_dtype(self) -> torch.dtype:
        """float32, or float64 for a float64 VAE (images and latents are never half precision)."""
        return torch.float64 if self.run_dtype == torch.float64 else torch.float32

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def image_shape(self, latent_shape: Sequence[int]) -> tuple[int, int, int]:
        _, h, w = (int(s) for s in latent_shape)
        return (self.image_channels, h * self.factor, w * self.factor)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        for name, size in (("height", height), ("width", width)):
            if int(size) < self.factor or int(size) % self.factor:
                raise BadInput(f"--{name} {size} is not a positive multiple of {self.factor}, "
                               f"the VAE's downsampling factor", name)
        return (self.latent_channels, int(height) // self.factor, int(width) // self.factor)

    def _slices(self, n: int):
        for start in range(0, n, self.slice_size):
            yield slice(start, min(start + self.slice_size, n))

    @torch.no_grad()
    def encode(self, images: Tensor, noise: Tensor | None = None) -> Tensor:
        """``(mean - shift) * scale``, or ``(mean + std * noise - shift) * scale``: with ``noise`` diffusers'
        ``randn_tensor(mean.shape, generator=g)``, this is ``latent_dist.sample(g)``. Float32 out (float64 for
        a float64 VAE)."""
        if images.ndim != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
        out = []
        for part in self._slices(images.shape[0]):
            dist = self.vae.encode(images[part].to(self.device, self.run_dtype)).latent_dist
            z = dist.mean
            if noise is not None:
                z = z + dist.std * noise[part].to(z.device, z.dtype)
            out.append((z.to(self.out_dtype) - self.shift_factor) * self.scaling_factor)
        return torch.cat(out).to(images.device)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """``vae.decode(latents / scale + shift).sample``, unclamped, in float32 (float64 for a float64
        VAE)."""
        if latents.ndim != 4:
            raise ValueError(f"latents must be [B, C, h, w], got shape {list(latents.shape)}")
        out = []
        for part in self._slices(latents.shape[0]):
            z = latents[part].to(self.device, self.out_dtype) / self.scaling_factor + self.shift_factor
            out.append(self.vae.decode(z.to(self.run_dtype), return_dict=False)[0].to(self.out_dtype))
        return torch.cat(out).to(latents.device)

    def extra_repr(self) -> str:
        return (f"factor={self.factor}, scaling_factor={self.scaling_factor:g}, "
                f"shift_factor={self.shift_factor:g}, dtype={self.run_dtype}, slice_size={self.slice_size}")
