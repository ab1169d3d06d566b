"""Text conditioners of the Stable Diffusion pipelines: prompts -> the denoiser's keyword arguments, exactly
as each diffusers pipeline's ``encode_prompt`` computes them (without clip_skip, LoRA scales or textual
inversion).

=================  ===================================================================================
class              ``encode(prompts, height=, width=)`` for ``B = len(prompts)``
=================  ===================================================================================
SDConditioner      ``encoder_hidden_states`` [B, 77, hidden]: the last hidden states of the CLIP encoder
                   (SD 1.x / 2.x)
SDXLConditioner    ``encoder_hidden_states`` [B, 77, hidden_1 + hidden_2]: the penultimate hidden states of
                   both encoders side by side; ``text_embeds`` [B, projection_dim]: the pooled (projected)
                   embedding of encoder 2; ``time_ids`` [B, 6]: (height, width, 0, 0, height, width)
SD3Conditioner     ``encoder_hidden_states`` [B, 77 + 256, joint_attention_dim]: both CLIPs' penultimate
                   hidden states side by side, zero-padded to the T5 width, then T5's last hidden states
                   (zeros when the pipeline has no T5); ``pooled_projections`` [B, proj_1 + proj_2]
PixArtConditioner  ``encoder_hidden_states`` [B, max_sequence_length, d_model]: T5's last hidden states of
                   the prompt lowercased and stripped, padded to 120 (alpha) / 300 (Sigma) tokens, with
                   its ``encoder_attention_mask`` [B, max_sequence_length]; with the transformer's micro-
                   conditions also ``resolution`` [B, 2] (height, width) and ``aspect_ratio`` [B, 1]
=================  ===================================================================================

A prompt of ``None`` is the pipeline's default negative prompt: the empty prompt (PixArt's default too), or,
for SDXL saved with
``force_zeros_for_empty_prompt``, all-zero hidden states and pooled embedding. Prompts longer than a
tokenizer's ``model_max_length`` are truncated, as diffusers truncates them (:meth:`truncated` tells which).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["PixArtConditioner", "SD3Conditioner", "SDConditioner", "SDXLConditioner"]


def _check_prompts(prompts) -> list[str | None]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a sequence of str or None")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to encode")
    for p in prompts:
        if p is not None and not isinstance(p, str):
            raise TypeError(f"a prompt must be a str or None, got {type(p).__name__}")
    return prompts


def _device(module) -> torch.device:
    return next(module.parameters()).device


def _dtype(module) -> torch.dtype:
    return next(module.parameters()).dtype


def _ids(tokenizer, prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True,
                       return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


class _Conditioner:
    """The tokenizers and the truncation rule every conditioner shares."""

    tokenizers: list

    def truncated(self, prompt: str) -> bool:
        """Whether a tokenizer of this model truncates ``prompt`` (diffusers warns then)."""
        for tokenizer in self.tokenizers:
            if len(tokenizer(prompt, verbose=False).input_ids) > tokenizer.model_max_length:
                return True
        return False


class SDConditioner(_Conditioner):
    """Stable Diffusion 1.x / 2.x: ``{"encoder_hidden_states": [B, L, hidden]}`` (L = the tokenizer's
    model_max_length), the text encoder's ``last_hidden_state``; ``None`` is the empty prompt."""

    keys = ("encoder_hidden_states",)

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizers = [tokenizer]

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]:
        prompts = [p if p is not None else "" for p in _check_prompts(prompts)]
        device = _device(self.text_encoder)
        ids, mask = _ids(self.tokenizer, prompts, self.tokenizer.model_max_length)
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        states = self.text_encoder(ids.to(device), attention_mask=mask.to(device) if use_mask else None)[0]
        return {"encoder_hidden_states": states.to(_dtype(self.text_encoder))}


