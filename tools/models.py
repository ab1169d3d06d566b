"""Load a model by name for the front end: one :class:`LoadedModel` whatever its origin.

A *spec* is one of

- ``digits`` (see :func:`list_builtin`): the checkpoint shipped in ``edm/weights``;
- a checkpoint (``NAME``, ``NAME.json``, ``NAME.safetensors``, or a directory holding exactly one
  such pair), read by :func:`edm.checkpoint.load_checkpoint`, which never unpickles;
- ``diffusers:DIR``: a diffusers ``UNet2DModel`` and its scheduler saved with ``save_pretrained``
  (``DIR/unet`` + ``DIR/scheduler`` as a pipeline saves them, or ``config.json`` +
  ``scheduler_config.json`` side by side in ``DIR``), wrapped in :class:`edm.DiscreteTimeDenoiser`;
- an NVlabs EDM network pickle (``*.pkl``, ``*.pickle`` or ``nvlabs:PATH``), unpickled only with
  ``trust_pickle=True`` and NVlabs' ``dnnlib`` / ``torch_utils`` importable.

Every loaded denoiser has the signature ``D(x, sigma, class_labels=None)`` with ``class_labels`` a
``[B, num_classes]`` float one-hot tensor, or ``None`` (or all-zero rows) for unconditional sampling.
Every failure is a :class:`ModelError` with a one-line message naming the file and what to do.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["ModelError", "LoadedModel", "LabelledDenoiser", "load_model", "list_builtin", "BUILTIN"]


class ModelError(ValueError):
    """A model spec that cannot be loaded; the message is one line naming the file and the remedy."""


@dataclass
class LoadedModel:
    denoiser: Callable  # D(x, sigma, class_labels=None) -> x0_hat
    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int  # 0: unconditional
    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None  # ascending discrete table of a discrete-time model, else None
    kind: str  # 'checkpoint' | 'diffusers' | 'nvlabs'
    source: str  # what was loaded (path or name)
    info: dict = field(default_factory=dict)  # what `edm info` shows


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _parameter_count(module) -> int:
    if isinstance(module, nn.Module):
        return sum(p.numel() for p in module.parameters())
    return 0


# ----------------------------------------------------------------------------------------------
# The class-label convention shared by all kinds


def _one_hot(labels: Tensor) -> dict:
    return {"class_labels": labels}


class LabelledDenoiser(nn.Module):
    """``D(x, sigma, class_labels=None)`` over a denoiser with its own class input.

    ``class_labels`` is ``None`` (unconditional) or a ``[B, num_classes]`` one-hot tensor whose
    all-zero rows are unconditional.  ``convert(labels)`` turns a checked ``[B, K]`` float tensor
    into the keyword arguments of ``inner``; unconditional models get no class argument at all.
    The output has the dtype of ``x`` (NVlabs' networks answer in float32 whatever they get).
    The protocol attributes of ``inner`` (``sigma_min``, ``sigma_max``, ``sigma_data``, ``sigmas``,
    ``round_sigma``) are exposed unchanged.
    """

    def __init__(self, inner, num_classes: int, convert: Callable[[Tensor], dict] | None = None):
        super().__init__()
        self.inner = inner
        self.num_classes = int(num_classes)
        self._convert = convert or _one_hot

    def labels(self, x: Tensor, class_labels) -> dict:
        if self.num_classes == 0:
            if class_labels is not None and bool(torch.as_tensor(class_labels).ne(0).any()):
                raise ValueError("this model is unconditional: class_labels must be None")
            return {}
        batch = x.shape[0]
        if class_labels is None:
            labels = torch.zeros(batch, self.num_classes, device=x.device, dtype=x.dtype)
        else:
            labels = torch.as_tensor(class_labels, device=x.device)
            if labels.ndim != 2 or labels.shape[1] != self.num_classes or labels.shape[0] not in (1, batch):
                raise ValueError(f"class_labels must be a [B, {self.num_classes}] one-hot tensor, "
                                 f"got shape {list(labels.shape)}")
            labels = labels.to(x.dtype).expand(batch, -1)
        return self._convert(labels)

    def forward(self, x: Tensor, sigma, class_labels=None) -> Tensor:
        out = self.inner(x, sigma, **self.labels(x, class_labels))
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("sigma_min", "sigma_max", "sigma_data", "sigmas", "round_sigma", "sigma_to_t",
                        "t_to_sigma"):
                return getattr(self.inner, name)
            raise


# ----------------------------------------------------------------------------------------------
# Checkpoints (ours: safetensors + JSON)


#: built-in name -> checkpoint stem relative to the edm package
BUILTIN = {"digits": Path("weights") / "digits"}


def list_builtin() -> list[str]:
    return sorted(BUILTIN)


def builtin_path(name: str) -> Path:
    import edm

    return Path(edm.__file__).parent / BUILTIN[name]


def _checkpoint_stem(path: Path) -> Path:
    """The checkpoint ``NAME`` for a path: NAME, NAME.json, NAME.safetensors or a directory."""
    if path.is_dir():
        stems = sorted(p.with_suffix("") for p in path.glob("*.json")
                       if p.with_suffix(".safetensors").is_file())
        if not stems and ((path / "config.json").is_file() or (path / "unet" / "config.json").is_file()):
            raise ModelError(f"{path} looks like a diffusers model: pass 'diffusers:{path}'")
        if len(stems) != 1:
            found = ", ".join(s.name for s in stems) or "none"
            raise ModelError(f"{path} must hold exactly one checkpoint pair NAME.json + NAME.safetensors "
                             f"(found: {found}); name the checkpoint file instead")
        return stems[0]
    return path.with_suffix("") if path.suffix in (".json", ".safetensors") else path


def load_checkpoint_model(path, *, device="cpu", dtype=torch.float32, source=None) -> LoadedModel:
    from edm.checkpoint import CheckpointError, load_checkpoint, paths

    stem = _checkpoint_stem(Path(path))
    weights, config_path = paths(stem)
    try:
        checkpoint = load_checkpoint(stem, device=device, dtype=dtype)
        shape = tuple(int(s) for s in checkpoint.shape)
        num_classes = checkpoint.num_classes
    except CheckpointError as e:
        raise ModelError(_one_line(e)) from None
    except ImportError as e:
        raise ModelError(f"cannot build the network of {config_path}: {_one_line(e)}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"checkpoint config {config_path} is malformed: {_one_line(e)}") from None
    if len(shape) != 3:
        raise ModelError(f"checkpoint config {config_path}: data.shape must be [C, H, W], got {list(shape)}")
    precond = checkpoint.denoiser
    precond.backbone_dtype = dtype  # inputs of another dtype (float32 x, float16 net) are cast for the call
    try:
        sigma_min, sigma_max = float(precond.sigma_min), float(precond.sigma_max)
    except AttributeError as e:
        raise ModelError(f"checkpoint {config_path}: its preconditioning has no sigma range ({e})") from None
    config = checkpoint.config
    info = {
        "kind": "checkpoint",
        "source": source or str(stem),
        "files": [str(config_path), str(weights)],
        "network": config.get("network"),
        "precond": config.get("precond"),
        "scheme": repr(precond.scheme),
        "data": config.get("data"),
        "parameters": _parameter_count(precond.backbone),
        "unconditional": True,  # all-zero labels: the label-dropped input
        "dtype": str(dtype),
        "config": config,
    }
    return LoadedModel(
        denoiser=LabelledDenoiser(precond, num_classes),
        shape=shape,
        num_classes=num_classes,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=getattr(precond.scheme, "sigmas", None),
        kind="checkpoint",
        source=source or str(stem),
        info=info,
    )


def load_builtin(name: str, *, device="cpu", dtype=torch.float32) -> LoadedModel:
    stem = builtin_path(name)
    if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".safetensors").is_file():
        raise ModelError(f"the built-in model {name!r} is not installed ({stem}.json / {stem}.safetensors "
                         "missing); reinstall the package or pass a checkpoint path")
    return load_checkpoint_model(stem, device=device, dtype=dtype, source=name)


# ----------------------------------------------------------------------------------------------
# diffusers UNet2DModel + scheduler config

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
        raise ModelError(f"corrupt JSON {path}: {_one_line(e)}") from None
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
        raise ModelError(f"cannot build the scheduler of {path}: {_one_line(e)}") from None
    return torch.as_tensor(abar, dtype=torch.float64)


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
        raise ModelError(f"cannot load the diffusers UNet in {unet_dir}: {_one_line(e)}") from None
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
        raise ModelError(f"{scheduler_path}: {_one_line(e)}") from None
    info = {
        "kind": "diffusers",
        "source": source or str(root),
        "layout": layout,
        "unet_config": dict(config),
        "scheduler_config": scheduler_config,
        "prediction": prediction,
        "num_train_timesteps": int(abar.shape[0]),
        "precond": repr(denoiser.scheme),
        "parameters": _parameter_count(unet),
        "unconditional": num_classes == 0,  # diffusers class embeddings have no null class
        "dtype": str(dtype),
    }
    ignored = [k for k in ("clip_sample", "thresholding") if scheduler_config.get(k)]
    if ignored:
        info["ignored"] = f"{', '.join(ignored)} of the scheduler (EDM samplers do not clip x0)"
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


# ----------------------------------------------------------------------------------------------
# NVlabs EDM network pickles

PICKLE_SUFFIXES = (".pkl", ".pickle")
#: the default sigma range of NVlabs' edm_sampler, intersected with the network's own
NVLABS_SIGMA_RANGE = (0.002, 80.0)


def _nvlabs_importable() -> list[str]:
    """Names of NVlabs' packages that cannot be imported."""
    missing = []
    for name in ("dnnlib", "torch_utils"):
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


def load_nvlabs(path, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    path = Path(path)
    if not trust_pickle:
        raise ModelError(f"refusing to unpickle {path}: pickles run code on load; "
                         "pass --trust-pickle if you trust it")
    if not path.is_file():
        raise ModelError(f"network pickle not found: {path}")
    missing = _nvlabs_importable()
    if missing:
        raise ModelError(f"unpickling {path} needs NVlabs' edm code ({', '.join(missing)} not importable): "
                         "put a clone of github.com/NVlabs/edm on PYTHONPATH")
    try:
        with path.open("rb") as f:
            data = pickle.load(f)  # noqa: S301 - only with trust_pickle, as the user asked
    except Exception as e:  # an arbitrary pickle can raise anything
        raise ModelError(f"cannot unpickle {path}: {type(e).__name__}: {_one_line(e)}") from None
    net = data.get("ema", data.get("net")) if isinstance(data, dict) else data
    required = ("img_channels", "img_resolution", "label_dim", "sigma_min", "sigma_max")
    if not callable(net) or not all(hasattr(net, a) for a in required):
        raise ModelError(f"{path} holds no NVlabs EDM network (expected {{'ema': EDMPrecond}} "
                         f"with {', '.join(required)})")
    if isinstance(net, nn.Module):
        # NVlabs' preconditioners compute in float32 (fp16 inside with use_fp16): keep their dtype.
        net.to(device).eval().requires_grad_(False)
    num_classes = int(net.label_dim)
    shape = (int(net.img_channels), int(net.img_resolution), int(net.img_resolution))
    # NVlabs' EDMPrecond declares (0, inf); their generate.py samples within (0.002, 80) of it.
    sigma_min = max(float(net.sigma_min), NVLABS_SIGMA_RANGE[0])
    sigma_max = min(float(net.sigma_max), NVLABS_SIGMA_RANGE[1])
    info = {
        "kind": "nvlabs",
        "source": str(path),
        "class": f"{type(net).__module__}.{type(net).__qualname__}",
        "sigma_data": float(getattr(net, "sigma_data", float("nan"))),
        "declared_sigma_range": [float(net.sigma_min), float(net.sigma_max)],
        "use_fp16": bool(getattr(net, "use_fp16", False)),
        "unconditional": True,  # NVlabs' nets take zeros (or None) as "no class"
        "parameters": _parameter_count(net),
        "note": "the network keeps its own dtype; outputs are cast to the input dtype",
    }
    return LoadedModel(
        denoiser=LabelledDenoiser(net, num_classes),
        shape=shape,
        num_classes=num_classes,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=None,
        kind="nvlabs",
        source=str(path),
        info=info,
    )


# ----------------------------------------------------------------------------------------------
# Dispatch


def describe_specs() -> str:
    return (f"a built-in model ({', '.join(list_builtin())}), a checkpoint NAME[.json|.safetensors], "
            "'diffusers:DIR' or an NVlabs network pickle (.pkl)")


def load_model(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    """Load the model named by ``spec`` (see the module docstring) on ``device`` in ``dtype``."""
    spec = str(spec)
    if spec in BUILTIN:
        return load_builtin(spec, device=device, dtype=dtype)
    if spec.startswith("diffusers:"):
        return load_diffusers(spec[len("diffusers:"):], device=device, dtype=dtype, source=spec)
    if spec.startswith("nvlabs:"):
        return load_nvlabs(spec[len("nvlabs:"):], device=device, dtype=dtype, trust_pickle=trust_pickle)
    path = Path(spec).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_nvlabs(path, device=device, dtype=dtype, trust_pickle=trust_pickle)
    pair = [path.with_name(path.name + suffix) for suffix in (".json", ".safetensors")]
    if path.is_dir() or path.suffix in (".json", ".safetensors") or any(p.exists() for p in pair):
        return load_checkpoint_model(path, device=device, dtype=dtype)
    if path.exists():
        raise ModelError(f"{path} is not a model file: expected {describe_specs()}")
    raise ModelError(f"unknown model {spec!r}: no such file; expected {describe_specs()}")
