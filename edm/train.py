"""Train an EDM-preconditioned backbone with EDM's loss (Karras et al. 2022, Section 5).

:func:`train` is the whole loop: a dataset from :mod:`edm.data`, a network from :mod:`edm.networks`
wrapped in the denoiser of the training objective and trained with its loss (:mod:`edm.objectives`;
by default ``edm``: :class:`~edm.precond.Precond` with scheme ``edm`` and :class:`~edm.loss.EDMLoss`),
Adam with a linear learning-rate warm-up, an exponential moving average (EMA) of the weights, and periodic
checkpoints in ``outdir``:

* ``network.safetensors`` + ``network.json``: the EMA model, loadable with
  :func:`edm.checkpoint.load_checkpoint`; its JSON records the command, seed, dataset and step;
* ``training-state.json`` + ``training-state-<step>.safetensors``: everything ``resume`` needs
  (raw weights, EMA weights, Adam state, step, RNG states), tensors in safetensors and the rest in
  JSON: nothing is pickled. The JSON names its tensor file and is replaced last.

All four files are written in full (to hidden ``.tmp`` files) before any of them replaces its
predecessor, so a save that fails (disk full, ...) or a crash while saving leaves the previous
checkpoint and state intact and no partial file behind. ``outdir`` is created, and checked to be
writable, before the first training step; problems with it raise :class:`OutdirError`.

Every random draw comes from generators seeded by ``seed`` (initialisation and dropout from
torch's global generator, forked so the caller's is untouched; minibatches and the loss's sigma and
noise from their own generators), and all of them are saved, so a run is reproducible on CPU and a
resumed run continues bit for bit where the saved one stopped.

Under torchrun (a torch.distributed process group started by the caller, as ``edm train`` does) the
loop is data-parallel with the same global ``batch``: every rank draws what one process draws and runs
the network on its own rows of it (:mod:`edm.distributed`), so the weights are one process's to float
round-off; only rank 0 writes files, and the checkpoint records the number of processes.
"""

from __future__ import annotations

import copy
import errno
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import (
    digits_text,  # noqa: F401  (registers the "digits-text" dataset)
    distill,  # noqa: F401  (registers the distillation objectives "progressive" and "consistency")
    dit,  # noqa: F401  (registers "dit" in the network registry)
)
from .checkpoint import atomic_write_all, checkpoint_files, optimizer_state, read_record, restore_optimizer
from .conditions import ALPHABET, LOW_RES, NoiseAugmentation, batch_condition, check_kind, default_kind
from .data import Dataset, load_dataset
from .distributed import BatchShare
from .networks import build_network, image_size
from .objectives import training_objective

__all__ = ["train", "TrainResult", "OutdirError", "STATE_FORMAT", "default_network_kwargs",
           "load_training_state"]

STATE_FORMAT = "edm-samplers/training-state-1"
STATE_NAME = "training-state"
NETWORK_NAME = "network"

# Hyperparameters saved with the training state; a resumed run takes them from there.
_HYPERPARAMETERS = ("data", "cond", "batch", "lr", "warmup", "ema_halflife_kimg", "ema_decay", "ema_rampup",
                    "P_mean", "P_std", "sigma_data", "seed", "network", "network_kwargs", "objective",
                    "objective_options", "factor", "noise_aug", "init")
# What a training state saved before a hyperparameter existed means by its absence.
_ABSENT = {"objective": "edm", "objective_options": {}, "cond": None, "factor": None, "noise_aug": None,
           "init": None}
# The hyperparameters of super-resolution (conditioning kind low-res) alone.
_LOW_RES_OPTIONS = ("factor", "noise_aug")


class OutdirError(OSError):
    """The run directory cannot be created or written: not a folder, read-only, disk full, ...

    Raised as ``OutdirError(errno, message)``: ``errno`` is the underlying error's (e.g.
    ``errno.ENOSPC``), ``str()`` the one-line message, which names the directory.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


def _prepare_outdir(outdir: Path) -> None:
    """Create ``outdir`` (with its parents) and check that a file can be created in it."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutdirError(e.errno, f"cannot create output folder {outdir}: {_reason(e)}") from e
    try:  # os.access is no proof (root, read-only mounts, ACLs): create and remove a file
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".edm-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutdirError(e.errno, f"cannot write to output folder {outdir}: {_reason(e)}") from e


