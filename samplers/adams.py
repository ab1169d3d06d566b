"""Adams-type multistep samplers of Zhang & Chen 2022 ("Fast Sampling of Diffusion Models with
Exponential Integrator"): one denoiser call per step, earlier derivatives reused.

* ``ipndm``: improved pseudo-numerical method (iPNDM), Adams-Bashforth on dx/dsigma with the classic
  constant-step coefficients and a lower-order warm start. On a non-uniform schedule those
  coefficients are only consistent to second order (see ``ipndm``'s docstring). It is the algorithm of
  diffusers' ``IPNDMScheduler`` (a v-prediction scheduler whose DDIM step on the combined eps is our
  Euler step on the combined d; tests/test_ipndm_parity.py).
  ``ipndm_afs`` is iPNDM with the analytical first step (no model call at sigma_max), the variant
  few-step studies use at NFE ~5; diffusers' scheduler also starts that way.
* ``ipndm_v``: variable-step iPNDM (ComfyUI's ``sample_ipndm_v``, from the diff-sampler code of Zhou et
  al.): Adams-Bashforth weights that depend on the actual step sizes, and a final step onto sigma = 0
  that returns the denoised image. Its weights are the published ones: AB2 exact for the actual steps,
  AB3 up to an O(h) change of one weight (``max_order`` 2 and 3 converge at orders 2 and 3 on the
  Karras grid), but the fourth-order ones are not AB4 and do not sum to 1 on unequal steps, so the
  default (max_order 4, as ComfyUI) is second order (``ipndm_v_weights``; ``lms`` has exact weights
  of every order).
* ``deis``: DEIS "tAB", an exponential-integrator Adams-Bashforth. In the EDM parametrisation the ODE is
  dx/dsigma = eps(sigma) with eps = (x - D)/sigma; DEIS fits a Lagrange polynomial in
  u = log sigma through the last ``order`` eps values and integrates it exactly:
  x_next = x + sum_j eps_j * int_{sigma}^{sigma_next} L_j(log s) ds
         = x + sum_j eps_j * int_{u}^{u_next} L_j(u') e^{u'} du'    (polynomial times exponential).
  This is the algorithm of diffusers' ``DEISMultistepScheduler(algorithm_type="deis")`` (its rho is
  our sigma).
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch

from .registry import register
from .steps import lincomb, report

ZHANG_CHEN = "Zhang & Chen 2022, Fast Sampling of Diffusion Models with Exponential Integrator (DEIS)"

# --- iPNDM ---------------------------------------------------------------------------------------

# Constant-step Adams-Bashforth weights on (d_i, d_{i-1}, ...), newest first.
AB_COEFFS = (
    (1.0,),
    (3 / 2, -1 / 2),
    (23 / 12, -16 / 12, 5 / 12),
    (55 / 24, -59 / 24, 37 / 24, -9 / 24),
)


GENIE_AFS = ("Dockhorn et al. 2022, GENIE: Higher-Order Denoising Diffusion Solvers (analytical first "
             "step); Zhou et al. 2024, Fast ODE-based Sampling for Diffusion Models in Around 5 Steps")


def ipndm_nfe(sigmas, options) -> int:
    """Denoiser calls of ``ipndm`` on ``sigmas``: one per step, none for an analytical first step."""
    steps = len(sigmas) - 1
    return steps - (1 if options["afs"] and steps else 0)


def check_max_order(name: str, max_order) -> None:
    """ValueError unless ``max_order`` is an integer in 1..4 (the orders the iPNDM weights exist for)."""
    if not isinstance(max_order, int) or isinstance(max_order, bool) or not 1 <= max_order <= 4:
        raise ValueError(f"{name} max_order must be an integer in 1..4, got {max_order!r}")


def adams_bashforth(model, x, sigmas, *, callback, max_order, weights, afs=False):
    """The iPNDM loop: ``x_next = x + (sigma_next - sigma) * sum_k w_k d_{i-k}`` with d = (x - D) / sigma.

    ``weights(i, n) -> (w_0, ..., w_{n-1})`` are the weights of step ``i`` on its ``n`` newest derivatives
    (newest first; n grows 1, 2, ... up to ``max_order``, the warm start); fewer weights than n use only
    the newest ones. ``afs``: the analytical first step (``ipndm``'s docstring).
    """
    ds = []  # derivatives, newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = torch.zeros_like(x) if afs and i == 0 else model(x, sigma)
        report(callback, i, x, sigma, denoised)
        ds.insert(0, (x - denoised) / sigma)
        del ds[max_order:]
        dt = sigma_next - sigma
        x = lincomb((1.0, x), *((dt * w, d) for w, d in zip(weights(i, len(ds)), ds)))
    return x


@register("ipndm", order=2, nfe_per_step=1, reference=ZHANG_CHEN,
          description="iPNDM: constant-coefficient Adams-Bashforth (up to 4th) on dx/dsigma, warm start",
          count_nfe=ipndm_nfe)
def ipndm(model, x, sigmas, *, noise=None, callback=None, max_order=4, afs=False):
    """iPNDM: x_next = x + (sigma_next - sigma) * sum_k c_k d_{i-k} with the classic AB coefficients.

    The first steps use orders 1, 2, 3 (as many derivatives as exist). The coefficients assume equal
    steps; on a smoothly graded schedule (Karras) the unequal past nodes leave an O(h^3) local error,
    so the method is globally second order whatever ``max_order`` >= 2 (measured in
    tests/test_convergence.py); higher ``max_order`` still lowers the error constant at few steps.

    ``afs`` (analytical first step): at sigma_max the noise dominates x, so d_0 = (x - D) / sigma is
    taken as x / sigma (D := 0) without calling the model, and the saved call buys one more step.
    The first step is then off by (sigma_0 - sigma_1) / sigma_0 * D(x; sigma_0) ~ the data mean, an
    error the flow contracts on the way down but which makes the method first order as steps grow:
    a few-step option, for data of mean near 0 started at sigma_max >> the data's scale. It is
    diffusers' IPNDMScheduler's first step from t = 1 (tests/test_ipndm_parity.py). A callback sees
    that step's denoised image as 0, the value the step used.
    """
    check_max_order("ipndm", max_order)
    return adams_bashforth(model, x, sigmas, callback=callback, max_order=max_order, afs=afs,
                           weights=lambda i, n: AB_COEFFS[n - 1])


@register("ipndm_afs", order=1, nfe_per_step=1, last_step_nfe=0, reference=f"{ZHANG_CHEN}; {GENIE_AFS}",
          description="iPNDM with an analytical first step (no call at sigma_max): a few-step sampler",
          count_nfe=ipndm_nfe)
def ipndm_afs(model, x, sigmas, *, noise=None, callback=None, max_order=4, afs=True):
    """iPNDM with the analytical first step: ``ipndm`` with ``afs=True`` by default.

    The saved first call is what last_step_nfe = 0 books: steps - 1 calls for ``steps`` steps."""
    return ipndm(model, x, sigmas, noise=noise, callback=callback, max_order=max_order, afs=afs)


# --- variable-step iPNDM ------------------------------------------------------------------------


def ipndm_v_weights(h: list[float]) -> list[float]:
    """The published variable-step iPNDM weights (newest first) for signed sigma steps ``h`` = (this
    step, the one before, ...), 1 to 4 of them; the step is ``x + h[0] * sum_k w_k d_{i-k}``.

    With a, b, c, d = h and rho = b (b + c) / (c (c + d)):

    * order 2: the exact variable-step AB2, w = (1 + a / 2b, -a / 2b);
    * order 3: AB2 plus t1 * (1, -(1 + b/c), b/c), t1 = 1/2 - a^2 / (6 b (b + c));
    * order 4: that plus t2 * (1, -(1 + b/c + rho), b/c + rho (1 + c/d), -rho b/c) with
      t2 = [(1 - a / 3(a + b)) / 2 + (1 - a / 2(a + b)) a / 6(a + b + c)] a (a + b)(a + b + c)
      / (b (b + c)(b + c + d)).

    Order 2 is the exact variable-step AB2 and, on equal steps, order 3 is AB3 (``AB_COEFFS``). On
    unequal steps the exact AB3 term is t1 = a (2a + 3b) / (6 b (b + c)); the published t1 exceeds it by
    ((b - a)(a + b) + b (c - a)) / (2 b (b + c)), zero on equal steps and O(h) on a smoothly graded
    schedule, which keeps third order (measured). Order 4 is not AB4: on equal steps t2
    is 11/24 where AB4's third-difference weight is 3/8 (so the default is the classic weights plus
    1/12 of a third difference), and on unequal steps its weights sum to 1 + t2 rho (c/d - b/c), not
    1. On the Karras grid that inconsistency makes max_order = 4 second order, and only from about
    256 steps on (tests/test_convergence.py); ``lms`` has the exact variable-step weights.
    """
    a = h[0]
    w = [1.0]
    if len(h) >= 2:
        b = h[1]
        w = [1 + a / (2 * b), -a / (2 * b)]
    if len(h) >= 3:
        c = h[2]
        t1 = 0.5 - a * a / (6 * b * (b + c))
        w = [w[0] + t1, w[1] - (1 + b / c) * t1, t1 * b / c]
    if len(h) >= 4:
        d = h[3]
        rho = b * (b + c) / (c * (c + d))
        t2 = (((1 - a / (3 * (a + b))) / 2 + (1 - a / (2 * (a + b))) * a / (6 * (a + b + c)))
              * a * (a + b) * (a + b + c) / (b * (b + c) * (b + c + d)))
        w = [w[0] + t2, w[1] - (1 + b / c + rho) * t2, w[2] + (b / c + rho * (1 + c / d)) * t2,
             -t2 * rho * b / c]
    return w


ZHOU = ("Zhou et al. 2024, Fast ODE-based Sampling for Diffusion Models in Around 5 Steps (diff-sampler's "
        "iPNDM_v); as ComfyUI's sample_ipndm_v")


# Order 2: max_order 2 and 3 reach 2 and 3 on the Karras grid, but the published 4th-order weights do not
# sum to 1 on unequal steps: the default (max_order 4) is second order, from ~256 steps on.
@register("ipndm_v", order=2, nfe_per_step=1, reference=ZHOU,
          description="Variable-step iPNDM: Adams-Bashforth weights of the actual step sizes (up to 4th)")
def ipndm_v(model, x, sigmas, *, noise=None, callback=None, max_order=4):
    """Variable-step iPNDM: ``ipndm`` with the weights of ``ipndm_v_weights`` for the actual steps, and
    the step onto sigma = 0 an Euler step (it returns the denoised image), as ComfyUI's ipndm_v."""
    check_max_order("ipndm_v", max_order)

    def weights(i, n):
        if sigmas[i + 1] == 0:
            return (1.0,)
        return ipndm_v_weights([sigmas[i + 1 - k] - sigmas[i - k] for k in range(n)])

    return adams_bashforth(model, x, sigmas, callback=callback, max_order=max_order, weights=weights)


