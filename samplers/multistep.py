"""Multistep samplers: one denoiser call per step, earlier evaluations reused for higher order.

* ``lms``: linear multistep (Adams-Bashforth on non-uniform sigma steps) on dx/dsigma.
* ``dpmpp_2m`` / ``dpmpp_2m_sde`` / ``dpmpp_3m_sde``: DPM-Solver++ multistep in the half log-SNR
  lambda = -log sigma, data prediction. The SDE variants (eta > 0) damp x by exp(-eta h) more and add
  matching Brownian noise; at eta = 0 they are the ODE solvers (dpmpp_2m is 2m_sde at eta = 0).
* ``dpmpp_3m``: deterministic DPM-Solver++(3M) with phi_3 weight 2, truly third order.
* ``res_multistep``: RES multistep (ComfyUI), phi_1/phi_2 form: the heun-type 2M at eta = 0;
  ``res_multistep_ancestral`` takes that step to sigma_down and adds sigma_up of fresh noise.
* ``gradient_estimation``: Permenter & Yuan's gamma-corrected Euler, one derivative back.

The samplers that declare CFG++ take each step's (target, direction) from ``steps.evaluate`` and keep the
direction in their history, as ComfyUI's ``*_cfg_pp`` samplers keep the unconditional prediction: the step
runs from ``x + (D_guided - D_uncond)`` with D_guided as its D, which is ComfyUI's ``dpmpp_2m_cfg_pp``
and ``gradient_estimation_cfg_pp`` exactly. ComfyUI's ``res_multistep_cfg_pp`` (and its ancestral form)
differs after the first step: it weights D_uncond, not D_guided, by h (phi_1 - phi_2 / c2), so there the
guidance reaches x only through the shifted start, scaled by e^{-h}; the rule here is one for every
multistep sampler (and is ComfyUI's on the first step).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

from .phi import phi
from .registry import register
from .steps import ancestral_split, evaluate, lam, lincomb, report

K_DIFFUSION = "Crowson, k-diffusion (github.com/crowsonkb/k-diffusion)"


# --- lms -----------------------------------------------------------------------------------------


@cache
def _gauss_legendre(n: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return tuple((nodes + 1) / 2), tuple(weights / 2)  # on [0, 1]


def lms_coefficients(ts: list[float], t_next: float) -> list[float]:
    """Coefficients c_j with ``x_next = x + sum_j c_j d_j``: the integral over [ts[0], t_next] of the
    Lagrange basis polynomial of node ts[j] (ts = current point then earlier ones).

    Each basis polynomial has degree len(ts) - 1, so a len(ts)-point Gauss-Legendre rule integrates it
    exactly: closed form, no adaptive quadrature.
    """
    h = t_next - ts[0]
    nodes, weights = _gauss_legendre(len(ts))
    taus = [ts[0] + u * h for u in nodes]
    coeffs = []
    for j, tj in enumerate(ts):
        others = [tk for k, tk in enumerate(ts) if k != j]
        basis = [math.prod((tau - tk) / (tj - tk) for tk in others) for tau in taus]
        coeffs.append(h * sum(w * b for w, b in zip(weights, basis)))
    return coeffs


@register("lms", order=4, nfe_per_step=1, reference=K_DIFFUSION,
          option_help={"order": "How many past derivatives the linear multistep combines (its order), >= 1."},
          description="Linear multistep (Adams-Bashforth in sigma), up to `order` past derivatives")
def lms(model, x, sigmas, *, noise=None, callback=None, order=4):
    """Linear multistep method on dx/dsigma with the last ``order`` derivatives."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"lms order must be a positive integer, got {order!r}")
    ds = []  # derivatives, newest first
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        ds.insert(0, (x - denoised) / sigma)
        del ds[order:]
        coeffs = lms_coefficients(sigmas[i::-1][: len(ds)], sigmas[i + 1])
        x = lincomb((1.0, x), *zip(coeffs, ds))
    return x


# --- DPM-Solver++ multistep ----------------------------------------------------------------------


