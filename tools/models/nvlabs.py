"""NVlabs EDM network pickles (``*.pkl``, ``*.pickle`` or ``nvlabs:PATH``), unpickled only with
``trust_pickle=True`` (unpickling runs code) and NVlabs' ``dnnlib`` / ``torch_utils`` importable."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch
from torch import nn

from tools.common import one_line

from .base import LabelledDenoiser, LoadedModel, ModelError, parameter_count

__all__ = ["NVLABS_SIGMA_RANGE", "PICKLE_SUFFIXES", "PREFIX", "claims", "load", "load_nvlabs"]

PREFIX = "nvlabs:"
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
        raise ModelError(f"cannot unpickle {path}: {type(e).__name__}: {one_line(e)}") from None
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
        "parameters": parameter_count(net),
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




def claims(spec: str) -> bool:
    return spec.startswith(PREFIX) or Path(spec).suffix.lower() in PICKLE_SUFFIXES


def load(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    path = spec[len(PREFIX):] if spec.startswith(PREFIX) else Path(spec).expanduser()
    return load_nvlabs(path, device=device, dtype=dtype, trust_pickle=trust_pickle)