def _clip_penultimate(tokenizer, encoder, prompts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
    """``(penultimate hidden states [B, L, hidden], output[0])`` of one CLIP encoder."""
    ids, _ = _ids(tokenizer, prompts, max_length)
    out = encoder(ids.to(_device(encoder)), output_hidden_states=True)
    return out.hidden_states[-2], out[0]


class SDXLConditioner(_Conditioner):
    """SDXL: ``encoder_hidden_states`` [B, L, sum of hidden sizes], ``text_embeds`` [B, projection_dim] and
    ``time_ids`` [B, 6].

    Args:
        tokenizers, text_encoders: ``[tokenizer, tokenizer_2]`` and ``[text_encoder, text_encoder_2]``
            (or the second alone, as the refiner has it).
        force_zeros_for_empty_prompt: the pipeline's setting: ``None`` prompts are then all-zero hidden
            states and pooled embedding (their time ids are the same as the others').
    """

    keys = ("encoder_hidden_states", "text_embeds", "time_ids")

    def __init__(self, tokenizers, text_encoders, *, force_zeros_for_empty_prompt: bool = True):
        if len(tokenizers) != len(text_encoders) or not tokenizers:
            raise ValueError("SDXLConditioner needs one tokenizer per text encoder")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    def time_ids(self, batch: int, height: int, width: int, dtype, device) -> Tensor:
        """diffusers' ``_get_add_time_ids``: original size, crop top-left, target size; the pipeline's
        defaults (original = target = the size generated, no crop)."""
        row = torch.tensor([[int(height), int(width), 0, 0, int(height), int(width)]], dtype=dtype)
        return row.to(device).repeat(batch, 1)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]:
        prompts = _check_prompts(prompts)
        texts = [p if p is not None else "" for p in prompts]
        states, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            hidden, first = _clip_penultimate(tokenizer, encoder, texts, tokenizer.model_max_length)
            if pooled is None and first.ndim == 2:  # only CLIPTextModelWithProjection's text_embeds
                pooled = first
            states.append(hidden)
        if pooled is None:
            raise ValueError("no SDXL text encoder gives a pooled embedding (CLIPTextModelWithProjection)")
        last = self.text_encoders[-1]
        hidden = torch.cat(states, dim=-1).to(device=_device(last), dtype=_dtype(last))
        pooled = pooled.to(hidden.device)
        if self.force_zeros_for_empty_prompt:
            empty = torch.tensor([p is None for p in prompts], device=hidden.device)
            if bool(empty.any()):
                hidden = torch.where(empty[:, None, None], torch.zeros_like(hidden), hidden)
                pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        time_ids = self.time_ids(len(prompts), height, width, hidden.dtype, hidden.device)
        return {"encoder_hidden_states": hidden, "text_embeds": pooled, "time_ids": time_ids}


