"""Distillation of an EDM teacher into few-step students: progressive distillation (Salimans & Ho 2022) and
consistency distillation (Song et al. 2023), each a training objective of :func:`edm.train.train`, so that
checkpoints, resume, the EMA and torchrun data parallelism are the trainer's.

Notation: ``D(x; sigma)`` is a denoiser in EDM variables (``x = y + sigma n``), ``sd`` the data's standard
deviation, ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` EDM's loss weight.

**Student levels.** A student of N steps evaluates at ``s_i = rho_ramp(i / N)``, ``i = 0..N-1``, and steps
last to 0, where ``rho_ramp(u) = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``
(Karras et al.'s curve). The levels of 2N steps contain those of N (even ``i``), so every halving nests;
they are Karras et al.'s schedule of N steps with its ``sigma_min`` set to ``s_{N-1}``, which is what a
student records (``sampling``), so ``edm generate --model STUDENT`` runs it as trained.

**Progressive distillation** (objective ``progressive``). One round trains a student of N steps to do in
one deterministic (DDIM) step what the teacher's sampler does in two. A DDIM step is, in EDM variables,
Euler's step on the probability-flow ODE: ``x' = r x + (1 - r) D(x; s)`` with ``r = s' / s``. The paper's
x-space target is the denoised value that makes this one step land on the teacher's two-step result
``x''``:

    D*(x; s) = (x'' - r x) / (1 - r)        (s' = 0: D* = x'', a one-step jump),

and its loss weight ``max(SNR, 1)`` or ``SNR + 1`` on ``||D - D*||^2``, with ``SNR = alpha^2 / sigma_vp^2 =
1 / sigma^2`` for data of unit variance. For data of variance ``sd^2`` (VP on ``y / sd``) ``SNR + 1 =
sd^2 / sigma^2 + 1``, and the weight on the unscaled ``||D - D*||^2`` is that over ``sd^2``:
``1 / sigma^2 + 1 / sd^2 = lambda(sigma)``. So the paper's "SNR + 1" weighting is exactly EDM's weighting,
and its v-target is EDM's F-target: with EDM's preconditioning, ``lambda ||D - D*||^2 = ||F - F*||^2``,
``F* = (D* - c_skip x) / c_out`` (at ``sd = 1``, ``F = -v``). The student keeps the teacher's EDM
preconditioning and regresses ``F*`` with unit weight, as EDM training does. Levels are drawn uniformly
among the N (the paper's discrete times), ``x = y + s_i n`` with data ``y``. The first round's teacher is the
model with a registered deterministic sampler (``heun`` by default: the better target), each later round's
teacher the previous student with ``euler`` (the DDIM steps it was trained for).

**Consistency distillation** (objective ``consistency``). A student ``f(x; sigma)`` with the boundary
condition built into its preconditioning (scheme ``consistency``: ``f(x; sigma_min) = x``), trained on the
levels ``t_1 < ... < t_K`` (Karras et al.'s, ``t_1 = sigma_min``) so that ``f(x_{n+1}; t_{n+1})`` equals the
target network's ``f(x_n_hat; t_n)``, where ``x_{n+1} = y + t_{n+1} z`` and ``x_n_hat`` is one step of the
teacher's ODE solver from ``t_{n+1}`` to ``t_n`` (Heun, as the paper). The target network is an EMA of the
student with decay ``target_ema`` (0: the student itself without gradient, the improved recipe's choice).
Options of the improved recipe (Song & Dhariwal 2023): the pseudo-Huber distance
``sqrt(||a - b||^2 + c^2) - c`` with ``c = 0.00054 sqrt(dim)``, the weight ``1 / (t_{n+1} - t_n)``, levels
drawn from a discretised lognormal, and a curriculum doubling K from ``bins`` to ``bins_end``.

**Guided students** (``guidance=(w_lo, w_hi)``): the teacher's targets are classifier-free guided,
``D_w = D(c) + w (D(c) - D(no class))``, with ``w`` drawn uniformly per sample, and the student takes ``w``
as an input (the network's ``guidance_embed``), so one student serves every weight of the range.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .objectives import Objective, register_objective
from .precond import EDMScheme, Precond

__all__ = ["ProgressiveObjective", "ConsistencyObjective", "TEACHER_STEPS", "ramp_levels", "student_levels",
           "student_sampling", "Teacher", "check_guidance", "check_teacher_sampler"]


def ramp_levels(u: Tensor | float, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """Karras et al.'s curve at ``u`` in [0, 1]: ``sigma_max`` at 0, ``sigma_min`` at 1 (float64)."""
    u = torch.as_tensor(u, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + u * (b - a)) ** rho


