"""Single-step DPM-Solver family (Lu et al. 2022): dpm_fast, dpm_adaptive, dpmpp_sde.

DPM-Solver works in lambda = -log sigma with the noise prediction eps = (x - D) / sigma; its k-th order
step from lambda to lambda + h evaluates eps at intermediate points lambda + r h.

``dpm_fast`` and ``dpm_adaptive`` choose their own steps, uniform (fast) or error-controlled (adaptive)
in lambda; like k-diffusion's they use only the schedule's ends: sigma_max = sigmas[0] and sigma_min = the
last nonzero sigma, and they stop at sigma_min without a final denoising jump. ``dpm_fast`` spends
exactly ``len(sigmas) - 1`` denoiser calls.
"""

from __future__ import annotations

import math

import torch

from .phi import phi
from .registry import register
from .steps import ancestral_split, euler_step, lam, lincomb, report

DPM_SOLVER = "Lu et al. 2022, DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Models"


def _sigma(t: float) -> float:
    return math.exp(-t)


class _Eps:
    """eps(x; lambda) with a per-step cache: the low- and high-order estimates of one adaptive step
    share their evaluations."""

    def __init__(self, model):
        self.model = model
        self.cache = {}

    def __call__(self, key, x, t):
        if key not in self.cache:
            sigma = _sigma(t)
            self.cache[key] = (x - self.model(x, sigma)) / sigma
        return self.cache[key]


def dpm_solver_step(eps: _Eps, x, t: float, t_next: float, order: int, r1: float | None = None):
    """One DPM-Solver-1/2/3 step from lambda = t to t_next (Lu et al. 2022, Algorithms 1 and 2).

    In phi-function form (``samplers.phi``; ``h phi_1(h) = e^h - 1``), with h = t_next - t and
    intermediate points s_k = t + r_k h:

        DPM-Solver-1: x' = x - sigma_next h phi_1(h) eps_0
        DPM-Solver-2: u_1 = x - sigma(s_1) r_1 h phi_1(r_1 h) eps_0,
                      x' = x - sigma_next h phi_1(h) (eps_0 + (eps_1 - eps_0) / (2 r_1))
        DPM-Solver-3: u_2 = x - sigma(s_2) [r_2 h phi_1(r_2 h) eps_0
                                            + (r_2 / r_1) r_2 h phi_2(r_2 h) (eps_1 - eps_0)],
                      x' = x - sigma_next [h phi_1(h) eps_0 + h phi_2(h) (eps_2 - eps_0) / r_2]
    """
    h = t_next - t
    sigma_next = _sigma(t_next)
    e0 = eps("eps", x, t)
    h_phi_1 = h * phi(1, h)
    if order == 1:
        return lincomb((1.0, x), (-sigma_next * h_phi_1, e0))
    if order == 2:
        r1 = 0.5 if r1 is None else r1
        s1 = t + r1 * h
        u1 = lincomb((1.0, x), (-_sigma(s1) * r1 * h * phi(1, r1 * h), e0))
        e1 = eps("eps_r1", u1, s1)
        c = sigma_next / (2 * r1) * h_phi_1
        return lincomb((1.0, x), (-sigma_next * h_phi_1 + c, e0), (-c, e1))
    r1, r2 = 1 / 3, 2 / 3
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = lincomb((1.0, x), (-_sigma(s1) * r1 * h * phi(1, r1 * h), e0))
    e1 = eps("eps_r1", u1, s1)
    c2 = _sigma(s2) * (r2 / r1) * r2 * h * phi(2, r2 * h)
    u2 = lincomb((1.0, x), (-_sigma(s2) * r2 * h * phi(1, r2 * h) + c2, e0), (-c2, e1))
    e2 = eps("eps_r2", u2, s2)
    c3 = sigma_next / r2 * h * phi(2, h)
    return lincomb((1.0, x), (-sigma_next * h_phi_1 + c3, e0), (-c3, e2))


def _ends(sigmas):
    sigma_min = min(s for s in sigmas if s > 0)
    return lam(sigmas[0]), lam(sigma_min)


def _ancestral_target(t, t_next, t_end, eta):
    """Deterministic target lambda and the noise std to add, for eta > 0 (never past t_end)."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_split(_sigma(t), _sigma(t_next), eta)
    target = min(t_end, lam(sigma_down)) if sigma_down > 0 else t_end
    return target, math.sqrt(max(_sigma(t_next) ** 2 - _sigma(target) ** 2, 0.0))


def _report(callback, eps, i, x, t):
    if callback is not None:  # D from the cached eps, so reporting costs no evaluation
        report(callback, i, x, _sigma(t), x - _sigma(t) * eps("eps", x, t))


@register("dpm_fast", order=3, nfe_per_step=1, noise="iid",
          reference=DPM_SOLVER, description="DPM-Solver-fast: orders 3,..,3,2,1 on uniform lambda steps;"
          " NFE = number of steps")
def dpm_fast(model, x, sigmas, *, noise=None, callback=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-fast (fixed steps uniform in lambda), NFE = len(sigmas) - 1."""
    nfe = len(sigmas) - 1
    t_start, t_end = _ends(sigmas)
    m = nfe // 3 + 1
    ts = torch.linspace(t_start, t_end, m + 1, dtype=torch.float64).tolist()
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        eps = _Eps(model)
        t, t_next = ts[i], ts[i + 1]
        target, noise_std = _ancestral_target(t, t_next, t_end, eta)
        _report(callback, eps, i, x, t)
        x = dpm_solver_step(eps, x, t, target, order)
        if noise_std:
            x = x + noise(_sigma(t), _sigma(t_next)) * (noise_std * s_noise)
    return x


