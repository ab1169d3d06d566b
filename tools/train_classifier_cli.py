"""``edm train-classifier``: train a noise-aware classifier (for classifier guidance) on labelled data.

The click command :data:`train_classifier` is registered on the ``edm`` group in ``tools/cli.py``; it
also runs alone as ``python -m tools.train_classifier_cli``. The recipe is
:func:`edm.train_classifier.train_classifier`'s; the command recorded in the classifier's JSON is the
canonical ``edm train-classifier`` line with every option spelled out, so it reproduces the run.
"""

from __future__ import annotations

import click

from tools.common import BadInput, check_writable_dir, one_line, spelled_out
from tools.options import channel_mult_value, sigma_data_value, training_data_value, usage_error

__all__ = ["train_classifier", "canonical_command"]

COMMAND = ("edm", "train-classifier")


def _even(ctx, param, value):
    if value % 2:
        raise click.BadParameter(f"must be even (the noise features come in cos/sin pairs), got {value}")
    return value


def canonical_command(params: dict) -> str:
    """``edm train-classifier`` with every option of ``params`` spelled out (None-valued ones left out)."""
    return spelled_out(COMMAND, params)


@click.command("train-classifier")
@click.option("--data", default="digits", show_default=True, callback=training_data_value,
              help="'digits' (scikit-learn 8x8 digits), a folder of images in class subfolders, or a "
                   "labelled .npz.")
@click.option("--outdir", type=click.Path(file_okay=False), required=True,
              help="Where to write classifier.safetensors + classifier.json.")
@click.option("--steps", type=click.IntRange(min=1), default=12000, show_default=True, help="Training steps.")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True, help="Batch size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True,
              help="Adam learning rate (linear warm-up, then cosine decay to 0).")
@click.option("--warmup", type=click.IntRange(min=0), default=200, show_default=True,
              help="Learning-rate warm-up, in steps.")
@click.option("--ema", type=click.FloatRange(min=0, max=1, max_open=True), default=0.999, show_default=True,
              help="Per-step EMA decay of the saved weights (0: the raw weights).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of initialisation, minibatches, augmentation and noise.")
@click.option("--channels", type=click.IntRange(min=2), default=32, show_default=True, callback=_even,
              help="Channels at the first resolution (even).")
@click.option("--channel-mult", default="1,2", show_default=True, callback=channel_mult_value,
              help="Channel multiplier per resolution level (each after the first halves the "
                   "size), comma-separated.")
@click.option("--blocks", type=click.IntRange(min=1), default=1, show_default=True,
              help="Residual blocks per resolution level.")
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Dropout in the residual blocks.")
@click.option("--holdout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.2, show_default=True,
              help="Fraction of each class held out (never trained on) for the recorded accuracy.")
@click.option("--split-seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed that picks the held-out images (independent of --seed).")
@click.option("--sigma-data", default="auto", show_default=True, callback=sigma_data_value,
              help="Data standard deviation for c_in, or 'auto' to measure it (0.752 for digits).")
@click.option("--log-uniform", type=click.FloatRange(min=0, max=1), default=0.5, show_default=True,
              help="Share of training sigmas drawn log-uniformly over [0.002, 80]; the rest are EDM's "
                   "lognormal (--p-mean, --p-std).")
@click.option("--p-mean", type=float, default=-1.2, show_default=True,
              help="Mean of ln(sigma) (lognormal part).")
@click.option("--p-std", type=click.FloatRange(min=0, min_open=True), default=1.2, show_default=True,
              help="Standard deviation of ln(sigma) (lognormal part).")
@click.option("--shift", type=click.IntRange(min=0), default=0, show_default=True,
              help="Augmentation: random shifts of up to this many pixels per axis (0: none).")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (1 is often fastest for this small network) "
                   "[default: torch's choice].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train_classifier(**params):
    """Train a noise-aware classifier p(class | x; sigma) for classifier guidance; write it to --outdir.

    The noisy input x = y + sigma * n is preconditioned as in EDM (c_in, c_noise = ln(sigma) / 4).
    The classifier loads by its path (or the run directory) wherever a classifier is asked for.
    Bad options and an --outdir that cannot be written (checked before training) exit with status 2;
    a failed write at the end (disk full) exits with status 1 and leaves no partial file.
    """
    import torch

    from edm.train_classifier import train_classifier as run_training
    from tools.device import resolve_device

    try:
        device = resolve_device(params["device"])
        check_writable_dir(params["outdir"], "outdir")
    except BadInput as e:
        raise usage_error(e) from None
    if params["threads"] is not None:
        torch.set_num_threads(params["threads"])
    order = [p.name for p in click.get_current_context().command.params]  # as declared, not as given
    recorded = {k: params[k] for k in order if k != "progress"}
    network_kwargs = {"model_channels": params["channels"], "channel_mult": params["channel_mult"],
                      "num_blocks": params["blocks"], "dropout": params["dropout"]}
    try:
        result = run_training(
            params["data"], params["outdir"], steps=params["steps"], batch=params["batch"], lr=params["lr"],
            warmup=params["warmup"], ema_decay=params["ema"], sigma_data=params["sigma_data"],
            P_mean=params["p_mean"], P_std=params["p_std"], log_uniform=params["log_uniform"],
            shift=params["shift"], holdout=params["holdout"], split_seed=params["split_seed"],
            network_kwargs=network_kwargs, seed=params["seed"], device=device,
            progress=params["progress"], command=canonical_command(recorded),
        )
    except ValueError as e:  # bad data (no labels, ...) or option combinations: exit 2
        raise click.UsageError(one_line(e)) from None
    except OSError as e:  # the write failed after training (disk full): exit 1
        raise click.ClickException(one_line(e)) from None
    accuracy = ", ".join(f"{s:g}: {a:.3f}" for s, a in result.held_out_accuracy.items())
    click.echo(f"trained {result.step} steps in {result.seconds:.1f} s, loss {result.loss:.4f}; "
               f"classifier {result.path}.json; held-out accuracy by sigma {{{accuracy}}}")


if __name__ == "__main__":  # pragma: no cover
    train_classifier()