@dataclass
class TrainResult:
    step: int  # steps done in total
    loss: float  # mean training loss over the last (up to 100) steps of this call; nan if none ran
    checkpoint: Path  # the EMA model: ``checkpoint.with_suffix(".json")`` / ``".safetensors"``
    state: Path  # the training state JSON (pass it, or ``outdir``, as ``resume``)
    seconds: float  # wall time of this call


def default_network_kwargs(dataset: Dataset, network: str = "unet", cond: str | None = None,
                           **overrides) -> dict:
    """Arguments of ``network`` fitted to ``dataset`` (channels, resolution, classes or text length for the
    conditioning kind ``cond``, by default the data's: :func:`edm.default_kind`), updated by
    ``overrides``.

    UNet defaults: ``model_channels=64``, ``channel_mult=(1, 2)``, ``num_blocks=2``, attention at the
    lowest resolution when it is 16 or less. DiT defaults: ``patch_size=2``, ``depth=4``, ``width=128``,
    ``heads=4``.
    """
    C, H, W = dataset.shape
    cond = default_kind(dataset) if cond is None else cond
    kwargs = {"in_channels": C, "out_channels": C, "resolution": H if H == W else [H, W],
              "num_classes": dataset.num_classes if cond == "class" else 0,
              **_ARCH_DEFAULTS.get(network, {})}
    if cond == "text":
        kwargs["text_length"] = dataset.text_length
    if cond == LOW_RES:  # the upsampled low-resolution image joins the input; its noise level the embedding
        kwargs.update(cond_channels=C, noise_aug=True)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    if network == "unet":
        kwargs["channel_mult"] = [int(m) for m in kwargs["channel_mult"]]
        if "attn_resolutions" not in kwargs:
            lowest = H >> (len(kwargs["channel_mult"]) - 1)
            kwargs["attn_resolutions"] = [lowest] if lowest <= 16 else []
    return kwargs


# Sizes of each architecture that the data does not decide (other registered networks get none).
_ARCH_DEFAULTS = {"unet": {"model_channels": 64, "channel_mult": [1, 2], "num_blocks": 2},
                  "dit": {"patch_size": 2, "depth": 4, "width": 128, "heads": 4}}


def _ema_beta(options: Mapping, step: int) -> float:
    """EMA decay for update number ``step + 1`` (NVlabs' half-life in images, with its ramp-up)."""
    if options["ema_decay"] is not None:
        return float(options["ema_decay"])
    halflife = options["ema_halflife_kimg"] * 1000
    if options["ema_rampup"]:
        halflife = min(halflife, (step + 1) * options["batch"] * options["ema_rampup"])
    return 0.5 ** (options["batch"] / max(halflife, 1e-8))


def _learning_rate(options: Mapping, step: int) -> float:
    warmup = options["warmup"]
    return options["lr"] * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)


# ---------------------------------------------------------------------------------------------------
# Training state (no pickle: tensors in safetensors, structure in JSON)


def _rng_states(device: torch.device, generators: Mapping[str, torch.Generator]) -> dict:
    states = {f"rng.{name}": gen.get_state() for name, gen in generators.items()}
    states["rng.torch_cpu"] = torch.get_rng_state()
    if device.type == "cuda":
        states["rng.torch_cuda"] = torch.cuda.get_rng_state(device)
    return states


