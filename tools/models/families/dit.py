"""DiT (``DiTPipeline``): a class-conditional latent ``DiTTransformer2DModel`` (adaLN-Zero; saved as
``Transformer2DModel`` on the hub, which diffusers loads as a DiTTransformer2DModel), predicting eps and,
with a learned sigma, a variance in a second half of its channels.

What the denoiser reproduces of ``DiTPipeline.__call__`` (diffusers 0.42):

- the network's eps is the first ``in_channels`` channels of its output (the learned-sigma mean);
- classes follow this library's convention, a ``[B, classes]`` one-hot with ``classes`` =
  ``num_embeds_ada_norm`` (1000 for ImageNet); an all-zero row is the null class, index ``classes``, the
  extra row of the network's label embedding that DiT trained with label dropout. The pipeline hard-codes
  the null class as 1000, the same index for every ImageNet DiT;
- classifier-free guidance: the pipeline guides the eps half, all ``in_channels`` of it in 0.42 (older
  releases guided the first 3 channels only), as ``uncond + guidance_scale (cond - uncond)``, and only
  when ``guidance_scale > 1``. On the eps mean that is this library's ``D + w (D - D_uncond)`` on x0 with
  ``w = guidance_scale - 1`` (x0 is affine in eps at a given x and sigma), so guidance is the generic
  classifier-free guidance with the null class as its negative, default ``w = 3`` (guidance_scale 4);
- the latent is the VAE's, scaled by ``scaling_factor`` (0.18215);
- its loop: the first latent is the unit draw, not multiplied by the scheduler's ``init_noise_sigma``, and
  each step overwrites the latent with ``scale_model_input`` of it before handing it to ``step``. Both are
  no-ops for DDIM, DPM-Solver and UniPC (a VP state starting at unit scale), whose loops ``--schedule
  diffusers`` reproduces; under a sigma-space scheduler (Euler, Heun, LMS, KDPM2) the pipeline's state is
  rescaled by ``1 / sqrt(sigma^2 + 1)`` at every step, no sampler's loop, so ``--schedule diffusers``
  refuses their counterparts (``info["sigma_space_loop"]`` says why). Every sampler runs on the model
  with any other schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor, nn

from .registry import register
from .transformer import TransformerFamily, eps_mean

__all__ = ["DiT", "DiTBackbone", "SIGMA_SPACE_LOOP", "class_names"]

#: why DiTPipeline's loop under a sigma-space scheduler is no sampler's (see the module docstring)
SIGMA_SPACE_LOOP = ("DiTPipeline does not scale its first latent by init_noise_sigma and overwrites its "
                    "latent with scale_model_input at every step")


class DiTBackbone(nn.Module):
    """``F(x_in, t, class_labels)`` for a diffusers ``DiTTransformer2DModel``: the eps mean of its output,
    ``class_labels`` integer indices (the null class at ``num_embeds_ada_norm``)."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.channels = int(transformer.config.in_channels)

    def forward(self, x_in: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
        out = self.transformer(x_in, timestep=t, class_labels=class_labels, return_dict=False)[0]
        return eps_mean(out, self.channels)


def class_names(id2label) -> dict[int, str]:
    """``model_index.json``'s ``id2label`` (class index -> comma-separated names), keys as ints; {} when
    absent or malformed."""
    if not isinstance(id2label, Mapping):
        return {}
    names = {}
    for key, value in id2label.items():
        try:
            names[int(key)] = str(value)
        except (TypeError, ValueError):
            continue
    return dict(sorted(names.items()))


@register
class DiT(TransformerFamily):
    name = "dit"
    display_name = "DiT (class-conditional)"
    pipelines = MappingProxyType({"DiTPipeline": 4.0})
    network_class = "DiTTransformer2DModel"
    required = ("transformer", "vae", "scheduler")

    def backbone(self, network):
        return DiTBackbone(network)

    def conditioner(self, saved, network):
        return None

    def classes(self, network) -> int:
        return int(network.config.num_embeds_ada_norm)

    def class_arguments(self, network):
        table = network.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
        has_null = table.num_embeddings > self.classes(network)

        def convert(labels: Tensor) -> dict:
            given = labels.ne(0).any(dim=1)
            if not has_null and not bool(given.all()):
                raise ValueError("this DiT has no null class (it was trained without label dropout): give "
                                 "a class label for every sample")
            index = labels.argmax(dim=1)
            return {"class_labels": torch.where(given, index, torch.full_like(index, labels.shape[1]))}

        return convert

    def geometry(self, config):
        return super().geometry(config)._replace(max_latent=int(config.sample_size))

    def info_fields(self, saved, conditioner, denoising) -> dict[str, Any]:
        names = class_names(saved.index.get("id2label"))
        return {**super().info_fields(saved, conditioner, denoising), "class_names": names,
                "null_class": self.classes(saved.networks[self.network]),
                "sigma_space_loop": SIGMA_SPACE_LOOP}

    def info_rows(self, info: Mapping[str, Any]) -> list[tuple[str, str]]:
        rows = [row for row in super().info_rows(info) if row[0] != "text encoders"]
        height, width = info.get("default_size") or (0, 0)
        rows = [("image size", f"{width} x {height} (width x height; fixed, as DiTPipeline's)")
                if key == "image size" else (key, value) for key, value in rows]
        names = info.get("class_names") or {}
        shown = ", ".join(f"{k}: {v.split(',')[0]}" for k, v in list(names.items())[:3])
        more = f", ... ({len(names)} named)" if len(names) > 3 else ""
        at = 1 + next((i for i, (key, _) in enumerate(rows) if key == "learned sigma"), 0)
        rows[at:at] = [
            ("class names", f"{shown}{more} (model_index.json id2label)" if names else "none recorded"),
            ("null class", f"index {info.get('null_class')} (all-zero one-hot rows: the unconditional "
                           "input of classifier-free guidance)"),
            ("pipeline loop", "DDIM, DPM-Solver, UniPC (--schedule diffusers with ddim, dpmpp_2m, "
                              "dpmpp_2m_sde, unipc); not sigma-space schedulers (" + SIGMA_SPACE_LOOP + ")"),
        ]
        return rows

