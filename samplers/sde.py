"""Stochastic-differential-equation samplers: ER-SDE-Solver, SEEDS and SA-Solver.

All three solve, in EDM's sigma (``x = y + sigma n``, the VE form: alpha = 1) with the x0-denoiser ``D``, a
reverse SDE whose drift is linear in x plus a D term; the linear part and the noise are integrated exactly,
D is interpolated from evaluations. With ``lambda = -log sigma`` and ``h = lambda_next - lambda``:

* ``er_sde``: ER-SDE-Solver-3 (Cui et al. 2023). The reverse SDE family is fixed by a noise scaler N(sigma);
  the exact step from sigma_s to sigma_t is ``x_t = r x_s + N(sigma_t) int_{sigma_t}^{sigma_s} D N'/N^2
  + sqrt(sigma_t^2 - sigma_s^2 r^2) z`` with ``r = N(sigma_t) / N(sigma_s)`` (N(sigma) = sigma is the
  probability-flow ODE). D is expanded in sigma around sigma_s to second order.
* ``seeds_2`` / ``seeds_3``: SEEDS (Gonzalez et al. 2023), DPM-Solver++-type stages of the SDE whose
  eta-scaled exact step is ``x_t = e^{-h_eta} x + (1 - e^{-h_eta}) D + sigma_t sqrt(1 - e^{-2 eta h}) z``
  (``h_eta = (1 + eta) h``; the same SDE as ``dpmpp_2m_sde``), with the noise of the stages correlated as
  that process's (an Ornstein-Uhlenbeck bridge in lambda).
* ``sa_solver`` / ``sa_solver_pece``: SA-Solver (Xue et al. 2023), stochastic Adams-Bashforth predictor and
  Adams-Moulton corrector on the tau-SDE.

The formulas are ComfyUI's ``sample_er_sde``, ``sample_seeds_2``, ``sample_seeds_3`` and
``sample_sa_solver`` (comfy/k_diffusion), written in sigma; SA-Solver's also equal diffusers'
``SASolverScheduler`` (data prediction) on a VP model. Their noise is increments of one Brownian path in
sigma (noise kind ``"brownian"``): the law of disjoint increments is that of i.i.d. draws, and a finer
schedule refines the same path, so strong convergence can be measured.
"""

from __future__ import annotations

import math

import torch

from .adams import lagrange_basis
from .multistep import _gauss_legendre  # nodes and weights on [0, 1], cached
from .phi import phi
from .registry import register
from .steps import lam, lincomb, report

ER_SDE = ("Cui et al. 2023, Elucidating the Solution Space of Extended Reverse-Time SDE (ER-SDE-Solver); "
          "as ComfyUI")
SEEDS = "Gonzalez et al. 2023, SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling; as ComfyUI"
SA_SOLVER = ("Xue et al. 2023, SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models; "
             "as ComfyUI and diffusers' SASolverScheduler")