def dpmpp_multistep(model, x, sigmas, *, noise, callback, order, eta=0.0, s_noise=1.0,
                    solver_type="heun", phi_3_weight=1.0, ancestral_eta=0.0):
    """DPM-Solver++(order M), optionally SDE (eta > 0) or ancestral (``ancestral_eta`` > 0: the step goes to
    sigma_down, ``s_noise * sigma_up`` of fresh noise follows, ``steps.ancestral_split``; ``h`` and the
    history's step lengths are then those to sigma_down, as ComfyUI's RES multistep), with lower-order
    warm start.

    In lambda = -log sigma, h = lambda_next - lambda and h_eta = (1 + eta) h, the step is the
    exponential integrator of the phi-function expansion (``samplers.phi``) with D's derivatives
    replaced by divided differences of the last denoised values D, D_1, D_2 (r0 = h_1 / h and
    r1 = h_2 / h the earlier steps relative to this one):

        d1_0 = (D - D_1) / r0,  d1_1 = (D_1 - D_2) / r1               (~ h D', one step back)
        d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1),  d2 = (d1_0 - d1_1) / (r0 + r1)   (~ h D', h^2 D''/2)
        x' = (sigma_next / sigma) e^{-eta h} x + h_eta phi_1 D + h_eta phi_2 d1 + w h_eta phi_3 d2

    with phi_k = phi_k(-h_eta). The second order uses ``d = d1_0`` alone, weighted by h_eta phi_2
    (``solver_type='heun'``) or h_eta phi_1 / 2 (``'midpoint'``). ``phi_3_weight`` w = 1 is
    k-diffusion's (and DPM-Solver's reference code's) third-order term; since d2 approximates
    h^2 D''/2, the Taylor expansion asks for 2, and only then is 3M third order.

    Each step starts from ``steps.evaluate``'s point with its target as D; the history keeps the
    direction (the same tensor unless CFG++), so under CFG++ ``d1_0 = (D_target - D_1,direction) / r0``.
    """
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be heun or midpoint, got {solver_type}")
    history = []  # (denoised, h) of earlier steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x_step, denoised, direction = evaluate(model, x, sigma)
        report(callback, i, x, sigma, denoised)
        sigma_to, sigma_up = ancestral_split(sigma, sigma_next, ancestral_eta)
        if sigma_to == 0:
            x = denoised  # the limit h -> inf of every formula below
            if sigma_up:
                x = x + noise(sigma, sigma_next) * (s_noise * sigma_up)
            continue
        h = lam(sigma_to) - lam(sigma)
        h_eta = h * (1 + eta)
        decay = sigma_to / sigma * math.exp(-eta * h)  # = e^{-h_eta}
        terms = [(decay, x_step), (h_eta * phi(1, -h_eta), denoised)]
        if order >= 3 and len(history) >= 2:
            (denoised_1, h_1), (denoised_2, h_2) = history[:2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - denoised_1) / r0
            d1_1 = (denoised_1 - denoised_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            terms += [(h_eta * phi(2, -h_eta), d1), (phi_3_weight * h_eta * phi(3, -h_eta), d2)]
        elif order >= 2 and history:
            denoised_1, h_1 = history[0]
            d = (denoised - denoised_1) / (h_1 / h)
            weight = phi(2, -h_eta) if solver_type == "heun" else 0.5 * phi(1, -h_eta)
            terms.append((h_eta * weight, d))
        x = lincomb(*terms)
        if eta and s_noise:
            noise_std = sigma_next * math.sqrt(-math.expm1(-2 * eta * h))
            x.add_(noise(sigma, sigma_next), alpha=noise_std * s_noise)
        if sigma_up and s_noise:
            x.add_(noise(sigma, sigma_next), alpha=s_noise * sigma_up)
        history.insert(0, (direction, h))
        del history[2:]
    return x


DPMPP = "Lu et al. 2022, DPM-Solver++ (multistep); SDE variants as k-diffusion"


@register("dpmpp_2m", order=2, nfe_per_step=1, reference=DPMPP, cfg_pp=True,
          description="DPM-Solver++(2M): second-order multistep exponential integrator")
def dpmpp_2m(model, x, sigmas, *, noise=None, callback=None):
    """DPM-Solver++(2M): the midpoint-type second-order multistep, deterministic."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=2, eta=0.0,
                           solver_type="midpoint")


@register("dpmpp_2m_sde", order=2, nfe_per_step=1, stochastic=True, noise="brownian", reference=DPMPP,
          option_help={"solver_type": "Second-order correction of dpmpp_2m_sde: midpoint or heun."},
          description="DPM-Solver++(2M) SDE (solver_type midpoint or heun)")
def dpmpp_2m_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0,
                 solver_type="midpoint"):
    """DPM-Solver++(2M) SDE: the second-order multistep with Brownian noise (eta = 0: the ODE)."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=2, eta=eta,
                           s_noise=s_noise, solver_type=solver_type)


