"""A cascade: a base model's images, then a super-resolution model's on each of them
(``edm generate --model BASE --sr-model SR``): :func:`prepare_stages` -> a :class:`tools.generate.Sampling`
(no ``--sr-model``) or a :class:`Cascade`.

Per seed ``s``, the base stage samples seed ``s`` as a plain run would; the super-resolution stage samples
seed ``stream_seed(s, STAGE_STREAM)`` (``samplers.noise``): its start latents, its sampler's noise and its
input's augmentation noise all come from that derived seed, so they depend on the seed alone (not on the
batch) and differ from the base stage's. Its input is the base image exactly as written: quantised to
uint8 as in the PNG and read back to [-1, 1], so that ``--model SR --low-res OUTDIR/base`` with the derived
seeds sees the same input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from samplers.noise import STAGE_STREAM, stream_seed
from tools.common import BadInput, flagged
from tools.images import from_uint8, to_uint8
from tools.request import STAGE_FIELDS, SamplingRequest

from .sampling import Sampling, load, prepare_sampling

__all__ = ["BASE_DIR", "Cascade", "prepare_stages", "stage_seeds"]

#: the folder of the base stage's images, inside the output folder
BASE_DIR = "base"
#: how the record names the super-resolution stage's seeds
STAGE_SEEDS = f"stream_seed(seed, {STAGE_STREAM})"
#: the parameters of the super-resolution stage's errors that are its own flags (``--sr-steps``)
_STAGE_PARAMS = (*STAGE_FIELDS, "model")


def stage_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds the super-resolution stage samples for ``seeds``: ``stream_seed(seed, STAGE_STREAM)``."""
    return [stream_seed(int(seed), STAGE_STREAM) for seed in seeds]


@dataclass(kw_only=True)
class Cascade:
    """A checked cascade: the base stage and the super-resolution stage (each a checked
    :class:`tools.generate.Sampling`). It answers what a command asks of a Sampling: the final images
    (:meth:`images`), both stages' (:meth:`outputs`), the record of both stages' settings, a description;
    ``model`` is the final (super-resolution) model, the device, prompts and sampler the base stage's."""

    base: Sampling
    sr: Sampling
    #: the folders (inside the output folder) of :meth:`outputs`, in writing order: the final images last
    output_dirs = (BASE_DIR, "")

    def __getattr__(self, name: str) -> Any:
        # what a command reads of a Sampling (device, prompts, sampler, steps, ...) is the base stage's
        if name in ("base", "sr") or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.base, name)

    @property
    def model(self):
        return self.sr.model

    @property
    def evaluations(self) -> int | None:
        base, sr = self.base.evaluations, self.sr.evaluations
        return None if base is None or sr is None else base + sr

    def check_seeds(self, seeds: Sequence[int]) -> None:
        self.base.check_seeds(seeds)

    def outputs(self, seeds: Sequence[int]) -> dict[str, np.ndarray]:
        """uint8 ``[B, H, W, C]`` images of ``seeds`` by folder: the base stage's, then the final ones."""
        base = to_uint8(self.base.images(seeds))
        return {BASE_DIR: base, "": to_uint8(self._final(seeds, base))}

    def images(self, seeds: Sequence[int]) -> torch.Tensor:
        """The final images of ``seeds`` (``[B, C, H, W]`` floats, about [-1, 1])."""
        return self._final(seeds, to_uint8(self.base.images(seeds)))

    def _final(self, seeds: Sequence[int], base: np.ndarray) -> torch.Tensor:
        low = from_uint8(base).to(self.sr.device)  # the PNG's pixels, back in [-1, 1]
        return self.sr.images(stage_seeds(seeds), low_res=low)

    def settings(self) -> dict[str, Any]:
        """Both stages' settings (the record of the output folder)."""
        return {"base": self.base.settings(), "sr": {**self.sr.settings(), "seeds": STAGE_SEEDS}}

    def describe(self) -> str:
        return f"{self.base.describe()}; then {self.sr.model.source}: {self.sr.describe()}"


def _stage_error(error: BadInput) -> BadInput:
    """The super-resolution stage's error, naming its own flag (``--sr-steps``, not ``--steps``)."""
    param, message = error.param, str(error)
    if param == "options":  # sampler options, checked once the stage's sampler is known: name their flags
        message = flagged(message, {term: f"--sr-{term.replace('_', '-')}" for term in error.terms})
    if "--sr-" not in message:
        message = f"the --sr-model stage: {message}"
    return BadInput(message, f"sr_{param}" if param in _STAGE_PARAMS else param)


def prepare_stages(request: SamplingRequest, sr: SamplingRequest | None = None) -> Sampling | Cascade:
    """``prepare_sampling(request)``, or with ``sr`` (the super-resolution stage's request, as
    ``tools.options.sr_stage_request`` builds it) the checked :class:`Cascade`; BadInput when ``sr``'s model
    is not a super-resolution model, or takes another image shape than the base model's."""
    base = prepare_sampling(request)
    if sr is None:
        return base
    try:
        model = load(sr.model, base.device, base.dtype, sr.trust_pickle)
    except BadInput as e:
        raise _stage_error(e) from None
    conditioner = getattr(model, "low_res", None)
    if conditioner is None:
        raise BadInput(f"--sr-model {model.source} is not a super-resolution model (it takes no "
                       "low-resolution image)", "sr_model")
    shape = tuple(int(s) for s in base.model.image_shape)
    if tuple(conditioner.shape) != shape:
        raise BadInput(f"--sr-model {model.source} takes {'x'.join(map(str, conditioner.shape))} "
                       f"low-resolution images; the base model {base.model.source} makes "
                       f"{'x'.join(map(str, shape))} images", "sr_model")
    try:
        stage = prepare_sampling(sr.replace(model=model), staged=True)
    except BadInput as e:
        raise _stage_error(e) from None
    return Cascade(base=base, sr=stage)
