"""The runs of ``edm distill``: the rounds of progressive distillation (each a training run of
:func:`edm.train.train` with the objective ``progressive``, initialised from the previous student), or one
consistency distillation run; the objectives, their targets and the derivation are in :mod:`edm.distill`.
"""

from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, read_config
from .distill import check_guidance, check_teacher_sampler
from .train import STATE_NAME, train

__all__ = ["METHODS", "distill", "halvings", "round_dir", "student_network", "teacher_record"]

METHODS = ("progressive", "consistency")


def round_dir(outdir, steps: int):
    """The run directory of the progressive round that trains the student of ``steps`` steps."""
    return Path(outdir) / f"student-{steps}"


def halvings(start: int, end: int = 1) -> list[int]:
    """The students' step counts of progressive distillation from ``start`` to ``end``: ``start, start/2, ...,
    end``; ValueError unless both are powers of 2 with ``end <= start``."""
    for value, what in ((start, "starting"), (end, "final")):
        if not isinstance(value, int) or value < 1 or value & (value - 1):
            raise ValueError(f"progressive distillation halves the steps: the {what} number of steps must "
                             f"be a power of 2, got {value}")
    if end > start:
        raise ValueError(f"the final number of steps ({end}) exceeds the starting one ({start})")
    counts = [start]
    while counts[-1] > end:
        counts.append(counts[-1] // 2)
    return counts


def teacher_record(teacher) -> dict:
    """The checkpoint config of ``teacher`` (a checkpoint stem or file); ValueError (one line) unless it is an
    EDM denoiser this library trained (the scheme a distillation target is derived for)."""
    try:
        config = read_config(teacher)
    except (CheckpointError, OSError) as e:
        raise ValueError(f"teacher {teacher}: {e}") from None
    objective = (config.get("objective") or {}).get("name", "edm")
    scheme = (config.get("precond") or {}).get("scheme", "edm")
    if objective != "edm" or scheme != "edm":
        raise ValueError(f"teacher {teacher} is not an EDM denoiser (objective {objective}, scheme "
                         f"{scheme}): distillation needs EDM's preconditioning")
    return config


def student_network(config: dict, guided: bool) -> tuple[str, dict]:
    """The student's architecture: the teacher's, without condition dropout or dropout (every target is
    conditional, and deterministic), with a guidance embedding when ``guided``."""
    network = config["network"]
    kwargs = dict(network["kwargs"])
    kwargs.update(label_dropout=0.0, **({"dropout": 0.0} if "dropout" in kwargs else {}))
    if guided:
        kwargs["guidance_embed"] = True
    return network["name"], kwargs


def distill(teacher, outdir, *, method: str, steps: int | None = None, end_steps: int = 1,
            train_steps: int = 2000, teacher_sampler: str | None = None, guidance=None, resume: bool = False,
            command: str | None = None, method_options: dict | None = None, **train_options) -> list:
    """Distil ``teacher`` (an EDM checkpoint) into ``outdir``; returns the :class:`edm.train.TrainResult` of
    each run.

    ``progressive``: rounds from a student of ``steps`` (a power of 2, default 8) down to ``end_steps``,
    each ``train_steps`` long, in ``outdir/student-N``; the first round's teacher runs ``teacher_sampler``
    (default heun), later ones the previous student with euler. ``consistency``: one run of ``train_steps``
    in ``outdir``. ``guidance=(lo, hi)``: a guided student taking the weight as an input. ``method_options``
    are the objective's (:class:`ProgressiveObjective`, :class:`ConsistencyObjective`); ``train_options``
    :func:`edm.train.train`'s (batch, lr, warmup, ema..., seed, checkpoint_every, device, progress).
    ``resume``: rounds already finished are kept, an interrupted one continues from its training state
    (bit-exact); without it, an ``outdir`` that holds a run is refused.
    """
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; valid: {', '.join(METHODS)}")
    config = teacher_record(teacher)
    sigma_data = float((config.get("precond") or {}).get("params", {}).get("sigma_data", 0.5))
    guidance = check_guidance(guidance)
    if guidance and int(config.get("data", {}).get("num_classes") or 0) == 0 \
            and not config["network"]["kwargs"].get("guidance_embed"):
        raise ValueError(f"guided distillation needs a class-conditional teacher; {teacher} is unconditional")
    network, network_kwargs = student_network(config, bool(guidance))
    data = config["data"]["name"]
    options = dict(method_options or {})
    outdir = Path(outdir)
    if method == "progressive":
        plan = [(n, round_dir(outdir, n)) for n in halvings(8 if steps is None else steps, end_steps)]
    else:
        if steps is not None:
            raise ValueError("--steps is progressive distillation's starting number of steps; consistency "
                             "distillation samples with --sample-sigmas")
        plan = [(None, outdir)]
    check_teacher_sampler(teacher_sampler or "heun")
    for _, run in plan:
        if not resume and (run / f"{STATE_NAME}.json").exists():
            raise ValueError(f"{run} already holds a run: pass resume to continue it, or another output "
                             "folder")
    results, source = [], Path(teacher)
    for i, (n, run) in enumerate(plan):
        if method == "progressive":
            params = {"teacher": str(source), "steps": n,
                      "teacher_sampler": (teacher_sampler or "heun") if i == 0 else "euler",
                      "sigma_data": sigma_data, "guidance": guidance, **options}
        else:
            params = {"teacher": str(source), "teacher_sampler": teacher_sampler or "heun",
                      "sigma_data": sigma_data, "guidance": guidance, "total_steps": train_steps, **options}
        state = run / f"{STATE_NAME}.json"
        if state.exists():
            results.append(train(resume=run, steps=train_steps, command=command,
                                 **{k: v for k, v in train_options.items()
                                    if k in ("checkpoint_every", "device", "progress")}))
        else:
            results.append(train(data, run, steps=train_steps, network=network, network_kwargs=network_kwargs,
                                 sigma_data=sigma_data, objective=method, objective_options=params,
                                 init=source, command=command, **train_options))
        source = run / "network"
    return results