class SD3Conditioner(_Conditioner):
    """SD3: ``encoder_hidden_states`` [B, L + max_sequence_length, joint_attention_dim] and
    ``pooled_projections`` [B, sum of projection dims].

    Args:
        tokenizers, text_encoders: the two CLIPs ``[tokenizer, tokenizer_2]``, ``[text_encoder,
            text_encoder_2]`` (both CLIPTextModelWithProjection).
        t5: ``(tokenizer_3, text_encoder_3)``, or None (the pipeline saved without T5: zeros instead).
        joint_attention_dim: the transformer's, the width of the zeros standing for T5.
        max_sequence_length: T5's sequence length (the pipeline's default, 256).
    """

    keys = ("encoder_hidden_states", "pooled_projections")

    def __init__(self, tokenizers, text_encoders, t5=None, *, joint_attention_dim: int,
                 max_sequence_length: int = 256):
        if len(tokenizers) != 2 or len(text_encoders) != 2:
            raise ValueError("SD3Conditioner needs the two CLIP tokenizers and text encoders")
        self.tokenizers = list(tokenizers)
        self.text_encoders = list(text_encoders)
        self.t5 = t5
        self.joint_attention_dim = int(joint_attention_dim)
        self.max_sequence_length = int(max_sequence_length)
        # diffusers' tokenizer_max_length: the first tokenizer's, for both CLIPs
        self.max_length = int(self.tokenizers[0].model_max_length)

    def truncated(self, prompt: str) -> bool:
        if super().truncated(prompt):
            return True
        if self.t5 is None:
            return False
        return len(self.t5[0](prompt, verbose=False).input_ids) > self.max_sequence_length

    def _t5(self, prompts: list[str], dtype, device) -> Tensor:
        if self.t5 is None:
            return torch.zeros(len(prompts), self.max_sequence_length, self.joint_attention_dim,
                               dtype=dtype, device=device)
        tokenizer, encoder = self.t5
        ids = tokenizer(prompts, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                        add_special_tokens=True, return_tensors="pt").input_ids
        return encoder(ids.to(_device(encoder)))[0].to(dtype=_dtype(encoder), device=device)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]:
        texts = [p if p is not None else "" for p in _check_prompts(prompts)]
        first = self.text_encoders[0]
        dtype, device = _dtype(first), _device(first)
        states, pooled = [], []
        for tokenizer, encoder in zip(self.tokenizers, self.text_encoders):
            hidden, text_embeds = _clip_penultimate(tokenizer, encoder, texts, self.max_length)
            states.append(hidden.to(dtype=dtype, device=device))
            pooled.append(text_embeds.to(device))
        clip = torch.cat(states, dim=-1)
        t5 = self._t5(texts, dtype, device)
        if t5.shape[-1] < clip.shape[-1]:
            raise ValueError(f"the CLIP hidden states ({clip.shape[-1]} wide) are wider than T5's "
                             f"({t5.shape[-1]})")
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5], dim=-2),
                "pooled_projections": torch.cat(pooled, dim=-1)}


class PixArtConditioner(_Conditioner):
    """PixArt-alpha / -Sigma: ``encoder_hidden_states`` [B, L, d_model] and ``encoder_attention_mask`` [B, L]
    (int64) of one T5 encoder, ``L = max_sequence_length``; with ``micro_conditions`` (a transformer with
    ``use_additional_conditions``, PixArt-alpha 1024's) also ``resolution`` [B, 2] = (height, width) of the
    image and ``aspect_ratio`` [B, 1] = height / width, in the encoder's dtype.

    As the pipelines' ``encode_prompt`` with ``clean_caption=False`` (what they do without ``bs4`` and
    ``ftfy`` installed, too): each prompt lowercased and stripped, tokenized with special tokens, padded and
    truncated to ``L``, encoded with its attention mask. ``None`` is the pipelines' default negative prompt,
    the empty one.
    """

    def __init__(self, tokenizer, text_encoder, *, max_sequence_length: int, micro_conditions: bool = False):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.tokenizers = [tokenizer]
        self.max_sequence_length = int(max_sequence_length)
        self.micro_conditions = bool(micro_conditions)
        self.keys = ("encoder_hidden_states", "encoder_attention_mask") + (
            ("resolution", "aspect_ratio") if self.micro_conditions else ())

    def truncated(self, prompt: str) -> bool:
        return len(self.tokenizer(prompt.lower().strip(), verbose=False).input_ids) > self.max_sequence_length

    @torch.no_grad()
    def encode(self, prompts: Sequence[str | None], *, height: int, width: int) -> dict[str, Tensor]:
        texts = [(p if p is not None else "").lower().strip() for p in _check_prompts(prompts)]
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, add_special_tokens=True, return_tensors="pt")
        device, dtype = _device(self.text_encoder), _dtype(self.text_encoder)
        mask = tokens.attention_mask.to(device)
        states = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0].to(dtype)
        cond = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
        if self.micro_conditions:
            batch = len(texts)
            cond["resolution"] = torch.tensor([[height, width]], dtype=dtype, device=device).repeat(batch, 1)
            cond["aspect_ratio"] = torch.tensor([[float(height / width)]], dtype=dtype,
                                                device=device).repeat(batch, 1)
        return cond
