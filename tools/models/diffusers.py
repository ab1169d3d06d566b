"""diffusers models: a ``UNet2DModel`` and its scheduler saved with ``save_pretrained`` (``diffusers:DIR``),
wrapped in :class:`edm.DiscreteTimeDenoiser` with the scheduler's ``alphas_cumprod``.

The scheduler's x0 thresholding (``clip_sample`` / ``thresholding``, where its class applies them) becomes
``LoadedModel.threshold``, so the model samples as it was meant to with any sampler, not only diffusers'.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from tools.common import one_line

from .base import LabelledDenoiser, LoadedModel, ModelError, parameter_count

__all__ = ["APPLIED", "DIFFUSERS_PREDICTIONS", "HONOURED", "PREFIX", "SCHEDULE_SETTINGS", "DiffusersBackbone",
           "claims", "load", "load_diffusers", "read_json", "scheduler_of", "scheduler_settings",
           "terminal_clamped", "x0_thresholding"]

PREFIX = "diffusers:"

#: diffusers prediction_type -> ours
DIFFUSERS_PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def _diffusers_dirs(root: Path) -> tuple[Path, Path, str]:
    """``(unet_dir, scheduler_config_file, layout)`` of a saved pipeline or a flat directory."""
    if (root / "unet" / "config.json").is_file():
        unet_dir = root / "unet"
        scheduler = root / "scheduler" / "scheduler_config.json"
        layout = "pipeline"
    elif (root / "config.json").is_file():
        unet_dir = root
        scheduler = root / "scheduler_config.json"
        if not scheduler.is_file() and (root / "scheduler" / "scheduler_config.json").is_file():
            scheduler = root / "scheduler" / "scheduler_config.json"
        layout = "flat"
    else:
        raise ModelError(f"{root} holds no diffusers UNet: expected {root}/unet/config.json "
                         f"or {root}/config.json (save it with save_pretrained)")
    if not scheduler.is_file():
        raise ModelError(f"{root} holds no scheduler config: expected {scheduler} "
                         "(save the scheduler with save_pretrained beside the UNet)")
    return unet_dir, scheduler, layout


def read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"corrupt JSON {path}: {one_line(e)}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    return config


def scheduler_of(scheduler_config: dict, path: Path) -> tuple[Tensor, dict, str | None]:
    """``(alphas_cumprod, settings, class name)`` of the saved scheduler.

    ``settings`` is the config as diffusers' class applies it, defaults filled in (a DDPMScheduler saved
    without ``clip_sample`` clips all the same) and settings the class does not take dropped, as diffusers
    drops them. The class name is None when this diffusers has no such class: the settings are then the
    file's as written, and the alphas those of a DDPMScheduler with that config.
    """
    import diffusers

    name = scheduler_config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    known = cls is not None and hasattr(cls, "from_config")
    try:
        scheduler = (cls if known else diffusers.DDPMScheduler).from_config(scheduler_config)
        settings = dict(scheduler.config) if known else dict(scheduler_config)
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None:
            abar = diffusers.DDPMScheduler.from_config(scheduler_config).alphas_cumprod
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot build the scheduler of {path}: {one_line(e)}") from None
    return torch.as_tensor(abar, dtype=torch.float64), settings, name if known else None


#: The x0 settings each diffusers scheduler's step really applies, as read in diffusers' source (0.42):
#: TCDScheduler and the CogVideoX schedulers take clip_sample / thresholding but never use them, and
#: UniPCMultistepScheduler thresholds only with predict_x0 (its default). ``Thresholded`` around the
#: denoiser reproduces each, since each thresholds the model's x0 prediction at every evaluation (DDIM
#: keeps the network's own epsilon for its direction term, and so does the ``ddim`` sampler).
APPLIED = {
    "DDPMScheduler": ("clip_sample", "thresholding"),
    "DDPMParallelScheduler": ("clip_sample", "thresholding"),
    "DDIMScheduler": ("clip_sample", "thresholding"),
    "DDIMParallelScheduler": ("clip_sample", "thresholding"),
    "DDIMInverseScheduler": ("clip_sample",),
    "LCMScheduler": ("clip_sample", "thresholding"),
    "HeunDiscreteScheduler": ("clip_sample",),
    "RePaintScheduler": ("clip_sample",),
    "UnCLIPScheduler": ("clip_sample",),
    "DPMSolverMultistepScheduler": ("thresholding",),
    "DPMSolverMultistepInverseScheduler": ("thresholding",),
    "DPMSolverSinglestepScheduler": ("thresholding",),
    "DEISMultistepScheduler": ("thresholding",),
    "SASolverScheduler": ("thresholding",),
    "UniPCMultistepScheduler": ("thresholding",),
    "EDMDPMSolverMultistepScheduler": ("thresholding",),
    "HeliosScheduler": ("thresholding",),
    "TCDScheduler": (),
    "CogVideoXDDIMScheduler": (),
    "CogVideoXDPMScheduler": (),
}

#: scheduler settings the loaded denoiser honours, and how
HONOURED = {
    "prediction_type": "the denoiser's prediction type",
    "num_train_timesteps": "the timestep table",
    "beta_schedule": "the timestep table (alphas_cumprod of the scheduler class)",
    "beta_start": "the timestep table",
    "beta_end": "the timestep table",
    "trained_betas": "the timestep table",
    "rescale_betas_zero_snr": "the timestep table (a zero terminal alphas_cumprod is stored as 2**-24, as "
                              "diffusers' Euler / DPM-Solver / UniPC schedulers store it)",
    "clip_sample": "x0 thresholding (see x0 thresholding)",
    "clip_sample_range": "x0 thresholding",
    "thresholding": "x0 thresholding (see x0 thresholding)",
    "dynamic_thresholding_ratio": "x0 thresholding",
    "sample_max_value": "x0 thresholding",
}

#: settings of the scheduler's own timesteps: honoured by ``--schedule diffusers``
#: (``tools.schedules.diffusers``, which builds the scheduler from this config), unused otherwise
SCHEDULE_SETTINGS = (
    "timestep_spacing", "steps_offset", "set_alpha_to_one", "use_karras_sigmas", "use_exponential_sigmas",
    "use_beta_sigmas", "final_sigmas_type", "interpolation_type", "lambda_min_clipped", "shift",
    "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len",
    "time_shift_type", "shift_terminal", "flow_shift", "use_flow_sigmas",
)

def _setting_ignored(key: str, value) -> str | None:
    """Why a setting with this value cannot be honoured, or None."""
    if key == "timestep_type" and value == "continuous":
        return ("timestep_type='continuous' (the network is conditioned on 0.25 log sigma, "
                "not on DDPM timesteps)")
    if key == "variance_type" and value in ("learned", "learned_range"):
        return f"variance_type={value!r} (the network's learned variance is not used)"
    return None


def scheduler_settings(settings: dict, written: dict) -> tuple[dict, list[str]]:
    """``(honoured, ignored)`` of a scheduler config: ``honoured`` maps each setting present in the file
    (``written``) to how it is honoured; ``ignored`` has one line per setting whose value changes what the
    network computes and that the denoiser cannot honour. The other settings are the solver's own choices
    (order, algorithm, noise), which the sampler one picks replaces, or settings the class does not take,
    which diffusers drops too."""
    honoured, ignored = {}, []
    for key in written:
        if key.startswith("_"):  # _class_name, _diffusers_version, _use_default_values
            continue
        value = settings.get(key, written[key])
        why = _setting_ignored(key, value)
        if why:
            ignored.append(why)
        elif key in HONOURED:
            honoured[key] = HONOURED[key]
        elif key in SCHEDULE_SETTINGS:
            honoured[key] = "with --schedule diffusers (the scheduler's own timesteps)"
    return honoured, ignored


#: in diffusers' order of precedence: with both on, thresholding is applied and clip_sample is not
X0_SETTINGS = ("thresholding", "clip_sample")


def _number(settings: dict, key: str, default: float) -> float | None:
    value = settings.get(key, default)
    return None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)


def _threshold_of(setting: str, settings: dict, scheduler: str) -> tuple[dict | None, str]:
    """``(Thresholded keyword arguments, description)`` of one applied setting, or ``(None, why not)``."""
    if setting == "clip_sample":
        limit = _number(settings, "clip_sample_range", 1.0)
        if limit is None or not limit > 0:
            return None, f"clip_sample_range={settings.get('clip_sample_range')!r} is not a positive number"
        return ({"kind": "static", "limit": limit},
                f"static clip to [-{limit:g}, {limit:g}] ({scheduler} clip_sample=True)")
    percentile = _number(settings, "dynamic_thresholding_ratio", 0.995)
    max_value = _number(settings, "sample_max_value", 1.0)
    if percentile is None or not 0 < percentile <= 1:
        ratio = settings.get("dynamic_thresholding_ratio")
        return None, f"dynamic_thresholding_ratio={ratio!r} is not in (0, 1]"
    if max_value is None or not max_value >= 1:
        # diffusers' clamp(s, min=1, max=m) with m < 1 gives s = m, a scale below 1 Thresholded does not take
        return None, f"sample_max_value={settings.get('sample_max_value')!r} is not a number >= 1"
    if max_value == 1:  # s = clamp(quantile, 1, 1) = 1
        what = f"static clip to [-1, 1] ({scheduler} thresholding=True with sample_max_value=1)"
    else:
        what = (f"dynamic: s = the {percentile:g} quantile of |x0| per sample clamped to [1, {max_value:g}], "
                f"clip to [-s, s] and divide by s ({scheduler} thresholding=True)")
    return {"kind": "dynamic", "percentile": percentile, "max_value": max_value}, what


def x0_thresholding(settings: dict, scheduler: str | None) -> tuple[dict | None, str, list[str]]:
    """What the scheduler does to the predicted x0: ``(Thresholded keyword arguments or None, one line
    for ``edm info``, the settings that are on but not honoured)``.

    Only what the scheduler class applies counts (``APPLIED``), thresholding over clip_sample as in
    diffusers. A setting that is on for a class not in ``APPLIED``, or with a value ``Thresholded`` cannot
    take, is reported as not honoured (``edm generate`` warns) rather than guessed at.
    """
    applied = APPLIED.get(scheduler or "")
    if scheduler == "UniPCMultistepScheduler" and not settings.get("predict_x0", True):
        applied = ()  # its noise-prediction form never thresholds
    on = [key for key in X0_SETTINGS if settings.get(key)]
    if applied is None:
        why = (f"not known whether {scheduler} applies it" if scheduler else
               f"{settings.get('_class_name')!r} is no scheduler of this diffusers")
        return None, "none", [f"{key}={settings[key]!r} ({why})" for key in on]
    used = [key for key in on if key in applied]
    if not used:
        return None, "none", []
    kwargs, what = _threshold_of(used[0], settings, scheduler)
    if kwargs is None:
        return None, "none", [f"{used[0]}={settings[used[0]]!r} ({what}, so it is not applied)"]
    if len(used) > 1:
        what += f"; {used[1]}=True is unused under it, as in diffusers"
    return kwargs, what, []


def terminal_clamped(abar: Tensor) -> Tensor:
    """alphas_cumprod with a zero terminal value (rescale_betas_zero_snr) stored as 2**-24, as diffusers'
    Euler / DPM-Solver / UniPC schedulers store it (sigma_max 4096 instead of inf)."""
    if abar.numel() and float(abar[-1]) == 0:
        abar = abar.clone()
        abar[-1] = 2.0**-24
    return abar


class DiffusersBackbone(nn.Module):
    """``F(x_in, t, class_labels=None)`` for a diffusers ``UNet2DModel``: its ``.sample`` output.

    ``class_labels`` are integer class indices (already converted from one-hot).
    """

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x_in: Tensor, t: Tensor, class_labels: Tensor | None = None) -> Tensor:
        return self.unet(x_in, t, class_labels=class_labels, return_dict=False)[0]


def _one_hot_to_index(labels: Tensor) -> dict:
    if not bool(labels.ne(0).any(dim=1).all()):
        raise ValueError("this diffusers model has no unconditional (null) class: "
                         "give a class label for every sample")
    return {"class_labels": labels.argmax(dim=1)}


def load_diffusers(directory, *, device="cpu", dtype=torch.float32, source=None) -> LoadedModel:
    from edm import DiscreteTimeDenoiser

    root = Path(directory)
    if not root.is_dir():
        raise ModelError(f"diffusers model directory not found: {root}")
    unet_dir, scheduler_path, layout = _diffusers_dirs(root)
    unet_config = read_json(unet_dir / "config.json")
    scheduler_config = read_json(scheduler_path)
    unet_class = unet_config.get("_class_name", "UNet2DModel")
    if unet_class != "UNet2DModel":
        raise ModelError(f"{unet_dir / 'config.json'} is a {unet_class}; only UNet2DModel is supported")
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in DIFFUSERS_PREDICTIONS:
        raise ModelError(f"{scheduler_path}: unsupported prediction_type {prediction_type!r} "
                         f"(supported: {', '.join(DIFFUSERS_PREDICTIONS)})")
    try:
        import diffusers
    except ImportError:
        raise ModelError("loading a diffusers model needs diffusers: pip install diffusers") from None
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_dir, local_files_only=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ModelError(f"cannot load the diffusers UNet in {unet_dir}: {one_line(e)}") from None
    # from_pretrained already cast it to dtype; moving only the device keeps diffusers from warning that
    # a `to(dtype)` cast may break modules kept in float32 (UNet2DModel has none)
    unet.to(device=device).eval().requires_grad_(False)
    config = unet.config
    if config.get("class_embed_type") is not None:
        raise ModelError(f"{unet_dir}: class_embed_type {config.class_embed_type!r} is not supported "
                         "(only num_class_embeds with integer labels)")
    num_classes = int(config.get("num_class_embeds") or 0)
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(config.in_channels), int(height), int(width))
    abar, settings, scheduler_class = scheduler_of(scheduler_config, scheduler_path)
    threshold, thresholding, ignored = x0_thresholding(settings, scheduler_class)
    honoured, not_honoured = scheduler_settings(settings, scheduler_config)
    ignored = ignored + not_honoured
    prediction = DIFFUSERS_PREDICTIONS[prediction_type]
    abar = terminal_clamped(abar)
    try:
        # diffusers' convention: sigma <-> fractional timestep piecewise linear in sigma (np.interp)
        denoiser = DiscreteTimeDenoiser(DiffusersBackbone(unet), abar, prediction=prediction,
                                        interpolation="linear", backbone_dtype=dtype)
    except ValueError as e:
        raise ModelError(f"{scheduler_path}: {one_line(e)}") from None
    info = {
        "kind": "diffusers",
        "source": source or str(root),
        "layout": layout,
        "unet_config": dict(config),
        "scheduler_config": scheduler_config,
        "prediction": prediction,
        "x0_thresholding": thresholding,
        "honoured": honoured,
        "interpolation": "linear",
        "threshold": threshold,
        "num_train_timesteps": int(abar.shape[0]),
        "precond": repr(denoiser.scheme),
        "parameters": parameter_count(unet),
        "unconditional": num_classes == 0,  # diffusers class embeddings have no null class
        "dtype": str(dtype),
    }
    if ignored:
        info["ignored"] = ignored
    return LoadedModel(
        denoiser=LabelledDenoiser(denoiser, num_classes, _one_hot_to_index),
        shape=shape,
        num_classes=num_classes,
        sigma_min=float(denoiser.sigma_min),
        sigma_max=float(denoiser.sigma_max),
        sigmas=denoiser.scheme.sigmas,
        kind="diffusers",
        source=source or str(root),
        info=info,
        threshold=threshold,
    )




def claims(spec: str) -> bool:
    return spec.startswith(PREFIX)


def load(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    return load_diffusers(spec[len(PREFIX):], device=device, dtype=dtype, source=spec)
