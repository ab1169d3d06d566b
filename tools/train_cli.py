"""``edm train``: train a UNet (or, with ``--arch dit``, a Diffusion Transformer) with EDM's loss (or,
with ``--objective``, DDPM's, v-prediction's on the cosine schedule or a sigmoid-weighted one; see
:mod:`edm.objectives`) on ``digits``, an image folder or a ``.npz``/``.npy`` file.

The click command object :data:`train` is registered on the ``edm`` group in ``tools/cli.py``; it
also runs alone as ``python -m tools.train_cli``. The command recorded in the checkpoint is the
canonical ``edm train`` line with every option spelled out, so it reproduces the run exactly.
"""

from __future__ import annotations

import click

from tools.common import BadInput, one_line, spelled_out
from tools.options import (
    channel_mult_value,
    optimizer_flags,
    sigma_data_value,
    training_data_value,
    usage_error,
)

__all__ = ["train", "canonical_command", "ARCH_FLAGS", "OBJECTIVE_FLAGS"]

#: the conditioning kinds of ``--cond`` (``edm.conditions.KINDS``, spelled out to keep torch out of --help)
COND_KINDS = ("none", "class", "text", "low-res")

#: the flags of --cond low-res (super-resolution) alone
LOW_RES_FLAGS = ("factor", "noise_aug_max", "noise_aug_min", "noise_aug_zero")
#: edm.conditions.NoiseAugmentation's arguments and the --noise-aug-* flags that give them
_NOISE_AUG_FLAGS = (("high", "max"), ("low", "min"), ("zero", "zero"))

#: the size flags of each ``--arch``; another architecture's flags are refused, not silently ignored
ARCH_FLAGS = {"unet": ("channels", "channel_mult", "blocks", "attn", "dropout"),
              "dit": ("patch", "depth", "width", "heads")}

#: the flags of each ``--objective`` (the edm.objectives registry); a flag only other objectives take is
#: refused, not silently ignored
OBJECTIVE_FLAGS = {"edm": ("sigma_data", "p_mean", "p_std"),
                   "ddpm": ("timesteps", "beta_start", "beta_end"),
                   "v-cosine": ("sigma_data",),
                   "sigmoid": ("sigma_data", "sigmoid_bias")}

#: objective flag -> the objective's parameter it gives (sigma_data, p_mean, p_std are run options)
_OBJECTIVE_PARAMS = {"timesteps": "timesteps", "beta_start": "beta_start", "beta_end": "beta_end",
                     "sigmoid_bias": "bias"}


def canonical_command(params: dict) -> str:
    """``edm train`` with every option of ``params`` spelled out (None-valued ones left out)."""
    return spelled_out(("edm", "train"), params)


#: the datasets loadable by name (``edm.data.named_datasets()``, spelled out to keep torch out of --help)
DATA_NAMES = ("digits", "digits-4x4-held-out", "digits-4x4-train", "digits-held-out", "digits-text",
              "digits-train")


def _data_value(ctx, param, value):
    """``--data``: a named dataset, else as :func:`tools.options.training_data_value`."""
    return value if value in DATA_NAMES else training_data_value(ctx, param, value)


@click.command("train")
@click.option("--data", default="digits", show_default=True, callback=_data_value,
              help="'digits' (scikit-learn 8x8 digits; 'digits-train' its first 1400 images, "
                   "'digits-held-out' the other 397; 'digits-4x4-train' / 'digits-4x4-held-out' the same "
                   "pooled to 4x4), "
                   "'digits-text' (strings of 1-5 digits rendered in 8x40), a folder of images, or a "
                   ".npz/.npy uint8 array.")
@click.option("--cond", type=click.Choice(COND_KINDS), default=None,
              help="Conditioning: none, class (labelled data), text (text data), or low-res (super-"
                   "resolution: the images pooled --factor times) [default: text for text data, class for "
                   "labelled data, else none].")
@click.option("--factor", type=click.IntRange(min=2), default=None,
              help="--cond low-res: the upsampling factor; the model sees each image average-pooled this "
                   "many times (e.g. 8x8 -> 4x4 for 2) and generates the full-size image.")
@click.option("--noise-aug-max", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--cond low-res: the highest noise level sigma_aug the low-resolution input is augmented "
                   "with in training (log-uniform from --noise-aug-min)  [default: 1].")
@click.option("--noise-aug-min", type=click.FloatRange(min=0, min_open=True), default=None,
              help="--cond low-res: the lowest non-zero sigma_aug in training  [default: 0.01].")
@click.option("--noise-aug-zero", type=click.FloatRange(min=0, max=1), default=None,
              help="--cond low-res: the probability of a clean (sigma_aug = 0) input in training  "
                   "[default: 0.25].")
@click.option("--outdir", type=click.Path(file_okay=False), default=None,
              help="Run directory for checkpoints [required unless --resume].")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps [default: 10000].")
