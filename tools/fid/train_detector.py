"""Train the ``digits`` FID detector: a small CNN classifier on scikit-learn's 8x8 digits.

``train_digits_detector(seed=..., epochs=..., out=...)`` trains on a fixed 80% split (the same split
for every seed, stratified by class), reports accuracy on the other 20%, and writes
``OUT.safetensors`` + ``OUT.json`` atomically (JSON last). The images are first turned into uint8
exactly as the generator writes its samples (``x * 127.5 + 128``, clipped; ``tools.images.to_uint8``)
and then preprocessed by the detector itself, so real and generated digits are treated identically.
Augmentation: random shifts by at most one pixel (background filled with 0). The run is reproducible
for a fixed seed on CPU.

The click command :data:`train_detector` is registered as ``edm fid train-detector``; it also runs
alone as ``python -m tools.fid.train_detector``.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path

import click
import torch
from torch.nn import functional as F

from .detectors import DIGITS_FORMAT, DigitsNet, digits_paths, digits_preprocess

__all__ = ["train_digits_detector", "train_detector", "digits_uint8", "digits_split", "SPLIT_SEED"]

SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.2
DEFAULTS = dict(epochs=60, batch=64, lr=2e-3, weight_decay=1e-4, channels=32, features=64)


def digits_uint8() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 scikit-learn digits as uint8 ``[N, 1, 8, 8]`` (via the generator's mapping) and labels."""
    from edm.data import load_digits
    from tools.images import to_uint8

    data = load_digits()
    images = torch.from_numpy(to_uint8(data.images)).permute(0, 3, 1, 2).contiguous()
    return images, data.labels


def digits_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed ``(train, held_out)`` index split: per class, a seeded 20% is held out."""
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    train, held = [], []
    for c in range(int(labels.max()) + 1):
        index = torch.nonzero(labels == c).flatten()
        index = index[torch.randperm(len(index), generator=gen)]
        n_held = round(len(index) * HELD_OUT_FRACTION)
        held.append(index[:n_held])
        train.append(index[n_held:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each uint8 image by -1, 0 or +1 pixel along each axis, filling with 0 (background)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (b,), generator=gen)
    dx = torch.randint(0, 3, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None].expand(b, 1, h, w + 2)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :].expand(b, 1, h, w)
    return out.gather(3, cols)


@torch.no_grad()
def _accuracy(net, images, labels, device) -> float:
    net.eval()
    logits = net(digits_preprocess(images.to(device)))
    return float((logits.argmax(1).cpu() == labels).float().mean())


def train_digits_detector(
    *,
    seed: int = 0,
    epochs: int = DEFAULTS["epochs"],
    out=None,
    device="cpu",
    limit: int | None = None,
    command: str | None = None,
    log=None,
) -> dict:
    """Train the digits detector; write ``out`` (``.safetensors`` + ``.json``) when given; return the record.

    ``limit`` keeps only the first ``limit`` training images (for quick tests); the held-out split is
    always the full 20%.
    """
    from safetensors.torch import save_file

    from edm.checkpoint import atomic_write

    device = torch.device(device)
    images, labels = digits_uint8()
    train_idx, held_idx = digits_split(labels)
    if limit is not None:
        train_idx = train_idx[:limit]
    x_train, y_train = images[train_idx], labels[train_idx]
    x_held, y_held = images[held_idx], labels[held_idx]

    torch.manual_seed(seed)  # weight initialisation
    net = DigitsNet(DEFAULTS["channels"], DEFAULTS["features"]).to(device)
    gen = torch.Generator().manual_seed(seed)  # order and augmentation, on CPU for every device
    opt = torch.optim.AdamW(net.parameters(), lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"])
    steps_per_epoch = -(-len(train_idx) // DEFAULTS["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=DEFAULTS["lr"], total_steps=epochs * steps_per_epoch, pct_start=0.2
    )
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(train_idx), generator=gen)
        total = 0.0
        for i in range(0, len(order), DEFAULTS["batch"]):
            batch = order[i : i + DEFAULTS["batch"]]
            x = digits_preprocess(_shift(x_train[batch], gen)).to(device)
            loss = F.cross_entropy(net(x), y_train[batch].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}  loss {total / len(order):.4f}")
    wall = time.perf_counter() - start
    net = net.cpu().eval()
    record = {
        "format": DIGITS_FORMAT,
        "detector": "digits",
        "network": {
            "name": "DigitsNet",
            "kwargs": {"channels": DEFAULTS["channels"], "features": DEFAULTS["features"]},
        },
        "preprocessing": "uint8 [B, 1, 8, 8] -> x / 127.5 - 1; features: penultimate layer after ReLU",
        "data": {
            "name": "sklearn digits",
            "uint8": "digits / 8 - 1 in [-1, 1], then x * 127.5 + 128 clipped (tools.images.to_uint8)",
            "split": f"stratified per class, seed {SPLIT_SEED}, {HELD_OUT_FRACTION:.0%} held out",
            "train": len(train_idx),
            "held_out": len(held_idx),
        },
        "training": {**DEFAULTS, "seed": seed, "epochs": epochs, "limit": limit,
                     "augment": "random shift by -1..1 px per axis"},
        "train_accuracy": _accuracy(net, x_train, y_train, "cpu"),
        "held_out_accuracy": _accuracy(net, x_held, y_held, "cpu"),
        "wall_s": round(wall, 2),
        "device": str(device),
        "parameters": sum(p.numel() for p in net.parameters()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if command is not None:
        record["command"] = command
    if out is not None:
        tensors, config = digits_paths(out)
        tensors.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
        atomic_write(tensors, lambda tmp: save_file(state, tmp))
        atomic_write(config, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2) + "\n"))
        record["files"] = [str(tensors), str(config)]
    return record


def _device(ctx, param, value):
    from tools.common import BadInput
    from tools.device import resolve_device

    try:
        return str(resolve_device(value))
    except BadInput as e:
        raise click.BadParameter(str(e)) from None


@click.command("train-detector")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output NAME: writes NAME.safetensors and NAME.json (e.g. tools/fid/weights/digits).")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Seed of initialisation, order, augmentation.")
@click.option("--epochs", default=DEFAULTS["epochs"], show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu or cuda[:N].")
@click.option("--limit", default=None, type=click.IntRange(min=1),
              help="Use only the first N training images (quick checks); the held-out 20% stays whole.")
def train_detector(out, seed, epochs, device, limit):
    """Train the `digits` FID detector (small CNN on scikit-learn's 8x8 digits) and write its weights."""
    words = ["edm", "fid", "train-detector", "--out", out, "--seed", str(seed), "--epochs", str(epochs),
             "--device", device]
    if limit is not None:
        words += ["--limit", str(limit)]
    record = train_digits_detector(
        seed=seed, epochs=epochs, out=out, device=device, limit=limit,
        command=shlex.join(words), log=lambda line: click.echo(line, err=True),
    )
    click.echo(
        f"held-out accuracy {record['held_out_accuracy']:.4f} ({record['data']['held_out']} images), "
        f"train {record['train_accuracy']:.4f}, {record['wall_s']:.1f} s; wrote {', '.join(record['files'])}"
    )


if __name__ == "__main__":  # pragma: no cover
    train_detector()
