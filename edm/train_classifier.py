"""Train a :class:`~edm.classifier.NoiseAwareClassifier` for classifier guidance.

:func:`train_classifier` is the whole recipe:

* data from :func:`edm.data.load_dataset` (labels required), split once into a training part and a
  held-out part that is never trained on: per class, a seeded fraction (default 20%, split seed 0)
  is held out (:func:`holdout_split`; with the defaults, the same digits the FID detector
  ``tools.fid.train_detector`` holds out). The record names the split and a hash of its indices;
  :func:`held_out_data` gives the held-out images back from a record;
* noise levels that cover every sigma a sampler visits: with probability ``log_uniform`` (default
  0.5) ``ln sigma`` is uniform over ``[ln sigma_min, ln sigma_max]`` (0.002..80), else it is EDM's
  training distribution ``N(P_mean, P_std^2)`` (-1.2, 1.2) clipped to that range. The log-uniform
  half keeps the classifier calibrated at the extremes (a sampler's first steps at sigma 80 and
  last at 0.002); the lognormal half puts extra weight on sigma ~ 0.1..1, where the class is decided;
* optional augmentation: each clean image shifted by up to ``shift`` pixels per axis (edges
  replicated) before noising. Off by default: on digits, shifts of one pixel bought 0.3 points of
  held-out accuracy at sigma <= 0.1 and cost 1.1 at sigma 0.5, 7 at sigma 1 and 10 at sigma 2
  (12000 steps), where guidance matters most; the noise itself is augmentation enough;
* cross-entropy on ``classifier(y + sigma * n, sigma)``; Adam with a linear warm-up and a cosine
  decay to zero; an exponential moving average (EMA) of the weights (decay ``ema_decay`` per step,
  capped at ``step / (step + 10)`` early on so the first steps count), which is what is saved and
  evaluated;
* at the end: held-out accuracy at the sigmas of :data:`EVAL_SIGMAS` (``draws`` seeded noise draws
  per image) and ``OUTDIR/classifier.safetensors`` + ``classifier.json`` written atomically.

Every random draw comes from generators seeded by ``seed`` (torch's global one is forked, so the
caller's is untouched): a run is reproducible on CPU. There is no resume: runs take minutes (the
shipped digits classifier, 12000 steps, about 18 minutes of one CPU core).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .classifier import NoiseAwareClassifier, accuracy_at_sigma, save_classifier
from .data import Dataset, load_dataset
from .train import OutdirError

__all__ = ["train_classifier", "ClassifierTrainResult", "holdout_split", "held_out_data",
           "sample_sigma", "EVAL_SIGMAS", "CLASSIFIER_NAME"]

CLASSIFIER_NAME = "classifier"  # OUTDIR/classifier.safetensors + classifier.json
EVAL_SIGMAS = (0.002, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 80.0)
SPLIT_METHOD = ("stratified per class: a seeded randperm of each class's indices, "
                "the first round(n * holdout) held out")


@dataclass
class ClassifierTrainResult:
    step: int  # steps done
    loss: float  # mean cross-entropy over the last (up to 100) steps
    path: Path  # the classifier stem: ``path.with_suffix(".json")`` / ``".safetensors"``
    held_out_accuracy: dict[float, float]  # sigma -> accuracy of the EMA weights on the held-out split
    seconds: float  # wall time, evaluation included


# ---------------------------------------------------------------------------------------------------
# Data


def holdout_split(labels: Tensor, fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``(train, held_out)`` sorted index tensors: per class, a seeded ``fraction`` is held out."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout must lie in [0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(int(seed))
    train, held = [], []
    for c in range(int(labels.max()) + 1):
        index = torch.nonzero(labels == c).flatten()
        index = index[torch.randperm(len(index), generator=gen)]
        n_held = round(len(index) * fraction)
        held.append(index[:n_held])
        train.append(index[n_held:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def _indices_hash(index: Tensor) -> str:
    return hashlib.sha256(",".join(map(str, index.tolist())).encode()).hexdigest()


def held_out_data(record: dict) -> tuple[Tensor, Tensor]:
    """The held-out ``(images, labels)`` of the classifier whose JSON record is ``record``.

    The split is recomputed from the dataset and split settings the record names, and checked
    against the recorded hash of its indices (ValueError when the data changed).
    """
    split = record.get("split") or {}
    dataset = load_dataset(record["data"]["name"])
    _, held = holdout_split(dataset.labels, split["holdout"], split["seed"])
    if _indices_hash(held) != split.get("held_out_sha256"):
        raise ValueError(f"the held-out split of {record['data']['name']} no longer matches the recorded one "
                         "(the dataset changed)")
    return dataset.images[held], dataset.labels[held]


def _shift(images: Tensor, shift: int, gen: torch.Generator) -> Tensor:
    """Shift each image by a uniform integer in ``[-shift, shift]`` per axis, replicating its edges."""
    if shift <= 0:
        return images
    B, _, H, W = images.shape
    padded = F.pad(images, (shift,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, B), generator=gen)).to(images.device)
    rows = (dy[:, None] + torch.arange(H, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(W, device=images.device))[:, None, None, :]
    batch = torch.arange(B, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def sample_sigma(n: int, gen: torch.Generator, *, sigma_min: float = 0.002, sigma_max: float = 80.0,
                 P_mean: float = -1.2, P_std: float = 1.2, log_uniform: float = 0.5) -> Tensor:
    """``n`` training noise levels: log-uniform over ``[sigma_min, sigma_max]`` with probability
    ``log_uniform``, else EDM's lognormal ``exp(N(P_mean, P_std^2))`` clipped to that range."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    uniform = torch.rand(n, generator=gen) * (hi - lo) + lo
    normal = (torch.randn(n, generator=gen) * P_std + P_mean).clamp(lo, hi)
    pick = torch.rand(n, generator=gen) < log_uniform
    return torch.where(pick, uniform, normal).exp()