@click.option("--kimg", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training length in thousands of images (instead of --steps).")
@optimizer_flags(batch=128, lr=1e-3, warmup=200)
@click.option("--arch", type=click.Choice(sorted(ARCH_FLAGS)), default="unet", show_default=True,
              help="Backbone: the EDM/ADM-style UNet or a Diffusion Transformer (DiT).")
@click.option("--channels", type=click.IntRange(min=1), default=64, show_default=True,
              help="UNet channels at the first resolution.")
@click.option("--channel-mult", default="1,2", show_default=True, callback=channel_mult_value,
              help="Channel multiplier per resolution level, comma-separated.")
@click.option("--blocks", type=click.IntRange(min=1), default=2, show_default=True,
              help="Residual blocks per resolution level.")
@click.option("--attn", default=None,
              help="Resolutions with self-attention, comma-separated, among the UNet's: the data "
                   "resolution halved at each level after the first (8x8 data, --channel-mult 1,2: 8 and 4) "
                   "[default: the lowest if <= 16].")
@click.option("--patch", type=click.IntRange(min=1), default=None,
              help="DiT patch size; must divide the image size [default: 2].")
@click.option("--depth", type=click.IntRange(min=1), default=None,
              help="DiT transformer blocks [default: 4].")
@click.option("--width", type=click.IntRange(min=4), default=None,
              help="DiT token channels, divisible by 4 and by --heads [default: 128].")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="DiT attention heads [default: 4].")
@click.option("--label-dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.1,
              show_default=True, help="Probability of dropping the class label (for unconditional/CFG use).")
@click.option("--dropout", type=click.FloatRange(min=0, max=1, max_open=True), default=0.0, show_default=True,
              help="Dropout in the UNet's residual blocks.")
@click.option("--sigma-data", default="0.5", show_default=True, callback=sigma_data_value,
              help="Data standard deviation for the preconditioning, or 'auto' to measure it "
                   "(not --objective ddpm, whose scaling fixes it to 1).")
@click.option("--objective", type=click.Choice(list(OBJECTIVE_FLAGS)), default="edm", show_default=True,
              help="Training objective: EDM's loss, DDPM's eps-loss on discrete timesteps (linear betas), "
                   "v-prediction on the cosine logSNR schedule, or the sigmoid-weighted eps-loss of Kingma "
                   "& Gao (2023) on the cosine schedule.")
@click.option("--p-mean", type=float, default=-1.2, show_default=True,
              help="Mean of ln(sigma) in training (--objective edm).")
@click.option("--p-std", type=click.FloatRange(min=0, min_open=True), default=1.2, show_default=True,
              help="Standard deviation of ln(sigma) in training (--objective edm).")
@click.option("--timesteps", type=click.IntRange(min=2), default=1000, show_default=True,
              help="Number of discrete timesteps T (--objective ddpm).")
@click.option("--beta-start", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=1e-4,
              show_default=True, help="beta at t = 0 of the linear schedule (--objective ddpm).")
@click.option("--beta-end", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=0.02,
              show_default=True, help="beta at t = T-1 of the linear schedule (--objective ddpm).")
@click.option("--sigmoid-bias", type=float, default=2.0, show_default=True,
              help="b of the weighting sigmoid(b - logSNR) (--objective sigmoid).")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=None,
              help="Also write checkpoints every this many steps (always at the end).")
@click.option("--resume", type=click.Path(exists=True), default=None,
              help="Continue the run saved in this directory (or its training-state.json); "
                   "the saved hyperparameters apply.")
