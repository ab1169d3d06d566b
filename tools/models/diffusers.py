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

__all__ = ["APPLIED", "DIFFUSERS_PREDICTIONS", "PREFIX", "DiffusersBackbone", "claims", "load",
           "load_diffusers", "x0_thresholding"]

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


def _read_json(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"corrupt JSON {path}: {one_line(e)}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path} is not a JSON object")
    return config


def _scheduler(scheduler_config: dict, path: Path) -> tuple[Tensor, dict, str | None]:
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
    unet_config = _read_json(unet_dir / "config.json")
    scheduler_config = _read_json(scheduler_path)
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
    unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    config = unet.config
    if config.get("class_embed_type") is not None:
        raise ModelError(f"{unet_dir}: class_embed_type {config.class_embed_type!r} is not supported "
                         "(only num_class_embeds with integer labels)")
    num_classes = int(config.get("num_class_embeds") or 0)
    size = config.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(config.in_channels), int(height), int(width))
    abar, settings, scheduler_class = _scheduler(scheduler_config, scheduler_path)
    threshold, thresholding, ignored = x0_thresholding(settings, scheduler_class)
    prediction = DIFFUSERS_PREDICTIONS[prediction_type]
    try:
        denoiser = DiscreteTimeDenoiser(DiffusersBackbone(unet), abar, prediction=prediction,
                                        backbone_dtype=dtype)
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