def _state_files(outdir: Path, step: int, options: dict, net, ema, optimizer, generators,
                 device, objective) -> list[tuple[Path, Callable[[str], object]]]:
    """``[(tensors, writer), (training-state.json, writer)]`` for :func:`atomic_write_all`."""
    tensors = {f"net.{k}": v for k, v in net.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors.update({f"objective.{k}": v for k, v in objective.state_tensors().items()})
    adam, adam_record = optimizer_state(optimizer)
    tensors.update(adam)
    tensors.update(_rng_states(device, generators))
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    weights_name = f"{STATE_NAME}-{step:08d}.safetensors"
    record = {"format": STATE_FORMAT, "step": step, "tensors": weights_name, "options": options,
              **adam_record}
    text = json.dumps(record, indent=2, sort_keys=True)
    return [(outdir / weights_name, lambda tmp: save_file(tensors, tmp)),
            (outdir / f"{STATE_NAME}.json", lambda tmp: Path(tmp).write_text(text + "\n"))]


def _save(outdir: Path, files: list[tuple[Path, Callable[[str], object]]]) -> None:
    """Write the EMA checkpoint and the training state together (see the module doc), then remove the
    training state's previous tensor file; a failure raises :class:`OutdirError`."""
    state_json = outdir / f"{STATE_NAME}.json"
    previous = None
    if state_json.is_file():
        try:
            previous = json.loads(state_json.read_text()).get("tensors")
        except (OSError, ValueError, AttributeError):
            previous = None
    try:
        atomic_write_all(files)
    except OSError as e:
        raise OutdirError(e.errno, f"cannot save checkpoint in {outdir}: {_reason(e)}") from e
    names = {path.name for path, _ in files}
    if isinstance(previous, str) and previous not in names and Path(previous).name == previous:
        (outdir / previous).unlink(missing_ok=True)


def load_training_state(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(record, tensors)`` of the training state at ``path`` (its JSON, or the run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{STATE_NAME}.json"
    record = read_record(path, STATE_FORMAT, "training state", ValueError)
    weights = path.parent / record["tensors"]
    try:
        tensors = load_file(weights)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read training state tensors {weights}: {e}") from None
    return record, tensors


def _section(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}


def _restore(record, tensors, net, ema, optimizer, generators, device, objective) -> None:
    net.load_state_dict(_section(tensors, "net."))
    ema.load_state_dict(_section(tensors, "ema."))
    objective.load_state_tensors(_section(tensors, "objective."))
    restore_optimizer(optimizer, record, tensors)
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if device.type == "cuda" and "rng.torch_cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)


# ---------------------------------------------------------------------------------------------------
# The loop


def train(
    data="digits",
    outdir=None,
    *,
    steps: int | None = None,
    kimg: float | None = None,
    batch: int = 128,
    lr: float = 1e-3,
    warmup: int = 200,
    ema_halflife_kimg: float = 50.0,
    ema_decay: float | None = None,
    ema_rampup: float | None = 0.05,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float | str = 0.5,
    network: str = "unet",
    network_kwargs: dict | None = None,
    cond: str | None = None,
    seed: int = 0,
    checkpoint_every: int | None = None,
    resume=None,
    device="cpu",
    progress: bool = True,
    command: str | None = None,
    objective: str = "edm",
    objective_options: dict | None = None,
    factor: int | None = None,
    noise_aug: dict | None = None,
    init=None,
) -> TrainResult:
    """Train ``network`` on ``data`` with EDM's loss; write checkpoints to ``outdir``; see the module doc.

    Args:
        data: ``"digits"``, an image folder or a ``.npz``/``.npy`` file (see :func:`edm.data.load_dataset`).
        outdir: run directory (created); with ``resume`` it defaults to the state's directory.
        steps / kimg: length of training in optimizer steps or thousands of images (give one); with
            ``resume`` the total to reach, defaulting to the saved run's.
        batch, lr, warmup: minibatch size, Adam learning rate, linear warm-up length in steps.
        ema_halflife_kimg, ema_rampup: EMA half-life in thousands of images, capped at
            ``ema_rampup`` times the images seen so far (None or 0: no ramp-up); ``ema_decay``, when
            given, is a fixed per-step decay instead.
        P_mean, P_std, sigma_data: EDM's training distribution ``ln sigma ~ N(P_mean, P_std^2)`` and
            data standard deviation (``"auto"``: measured on the dataset, to 3 decimals).
        objective, objective_options: the training objective (``edm``, ``ddpm``, ``v-cosine``, ``sigmoid``;
            :mod:`edm.objectives`) and its parameters; ``sigma_data`` (and for ``edm`` ``P_mean``,
            ``P_std``) come from the arguments above unless given here.
        network, network_kwargs: registry name and arguments; channels, resolution and classes (or text
            length) are filled in from the data (:func:`default_network_kwargs`).
        cond: conditioning kind, ``none``, ``class``, ``text`` or ``low-res`` (:mod:`edm.conditions`);
            default: the data's (text for a text dataset, class for a labelled one, else none).
        factor, noise_aug: ``low-res`` only: the super-resolution factor (the network sees the images
            average-pooled ``factor`` times, upsampled back) and the training distribution of the
            conditioning augmentation's level (:class:`edm.conditions.NoiseAugmentation`'s ``high``,
            ``low``, ``zero``; default: its defaults).
        seed: seeds every random draw.
        init: a checkpoint (its stem, ``NAME.json`` or ``NAME.safetensors``) whose weights the network
            starts from instead of its random initialisation (distillation: the teacher or the previous
            student); only a guidance embedding the checkpoint lacks keeps its (zero) initialisation.
        checkpoint_every: also write checkpoints every this many steps (always at the end).
        resume: a training state (``outdir`` or its ``training-state.json``) to continue; all
            hyperparameters above are then taken from it, only ``steps``/``kimg``,
            ``checkpoint_every``, ``device`` and ``progress`` apply.
        device: where to train (``"cpu"``, ``"cuda"``, ...).
        command: the command line to record in the checkpoint.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if steps is not None and kimg is not None:
        raise ValueError("give steps or kimg, not both")
    options = {"data": str(data), "batch": int(batch), "lr": float(lr), "warmup": int(warmup),
               "ema_halflife_kimg": float(ema_halflife_kimg),
               "ema_decay": None if ema_decay is None else float(ema_decay),
               "ema_rampup": float(ema_rampup or 0.0), "P_mean": float(P_mean), "P_std": float(P_std),
               "sigma_data": sigma_data, "cond": cond, "seed": int(seed), "network": network,
               "network_kwargs": dict(network_kwargs or {}), "objective": objective,
               "objective_options": dict(objective_options or {}),
               "factor": None if factor is None else int(factor),
               "noise_aug": None if noise_aug is None else dict(noise_aug),
               "init": None if init is None else str(init)}
    record = tensors = None
    if resume is not None:
        record, tensors = load_training_state(resume)
        saved = record["options"]
        options.update({k: saved[k] if k in saved else _ABSENT[k] for k in _HYPERPARAMETERS})
        options["total_steps"] = saved.get("total_steps")
        options["seconds"] = float(saved.get("seconds") or 0.0)
        if outdir is None:
            outdir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    if outdir is None:
        raise ValueError("outdir is required")
    if kimg is not None:
        steps = math.ceil(kimg * 1000 / options["batch"])
    if steps is None:
        steps = options.get("total_steps")
    if steps is None or steps < 0:
        raise ValueError(f"steps (or kimg) must be given and >= 0, got {steps}")
    options["total_steps"] = int(steps)
    _check_options(options, checkpoint_every)
    if record is not None:  # the run's own recipe, not the resuming command line, reproduces its weights
        command = continued_command(Path(outdir), options["total_steps"]) or command

    dataset = load_dataset(options["data"])
    options["cond"] = options["cond"] or default_kind(dataset)
    check_kind(dataset, options["cond"], options["factor"])
    augmentation = None
    if options["cond"] == LOW_RES:
        augmentation = NoiseAugmentation(**(options["noise_aug"] or {}))
        options["noise_aug"] = augmentation.record()
    elif options["noise_aug"] is not None:
        raise ValueError(f"noise_aug applies to conditioning {LOW_RES!r} only, not {options['cond']!r}")
    if options["sigma_data"] == "auto":
        options["sigma_data"] = round(dataset.std(), 3)
    options["sigma_data"] = float(options["sigma_data"])
    objective = _objective(options)
    if record is None:
        options["network_kwargs"] = default_network_kwargs(dataset, options["network"], options["cond"],
                                                           **options["network_kwargs"])
    outdir = Path(outdir)

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(options["seed"])
        if device.type == "cuda":
            torch.cuda.manual_seed(options["seed"])
        net = build_network(options["network"], **options["network_kwargs"]).to(device).train()
        if options["init"] is not None and record is None:
            initialise(net, options["init"])
        expected = (net.in_channels, *image_size(net.resolution))
        if tuple(dataset.shape) != expected and record is not None:
            raise ValueError(f"dataset {dataset.name} has shape {list(dataset.shape)}, the saved network "
                             f"expects {list(expected)}")
        _prepare_outdir(outdir)  # after every check of the arguments, before any training step
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(net.parameters(), lr=options["lr"], betas=(0.9, 0.999), eps=1e-8)
        generators = {"data": torch.Generator("cpu").manual_seed(options["seed"]),
                      "noise": torch.Generator(device).manual_seed(options["seed"] + 1)}
        step = 0
        share = BatchShare(device)  # this process's rows of each minibatch under torchrun (one process: all)
        objective.attach(net, share, device)
        if record is not None:
            _restore(record, tensors, net, ema, optimizer, generators, device, objective)
            step = int(record["step"])
        options["processes"] = share.world
        precond = objective.denoiser(share.rows_of(net))
        loss_fn = objective.loss
        batch = min(options["batch"], len(dataset))
        share.check_batch(batch)

        before = float(options.get("seconds") or 0.0)  # the training time of the runs this one continues

        def save():
            error = None
            options["seconds"] = round(before + time.perf_counter() - started, 1)
            if share.is_main:  # one writer; the other ranks learn whether it succeeded
                config = _checkpoint_config(options, dataset, step, command, recent, objective)
                files = checkpoint_files(outdir / NETWORK_NAME, ema, config)
                files += _state_files(outdir, step, options, net, ema, optimizer, generators, device,
                                      objective)
                try:
                    _save(outdir, files)
                except OutdirError as e:
                    error = e
            if not share.all_ok(error is None):
                raise error or OutdirError(errno.EIO, f"cannot save checkpoint in {outdir}: rank 0 failed")
            return outdir / f"{STATE_NAME}.json"

        recent: list[float] = []
        bar = _progress(progress and share.is_main, steps, step)
        state_path = outdir / f"{STATE_NAME}.json"
        try:
            while step < steps:
                objective.at_step(step)
                images, cond = batch_condition(dataset, options["cond"], batch, generators["data"], device,
                                               options["factor"], augmentation)
                loss = loss_fn(precond, images, generator=generators["noise"], **cond)
                loss = share.mean(loss)  # this rank's part of the global batch's mean
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                loss = share.reduce_gradients(net.parameters(), loss)  # summed over ranks
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(options, step)
                optimizer.step()
                beta = _ema_beta(options, step)
                with torch.no_grad():
                    for p_ema, p in zip(ema.parameters(), net.parameters()):
                        p_ema.lerp_(p.detach(), 1.0 - beta)
                    for b_ema, b in zip(ema.buffers(), net.buffers()):
                        b_ema.copy_(b)
                objective.after_step(net)
                step += 1
                recent.append(loss)
                del recent[:-100]
                if bar is not None:
                    bar.update(1)
                    if step % 10 == 0 or step == steps:
                        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
                if checkpoint_every and step % checkpoint_every == 0 and step < steps:
                    state_path = save()
            state_path = save()
        finally:
            if bar is not None:
                bar.close()
    loss_value = sum(recent) / len(recent) if recent else float("nan")
    return TrainResult(step, loss_value, outdir / NETWORK_NAME, state_path, time.perf_counter() - started)


def continued_command(outdir: Path, steps: int) -> str | None:
    """The ``edm train`` command recorded by the run in ``outdir``, its length set to ``--steps steps``: the
    recipe that trains a resumed run's weights from scratch (resuming is bit-exact). None if it recorded
    none or another command."""
    try:
        command = json.loads((outdir / f"{NETWORK_NAME}.json").read_text()).get("command")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(command, str) or not command.startswith("edm train"):
        return None  # another command (edm distill) sets its own lengths: the caller's line stands
    length = re.compile(r" --(?:steps|kimg) \S+")
    if length.search(command):
        return length.sub(f" --steps {steps}", command, count=1)
    return f"{command} --steps {steps}"


def _check_options(options: Mapping, checkpoint_every) -> None:
    if options["batch"] < 1:
        raise ValueError(f"batch must be >= 1, got {options['batch']}")
    if not options["lr"] > 0:
        raise ValueError(f"lr must be > 0, got {options['lr']}")
    if options["warmup"] < 0:
        raise ValueError(f"warmup must be >= 0, got {options['warmup']}")
    if options["ema_decay"] is not None and not 0.0 <= options["ema_decay"] < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {options['ema_decay']}")
    if options["ema_decay"] is None and not options["ema_halflife_kimg"] > 0:
        raise ValueError(f"ema_halflife_kimg must be > 0, got {options['ema_halflife_kimg']}")
    if not options["P_std"] > 0:
        raise ValueError(f"P_std must be > 0, got {options['P_std']}")
    sd = options["sigma_data"]
    if sd != "auto" and not (isinstance(sd, (int, float)) and sd > 0):
        raise ValueError(f"sigma_data must be > 0 or 'auto', got {sd!r}")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")


def _objective(options: Mapping):
    """The run's objective (:func:`edm.objectives.training_objective`); bad parameters raise ValueError."""
    return training_objective(options["objective"], options["objective_options"],
                              **{k: options[k] for k in ("sigma_data", "P_mean", "P_std")})


def _checkpoint_config(options, dataset: Dataset, step: int, command, recent, objective) -> dict:
    num_classes = dataset.num_classes if options["cond"] == "class" else 0
    data = {"shape": list(dataset.shape), "num_classes": num_classes, "name": options["data"],
            "size": len(dataset), "std": round(dataset.std(), 6)}
    if dataset.class_names is not None:
        data["class_names"] = dataset.class_names
    left_out = ("network", "network_kwargs", "data", "objective", "objective_options",
                *objective.unused_run_options(), *(() if options["cond"] == LOW_RES else _LOW_RES_OPTIONS))
    training = {k: options[k] for k in _HYPERPARAMETERS if k not in left_out}
    training.update({"step": step, "total_steps": options["total_steps"],
                     "kimg": round(step * options["batch"] / 1000, 3),
                     "loss": (sum(recent) / len(recent)) if recent else None,
                     "torch": torch.__version__, "processes": options.get("processes", 1),
                     # wall time of the training (resumed runs: summed), including loading and checkpoints
                     "seconds": options.get("seconds")})
    condition = {"kind": options["cond"]}
    if options["cond"] == "text":
        condition.update({"alphabet": ALPHABET, "length": dataset.text_length,
                          "held_out": list(getattr(dataset, "held_out", ()))})
    if options["cond"] == LOW_RES:
        C, H, W = dataset.shape
        factor = options["factor"]
        condition.update({"factor": factor, "low_res_shape": [C, H // factor, W // factor],
                          "noise_aug": options["noise_aug"]})
    config = {"network": {"name": options["network"], "kwargs": options["network_kwargs"]},
              "condition": condition,
              "precond": objective.precond_record(), "objective": objective.record(),
              "data": data, "command": command, "seed": options["seed"], "training": training}
    sampling = objective.sampling_record()
    if sampling is not None:
        config["sampling"] = sampling
    distillation = getattr(objective, "distillation_record", None)
    if distillation is not None:
        config["distillation"] = distillation()
    return config


def initialise(net: torch.nn.Module, init) -> None:
    """Load the weights of the checkpoint ``init`` into ``net``; a guidance embedding ``net`` has and the
    checkpoint lacks keeps its initialisation (zero: the student starts as its teacher). ValueError
    (one line) for anything else that does not fit."""
    from .checkpoint import paths

    weights, _ = paths(init)
    try:
        state = load_file(weights)
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"cannot read the initial weights {weights}: {e}") from None
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("map_guidance.")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        bad = (missing or unexpected or mismatched)[0]
        raise ValueError(f"the initial weights {weights} do not fit the network (first differing tensor: "
                         f"{bad})")
    net.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in state.items()}})


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", mininterval=5.0, dynamic_ncols=True)