def student_levels(steps: int, sigma_min: float, sigma_max: float, rho: float) -> Tensor:
    """The ``steps + 1`` levels of a student of ``steps`` steps: ``rho_ramp(i / steps)``, then 0."""
    u = torch.arange(steps, dtype=torch.float64) / steps
    return torch.cat([ramp_levels(u, sigma_min, sigma_max, rho), torch.zeros(1, dtype=torch.float64)])


def student_sampling(steps: int, sigma_min: float, sigma_max: float, rho: float,
                     sampler: str = "euler") -> dict:
    """The sampling defaults a student of ``steps`` steps records: Karras et al.'s schedule of ``steps``
    steps whose ``sigma_min`` is the student's last level (so its levels are the student's)."""
    # one step evaluates at sigma_max alone, where any sigma_min gives the same schedule
    last = float(student_levels(steps, sigma_min, sigma_max, rho)[steps - 1]) if steps > 1 else sigma_min
    return {"sampler": sampler, "steps": int(steps), "schedule": "karras", "sigma_min": last,
            "sigma_max": float(sigma_max), "rho": float(rho), "options": {}}


def _column(sigma: Tensor, like: Tensor) -> Tensor:
    return sigma.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# ---------------------------------------------------------------------------------------------------
# Teacher steps with a level per sample (the registry's samplers take one level for the whole batch)


def euler_teacher_step(D: Callable, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """Euler's (DDIM's) step from ``s`` to ``s_next`` (per sample): ``x + (s' - s) (x - D) / s``."""
    ratio = _column(s_next / s, x)
    return ratio * x + (1 - ratio) * D(x, s)


def heun_teacher_step(D: Callable, x: Tensor, s: Tensor, s_next: Tensor) -> Tensor:
    """Heun's step (EDM's Algorithm 1 without churn); an Euler step where ``s_next`` is 0."""
    d = (x - D(x, s)) / _column(s, x)
    x_euler = x + _column(s_next - s, x) * d
    last = s_next <= 0
    s_safe = torch.where(last, s, s_next)  # no call at 0; those rows keep the Euler step
    d_next = (x_euler - D(x_euler, s_safe)) / _column(s_safe, x)
    x_heun = x + _column(s_next - s, x) * (d + d_next) / 2
    return torch.where(_column(last, x).bool(), x_euler, x_heun)


#: the teacher samplers (registry names) distillation can run with a level per sample
TEACHER_STEPS: dict[str, Callable] = {"euler": euler_teacher_step, "ddim": euler_teacher_step,
                                      "heun": heun_teacher_step}


def check_teacher_sampler(name: str) -> None:
    """ValueError (one line) unless ``name`` is a deterministic sampler a teacher can distil with."""
    if name in TEACHER_STEPS:
        return
    import samplers

    spec = samplers.get(name)  # unknown names: the registry's error
    if spec.stochastic:
        raise ValueError(f"teacher sampler {name!r} is stochastic: distillation needs a deterministic one "
                         f"({', '.join(TEACHER_STEPS)})")
    raise ValueError(f"teacher sampler {name!r} is not one distillation runs per sample; use one of "
                     f"{', '.join(TEACHER_STEPS)}")


class Teacher:
    """A frozen teacher denoiser, classifier-free guided at a weight per sample where asked.

    ``denoiser`` is an EDM denoiser ``D(x, sigma, **cond)`` (a :class:`~edm.precond.Precond`, on this
    rank's rows under torchrun); ``takes_guidance``: the teacher itself takes the weight as an input
    (a guided student of an earlier round), else guidance is classifier-free on the class label.
    """

    def __init__(self, denoiser: Callable, takes_guidance: bool = False):
        self.denoiser = denoiser
        self.takes_guidance = takes_guidance

    def bind(self, cond: dict, guidance: Tensor | None) -> Callable:
        """``D(x, sigma)`` of the teacher on these conditions (guided at ``guidance`` per sample)."""
        if guidance is None or self.takes_guidance:
            extra = guidance_kwargs(guidance)
            return lambda x, sigma: self.denoiser(x, sigma, **cond, **extra)
        labels = cond.get("class_labels")
        if labels is None:
            raise ValueError("guided distillation needs a class-conditional teacher (class labels to drop)")

        def guided(x, sigma):
            both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                                 class_labels=torch.cat([labels, torch.zeros_like(labels)]))
            conditional, unconditional = both.chunk(2)
            return conditional + _column(guidance, x) * (conditional - unconditional)

        return guided