@click.option("--device", default="cpu", show_default=True, help="Torch device, e.g. cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (1 is fastest on a busy machine) [default: torch's choice].")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
def train(**params):
    """Train an EDM UNet or DiT; write checkpoints to --outdir.

    Conditioning (--cond) defaults from the data: text for a text dataset (digits-text: the network takes
    the string through a small text encoder trained with it; --label-dropout drops the text to the null
    text, for classifier-free guidance), class for a labelled one, else none; --cond none trains an
    unconditional model on labelled data, and a kind the data cannot give is a usage error.

    Bad options exit with status 2; an --outdir that cannot be created or written (checked before
    training starts) or a failed checkpoint write (disk full) exits with status 1, leaving the
    previous checkpoint, if any, intact.
    """
    import torch

    from edm.train import train as run_training
    from tools.device import resolve_device
    from tools.ranks import Ranks

    if params["outdir"] is None and params["resume"] is None:
        raise click.UsageError("--outdir is required (unless --resume is given)")
    if params["steps"] is not None and params["kimg"] is not None:
        raise click.UsageError("give --steps or --kimg, not both")
    if params["steps"] is None and params["kimg"] is None and params["resume"] is None:
        params["steps"] = 10000
    try:
        device = resolve_device(params["device"])
    except BadInput as e:
        raise usage_error(e) from None
    if params["threads"] is not None:
        torch.set_num_threads(params["threads"])
    attn = None
    if params["attn"] is not None:
        try:
            attn = [int(v) for v in params["attn"].split(",") if v.strip()]
        except ValueError:
            raise click.BadParameter(f"expected comma-separated resolutions, got {params['attn']!r}",
                                     param_hint="--attn") from None

    _refuse_flags_of_others(params, "arch", ARCH_FLAGS, "sizes the --arch {other} network")
    ctx = click.get_current_context()
    if params["cond"] != "low-res":
        for name in LOW_RES_FLAGS:
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
                raise click.UsageError(f"--{name.replace('_', '-')} belongs to --cond low-res "
                                       "(super-resolution)")
    elif params["factor"] is None and params["resume"] is None:
        raise click.UsageError("--cond low-res needs --factor F (the images are pooled F times)")
    noise_aug = {key: params[f"noise_aug_{flag}"] for key, flag in _NOISE_AUG_FLAGS
                 if params[f"noise_aug_{flag}"] is not None}
    _refuse_flags_of_others(params, "objective", OBJECTIVE_FLAGS, "belongs to --objective {other}")
    recorded = {k: v for k, v in params.items() if k != "progress"}
    # the other architectures' and objectives' defaults are no part of the recipe
    recorded.update(dict.fromkeys(_flags_of_others(ARCH_FLAGS, params["arch"])))
    recorded.update(dict.fromkeys(_flags_of_others(OBJECTIVE_FLAGS, params["objective"])))
    network_kwargs = _network_kwargs(params, attn)
    objective_options = {_OBJECTIVE_PARAMS[name]: params[name]
                         for name in OBJECTIVE_FLAGS[params["objective"]] if name in _OBJECTIVE_PARAMS}
    ranks = Ranks().start(device)  # under torchrun: data-parallel over the processes
    try:
        with ranks:
            result = run_training(
                params["data"], params["outdir"], steps=params["steps"], kimg=params["kimg"],
                batch=params["batch"], lr=params["lr"], warmup=params["warmup"],
                ema_halflife_kimg=params["ema"], P_mean=params["p_mean"], P_std=params["p_std"],
                sigma_data=params["sigma_data"], network=params["arch"], network_kwargs=network_kwargs,
                cond=params["cond"], seed=params["seed"], checkpoint_every=params["checkpoint_every"],
                resume=params["resume"], device=device, progress=params["progress"],
                command=canonical_command(recorded), objective=params["objective"],
                objective_options=objective_options, factor=params["factor"], noise_aug=noise_aug or None,
            )
    except ValueError as e:  # bad arguments, data or network options (e.g. --attn): exit 2
        # the DiT's size arguments as the flags that gave them (patch_size 3 -> --patch 3)
        terms = DIT_TERMS if params["arch"] == "dit" else ()
        raise usage_error(BadInput(one_line(e), terms=terms), typed={"patch_size": "--patch"}) from None
    except OSError as e:  # --outdir not creatable or writable, disk full while saving: exit 1
        raise click.ClickException(one_line(e)) from None
    if ranks.rank != 0:
        return
    click.echo(f"trained {result.step} steps in {result.seconds:.1f} s, loss {result.loss:.4f}; "
               f"model {result.checkpoint}.json, state {result.state}")


#: the DiT arguments its errors name, each given by a flag of edm train
DIT_TERMS = ("patch_size", "depth", "width", "heads")


def _flags_of_others(table: dict, chosen: str) -> dict[str, str]:
    """``{flag name: the first other choice that takes it}`` for the flags of ``table`` (choice -> flag
    names) that the ``chosen`` one does not take."""
    others: dict[str, str] = {}
    for other, flags in table.items():
        for name in flags:
            if name not in table[chosen]:
                others.setdefault(name, other)
    return others


def _refuse_flags_of_others(params: dict, option: str, table: dict, role: str) -> None:
    """A usage error naming the first flag given on the command line that only other choices of
    ``--option`` take (``table``: choice -> flag names); ``role`` says what it does, ``{other}`` being
    the choice it belongs to."""
    ctx = click.get_current_context()
    for name, other in _flags_of_others(table, params[option]).items():
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} {role.format(other=other)}; it does not apply to "
                                   f"--{option} {params[option]}")


def _network_kwargs(params: dict, attn) -> dict:
    """The network's arguments from the flags (channels, resolution and classes come from the data)."""
    if params["arch"] == "dit":
        return {"patch_size": params["patch"], "depth": params["depth"], "width": params["width"],
                "heads": params["heads"], "label_dropout": params["label_dropout"]}
    kwargs = {"model_channels": params["channels"], "channel_mult": params["channel_mult"],
              "num_blocks": params["blocks"], "label_dropout": params["label_dropout"],
              "dropout": params["dropout"]}
    if attn is not None:
        kwargs["attn_resolutions"] = attn
    return kwargs


if __name__ == "__main__":  # pragma: no cover
    train()