class PIDController:
    """PID step-size control on the inverse error (Söderlind 2003), as DPM-Solver's adaptive mode."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order, accept_safety, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = None

    def propose(self, error: float) -> bool:
        inv = 1 / (error + self.eps)
        if self.errs is None:
            self.errs = [inv, inv, inv]
        self.errs[0] = inv
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@register("dpm_adaptive", order=3, nfe_per_step=None, last_step_nfe=None, noise="iid",
          reference=DPM_SOLVER + " (adaptive step size, Sec. 4)",
          option_help={"order": "Order of the higher solver of the embedded pair: 2 (DPM-Solver-12) or 3 "
                                "(DPM-Solver-23)."},
          description="DPM-Solver-12/23 with PID step-size control; NFE depends on rtol/atol")
def dpm_adaptive(model, x, sigmas, *, noise=None, callback=None, order=3, rtol=0.05, atol=0.0078,
                 h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0,
                 s_noise=1.0):
    """Adaptive DPM-Solver: embedded pair of orders (1, 2) or (2, 3), step size from the error."""
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order!r}")
    # a tolerance of 0 on both sides makes every step's error infinite: the solver would never accept one
    if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
        raise ValueError(f"dpm_adaptive needs rtol >= 0 and atol >= 0, not both 0, got rtol={rtol:g}, "
                         f"atol={atol:g}")
    if not h_init > 0:
        raise ValueError(f"dpm_adaptive h_init must be > 0, got {h_init:g}")
    if not 0 < accept_safety <= 1:
        raise ValueError(f"dpm_adaptive accept_safety must be in (0, 1], got {accept_safety:g}")
    t, t_end = _ends(sigmas)
    pid = PIDController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev = x
    step = 0
    while t < t_end - 1e-5:
        eps = _Eps(model)
        t_next = min(t_end, t + pid.h)
        target, noise_std = _ancestral_target(t, t_next, t_end, eta)
        _report(callback, eps, step, x, t)
        if order == 2:
            x_low = dpm_solver_step(eps, x, t, target, 1)
            x_high = dpm_solver_step(eps, x, t, target, 2)
        else:
            x_low = dpm_solver_step(eps, x, t, target, 2, r1=1 / 3)
            x_high = dpm_solver_step(eps, x, t, target, 3)
        delta = torch.maximum(x_low.abs(), x_prev.abs()).mul_(rtol).clamp_(min=atol)
        error = torch.linalg.norm((x_low - x_high) / delta) / math.sqrt(x.numel())
        if pid.propose(float(error)):
            x_prev = x_low
            x = x_high
            if noise_std:
                x = x + noise(_sigma(t), _sigma(t_next)) * (noise_std * s_noise)
            t = t_next
        step += 1
    return x


@register("dpmpp_sde", order=2, nfe_per_step=2, last_step_nfe=1, stochastic=True, noise="brownian",
          reference="Lu et al. 2022, DPM-Solver++ (2S) with SDE noise, as k-diffusion",
          description="DPM-Solver++ singlestep SDE: noise at the intermediate point and the step end")
def dpmpp_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, r=0.5):
    """Stochastic DPM-Solver++(2S): each half of the step adds Brownian noise on its own interval, so
    the two increments overlap and must come from one Brownian path."""
    if not 0 < r <= 1:  # the intermediate point lambda + r h must lie inside the step
        raise ValueError(f"dpmpp_sde r must be in (0, 1], got {r:g}")
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = lam(sigma_next) - lam(sigma)
        sigma_s = sigma * math.exp(-r * h)
        fac = 1 / (2 * r)
        # Step 1: to lambda + r h, ancestrally.
        sigma_down, sigma_up = ancestral_split(sigma, sigma_s, eta)
        x_2 = euler_step(model, x, sigma, denoised, sigma_down)
        if sigma_up:
            x_2 = torch.add(x_2, noise(sigma, sigma_s), alpha=s_noise * sigma_up)
        denoised_2 = model(x_2, sigma_s)
        # Step 2: the full step with D interpolated between the two evaluations.
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next, eta)
        denoised_d = lincomb((1 - fac, denoised), (fac, denoised_2))
        x = euler_step(model, x, sigma, denoised_d, sigma_down)
        if sigma_up:
            x = torch.add(x, noise(sigma, sigma_next), alpha=s_noise * sigma_up)
    return x