def _check_int(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")


# --- ER-SDE-Solver -------------------------------------------------------------------------------------


def er_sde_noise_scaler(sigma: float) -> float:
    """ER-SDE-Solver's default noise scaler ``N(sigma) = sigma (e^{sigma^0.3} + 10)`` (the paper's choice
    for few-step quality, between the ODE's ``N = sigma`` and the reverse SDE's ``N = sigma^2``)."""
    return sigma * (math.exp(sigma**0.3) + 10.0)


_QUADRATURE_NODES = 16


def er_sde_integrals(scaler, sigma: float, sigma_next: float) -> tuple[float, float]:
    """``(int 1/N, int (s - sigma)/N)`` over s from ``sigma_next`` to ``sigma`` (both > 0).

    Gauss-Legendre in log s, where the integrands ``s / N(s)`` and ``(s - sigma) s / N(s)`` are smooth
    (N(s) ~ s near 0): 16 nodes reach float64 rounding on the steps samplers take. ComfyUI sums 200 left
    rectangles in s instead, off by about 0.1% and 0.6%: an O(h^2 / 200) error per step that makes the
    method first order as steps shrink (its ODE limit measures 2.0, 1.8, 1.5 from 32 to 256 steps).
    """
    a, b = math.log(sigma_next), math.log(sigma)
    first = second = 0.0
    for u, w in zip(*_gauss_legendre(_QUADRATURE_NODES)):
        s = math.exp(a + (b - a) * u)
        weight = w * (b - a) * s / scaler(s)
        first += weight
        second += weight * (s - sigma)
    return first, second


def er_sde_solver(model, x, sigmas, *, noise, callback, s_noise, max_stage, scaler=er_sde_noise_scaler):
    """ER-SDE-Solver with up to ``max_stage`` terms of D's expansion in sigma about sigma_s.

    With N = ``scaler``, r = N(sigma_t) / N(sigma_s), dt = sigma_t - sigma_s and the integrals
    S_1 = int 1/N, S_2 = int (s - sigma_s)/N over [sigma_t, sigma_s] (``er_sde_integrals``):

        x_t = r x + (1 - r) D + (dt + N(sigma_t) S_1) D' + (dt^2 / 2 + N(sigma_t) S_2) D''
              + s_noise sqrt(sigma_t^2 - sigma_s^2 r^2) z

    (integration by parts of ``N(sigma_t) int D N'/N^2``). D' is the divided difference of the last two
    evaluations and D'' twice that of the last three, as the paper's and ComfyUI's code take them: D' is
    then the slope at the midpoint of the last interval, not at sigma_s, so the three-stage method is
    second order (tests/test_sde_samplers.py measures it). The first steps use fewer stages; the step onto
    sigma = 0 returns D.
    """
    _check_int("er_sde max_stage", max_stage, 1, 3)
    previous = []  # (sigma, D, D') of earlier steps, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        n_next = scaler(sigma_next)
        r = n_next / scaler(sigma)
        terms = [(r, x), (1 - r, denoised)]
        slope = None
        stages = min(max_stage, i + 1)
        if stages >= 2:
            dt = sigma_next - sigma
            s_1, s_2 = er_sde_integrals(scaler, sigma, sigma_next)
            sigma_1, denoised_1, slope_1 = previous[0]
            slope = (denoised - denoised_1) / (sigma - sigma_1)
            terms.append((dt + n_next * s_1, slope))
            if stages >= 3:
                sigma_2 = previous[1][0]
                curvature = (slope - slope_1) / ((sigma - sigma_2) / 2)
                terms.append((dt**2 / 2 + n_next * s_2, curvature))
        x = lincomb(*terms)
        noise_std = math.sqrt(max(0.0, sigma_next**2 - (sigma * r) ** 2))
        if s_noise and noise_std:
            x.add_(noise(sigma, sigma_next), alpha=s_noise * noise_std)
        previous.insert(0, (sigma, denoised, slope))
        del previous[2:]
    return x


@register("er_sde", order=2, nfe_per_step=1, stochastic=True, noise="brownian", reference=ER_SDE,
          option_help={"max_stage": "How many terms of the denoiser's expansion ER-SDE uses, 1 to 3."},
          description="ER-SDE-Solver-3: extended reverse-time SDE, multistep, default noise scaler")
def er_sde(model, x, sigmas, *, noise=None, callback=None, s_noise=1.0, max_stage=3):
    """ER-SDE-Solver-3 with the default noise scaler (``er_sde_noise_scaler``)."""
    return er_sde_solver(model, x, sigmas, noise=noise, callback=callback, s_noise=s_noise,
                         max_stage=max_stage)


# --- SEEDS ---------------------------------------------------------------------------------------------


def seeds(model, x, sigmas, *, noise, callback, fractions, eta, s_noise, solver_type="phi_2"):
    """SEEDS: per step, stages at ``lambda + c h`` for c in ``fractions``, then the full step (c = 1).

    With H = (1 + eta) h and D_k the evaluation of the previous stage (at fraction c_k), a stage at c is

        x_c = e^{-c H} x + c H phi_1(-c H) D + w (D_k - D) + sigma_c n_c,
        w = (c / c_k) c H phi_2(-c H)       (``solver_type`` phi_2; the final stage of SEEDS-2 with
                                             phi_1 takes w = c H phi_1(-c H) / (2 c_k) instead)

    and the first stage has no D_k term. The noise is the exact one of the step's linear SDE: between
    stages c' < c, ``n_c = e^{-(c - c') eta h} n_c' + sqrt(1 - e^{-2 (c - c') eta h}) z`` with z the
    normalised Brownian increment over that interval (n = 0 at the step's start), so the full step's
    noise is ``sigma_next sqrt(1 - e^{-2 eta h})`` whatever the stages. eta = 0 is the ODE solver
    (DPM-Solver++(2S)/(3S)-type). The step onto sigma = 0 returns D.
    """
    if solver_type not in ("phi_1", "phi_2"):
        raise ValueError(f"solver_type must be phi_1 or phi_2, got {solver_type!r}")
    stages = (*fractions, 1.0)
    stochastic = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        h = lam(sigma_next) - lam(sigma)
        big_h = (1 + eta) * h
        last_c, last_sigma, last_denoised, sde_noise = 0.0, sigma, None, None
        for k, c in enumerate(stages):
            final = k == len(stages) - 1
            sigma_c = sigma_next if final else sigma * math.exp(-c * h)
            terms = [(math.exp(-c * big_h), x), (c * big_h * phi(1, -c * big_h), denoised)]
            if last_denoised is not None:
                if final and solver_type == "phi_1":
                    w = c * big_h * phi(1, -c * big_h) / (2 * last_c)
                else:
                    w = c / last_c * c * big_h * phi(2, -c * big_h)
                terms += [(w, last_denoised), (-w, denoised)]
            x_c = lincomb(*terms)
            if stochastic and c > last_c:  # (r = 1 puts the last stage on sigma_next: no interval left)
                decay = math.exp(-(c - last_c) * eta * h)
                fresh = math.sqrt(-math.expm1(-2 * (c - last_c) * eta * h)) * noise(last_sigma, sigma_c)
                sde_noise = fresh if sde_noise is None else torch.add(fresh, sde_noise, alpha=decay)
            if sde_noise is not None:
                x_c.add_(sde_noise, alpha=sigma_c * s_noise)
            if final:
                x = x_c
            else:
                last_c, last_sigma, last_denoised = c, sigma_c, model(x_c, sigma_c)
    return x


@register("seeds_2", order=2, nfe_per_step=2, last_step_nfe=1, stochastic=True, noise="brownian",
          reference=SEEDS,
          option_help={"solver_type": "How SEEDS-2 weights its second evaluation: phi_1 or phi_2.",
                       "r": "Where SEEDS-2's second evaluation sits, as a fraction of the step in log sigma "
                            "(0 < r <= 1)."},
          description="SEEDS-2: two-stage exponential SDE solver (eta = 0: the ODE)")
def seeds_2(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, r=0.5, solver_type="phi_1"):
    """SEEDS-2: one intermediate stage at fraction ``r`` of the step in lambda."""
    if not 0 < r <= 1:
        raise ValueError(f"seeds_2 r must be in (0, 1], got {r!r}")
    return seeds(model, x, sigmas, noise=noise, callback=callback, fractions=(r,), eta=eta,
                 s_noise=s_noise, solver_type=solver_type)


@register("seeds_3", order=3, nfe_per_step=3, last_step_nfe=1, stochastic=True, noise="brownian",
          reference=SEEDS,
          option_help={"r_1": "Where SEEDS-3's second evaluation sits, as a fraction of the step in log "
                              "sigma (0 < r_1 < r_2).",
                       "r_2": "Where SEEDS-3's third evaluation sits, as a fraction of the step in log sigma "
                              "(r_1 < r_2 <= 1)."},
          description="SEEDS-3: three-stage exponential SDE solver (eta = 0: the ODE)")
def seeds_3(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, r_1=1 / 3, r_2=2 / 3):
    """SEEDS-3: intermediate stages at fractions ``r_1`` and ``r_2`` of the step in lambda."""
    if not 0 < r_1 < r_2 <= 1:
        raise ValueError(f"seeds_3 needs 0 < r_1 < r_2 <= 1, got r_1={r_1!r}, r_2={r_2!r}")
    return seeds(model, x, sigmas, noise=noise, callback=callback, fractions=(r_1, r_2), eta=eta,
                 s_noise=s_noise)


# --- SA-Solver -----------------------------------------------------------------------------------------


def sa_coefficients(lambdas: list[float], lam_s: float, lam_t: float, tau: float,
                    simple_order_2: bool = False) -> list[float]:
    """Weights ``b_j`` of the D values at ``lambdas`` in SA-Solver's step from lam_s to lam_t:

        b_j = int_{lam_s}^{lam_t} (1 + tau^2) e^{-(1 + tau^2)(lam_t - l)} L_j(l) dl

    with L_j the Lagrange basis on ``lambdas``. In u = (l - lam_s) / h with H = (1 + tau^2) h, writing
    ``L_j = sum_m a_jm u^m`` gives ``b_j = H sum_m a_jm m! phi_{m+1}(-H)`` (``samplers.phi``).
    ``simple_order_2``: with two points, replace phi_2(-H) by phi_2(0) = 1/2 (the paper's Appendix D
    simplification, an O(h^3) change; diffusers' scheduler always does this at order 2).
    """
    h = lam_t - lam_s
    big_h = (1 + tau**2) * h
    nodes = [(lam_k - lam_s) / h for lam_k in lambdas]
    moments = [big_h * math.factorial(m) * phi(m + 1, -big_h) for m in range(len(nodes))]
    if simple_order_2 and len(nodes) == 2:
        moments[1] = big_h / 2
    return [float(sum(a * m for a, m in zip(poly, moments))) for poly in lagrange_basis(nodes)]


def _combine(decay: float, x, weights: list[float], history: list) -> torch.Tensor:
    """``decay x + sum_j b_j D_j`` over the newest ``len(weights)`` entries of ``history``."""
    return lincomb((decay, x), *zip(weights, (d for _, d in history[-len(weights):])))


def sa_solver_run(model, x, sigmas, *, noise, callback, eta, s_noise, predictor_order, corrector_order,
                  sde_sigma_min, sde_sigma_max, simple_order_2, pece):
    """SA-Solver: predictor of order p, corrector of order c, in lambda = -log sigma.

    Each step evaluates D at the predicted state x_pred(sigma_i), corrects the last step with it
    (Adams-Moulton: the c newest evaluations including this one), then predicts the next state from the
    corrected x (Adams-Bashforth: the p newest). Both steps are

        x_next = e^{-(1 + tau^2) h} x + sum_j b_j D_j + sigma_next sqrt(1 - e^{-2 tau^2 h}) s_noise z

    with ``b_j`` from ``sa_coefficients`` and the same z for the predictor and the corrector of a step.
    tau = ``eta`` on steps whose target sigma lies in [sde_sigma_min, sde_sigma_max], else 0 (the ODE).
    The first steps use the orders the history allows; on a schedule ending in 0 the last steps lower
    them (predictor at most the steps left but one, corrector at most the steps left), and the step onto 0
    returns D. ``pece``: evaluate D again at the corrected state and use that instead (one more NFE per
    corrected step), correcting the final step too.
    """
    _check_int("predictor_order", predictor_order, 1, 6)
    _check_int("corrector_order", corrector_order, 0, 6)
    if not 0 <= sde_sigma_min <= sde_sigma_max:
        raise ValueError(f"need 0 <= sde_sigma_min <= sde_sigma_max, got {sde_sigma_min}, {sde_sigma_max}")
    steps = len(sigmas) - 1
    lower_to_end = sigmas[-1] == 0
    history = []  # (lambda, D), oldest first
    x_pred, tau, h, step_noise = x, 0.0, 0.0, None
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x_pred, sigma)
        report(callback, i, x_pred, sigma, denoised)
        history.append((lam(sigma), denoised))
        del history[:-max(predictor_order, corrector_order)]
        p = min(predictor_order, len(history))
        c = 0 if i == 0 or (sigma_next == 0 and not pece) else min(corrector_order, len(history))
        if lower_to_end:
            p, c = min(p, steps - 1 - i), min(c, steps - i)
        if c == 0:
            x = x_pred
        else:
            weights = sa_coefficients([lam_k for lam_k, _ in history[-c:]], lam(sigmas[i - 1]), lam(sigma),
                                      tau, simple_order_2)
            x = _combine(math.exp(-(1 + tau**2) * h), x, weights, history)
            if step_noise is not None:
                x.add_(step_noise)
            if pece:
                denoised = model(x, sigma)
                history[-1] = (history[-1][0], denoised)
        if sigma_next == 0:
            x_pred = denoised
            continue
        tau = eta if sde_sigma_min <= sigma_next <= sde_sigma_max else 0.0
        h = lam(sigma_next) - lam(sigma)
        weights = sa_coefficients([lam_k for lam_k, _ in history[-p:]], lam(sigma), lam(sigma_next), tau,
                                  simple_order_2)
        x_pred = _combine(math.exp(-(1 + tau**2) * h), x, weights, history)
        step_noise = None
        if tau > 0 and s_noise > 0:
            std = sigma_next * math.sqrt(-math.expm1(-2 * tau**2 * h)) * s_noise
            step_noise = noise(sigma, sigma_next) * std
            x_pred.add_(step_noise)
    return x_pred


