"""Our checkpoints (``NAME.json`` + ``NAME.safetensors``, never unpickled) and the built-in models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tools.common import BadInput, one_line

from .base import LabelledDenoiser, LoadedModel, ModelError, RecordedSampling, parameter_count
from .characters import CharacterConditioner, TextDenoiser
from .low_res import CheckpointLowRes, LowResDenoiser

__all__ = ["BUILTIN", "NetworkGuidance", "NetworkPerturbation", "builtin_path", "claims", "identity",
           "list_builtin", "load", "load_builtin", "load_checkpoint_model"]

#: built-in name -> checkpoint stem relative to the edm package
BUILTIN = {"digits": Path("weights") / "digits",
           # the weaker digits model autoguidance guides with (bench/results/digits_weak.md)
           "digits-weak": Path("weights") / "digits-weak",
           # a class-conditional DiT, same data and budget as digits (bench/results/digits_dit.md)
           "digits-dit": Path("weights") / "digits-dit",
           # strings of 1-5 digits in 8x40 from a prompt (bench/results/digits_text.md)
           "digits-text": Path("weights") / "digits-text",
           # class-conditional 4x4 digits (the 8x8 ones pooled 2x; indices < 1400), a cascade's base stage
           # (bench/results/super_resolution.md)
           "digits-4x4": Path("weights") / "digits-4x4",
           # super-resolution 4x4 -> 8x8 from the low-resolution image alone (indices < 1400)
           "digits-sr": Path("weights") / "digits-sr",
           # students of digits (edm distill; bench/results/distillation.md): progressive distillation to
           # 1, 2, 4 and 8 Euler steps, consistency distillation, and a 2-step student taking the CFG weight
           "digits-pd1": Path("weights") / "digits-pd1",
           "digits-pd2": Path("weights") / "digits-pd2",
           "digits-pd4": Path("weights") / "digits-pd4",
           "digits-pd8": Path("weights") / "digits-pd8",
           "digits-cd": Path("weights") / "digits-cd",
           "digits-pd2-guided": Path("weights") / "digits-pd2-guided"}


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
        raise ModelError(one_line(e)) from None
    except ImportError as e:
        raise ModelError(f"cannot build the network of {config_path}: {one_line(e)}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"checkpoint config {config_path} is malformed: {one_line(e)}") from None
    if len(shape) != 3:
        raise ModelError(f"checkpoint config {config_path}: data.shape must be [C, H, W], got {list(shape)}")
    precond = checkpoint.denoiser
    precond.backbone_dtype = dtype  # inputs of another dtype (float32 x, float16 net) are cast for the call
    try:
        sigma_min, sigma_max = float(precond.sigma_min), float(precond.sigma_max)
    except AttributeError as e:
        raise ModelError(f"checkpoint {config_path}: its preconditioning has no sigma range ({e})") from None
    config = checkpoint.config
    condition = config.get("condition") if isinstance(config.get("condition"), dict) else {}
    denoiser, conditioner, default_guidance = LabelledDenoiser(precond, num_classes), None, None
    sampling = config.get("sampling") if isinstance(config.get("sampling"), dict) else {}
    low_res = None
    if condition.get("kind") == "text":
        denoiser, conditioner = _text_parts(precond, condition, config_path)
        default_guidance = sampling.get("guidance")
    elif condition.get("kind") == "low-res":
        denoiser, low_res = LowResDenoiser(precond), _low_res_conditioner(condition, sampling, config_path)
    info = {
        "kind": "checkpoint",
        "source": source or str(stem),
        "files": [str(config_path), str(weights)],
        "network": config.get("network"),
        "precond": config.get("precond"),
        "scheme": repr(precond.scheme),
        "data": config.get("data"),
        "parameters": parameter_count(precond.backbone),
        "unconditional": True,  # all-zero labels (or the null text): the condition-dropped input
        "dtype": str(dtype),
        "config": config,
    }
    if conditioner is not None:
        info["text"] = (f"{conditioner.describe()} (--prompt, --prompts, --negative-prompt; default "
                        f"--guidance {default_guidance or 0:g})")
    if low_res is not None:
        info["low_res"] = low_res.describe()
    recorded = RecordedSampling.read(sampling, str(config_path))
    if recorded is not None:
        info["sampling_default"] = recorded.describe()
    perturbation = NetworkPerturbation(precond.backbone)
    info["guider_layers"] = perturbation.describe()
    guidance_input = _guidance_input(config, sampling, config_path)
    if guidance_input is not None:
        info["guidance_input"] = guidance_input.describe()
        default_guidance = sampling.get("guidance", default_guidance)
    return LoadedModel(
        denoiser=denoiser,
        shape=shape,
        num_classes=num_classes,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        sigmas=getattr(precond.scheme, "sigmas", None),
        kind="checkpoint",
        source=source or str(stem),
        info=info,
        conditioner=conditioner,
        default_guidance=None if default_guidance is None else float(default_guidance),
        low_res=low_res,
        sampling=recorded,
        guidance_input=guidance_input,
        perturb_hooks=perturbation,
    )


@dataclass(frozen=True)
class NetworkPerturbation:
    """How the guiders that perturb a network's insides (PAG, SEG, SLG) reach a checkpoint's network
    (:func:`edm.perturb.perturb`): ``(kind, layers, **options)`` -> the perturbation hooked into it;
    BadInput naming the flag at fault (``--pag-layers``, ``--seg-blur-sigma``, ``--guidance-method``)."""

    network: torch.nn.Module

    def __call__(self, kind: str, layers=None, **options):
        from edm.perturb import PerturbationError, perturb

        try:
            return perturb(self.network, kind, layers, **options)
        except PerturbationError as e:
            param = {"kind": "guidance_method", "layers": f"{kind}_layers"}.get(e.field, f"{kind}_{e.field}")
            raise BadInput(one_line(e), param) from None

    def describe(self) -> str:
        """The layers each guider can perturb, the default marked, for ``edm info``: ``pag, seg: enc.3,
        mid.0 (default), ...; slg: ...`` (``none`` for a network without such layers)."""
        from edm.perturb import KINDS, default_layers, perturbable_layers

        kinds_of: dict[str, list[str]] = {}  # kinds sharing their layers share a line
        for kind in KINDS:
            default = default_layers(self.network, kind)
            layers = [f"{name} (default)" if name in default else name
                      for name in perturbable_layers(self.network, kind)]
            if layers:
                kinds_of.setdefault(", ".join(layers), []).append(kind)
        return "; ".join(f"{', '.join(kinds)}: {layers}" for layers, kinds in kinds_of.items()) or "none"


@dataclass(frozen=True)
class NetworkGuidance:
    """The guidance weight as our networks' own input (``network.kwargs.guidance_embed``): the denoiser's
    ``guidance`` keyword, one ``w`` per sample (a :class:`~.base.GuidanceInput`)."""

    range: tuple[float, float] | None = None
    keys: tuple[str, ...] = ("guidance",)

    def describe(self) -> str:
        trained = "" if self.range is None else f", trained on w in [{self.range[0]:g}, {self.range[1]:g}]"
        return f"the network takes the guidance weight w as an input (one evaluation per step{trained})"

    def kwargs(self, w: float, batch: int, device, dtype) -> dict[str, torch.Tensor]:
        return {"guidance": torch.full((batch,), float(w), device=device, dtype=dtype)}


def _guidance_input(config: dict, sampling: dict, config_path) -> NetworkGuidance | None:
    """The guidance input of a network with ``guidance_embed`` (range: ``sampling.guidance_range``)."""
    network = config.get("network") if isinstance(config.get("network"), dict) else {}
    kwargs = network.get("kwargs") if isinstance(network.get("kwargs"), dict) else {}
    if not kwargs.get("guidance_embed"):
        return None
    recorded = sampling.get("guidance_range")
    if recorded is None:
        return NetworkGuidance()
    try:
        lo, hi = (float(v) for v in recorded)
    except (TypeError, ValueError):
        raise ModelError(f"checkpoint config {config_path}: sampling.guidance_range must be [lo, hi], got "
                         f"{recorded!r}") from None
    if not 0 <= lo <= hi:
        raise ModelError(f"checkpoint config {config_path}: sampling.guidance_range must have 0 <= lo <= hi, "
                         f"got {recorded!r}")
    return NetworkGuidance((lo, hi))


def _low_res_conditioner(condition: dict, sampling: dict, config_path) -> CheckpointLowRes:
    """The conditioner of a super-resolution checkpoint (``condition``: ``factor``, ``low_res_shape``;
    ``sampling.noise_aug``: the recorded best level, default 0)."""
    try:
        shape = [int(s) for s in condition["low_res_shape"]]
        factor = int(condition["factor"])
        level = float(sampling.get("noise_aug") or 0.0)
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"checkpoint config {config_path}: a low-res condition needs its factor and "
                         "low_res_shape (and a numeric sampling.noise_aug)") from None
    if len(shape) != 3 or factor < 2:
        raise ModelError(f"checkpoint config {config_path}: low_res_shape must be [C, h, w] and factor >= 2")
    return CheckpointLowRes(shape, factor, level)


def _text_parts(precond, condition: dict, config_path) -> tuple[TextDenoiser, CharacterConditioner]:
    """The denoiser and conditioner of a text checkpoint (``condition``: ``alphabet``, ``length``)."""
    try:
        alphabet, length = str(condition["alphabet"]), int(condition["length"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"checkpoint config {config_path}: a text condition needs its alphabet and "
                         "length") from None
    return TextDenoiser(precond, length, pad=len(alphabet)), CharacterConditioner(alphabet, length)


def load_builtin(name: str, *, device="cpu", dtype=torch.float32) -> LoadedModel:
    stem = builtin_path(name)
    if not stem.with_suffix(".json").is_file() or not stem.with_suffix(".safetensors").is_file():
        raise ModelError(f"the built-in model {name!r} is not installed ({stem}.json / {stem}.safetensors "
                         "missing); reinstall the package or pass a checkpoint path")
    return load_checkpoint_model(stem, device=device, dtype=dtype, source=name)




def claims(spec: str) -> bool:
    """A built-in name, or a path that is (or names) a checkpoint pair or a folder holding one."""
    if spec in BUILTIN:
        return True
    path = Path(spec).expanduser()
    pair = [path.with_name(path.name + suffix) for suffix in (".json", ".safetensors")]
    return path.is_dir() or path.suffix in (".json", ".safetensors") or any(p.exists() for p in pair)


def identity(spec: str) -> str:
    """The checkpoint a spec names (a built-in name its shipped one), as its resolved stem; the spec itself
    when it names none (loading it says why)."""
    try:
        stem = builtin_path(spec) if spec in BUILTIN else _checkpoint_stem(Path(spec).expanduser())
    except ModelError:
        return spec
    return str(stem.resolve())


def load(spec: str, *, device="cpu", dtype=torch.float32, trust_pickle=False) -> LoadedModel:
    if spec in BUILTIN:
        return load_builtin(spec, device=device, dtype=dtype)
    return load_checkpoint_model(Path(spec).expanduser(), device=device, dtype=dtype)