def _prepare_outdir(outdir: Path) -> None:
    """Create ``outdir`` and check that a file can be created in it (OutdirError naming it)."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=outdir, prefix=".edm-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutdirError(e.errno, f"cannot write to output folder {outdir}: {e.strerror or e}") from e


def _check(options: dict, dataset: Dataset) -> None:
    if dataset.labels is None or dataset.num_classes < 2:
        raise ValueError(f"dataset {dataset.name} has no class labels (a classifier needs 2 classes or more)")
    for key in ("steps", "batch"):
        if options[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {options[key]}")
    if not options["lr"] > 0 or options["warmup"] < 0:
        raise ValueError(f"lr must be > 0 and warmup >= 0, got {options['lr']} and {options['warmup']}")
    if not 0.0 <= options["ema_decay"] < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {options['ema_decay']}")
    if not 0.0 < options["sigma_min"] < options["sigma_max"]:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {options['sigma_min']} and "
                         f"{options['sigma_max']}")
    if not 0.0 <= options["log_uniform"] <= 1.0 or not options["P_std"] > 0:
        raise ValueError("log_uniform must lie in [0, 1] and P_std be > 0")
    if options["shift"] < 0:
        raise ValueError(f"shift must be >= 0, got {options['shift']}")


def _learning_rate(options: dict, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to zero at ``steps``."""
    warmup, steps = options["warmup"], options["steps"]
    if step < warmup:
        return options["lr"] * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return options["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------
# The loop


def train_classifier(
    data="digits",
    outdir=None,
    *,
    steps: int = 12000,
    batch: int = 128,
    lr: float = 2e-3,
    warmup: int = 200,
    ema_decay: float = 0.999,
    sigma_data: float | str = "auto",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    log_uniform: float = 0.5,
    shift: int = 0,
    holdout: float = 0.2,
    split_seed: int = 0,
    network_kwargs: dict | None = None,
    seed: int = 0,
    eval_sigmas=EVAL_SIGMAS,
    eval_draws: int = 5,
    device="cpu",
    progress: bool = True,
    command: str | None = None,
) -> ClassifierTrainResult:
    """Train a noise-aware classifier on ``data``; write ``outdir/classifier.*``; see the module doc.

    Args:
        data: ``"digits"``, an image folder with class subfolders, or a labelled ``.npz``.
        steps, batch, lr, warmup: optimizer steps, minibatch size, Adam learning rate, warm-up steps.
        ema_decay: per-step EMA decay of the saved weights (0: save the raw weights).
        sigma_data: the data's standard deviation for ``c_in`` (``"auto"``: measured, 3 decimals).
        sigma_min, sigma_max, P_mean, P_std, log_uniform: the noise levels (see :func:`sample_sigma`).
        shift: augmentation, random shifts of up to this many pixels (0: none).
        holdout, split_seed: the held-out fraction per class and the seed that picks it.
        network_kwargs: :class:`NoiseAwareClassifier` arguments besides shape, classes, sigma_data.
        seed: seeds initialisation, minibatches, shifts and noise.
        eval_sigmas, eval_draws: the held-out evaluation recorded in the JSON.
        command: the command line to record.
    """
    started = time.perf_counter()
    device = torch.device(device)
    if outdir is None:
        raise ValueError("outdir is required")
    options = {"data": str(data), "steps": int(steps), "batch": int(batch), "lr": float(lr),
               "warmup": int(warmup), "ema_decay": float(ema_decay), "sigma_min": float(sigma_min),
               "sigma_max": float(sigma_max), "P_mean": float(P_mean), "P_std": float(P_std),
               "log_uniform": float(log_uniform), "shift": int(shift), "seed": int(seed)}
    dataset = load_dataset(options["data"])
    _check(options, dataset)
    if sigma_data == "auto":
        sigma_data = round(dataset.std(), 3)
    if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
        raise ValueError(f"sigma_data must be > 0 or 'auto', got {sigma_data!r}")
    train_idx, held_idx = holdout_split(dataset.labels, holdout, split_seed)
    if len(train_idx) == 0:
        raise ValueError(f"holdout {holdout} leaves no training images")
    C, H, W = dataset.shape
    if H != W:
        raise ValueError(f"dataset {dataset.name} has {H}x{W} images; the classifier needs square images")
    kwargs = {"model_channels": 32, "channel_mult": [1, 2], "num_blocks": 1, "embedding": "positional"}
    kwargs.update({k: v for k, v in (network_kwargs or {}).items() if v is not None})
    kwargs.update({"in_channels": C, "resolution": H, "num_classes": dataset.num_classes,
                   "sigma_data": float(sigma_data), "sigma_min": options["sigma_min"]})
    kwargs["channel_mult"] = [int(m) for m in kwargs["channel_mult"]]
    outdir = Path(outdir)

    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(options["seed"])
        net = NoiseAwareClassifier(**kwargs).to(device).train()
        _prepare_outdir(outdir)  # after every check of the arguments, before any training step
        ema = copy.deepcopy(net).eval().requires_grad_(False)
        optimizer = torch.optim.Adam(net.parameters(), lr=options["lr"])
        gen = torch.Generator().manual_seed(options["seed"])
        images, labels = dataset.images[train_idx], dataset.labels[train_idx]
        batch = min(options["batch"], len(train_idx))
        recent: list[float] = []
        bar = _progress(progress, options["steps"])
        try:
            for step in range(options["steps"]):
                index = torch.randperm(len(images), generator=gen)[:batch]
                y = _shift(images[index], options["shift"], gen)
                sigma = sample_sigma(batch, gen, sigma_min=options["sigma_min"],
                                     sigma_max=options["sigma_max"], P_mean=options["P_mean"],
                                     P_std=options["P_std"], log_uniform=options["log_uniform"])
                x = y + sigma[:, None, None, None] * torch.randn(y.shape, generator=gen)
                loss = F.cross_entropy(net(x.to(device), sigma.to(device)), labels[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in optimizer.param_groups:
                    group["lr"] = _learning_rate(options, step)
                optimizer.step()
                with torch.no_grad():
                    for p_ema, p in zip(ema.parameters(), net.parameters()):
                        p_ema.lerp_(p.detach(), 1.0 - min(options["ema_decay"], step / (step + 10)))
                recent.append(float(loss.detach()))
                del recent[:-100]
                if bar is not None:
                    bar.update(1)
                    if (step + 1) % 10 == 0:
                        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        finally:
            if bar is not None:
                bar.close()
    train_seconds = time.perf_counter() - started
    accuracy = accuracy_at_sigma(ema, dataset.images[held_idx], dataset.labels[held_idx], eval_sigmas,
                                 draws=eval_draws) if len(held_idx) else {}
    loss_value = sum(recent) / len(recent) if recent else float("nan")
    record = {
        "network": {"name": "noise-aware-classifier", "kwargs": kwargs},
        "data": {"name": options["data"], "shape": [C, H, W], "num_classes": dataset.num_classes,
                 "class_names": dataset.class_names, "size": len(dataset), "std": round(dataset.std(), 6)},
        "split": {"method": SPLIT_METHOD, "holdout": float(holdout), "seed": int(split_seed),
                  "train": len(train_idx), "held_out": len(held_idx),
                  "held_out_sha256": _indices_hash(held_idx)},
        "training": {**{k: v for k, v in options.items() if k != "data"},
                     "optimizer": "Adam (betas 0.9, 0.999), linear warm-up then cosine decay to 0",
                     "sigma_distribution": "log-uniform over [sigma_min, sigma_max] with probability "
                                           "log_uniform, else exp(N(P_mean, P_std^2)) clipped to it",
                     "loss": loss_value, "seconds": round(train_seconds, 1),
                     "threads": torch.get_num_threads(), "device": str(device), "torch": torch.__version__,
                     "python": platform.python_version()},
        "command": command,
        "seed": options["seed"],
        "held_out_accuracy": {f"{s:g}": a for s, a in accuracy.items()},
        "evaluation": {"draws": int(eval_draws), "noise_seed": 0,
                       "what": "accuracy of the saved (EMA) weights on held-out y + sigma * n"},
    }
    path = outdir / CLASSIFIER_NAME
    try:
        save_classifier(path, ema, record)
    except OSError as e:
        raise OutdirError(e.errno, f"cannot save the classifier in {outdir}: {e.strerror or e}") from e
    return ClassifierTrainResult(options["steps"], loss_value, path, accuracy, time.perf_counter() - started)


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="step", mininterval=5.0, dynamic_ncols=True)
