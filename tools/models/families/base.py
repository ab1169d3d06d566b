"""What a pipeline family declares, and the records its loading steps hand back.

A family is one kind of diffusers pipeline saved with ``save_pretrained`` (Stable Diffusion 1.x/2.x, SDXL,
SD3, DiT, PixArt, ...): the ``model_index.json`` class names it answers to, the components it needs, its
denoiser network and how that network becomes an EDM denoiser, and its text conditioner (or, for a
class-conditional pipeline such as DiT, its classes). The work every family
shares (reading the index, loading components and the VAE, building the loaded model and its info record)
is done once by the pipeline loader, which asks the family only for what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from tools.common import compact

from ..saved_pipeline import SavedPipeline, SchedulerFile

__all__ = ["Denoising", "Geometry", "PipelineFamily", "SchedulerKind", "cast_floating"]


def cast_floating(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` in ``dtype`` if it is a floating-point tensor (ids and masks keep theirs)."""
    return value.to(dtype) if value.is_floating_point() else value


class Geometry(NamedTuple):
    """The latent the denoiser network works on: ``shape`` (channels, height, width) at the network's
    default size, the ``patch`` size of a transformer (1 for a UNet) and the largest latent side its
    position embedding allows (None: no limit)."""

    shape: tuple[int, int, int]
    patch: int = 1
    max_latent: int | None = None


@dataclass(frozen=True)
class Denoising:
    """The EDM denoiser a scheduler kind built around a backbone, with what the info record says of it:
    its ``prediction`` (eps, v, x0 or flow), its discrete ``sigmas`` (None: continuous), the x0
    ``threshold`` it applies (keyword arguments, or None) with its one-line description ``thresholding``,
    and the scheduler settings that are on but not honoured (``ignored``)."""

    inner: nn.Module
    prediction: str
    num_train_timesteps: int
    sigmas: Tensor | None = None
    threshold: Any = None
    thresholding: str = "none"
    ignored: list[str] = field(default_factory=list)


class SchedulerKind:
    """How a pipeline's scheduler config turns a backbone into an EDM denoiser.

    ``model_settings`` are the scheduler settings that define the trained model (and so the denoiser);
    ``x0_settings`` those of the x0 thresholding the denoiser honours. Every other setting is about the
    sampling loop (spacing, offsets, sigma schedules), which this library chooses itself.
    """

    model_settings: tuple[str, ...] = ()
    x0_settings: tuple[str, ...] = ()

    def denoiser(self, backbone: nn.Module, scheduler: SchedulerFile, geometry: Geometry,
                 dtype: torch.dtype) -> Denoising:
        """The denoiser around ``backbone`` (run in ``dtype``) for latents of ``geometry``; ModelError
        naming ``scheduler.path`` when the scheduler does not fit."""
        raise NotImplementedError

    def settings(self, config: Mapping[str, Any], not_honoured: list[str]) -> dict:
        """The settings written in ``config``, split into those the denoiser honours (the trained model's,
        and the x0 thresholding unless ``not_honoured`` names it) and those it ignores (the sampling
        loop's): ``{"class", "honoured", "ignored"}``."""
        written = {k: v for k, v in config.items() if not k.startswith("_")}
        honoured = {k: v for k, v in written.items() if k in self.model_settings
                    or (k in self.x0_settings and not any(line.startswith(f"{k}=") for line in not_honoured))}
        ignored = {k: v for k, v in written.items() if k not in honoured}
        return {"class": config.get("_class_name"), "honoured": honoured, "ignored": ignored}