# ComfyUI's default SDE interval: 20% to 80% of the way down an EDM model's log-sigma range [0.002, 80]
# (its percent_to_sigma), tau = eta inside.
SDE_SIGMA_MAX = math.exp(0.8 * math.log(80.0) + 0.2 * math.log(0.002))
SDE_SIGMA_MIN = math.exp(0.2 * math.log(80.0) + 0.8 * math.log(0.002))

SA_OPTION_HELP = {
    "eta": "SA-Solver's tau inside the SDE interval: 0 is the ODE, 1 the reverse SDE.",
    "predictor_order": "Order of SA-Solver's stochastic Adams-Bashforth predictor, 1 to 6.",
    "corrector_order": "Order of SA-Solver's stochastic Adams-Moulton corrector, 0 (none) to 6.",
    "sde_sigma_min": "SA-Solver adds noise (tau = eta) only on steps ending at sigma >= this.",
    "sde_sigma_max": "SA-Solver adds noise (tau = eta) only on steps ending at sigma <= this.",
    "simple_order_2": "At order 2, SA-Solver's simplified coefficients (its Appendix D; diffusers' choice).",
}


@register("sa_solver", order=4, nfe_per_step=1, stochastic=True, noise="brownian", reference=SA_SOLVER,
          option_help=SA_OPTION_HELP,
          description="SA-Solver: stochastic Adams predictor (order 3) + corrector (order 4), one NFE a step")