@register("dpmpp_3m_sde", order=3, nfe_per_step=1, stochastic=True, noise="brownian", reference=DPMPP,
          description="DPM-Solver++(3M) SDE")
def dpmpp_3m_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE with k-diffusion's phi_3 weight 1 (second order, see dpmpp_multistep)."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=3, eta=eta,
                           s_noise=s_noise)


@register("dpmpp_3m", order=3, nfe_per_step=1, reference=DPMPP,
          description="DPM-Solver++(3M), deterministic, third order (phi_3 weight 2)")
def dpmpp_3m(model, x, sigmas, *, noise=None, callback=None):
    """DPM-Solver++(3M), deterministic, with the Taylor-correct phi_3 weight 2: third order."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=3, eta=0.0,
                           phi_3_weight=2.0)


# RES multistep (ComfyUI) weights the line through (lambda_prev, D_prev), (lambda, D) with phi_1, phi_2 of
# -h: that is exactly the heun-type DPM-Solver++(2M) update above, so it runs on the same code
# (tests/test_multistep_solvers.py checks it against the phi-form written out independently).
RES = "Zhang et al. 2023, refined exponential solver (RES); multistep form as ComfyUI"


@register("res_multistep", order=2, nfe_per_step=1, cfg_pp=True,
          reference=RES,
          description="RES multistep: second-order exponential multistep with phi_1, phi_2 in lambda")
def res_multistep(model, x, sigmas, *, noise=None, callback=None):
    """RES multistep: the heun-type DPM-Solver++(2M) (phi_1, phi_2 weights), deterministic."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=2, eta=0.0,
                           solver_type="heun")


@register("res_multistep_ancestral", order=2, nfe_per_step=1, stochastic=True, noise="iid", cfg_pp=True,
          reference=RES,
          description="RES multistep to sigma_down, then sigma_up of fresh noise (ComfyUI's, eta = 1)")
def res_multistep_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0):
    """RES multistep with ancestral noise: each step to sigma_down (the step lengths in lambda, this one's
    and the history's, those to sigma_down, as ComfyUI), then ``s_noise * sigma_up`` of fresh noise;
    eta = 0 is ``res_multistep``."""
    return dpmpp_multistep(model, x, sigmas, noise=noise, callback=callback, order=2, eta=0.0,
                           s_noise=s_noise, solver_type="heun", ancestral_eta=eta)


@register("gradient_estimation", order=1, nfe_per_step=1, cfg_pp=True,
          option_help={"ge_gamma": "Weight gamma of the current derivative against the previous one "
                                   "(1: plain Euler)."},
          reference="Permenter & Yuan 2024, Interpreting and Improving Diffusion Models from an "
                    "Optimization Perspective (gradient estimation), as ComfyUI",
          description="Euler with the derivative extrapolated from the previous step's (gamma = 2)")
def gradient_estimation(model, x, sigmas, *, noise=None, callback=None, ge_gamma=2.0):
    """Gradient estimation: ``x' = x + (sigma' - sigma) (d + (gamma - 1) (d - d_prev))`` with
    ``d = (x - D) / sigma`` (plain Euler on the first step); the last step onto 0 is D itself."""
    d_prev = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x_step, denoised, _ = evaluate(model, x, sigma)
        report(callback, i, x, sigma, denoised)
        d = (x_step - denoised) / sigma  # under CFG++: the direction's (x - D_uncond) / sigma
        if sigma_next == 0:
            x = denoised
            continue
        dt = sigma_next - sigma
        x = x_step + d * dt if d_prev is None else lincomb((1.0, x_step), (dt * ge_gamma, d),
                                                           (dt * (1 - ge_gamma), d_prev))
        d_prev = d
    return x