# --- DEIS (tAB) ----------------------------------------------------------------------------------


@cache
def _gauss_legendre01(n: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (nodes + 1) / 2, weights / 2


def _exp_moments(h: float, degree: int) -> list[float]:
    """``M_m = int_0^1 t^m e^{h t} dt`` for m = 0..degree.

    |h| >= 1: the exact recursion M_0 = expm1(h)/h, M_m = (e^h - m M_{m-1}) / h (it amplifies
    rounding by m/|h| <= degree per step, harmless for degree <= 2). |h| < 1: a 12-point
    Gauss-Legendre rule, whose error for t^m e^{ht} is below 1e-30 there (the recursion would cancel).
    """
    if abs(h) >= 1:
        moments = [math.expm1(h) / h]
        for m in range(1, degree + 1):
            moments.append((math.exp(h) - m * moments[-1]) / h)
        return moments
    nodes, weights = _gauss_legendre01(12)
    ew = weights * np.exp(h * nodes)
    return [float(np.sum(ew * nodes**m)) for m in range(degree + 1)]


def deis_coefficients(sigmas: list[float], sigma_next: float) -> list[float]:
    """Weights c_j with ``x_next = x + sum_j c_j eps_j`` for eps known at ``sigmas`` (current first).

    c_j = int_{sigma_0}^{sigma_next} L_j(log s) ds. With u = log s = log sigma_0 + H t,
    H = log(sigma_next / sigma_0), this is sigma_0 H int_0^1 L_j(t) e^{H t} dt: the Lagrange basis is
    expanded in monomials of t (nodes t_k = log(sigma_k / sigma_0) / H, O(1) in size) and integrated
    exactly against e^{Ht} (closed-form moments, see ``_exp_moments``).
    """
    sigma_0 = sigmas[0]
    big_h = math.log(sigma_next / sigma_0)
    ts = [math.log(s / sigma_0) / big_h for s in sigmas]
    moments = _exp_moments(big_h, len(ts) - 1)
    return [sigma_0 * big_h * float(sum(a * m for a, m in zip(poly, moments))) for poly in lagrange_basis(ts)]


def lagrange_basis(nodes: list[float]) -> list[np.ndarray]:
    """The Lagrange basis polynomials on ``nodes`` in monomial form: ``out[j][m]`` is the coefficient of
    ``t^m`` in the polynomial that is 1 at ``nodes[j]`` and 0 at the others (degree len(nodes) - 1)."""
    basis = []
    for j, tj in enumerate(nodes):
        others = [tk for k, tk in enumerate(nodes) if k != j]
        poly = np.polynomial.polynomial.polyfromroots(others) if others else np.ones(1)
        basis.append(poly / math.prod(tj - tk for tk in others))
    return basis


@register("deis", order=3, nfe_per_step=1, reference=ZHANG_CHEN,
          option_help={"order": "Order of the DEIS Adams-Bashforth polynomial in log sigma, 1 to 3."},
          description="DEIS tAB: exponential-integrator Adams-Bashforth in log sigma, orders 1-3")
def deis(model, x, sigmas, *, noise=None, callback=None, order=3):
    """DEIS tAB of ``order`` 1..3 on eps, lower orders while history is short.

    The step onto sigma = 0 returns the denoised value (the order-1 step's limit; the log-sigma
    polynomial cannot be extrapolated to log 0).
    """
    if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= 3:
        raise ValueError(f"deis order must be an integer in 1..3, got {order!r}")
    eps = []  # (sigma, eps), newest first
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        report(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        eps.insert(0, (sigma, (x - denoised) / sigma))
        del eps[order:]
        coeffs = deis_coefficients([s for s, _ in eps], sigma_next)
        x = lincomb((1.0, x), *((c, e) for c, (_, e) in zip(coeffs, eps)))
    return x