def sa_solver(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, predictor_order=3,
              corrector_order=4, sde_sigma_min=SDE_SIGMA_MIN, sde_sigma_max=SDE_SIGMA_MAX,
              simple_order_2=False):
    """SA-Solver in PEC mode: the corrector reuses the evaluation at the predicted state."""
    return sa_solver_run(model, x, sigmas, noise=noise, callback=callback, eta=eta, s_noise=s_noise,
                         predictor_order=predictor_order, corrector_order=corrector_order,
                         sde_sigma_min=sde_sigma_min, sde_sigma_max=sde_sigma_max,
                         simple_order_2=simple_order_2, pece=False)


def _pece_nfe(options) -> int:
    return 2 if options["corrector_order"] else 1


@register("sa_solver_pece", order=4, nfe_per_step=_pece_nfe, last_step_nfe=1, stochastic=True,
          noise="brownian", reference=SA_SOLVER, option_help=SA_OPTION_HELP,
          description="SA-Solver PECE: predict, evaluate, correct, evaluate again (two NFE a step)")
def sa_solver_pece(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, predictor_order=3,
                   corrector_order=4, sde_sigma_min=SDE_SIGMA_MIN, sde_sigma_max=SDE_SIGMA_MAX,
                   simple_order_2=False):
    """SA-Solver in PECE mode: D is evaluated again at each corrected state (the first step is not
    corrected, so N steps cost 2N - 1 evaluations)."""
    return sa_solver_run(model, x, sigmas, noise=noise, callback=callback, eta=eta, s_noise=s_noise,
                         predictor_order=predictor_order, corrector_order=corrector_order,
                         sde_sigma_min=sde_sigma_min, sde_sigma_max=sde_sigma_max,
                         simple_order_2=simple_order_2, pece=True)