def guidance_kwargs(guidance: Tensor | None) -> dict:
    """The keyword arguments that give a network taking the weight (``guidance_embed``) its ``w``."""
    return {} if guidance is None else {"guidance": guidance}


def _draw_guidance(options: dict, batch: int, generator, device) -> Tensor | None:
    bounds = options.get("guidance")
    if not bounds:
        return None
    lo, hi = bounds
    u = torch.rand(batch, generator=generator, device=device, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(torch.float32)


def check_guidance(guidance) -> list | None:
    if guidance is None:
        return None
    lo, hi = (float(g) for g in guidance)
    if not 0 <= lo <= hi:
        raise ValueError(f"guidance range must satisfy 0 <= lo <= hi, got [{lo}, {hi}]")
    return [lo, hi]


class DistillationObjective(Objective):
    """What both methods share: the teacher (loaded when the run starts, :meth:`attach`), the guidance
    range and the student's recorded sampling defaults. ``teacher`` is a checkpoint path (its stem)."""

    RUN_OPTIONS = ("sigma_data",)

    def attach(self, net, share, device) -> None:
        """Load the teacher onto ``device`` (on this rank's rows under torchrun)."""
        from .checkpoint import load_checkpoint

        checkpoint = load_checkpoint(self.params["teacher"], device=device)
        backbone = checkpoint.denoiser.backbone
        precond = checkpoint.denoiser
        precond.backbone = share.rows_of(backbone)
        self.teacher = Teacher(precond, bool(getattr(backbone, "guidance_embed", False)))

    def record(self) -> None:
        """None: a student's denoiser is rebuilt from its ``precond`` section (EDM's or the consistency
        scheme), so loading a student needs neither its teacher nor this module; the recipe is in
        :meth:`distillation_record`."""
        return None

    def distillation_record(self) -> dict:
        """What a student's checkpoint records of how it was distilled (its ``distillation`` section)."""
        return {"method": self.name, "params": dict(self.params)}


@register_objective("progressive")
class ProgressiveObjective(DistillationObjective):
    """One round of progressive distillation: a student of ``steps`` steps from two teacher steps each
    (see the module doc). The student's denoiser is EDM's (the teacher's preconditioning)."""

    def __init__(self, teacher: str = "", steps: int = 1, teacher_sampler: str = "euler",
                 sigma_data: float = 0.5, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 guidance=None):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        check_teacher_sampler(teacher_sampler)
        if not 0 < sigma_min < sigma_max or not rho > 0:
            raise ValueError(f"need 0 < sigma_min < sigma_max and rho > 0, got {sigma_min}, {sigma_max}, "
                             f"{rho}")
        super().__init__(teacher=str(teacher), steps=int(steps), teacher_sampler=teacher_sampler,
                         sigma_data=float(sigma_data), sigma_min=float(sigma_min), sigma_max=float(sigma_max),
                         rho=float(rho), guidance=check_guidance(guidance))

    def build_scheme(self, sigma_data, **_):
        return EDMScheme(sigma_data=sigma_data)

    def denoiser(self, backbone):
        return Precond(backbone, "edm", sigma_data=self.params["sigma_data"])

    def sampling_record(self) -> dict:
        p = self.params
        record = student_sampling(p["steps"], p["sigma_min"], p["sigma_max"], p["rho"])
        if p["guidance"]:
            record["guidance_range"] = list(p["guidance"])
        return record

    def loss(self, net, images, labels=None, generator=None, **cond):
        p = self.params
        n = p["steps"]
        batch, device = images.shape[0], images.device
        levels = student_levels(2 * n, p["sigma_min"], p["sigma_max"], p["rho"]).to(device)
        i = torch.randint(0, n, (batch,), generator=generator, device=device)
        noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
        guidance = _draw_guidance(p, batch, generator, device)
        s, mid, s_next = (levels[2 * i + k].to(images.dtype) for k in range(3))
        x = images + _column(s, images) * noise
        step = TEACHER_STEPS[p["teacher_sampler"]]
        with torch.no_grad():
            D = self.teacher.bind(cond, guidance)
            x_teacher = step(D, step(D, x, s, mid), mid, s_next)
            ratio = _column(s_next / s, x)
            target = (x_teacher - ratio * x) / (1 - ratio)
        denoised = net(x, s, **cond, **guidance_kwargs(guidance))
        return _column(self.scheme.loss_weight(s), x) * (denoised - target) ** 2

    def precond_record(self):
        return {"scheme": "edm", "params": {"sigma_data": self.params["sigma_data"]}}


#: the distances of consistency distillation: (difference [B, ...]) -> loss per sample [B]
def _l2(diff: Tensor) -> Tensor:
    return diff.flatten(1).pow(2).mean(dim=1)


def _pseudo_huber(diff: Tensor) -> Tensor:
    dim = diff[0].numel()
    c = 0.00054 * math.sqrt(dim)
    return (diff.flatten(1).pow(2).sum(dim=1) + c * c).sqrt() - c


DISTANCES = {"l2": _l2, "pseudo-huber": _pseudo_huber}
LEVEL_DRAWS = ("uniform", "lognormal")
WEIGHTINGS = ("uniform", "ict")


@register_objective("consistency")
class ConsistencyObjective(DistillationObjective):
    """Consistency distillation (see the module doc); the student's denoiser is the ``consistency``
    scheme, whose boundary condition makes ``f(x; sigma_min) = x``."""

    def __init__(self, teacher: str = "", bins: int = 18, bins_end: int | None = None, total_steps: int = 1,
                 teacher_sampler: str = "heun", sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0, rho: float = 7.0, distance: str = "l2", levels: str = "uniform",
                 weighting: str = "uniform", target_ema: float = 0.0, sample_steps: int = 1,
                 sample_sigmas=None, guidance=None, P_mean: float = -1.1, P_std: float = 2.0):
        check_teacher_sampler(teacher_sampler)
        for value, allowed, what in ((distance, DISTANCES, "distance"), (levels, LEVEL_DRAWS, "levels"),
                                     (weighting, WEIGHTINGS, "weighting")):
            if value not in allowed:
                raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(allowed)}")
        bins_end = bins if bins_end is None else int(bins_end)
        if not 2 <= bins <= bins_end:
            raise ValueError(f"need 2 <= bins <= bins_end, got {bins} and {bins_end}")
        if not 0 <= target_ema < 1:
            raise ValueError(f"target_ema must lie in [0, 1), got {target_ema}")
        super().__init__(teacher=str(teacher), bins=int(bins), bins_end=bins_end,
                         total_steps=int(total_steps),
                         teacher_sampler=teacher_sampler, sigma_data=float(sigma_data),
                         sigma_min=float(sigma_min), sigma_max=float(sigma_max), rho=float(rho),
                         distance=distance, levels=levels, weighting=weighting, target_ema=float(target_ema),
                         sample_steps=int(sample_steps),
                         sample_sigmas=None if sample_sigmas is None else [float(s) for s in sample_sigmas],
                         guidance=check_guidance(guidance), P_mean=float(P_mean), P_std=float(P_std))
        self.step = 0
        self.target_net = None

    def build_scheme(self, sigma_data, sigma_min, sigma_max, **_):
        from .precond import schemes

        return schemes.get("consistency", sigma_data=sigma_data, sigma_min=sigma_min, sigma_max=sigma_max)

    def denoiser(self, backbone):
        p = self.params
        return Precond(backbone, "consistency", sigma_data=p["sigma_data"], sigma_min=p["sigma_min"],
                       sigma_max=p["sigma_max"])

    def precond_record(self):
        p = self.params
        keys = ("sigma_data", "sigma_min", "sigma_max")
        return {"scheme": "consistency", "params": {k: p[k] for k in keys}}

    def sampling_record(self) -> dict:
        p = self.params
        sigmas = p["sample_sigmas"] or [p["sigma_max"]]
        # karras of len(sigmas) steps: its sigma_min is the last level (one step: the curve's end, unused)
        record = {"sampler": "consistency", "steps": len(sigmas), "schedule": "karras",
                  "sigma_max": sigmas[0], "sigma_min": sigmas[-1] if len(sigmas) > 1 else p["sigma_min"],
                  "rho": p["rho"],
                  "options": {"eps": p["sigma_min"]}}
        if p["guidance"]:
            record["guidance_range"] = list(p["guidance"])
        return record

    # the discretisation and its curriculum ------------------------------------------------------

    def bins_at(self, step: int) -> int:
        """K at training step ``step``: ``bins`` doubled in equal stages up to ``bins_end`` (the improved
        recipe's curriculum)."""
        p = self.params
        doublings = int(math.floor(math.log2(p["bins_end"] / p["bins"])))
        if doublings <= 0:
            return p["bins"]
        stage = max(p["total_steps"] // (doublings + 1), 1)
        return min(p["bins"] * 2 ** min(step // stage, doublings), p["bins_end"])

    def at_step(self, step: int) -> None:
        self.step = step

    def _draw_pairs(self, batch: int, generator, device) -> tuple[Tensor, Tensor]:
        """Levels ``(t_n, t_{n+1})`` per sample, ``t`` Karras et al.'s K levels from sigma_min up."""
        p = self.params
        k = self.bins_at(self.step)
        u = torch.linspace(1, 0, k, dtype=torch.float64)
        t = ramp_levels(u, p["sigma_min"], p["sigma_max"], p["rho"])
        if p["levels"] == "uniform":
            n = torch.randint(0, k - 1, (batch,), generator=generator, device=device)
        else:  # the improved recipe's lognormal over the intervals (t_n, t_{n+1})
            cdf = torch.special.erf((t.log() - p["P_mean"]) / (math.sqrt(2) * p["P_std"]))
            weights = (cdf[1:] - cdf[:-1]).clamp(min=0)
            n = torch.multinomial(weights.to(device, torch.float32), batch, replacement=True,
                                  generator=generator)
        t = t.to(device)
        return t[n], t[n + 1]

    def loss(self, net, images, labels=None, generator=None, **cond):
        p = self.params
        batch, device = images.shape[0], images.device
        t_n, t_next = (v.to(images.dtype) for v in self._draw_pairs(batch, generator, device))
        noise = torch.randn(images.shape, generator=generator, device=device, dtype=images.dtype)
        guidance = _draw_guidance(p, batch, generator, device)
        extra = guidance_kwargs(guidance)
        x_next = images + _column(t_next, images) * noise
        with torch.no_grad():
            D = self.teacher.bind(cond, guidance)
            x_hat = TEACHER_STEPS[p["teacher_sampler"]](D, x_next, t_next, t_n)
            target_net = net if self.target_net is None else self.target
            target = target_net(x_hat, t_n, **cond, **extra)
        output = net(x_next, t_next, **cond, **extra)
        per_sample = DISTANCES[p["distance"]](output - target)
        if p["weighting"] == "ict":
            per_sample = per_sample / (t_next - t_n)
        return per_sample

    # the EMA target network (target_ema > 0): part of the training state ------------------------

    def attach(self, net, share, device) -> None:
        super().attach(net, share, device)
        if self.params["target_ema"] > 0:
            import copy

            self.target_net = copy.deepcopy(net).requires_grad_(False)
            self.target = self.denoiser(share.rows_of(self.target_net))

    def after_step(self, net) -> None:
        if self.target_net is None:
            return
        mu = self.params["target_ema"]
        with torch.no_grad():
            for p_target, p in zip(self.target_net.parameters(), net.parameters()):
                p_target.lerp_(p.detach(), 1.0 - mu)

    def state_tensors(self) -> dict[str, Tensor]:
        if self.target_net is None:
            return {}
        return {f"target.{k}": v for k, v in self.target_net.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if self.target_net is not None:
            self.target_net.load_state_dict({k[len("target."):]: v for k, v in tensors.items()
                                             if k.startswith("target.")})
