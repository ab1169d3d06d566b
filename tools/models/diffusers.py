"""diffusers models: a ``UNet2DModel`` and its scheduler saved with ``save_pretrained`` (``diffusers:DIR``),
wrapped in :class:`edm.DiscreteTimeDenoiser` with the scheduler's ``alphas_cumprod``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from tools.common import one_line

from .base import LabelledDenoiser, LoadedModel, ModelError, parameter_count

__all__ = ["DIFFUSERS_PREDICTIONS", "PREFIX", "DiffusersBackbone", "claims", "load", "load_diffusers"]

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


def _alphas_cumprod(scheduler_config: dict, path: Path) -> Tensor:
    import diffusers

    name = scheduler_config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    try:
        if cls is None or not hasattr(cls, "from_config"):
            cls = diffusers.DDPMScheduler
        scheduler = cls.from_config(scheduler_config)
        abar = getattr(scheduler, "alphas_cumprod", None)
        if abar is None:
            scheduler = diffusers.DDPMScheduler.from_config(scheduler_config)
            abar = scheduler.alphas_cumprod
    except (ValueError, TypeError, KeyError, NotImplementedError) as e:
        raise ModelError(f"cannot build the scheduler of {path}: {one_line(e)}") from None
    return torch.as_tensor(abar, dtype=torch.float64)


#: scheduler settings that change sampling but that these samplers do not apply (yet), with what they do
NOT_HONOURED = {
    "clip_sample": "clips the predicted x0 to [-clip_sample_range, clip_sample_range]",
    "thresholding": "applies dynamic thresholding to the predicted x0",
}


def ignored_settings(scheduler_config: dict) -> list[str]:
    """``"clip_sample=True (clips the predicted x0 ...)"`` for each setting that is on and not honoured."""
    return [f"{key}={scheduler_config[key]!r} ({what})" for key, what in NOT_HONOURED.items()
            if scheduler_config.get(key)]


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
    abar = _alphas_cumprod(scheduler_config, scheduler_path)
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
        "num_train_timesteps": int(abar.shape[0]),
        "precond": repr(denoiser.scheme),
        "parameters": parameter_count(unet),
        "unconditional": num_classes == 0,  # diffusers class embeddings have no null class
        "dtype": str(dtype),
    }
    ignored = ignored_settings(scheduler_config)
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
    )




def claims(spec: str) -> bool:
    return spec.startswith(PREFIX)


def load(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    return load_diffusers(spec[len(PREFIX):], device=device, dtype=dtype, source=spec)
