"""Noise sources: where stochastic samplers get their randomness.

A noise source is called like k-diffusion's ``noise_sampler``: ``noise(sigma, sigma_next)`` returns a
standard normal tensor shaped like the batch. Sources built from per-sample seeds make sample ``i``
depend on seed ``i`` only, so an image is bit-identical whatever batch, position or rank it is in.

* ``SeededNormal``: i.i.d. draws; each sample owns a ``torch.Generator``. Draws for small images are
  made ahead in blocks of several steps per generator, so call overhead does not dominate.
* ``BrownianNoise``: normalised increments ``(W(sigma_next) - W(sigma)) / sqrt|sigma_next - sigma|`` of
  one Brownian path per sample, revealed lazily: a new point is drawn from the exact conditional
  law given its known neighbours (a Brownian bridge between them, a free increment beyond them).
  Increments over overlapping intervals are therefore correlated exactly as Brownian motion demands,
  at the cost of one normal draw per new point instead of a tree search per call.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

LATENT_STREAM = 0
SAMPLER_STREAM = 1
CORRECTOR_STREAM = 2  # Langevin corrector steps (samplers.langevin)
RESAMPLE_STREAM = 3  # RePaint's jumps back up in noise (samplers.editing)
AUGMENT_STREAM = 4  # the noise a super-resolution model's low-resolution input is augmented with
STAGE_STREAM = 5  # the seed a cascade's super-resolution stage samples with (tools.generate)

# Per-sample elements drawn ahead per block (16 KiB of float32). Small images get many steps of noise
# per generator call (call overhead dominates there); large ones one step per call, so the noise is
# consumed while still in cache (writing blocks of many steps out to memory and reading them back
# cost more than the calls saved).
_BLOCK_ELEMENTS = 1 << 12


def check_seeds(seeds, batch: int) -> list[int]:
    """Seeds as a list of non-negative ints, one per sample of the batch."""
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be a sequence of integers, got {seeds!r}") from None
    if len(seeds) != batch:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
    if any(s < 0 or s >= 1 << 63 for s in seeds):
        raise ValueError("seeds must be integers in [0, 2**63)")
    return seeds


def stream_seed(seed: int, stream: int) -> int:
    """Generator seed of stream ``stream`` of a sample seed.

    Stream 0 is the seed itself, so per-seed latents equal those of NVlabs' StackedRandomGenerator.
    Other streams are hashed apart so a sampler's noise never repeats the latent it started from.
    """
    if stream == LATENT_STREAM:
        return seed % (1 << 32)
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0]) >> 1


def _generators(seeds, stream, device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(stream_seed(s, stream)) for s in seeds]


def _draw_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sampler noise: draw in float32 (float64 when asked) so half-precision runs see the same noise,
    # rounded. (Latents are always drawn in float32, as NVlabs'.)
    return torch.float64 if dtype == torch.float64 else torch.float32


#: the latent streams: NVlabs' (float32 draws, cast to the dtype asked for) and native float64 draws
LATENT_DRAWS = {"nvlabs": torch.float32, "float64": torch.float64}


def latents(seeds: Sequence[int], shape: Sequence[int], *, device="cpu", dtype=torch.float32,
            stream: str = "nvlabs"):
    """Standard normal latents ``[len(seeds), *shape]``, sample ``i`` drawn from seed ``i`` alone.

    ``stream="nvlabs"`` (the default, what ``edm generate`` uses): NVlabs' stream, float32 draws from
    ``torch.Generator().manual_seed(seed % 2**32)``, then cast to ``dtype``; float64 (or float16) latents
    are the float32 ones cast, whatever the dtype. ``stream="float64"``: a second stream, the same
    generators drawing float64 directly (full float64 resolution; NOT NVlabs' latents), cast to
    ``dtype``; kept for benchmarks defined on it (``bench/accuracy.py``).
    """
    if stream not in LATENT_DRAWS:
        raise ValueError(f"unknown latent stream {stream!r}; valid: {', '.join(LATENT_DRAWS)}")
    seeds = check_seeds(seeds, len(seeds))
    out = torch.empty((len(seeds), *shape), device=device, dtype=LATENT_DRAWS[stream])
    for row, gen in zip(out, _generators(seeds, LATENT_STREAM, device)):
        row.normal_(generator=gen)
    return out.to(dtype)


def latent_draws(seeds: Sequence[int], shapes: Sequence[Sequence[int]], *, device="cpu",
                 dtype=torch.float32) -> list[torch.Tensor]:
    """One float32 standard normal draw of each of ``shapes``, in that order, from each seed's latent
    generator (the one :func:`latents` draws from first), each as a ``[B, *shape]`` batch in ``dtype``:
    the draws of a diffusers pipeline whose one generator per seed makes several draws (img2img: its
    VAE posterior sample, then its start noise; the x4 upscaler: its low-res image's noise, then its
    start latents)."""
    seeds = check_seeds(seeds, len(seeds))
    draws = [[] for _ in shapes]
    for gen in _generators(seeds, LATENT_STREAM, device):
        for row, shape in zip(draws, shapes):
            row.append(torch.randn((1, *shape), generator=gen, device=device))
    return [torch.cat(row).to(device=device, dtype=dtype) for row in draws]


class SeededNormal:
    """I.i.d. standard normal draws shaped ``[len(seeds), *shape]``, one stream per seed.

    ``draws_hint`` (about how many draws the caller will make) sizes the first blocks so short runs
    do not draw far ahead; it changes which numbers are drawn, never their dependence on the batch.
    """

    def __init__(self, seeds, shape, *, device="cpu", dtype=torch.float32, stream=SAMPLER_STREAM,
                 draws_hint: int | None = None):
        self.seeds = check_seeds(seeds, len(seeds))
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._stream = stream
        self._gens = None  # made on first draw: deterministic samplers never pay for them
        per_sample = max(1, math.prod(self.shape))
        self._cap = max(1, _BLOCK_ELEMENTS // per_sample)
        self._remaining_hint = draws_hint
        self._block = None
        self._next = 0

    def _refill(self):
        if self._gens is None:
            self._gens = _generators(self.seeds, self._stream, self.device)
        size = self._cap
        if self._remaining_hint is not None:
            # Past the hint (samplers drawing more than one noise per step), repeat the last block size.
            if self._remaining_hint > 0:  # equal blocks that cover the hint: no draws wasted
                blocks = -(-self._remaining_hint // self._cap)
                size = -(-self._remaining_hint // blocks)
            elif self._block is not None:
                size = self._block.shape[0]
        # Sample-major so each generator fills one contiguous row: the values a generator produces
        # then do not depend on how many other samples share the batch.
        block = torch.empty((len(self.seeds), size, *self.shape), device=self.device,
                            dtype=_draw_dtype(self.dtype))
        for row, gen in zip(block, self._gens):
            row.normal_(generator=gen)
        self._block = block.to(self.dtype).transpose(0, 1)
        self._next = 0

    def draw(self) -> torch.Tensor:
        if self._block is None or self._next == self._block.shape[0]:
            self._refill()
        out = self._block[self._next]
        self._next += 1
        if self._remaining_hint is not None:
            self._remaining_hint -= 1
        return out

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return self.draw()


class TorchNormal:
    """I.i.d. draws from torch's global generator, exactly as k-diffusion's default noise sampler."""

    def __init__(self, like: torch.Tensor):
        self.like = like

    def draw(self) -> torch.Tensor:
        return torch.randn_like(self.like)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        return self.draw()


class BrownianNoise:
    """Normalised increments of a Brownian motion W(sigma), one path per sample.

    ``draw()`` supplies standard normal tensors (a ``SeededNormal`` or ``TorchNormal``). Samplers
    query intervals that move towards sigma = 0; points above the current interval are forgotten,
    so memory stays at a few tensors. Querying above a forgotten point is an error.
    """

    def __init__(self, draw: Callable[[], torch.Tensor]):
        self._draw = draw
        self._times: list[float] = []  # sorted ascending
        self._values: list = []  # tensors, and the float 0.0 at the pinned point
        self._ceiling = math.inf

    def _value(self, t: float) -> torch.Tensor:
        times, values = self._times, self._values
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return values[i]
        if not times:
            w = 0.0  # W is pinned to 0 at the first point: only increments matter
        elif i == 0:  # below every known point: a free increment downwards
            w = values[0] - math.sqrt(times[0] - t) * self._draw()
        elif i == len(times):  # above every known point
            w = values[-1] + math.sqrt(t - times[-1]) * self._draw()
        else:  # between two known points: the Brownian bridge
            t0, t1 = times[i - 1], times[i]
            w0, w1 = values[i - 1], values[i]
            frac = (t - t0) / (t1 - t0)
            std = math.sqrt((t - t0) * (t1 - t) / (t1 - t0))
            w = w0 + frac * (w1 - w0) + std * self._draw()
        times.insert(i, t)
        values.insert(i, w)
        return w

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        sigma, sigma_next = float(sigma), float(sigma_next)
        if sigma == sigma_next:
            raise ValueError("Brownian increment over an empty interval")
        high = max(sigma, sigma_next)
        if high > self._ceiling:
            raise ValueError("Brownian noise must be queried on intervals moving towards sigma = 0")
        increment = self._value(sigma_next) - self._value(sigma)
        # Drop points no later query can touch.
        keep = bisect.bisect_right(self._times, high)
        del self._times[keep:], self._values[keep:]
        self._ceiling = high
        return increment / math.sqrt(abs(sigma_next - sigma))


def normal_draws(x: torch.Tensor, seeds, draws_hint: int | None = None, stream: int = SAMPLER_STREAM):
    """Standard normal draws shaped like ``x``: per-seed stream ``stream``, or torch's global generator
    when ``seeds`` is None."""
    if seeds is None:
        return TorchNormal(x)
    return SeededNormal(check_seeds(seeds, x.shape[0]), x.shape[1:], device=x.device, dtype=x.dtype,
                        draws_hint=draws_hint, stream=stream)


def make_noise(kind: str | None, x: torch.Tensor, seeds, draws_hint: int | None = None):
    """The noise source a sampler of noise kind ``kind`` needs for batch ``x``."""
    if kind is None:
        return None
    normal = normal_draws(x, seeds, draws_hint)
    return normal if kind == "iid" else BrownianNoise(normal.draw)