class PipelineFamily:
    """A family of diffusers text-to-image pipelines (subclass it, set the attributes, and register it with
    :func:`tools.models.families.registry.register`).

    Attributes:
        name: the registry key (``"sd"``).
        display_name: what ``edm info`` calls the family (``"Stable Diffusion 1.x/2.x"``).
        pipelines: ``model_index.json`` ``_class_name`` -> that pipeline's default ``guidance_scale``.
        network: the component holding the denoiser network (``"unet"``), of class ``network_class``.
        required: the components the pipeline cannot be sampled without, checked in this order (the
            network, ``vae`` and ``scheduler`` among them).
        optional: components it uses when the index names them (they may be null).
        scheduler: the :class:`SchedulerKind` that makes the network's backbone a denoiser.
        vae_scaling_factor: the latent scaling the pipeline class imposes on its VAE whatever the VAE's
            config says (None, the default: the config's).
        sampling: the sampler, steps and schedule a request that names none runs (the loaded model's
            ``sampling``); None, the default: the library's.

    A family defines :meth:`backbone` and :meth:`conditioner` (None for a class-conditional family, which
    defines :meth:`classes` and :meth:`class_arguments` instead); :meth:`geometry` (a UNet's by default),
    :meth:`low_res` (a super-resolution family's image input; none by default), :meth:`guidance_input` (a
    network that takes the guidance weight; none by default), :meth:`info_fields` (none
    by default) and :meth:`info_rows` (the rows every pipeline shows) where it differs.
    """

    name: str
    display_name: str
    pipelines: Mapping[str, float]
    network: str
    network_class: str
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    scheduler: SchedulerKind
    vae_scaling_factor: float | None = None
    #: the sampling the family's pipelines run by default (a ``tools.models.base.RecordedSampling``, e.g. a
    #: latent consistency model's sampler and steps); None: the library's defaults
    sampling: Any = None

    def backbone(self, network: nn.Module) -> nn.Module:
        """The network as the backbone ``F(x_in, t, **conditions)`` of :attr:`scheduler`'s denoiser, the
        conditions being the conditioner's keys."""
        raise NotImplementedError

    def conditioner(self, saved: SavedPipeline, network: nn.Module):
        """The text conditioner (``keys``, ``encode(prompts, height=, width=)``), its tokenizers and
        encoders loaded through ``saved``; ModelError when they do not fit ``network``."""
        raise NotImplementedError

    def classes(self, network: nn.Module) -> int:
        """How many classes the network takes (a class-conditional family, whose :meth:`conditioner` is
        None); 0, the default, for a text-conditioned one."""
        return 0

    def class_arguments(self, network: nn.Module):
        """A class-conditional family's ``convert(labels) -> keyword arguments`` of its backbone for checked
        ``[B, classes]`` one-hot labels (all-zero rows: the unconditional input), as
        :class:`~tools.models.base.LabelledDenoiser` takes it."""
        raise NotImplementedError

    def low_res(self, saved: SavedPipeline, network: nn.Module, geometry: Geometry):
        """A super-resolution family's :class:`~tools.models.base.LowResConditioner` (``keys``: the
        denoiser's keyword arguments it gives, besides the text conditioner's) for latents of
        ``geometry``; None, the default, for a family that takes no image."""
        return None

    def guidance_input(self, network: nn.Module):
        """A family whose network takes the guidance weight as an input (LCM's ``time_cond_proj_dim``): its
        :class:`~tools.models.base.GuidanceInput`, whose ``keys`` join the denoiser's conditions; None, the
        default, for a family guided by classifier-free guidance."""
        return None

    def geometry(self, config) -> Geometry:
        """The network's latent geometry read from its ``config`` (a UNet's: no patches, no limit)."""
        size = config.sample_size
        latent = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return Geometry((int(config.in_channels), *latent))

    def info_fields(self, saved: SavedPipeline, conditioner, denoising: Denoising) -> dict[str, Any]:
        """Fields of the model's info record that only this family has (none by default)."""
        return {}

    def info_rows(self, info: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The ``edm info`` rows of a loaded pipeline of this family, from its ``info`` record: kind,
        latent and image sizes, encoders, VAE and scheduler (a family adds rows of its own fields)."""
        c, h, w = info.get("latent_shape") or (0, 0, 0)
        height, width = info.get("size") or info.get("default_size") or (0, 0)
        vae = info.get("vae") or {}
        scheduler = info.get("scheduler") or {}
        rows = [
            ("pipeline", f"{info['pipeline']} ({info.get('family', '?')})"),
            ("latent shape", f"{c} x {h} x {w} (the sampler's space; channels x height x width)"),
            ("image size", f"{width} x {height} (width x height; --width / --height in multiples of "
                           f"{info.get('size_multiple', vae.get('factor', '?'))})"),
            ("text encoders", ", ".join(f"{k}: {v}" for k, v in (info.get("encoders") or {}).items())),
            ("vae", f"{vae.get('class', '?')}, factor {vae.get('factor')}, scaling "
                    f"{vae.get('scaling_factor')}, shift {vae.get('shift_factor')}, force_upcast "
                    f"{vae.get('force_upcast')}"),
            ("scheduler", str(scheduler.get("class", "?"))),
        ]
        if scheduler.get("honoured"):
            rows.append(("model settings", compact(scheduler["honoured"])))
        if scheduler.get("ignored"):
            rows.append(("loop settings", f"{compact(scheduler['ignored'])} (used by --schedule diffusers, "
                                          "which reproduces the scheduler's loop)"))
        return rows
