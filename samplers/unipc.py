"""UniPC (Zhao et al. 2023): a unified predictor-corrector multistep solver, data-prediction form.

Work in the half log-SNR ``lambda = -log sigma`` with ``h = lambda_next - lambda`` and the exponential
integrator's first-order part ``x' = (sigma_next / sigma) x + (1 - sigma_next / sigma) D``.

* UniP-p (predictor) adds ``-B(h) sum_k rho_k D1_k`` where ``D1_k = (D_k - D_0) / r_k`` are scaled
  differences of the last p - 1 earlier evaluations, ``r_k = (lambda_k - lambda) / h``.
* UniC-p (corrector) redoes the same step once D at the predicted point is known, with that D as one
  more difference (``r = 1``): order p + 1 at no extra NFE, because the evaluation it uses is the
  one the next predictor needs anyway. The corrected x is kept; its D is not recomputed.
* ``B(h)`` is ``-h`` (``bh1``) or ``expm1(-h)`` (``bh2``); the weights ``rho`` solve the order
  conditions ``R rho = b`` with ``R[i][k] = r_k^i`` and ``b_i = i! (-h) phi_{i+1}(-h) / B(h)``
  (``samplers.phi``; ``_b_and_bh``). Order 2's predictor and order 1's corrector use the fixed
  ``rho = 1/2``, as the reference implementation.

Order: UniPC-p with the corrector converges at order p + 1 (UniP-p alone at p) when every step uses
order p. With ``lower_order_final`` (the default, as diffusers) the last step is an uncorrected
first-order step, which on a schedule ending at a positive sigma caps the global order at 2; onto
sigma = 0 the last step is D itself. The registry's order (2) is the one the default options show on
tests/test_convergence.py's order check; ``lower_order_final=False`` gives order + 1.

Warm start with lower orders, ``lower_order_final`` caps the order at the number of steps left, and the
final step onto sigma = 0 returns D (the h -> inf limit), as diffusers' UniPCMultistepScheduler
(predict_x0=True, final_sigmas_type='zero'). One denoiser call per step.
"""

from __future__ import annotations

import math

import numpy as np

from .phi import phi
from .registry import register
from .steps import lam, lincomb, report

UNIPC = ("Zhao et al. 2023, UniPC: A Unified Predictor-Corrector Framework "
         "(as diffusers' UniPCMultistepScheduler)")
VARIANTS = ("bh1", "bh2")


def _b_and_bh(h: float, order: int, variant: str) -> tuple[list[float], float]:
    """Right-hand sides ``b_1..b_order`` of the order conditions and ``B(h)`` (data prediction):
    ``b_i = i! (-h) phi_{i+1}(-h) / B(h)`` with ``B(h) = -h`` (bh1) or ``-h phi_1(-h) = expm1(-h)`` (bh2)."""
    hh = -h
    b_h = hh if variant == "bh1" else hh * phi(1, hh)
    return [math.factorial(i) * hh * phi(i + 1, hh) / b_h for i in range(1, order + 1)], b_h


def _update(x, sigma, sigma_next, history, order, variant, rhos_for, new_denoised=None):
    """``x`` at ``sigma`` -> ``sigma_next`` with ``history`` = [(sigma_k, D_k)] newest first
    (history[0] is D at ``sigma``). ``rhos_for(rks, b)`` gives the weights of the differences;
    with ``new_denoised`` (the corrector) D at ``sigma_next`` is one more difference with r = 1."""
    d_0 = history[0][1]
    h = lam(sigma_next) - lam(sigma)
    ratio = sigma_next / sigma
    b, b_h = _b_and_bh(h, order, variant)
    rks = [(lam(s_k) - lam(sigma)) / h for s_k, _ in history[1:order]]
    points = [d_k for _, d_k in history[1:order]]
    if new_denoised is not None:
        rks.append(1.0)
        points.append(new_denoised)
    rhos = rhos_for(rks, b)
    terms = [(ratio, x), (1 - ratio, d_0)]
    for rho, r_k, d_k in zip(rhos, rks, points):
        c = -b_h * rho / r_k  # -B(h) rho (D_k - D_0) / r_k
        terms += [(c, d_k), (-c, d_0)]
    return lincomb(*terms)


def _solve(rks, b):
    if not rks:
        return []
    matrix = np.array([[r**i for r in rks] for i in range(len(rks))], dtype=np.float64)
    return np.linalg.solve(matrix, np.array(b[: len(rks)], dtype=np.float64)).tolist()


def _predictor_rhos(rks, b):
    # rks holds only the earlier points (p - 1 of them); order 2 uses the fixed weight 1/2
    return [0.5] if len(rks) == 1 else _solve(rks, b)


def _corrector_rhos(rks, b):
    # rks ends with the new point (r = 1); UniC-1 uses the fixed weight 1/2
    return [0.5] if len(rks) == 1 else _solve(rks, b)


@register("unipc", order=2, nfe_per_step=1, reference=UNIPC,
          option_help={"order": "Order p of the UniP predictor, 1 to 3 (with the corrector, p + 1)."},
          description="UniPC multistep predictor-corrector (UniP-p + UniC, data prediction), 1 NFE/step")
def unipc(model, x, sigmas, *, noise=None, callback=None, order=3, variant="bh2", corrector=True,
          lower_order_final=True):
    """UniPC-p: UniP-p predictor, optionally corrected by UniC-p with the next step's evaluation."""
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"unipc order must be 1, 2 or 3, got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unipc variant must be one of: {', '.join(VARIANTS)}, got {variant}")
    steps = len(sigmas) - 1
    history = []  # (sigma, D) newest first
    x_last = last_order = None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        if corrector and x_last is not None:
            x = _update(x_last, sigmas[i - 1], sigma, history, last_order, variant, _corrector_rhos,
                        new_denoised=denoised)
        report(callback, i, x, sigma, denoised)
        history.insert(0, (sigma, denoised))
        del history[order:]
        this_order = min(order, steps - i) if lower_order_final else order
        this_order = min(this_order, len(history))
        x_last, last_order = x, this_order
        if sigma_next == 0:
            x = denoised  # the h -> inf limit of the first-order part; diffusers' final step
        else:
            x = _update(x, sigma, sigma_next, history, this_order, variant, _predictor_rhos)
    return x
