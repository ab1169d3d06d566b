"""Running a sampler over parts of its schedule, for what happens between steps: corrector steps
(``samplers.langevin``) and RePaint's jumps back up in noise (``samplers.editing``).

A part ``sigmas[a : b + 1]`` is solved as one run of the sampler, so a single-step sampler takes exactly
the steps it takes in a whole run. Two things do change, by design: a multistep sampler starts its
history afresh in each part (the state it stepped from was moved by the corrector or by the jump, so the
old model evaluations no longer lie on its trajectory), and EDM churn, whose gamma is S_churn / N for N
steps, gets S_churn scaled to the part so gamma stays that of the whole run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from .noise import BrownianNoise

__all__ = ["jump_up", "part_noise", "parts", "run_part"]


def parts(steps: int, length: int, repeats: int = 1) -> Iterator[tuple[int, int, int]]:
    """``(a, b, repeats)`` for consecutive parts of ``length`` steps covering ``0..steps``; every part but
    the last (the one that ends the run) is solved ``repeats`` times."""
    for a in range(0, steps, length):
        b = min(a + length, steps)
        yield a, b, repeats if b < steps else 1


def part_noise(kind: str | None, normal):
    """A noise source for one part from the run's normal draws: i.i.d. draws continue the one stream;
    a Brownian sampler gets a fresh path per part (a part solved again must not reuse its increments)."""
    if kind is None or normal is None:
        return None
    return normal if kind == "iid" else BrownianNoise(normal.draw)


def run_part(spec, model, x, sigmas: list[float], a: int, b: int, *, normal, callback, options):
    """Steps ``a .. b - 1`` of the schedule ``sigmas`` with sampler ``spec``, as one run on
    ``sigmas[a : b + 1]``; callbacks report the step index of the whole run."""
    options = dict(options)
    total = len(sigmas) - 1
    if options.get("s_churn"):
        options["s_churn"] = options["s_churn"] * (b - a) / total
    shifted = None if callback is None else (lambda info: callback({**info, "i": info["i"] + a}))
    return spec.fn(model, x, sigmas[a:b + 1], noise=part_noise(spec.noise, normal), callback=shifted,
                   **options)


def jump_up(x, sigma_from: float, sigma_to: float, draw):
    """``x`` at noise level ``sigma_from`` taken up to ``sigma_to`` with fresh noise (the forward process)."""
    return x + math.sqrt(sigma_to**2 - sigma_from**2) * draw()
