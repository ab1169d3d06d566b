"""The generation pipeline: one PNG per seed, reproducible per seed, resumable, on one or many processes.

``generate(model, seeds, outdir, ...)`` validates everything (model, sampler and its options, schedule,
steps or NFE budget, class, guidance, output paths) before it writes anything, then samples the seeds
in batches and writes ``{seed:06d}.png`` per seed (``--subdirs``: in ``{seed - seed % 1000:06d}/``).

* Reproducible per seed: the latent is ``samplers.noise.latents`` (NVlabs' per-seed stream), the
  sampler's noise comes from the seed's own streams and a random class label is drawn from the seed
  as NVlabs' ``generate.py`` draws it (the next draw of the latent's generator), so an image does not
  depend on the batch size, its position in the batch or the number of processes. (The network's
  arithmetic may: float32 matrix products can round differently for different batch sizes; float64
  makes that invisible in 8-bit images.)
* Atomic and resumable: each PNG is written to a hidden temporary file in its directory and renamed
  onto its name, so no partial ``*.png`` ever exists; existing PNGs are skipped unless ``overwrite``,
  so an interrupted run picks up where it stopped.
* Distributed: under ``torchrun`` (``WORLD_SIZE``/``RANK`` set) each rank takes ``seeds[rank::world]``
  and batches them (gloo on CPU, NCCL on CUDA); the images equal a single-process run's.

``prepare(...)`` does the validation and returns a :class:`Plan`; ``run(plan)`` does the work.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import samplers
from edm.checkpoint import atomic_write
from samplers import schedules
from samplers.guidance import ClassifierFreeGuidance

from .seeds import format_seeds, parse_seeds

__all__ = ["DEFAULT_STEPS", "DTYPES", "GenerateError", "Plan", "Summary", "class_labels", "generate",
           "grid_shape", "image_path", "prepare", "run", "schedule_sigmas", "to_uint8", "write_grid",
           "write_png"]

DEFAULT_STEPS = 18  # EDM's deterministic sampler on CIFAR-10 / FFHQ (35 NFE with heun)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}
PNG_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_TEMP_NAME = re.compile(r"\.(\d+)\.png\..*\.tmp")  # what write_png's temporary files look like


class GenerateError(ValueError):
    """Bad input to the pipeline, found before anything is written.

    ``param`` names the argument at fault (``"model"``, ``"seeds"``, ``"steps"``, ...), or is None when
    the fault lies in a combination of arguments.
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------------------------------------------
# Per-seed pieces


def image_path(outdir, seed: int, subdirs: bool = False) -> Path:
    """``outdir/{seed:06d}.png``, or ``outdir/{seed - seed % 1000:06d}/{seed:06d}.png`` with subdirs."""
    outdir = Path(outdir)
    if subdirs:
        outdir = outdir / f"{seed - seed % 1000:06d}"
    return outdir / f"{seed:06d}.png"


def class_labels(seeds: Sequence[int], num_classes: int, shape: Sequence[int], *,
                 device="cpu") -> torch.Tensor:
    """A class index per seed (int64 ``[len(seeds)]``), drawn from the seed alone.

    As NVlabs' ``generate.py`` with its ``StackedRandomGenerator``: the seed's generator
    (``manual_seed(seed % 2**32)`` on ``device``) draws the float32 latent of ``shape``, then the label
    with ``randint``. The label therefore depends on the seed (and the device kind), not the batch.
    """
    labels = []
    for seed in seeds:
        gen = torch.Generator(device=device).manual_seed(int(seed) % (1 << 32))
        torch.randn(tuple(shape), generator=gen, device=device)  # the latent's draw, as NVlabs
        labels.append(torch.randint(num_classes, size=[], generator=gen, device=device))
    return torch.stack(labels).to(device=device, dtype=torch.int64)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` images in [-1, 1] -> uint8 ``[B, H, W, C]``, as NVlabs (x * 127.5 + 128, clip)."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _write_atomic(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    channels = array.shape[2]
    image = Image.fromarray(array[:, :, 0] if channels == 1 else array, PNG_MODES[channels])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def write_png(path, image: np.ndarray) -> None:
    """Write one uint8 ``[H, W, C]`` image to ``path`` atomically (temporary file + rename)."""
    _write_atomic(Path(path), image)


def _remove_stale_temporaries(seeds: Sequence[int], outdir: Path, subdirs: bool) -> None:
    """Remove temporary files left by a killed run for these seeds (only this process writes them)."""
    mine = set(seeds)
    folders = {image_path(outdir, s, subdirs).parent for s in seeds}
    for folder in folders:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and int(match.group(1)) in mine:
                Path(entry.path).unlink(missing_ok=True)


def grid_shape(n: int) -> tuple[int, int]:
    """``(rows, cols)`` of a near-square grid for ``n`` images: ``cols = ceil(sqrt(n))``."""
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def write_grid(paths: Sequence[Path], grid_path, shape: Sequence[int]) -> tuple[int, int]:
    """Tile the PNGs ``paths`` (in order, row by row, empty cells black) into one PNG at ``grid_path``.

    ``shape`` is the images' ``(C, H, W)``. Returns the grid's ``(width, height)`` in pixels.
    """
    from PIL import Image

    channels, height, width = (int(s) for s in shape)
    rows, cols = grid_shape(len(paths))
    canvas = np.zeros((rows * height, cols * width, channels), dtype=np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            tile = np.asarray(image.convert(PNG_MODES[channels]))
        tile = tile.reshape(height, width, channels)
        r, c = divmod(i, cols)
        canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = tile
    _write_atomic(Path(grid_path), canvas)
    return cols * width, rows * height


# ---------------------------------------------------------------------------------------------------
# Denoiser adapters


class _ModelDtype:
    """Evaluate ``denoiser`` in ``dtype`` (e.g. float16) while the sampler keeps its state in x's dtype."""

    def __init__(self, denoiser: Callable, dtype: torch.dtype):
        self.denoiser = denoiser
        self.dtype = dtype

    def __getattr__(self, name):
        if name in ("sigma_min", "sigma_max", "sigma_data", "sigmas", "round_sigma"):
            return getattr(self.__dict__["denoiser"], name)
        raise AttributeError(name)

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor:
        cond = {k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in cond.items()}
        return self.denoiser(x.to(self.dtype), sigma, **cond).to(x.dtype)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The sampler's working precision: float64 for float64 models, float32 otherwise (as NVlabs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------------
# Plan: everything checked before anything is written


@dataclass
class Plan:
    """A validated generation job (see :func:`prepare`)."""

    model: Any  # tools.models.LoadedModel, or any object with its fields
    seeds: list[int]
    outdir: Path
    sampler: str
    options: dict[str, Any]
    schedule: str
    schedule_options: dict[str, Any]
    sigmas: torch.Tensor  # float64, decreasing, ending in 0
    steps: int
    nfe: int | None  # denoiser evaluations per image (None: adaptive sampler)
    batch: int
    class_label: int | None
    guidance: float
    subdirs: bool
    grid: Path | None
    overwrite: bool
    device: torch.device
    dtype: torch.dtype
    progress: bool = True
    denoiser: Callable = field(default=None, repr=False)  # guided, in the model's dtype

    @property
    def state_dtype(self) -> torch.dtype:
        return _state_dtype(self.dtype)

    def path(self, seed: int) -> Path:
        return image_path(self.outdir, seed, self.subdirs)

    def describe(self) -> str:
        """One line: what will be sampled how."""
        nfe = "adaptive NFE" if self.nfe is None else f"{self.nfe} NFE"
        options = "".join(f" {k}={v}" for k, v in self.options.items())
        cls = "" if not self.model.num_classes else (
            f", class {self.class_label}" if self.class_label is not None else ", random classes")
        guidance = f", guidance w={self.guidance:g}" if self.guidance else ""
        return (f"{len(self.seeds)} seeds ({format_seeds(self.seeds)}), {self.sampler}{options}, "
                f"{self.steps} steps ({nfe}), {self.schedule} sigma {float(self.sigmas[0]):g}..."
                f"{float(self.sigmas[-2]):g}{cls}{guidance}, {self.device} {_dtype_name(self.dtype)}")


def check_writable_dir(path: Path, param: str) -> None:
    """A directory that exists and is writable, or could be created: else GenerateError.

    Writability is probed with an anonymous temporary file in the nearest existing directory, so a
    read-only file system is caught too and nothing visible is left behind.
    """
    path = Path(path).expanduser().absolute()
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                raise GenerateError(f"{path} is not a directory" if candidate == path
                                    else f"cannot create {path}: {candidate} is not a directory", param)
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise GenerateError(f"cannot write to {path}: {candidate} is not writable", param)
            try:
                with tempfile.TemporaryFile(dir=candidate):
                    pass
            except OSError as e:
                raise GenerateError(f"cannot write to {path}: {e.strerror or e}", param) from None
            return
    raise GenerateError(f"cannot create {path}", param)  # pragma: no cover - "/" always exists


def _resolve_device(device) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GenerateError(f"unknown device {device!r} (e.g. cpu, cuda, cuda:1)", "device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise GenerateError("CUDA is not available on this machine: use --device cpu", "device")
        if device.index is None:  # one GPU per process under torchrun
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if device.index >= torch.cuda.device_count():
            raise GenerateError(f"no such GPU {device} ({torch.cuda.device_count()} visible)", "device")
    elif device.type != "cpu":
        raise GenerateError(f"unsupported device {device} (use cpu or cuda)", "device")
    return device


def _resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise GenerateError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}", "dtype")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise GenerateError(f"unsupported dtype {dtype!r}; valid: {', '.join(DTYPES)}", "dtype")
    return dtype


def _positive_int(value, what: str, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GenerateError(f"{what} must be a positive integer, got {value!r}", param)
    return int(value)


def _load(model, device, dtype, trust_pickle):
    if not isinstance(model, (str, os.PathLike)):
        for attr in ("denoiser", "shape", "num_classes", "sigma_min", "sigma_max", "sigmas"):
            if not hasattr(model, attr):
                raise GenerateError(f"model must be a model spec or a LoadedModel; {model!r} has no {attr}",
                                    "model")
        return model
    from .models import ModelError, load_model

    try:
        return load_model(str(model), device=device, dtype=dtype, trust_pickle=trust_pickle)
    except ModelError as e:
        raise GenerateError(_one_line(e), "model") from None


def _steps(spec, steps, nfe) -> tuple[int, int | None]:
    if steps is not None and nfe is not None:
        raise GenerateError("give steps or an NFE budget, not both")
    if nfe is not None:
        nfe = _positive_int(nfe, "the NFE budget", "nfe")
        try:
            steps = samplers.steps_for_nfe(spec.name, nfe)
        except ValueError as e:
            raise GenerateError(_one_line(e), "nfe") from None
    else:
        steps = _positive_int(DEFAULT_STEPS if steps is None else steps, "steps", "steps")
    return steps, None if spec.adaptive else spec.nfe(steps)


def schedule_sigmas(model, name: str, steps: int, sigma_min=None, sigma_max=None,
                    rho=None) -> tuple[torch.Tensor, dict[str, Any]]:
    """The float64 CPU sigmas of schedule ``name`` for ``steps`` steps on ``model``, and the options given.

    ``name`` is a registered schedule or ``file:PATH`` (a schedule file, see ``tools.schedule_file``).
    The range defaults to the model's; table schedules get the model's ``sigmas``. Raises
    :class:`GenerateError` with a one-line message.
    """
    from .schedule_file import ScheduleFileError, file_path, load_schedule

    try:
        path = file_path(name)
        if path is not None:
            if sigma_min is not None or sigma_max is not None or rho is not None:
                raise GenerateError("a schedule file fixes its own sigmas: drop sigma_min, sigma_max and rho",
                                    "schedule")
            return load_schedule(path)(steps), {}
        spec = schedules.spec(name)
    except (ScheduleFileError, ValueError) as e:
        if isinstance(e, GenerateError):
            raise
        raise GenerateError(_one_line(e), "schedule") from None
    options: dict[str, Any] = {}
    if rho is not None:
        if "rho" not in spec.options:
            having = [n for n in schedules.list() if "rho" in schedules.spec(n).options]
            raise GenerateError(f"schedule {name!r} has no rho (schedules with rho: {', '.join(having)})",
                                "rho")
        options["rho"] = rho
    kwargs = dict(options)
    if spec.needs_table:
        if getattr(model, "sigmas", None) is None:
            raise GenerateError(f"schedule {name!r} picks levels from a discrete-time model's sigma table; "
                                "this model has none (use e.g. karras)", "schedule")
        kwargs["sigmas"] = model.sigmas
    sigma_min = model.sigma_min if sigma_min is None else sigma_min
    sigma_max = model.sigma_max if sigma_max is None else sigma_max
    try:
        sigmas = spec.fn(steps, sigma_min, sigma_max, **kwargs)
    except ValueError as e:  # a bad range or option value: a combination of arguments
        raise GenerateError(_one_line(e)) from None
    return sigmas.to("cpu", torch.float64), options


def _check_sampler(name: str, options: Mapping[str, Any], sigmas: torch.Tensor) -> None:
    """Run the sampler on a 1x1 zero problem: rejects unknown or invalid options before any real work."""
    x = torch.zeros(1, 1, dtype=torch.float64)
    for key, value in options.items():
        if isinstance(value, float) and math.isnan(value):
            raise GenerateError(f"option {key} must be a number, got nan", "options")
    try:
        samplers.sample(lambda x, sigma, **cond: torch.zeros_like(x), x, sigmas, name, seeds=[0], **options)
    except ValueError as e:
        raise GenerateError(_one_line(e), "options") from None
    except Exception as e:  # e.g. ZeroDivisionError from a degenerate option value
        raise GenerateError(f"sampler {name!r} fails with options {options}: "
                            f"{type(e).__name__}: {_one_line(e)}", "options") from None


def _cond(model, seeds: Sequence[int], class_label: int | None, device, dtype) -> dict[str, torch.Tensor]:
    """``{"class_labels": one-hot [B, K]}`` for a class-conditional model, ``{}`` otherwise."""
    if not model.num_classes:
        return {}
    if class_label is None:
        labels = class_labels(seeds, model.num_classes, model.shape, device=device)
    else:
        labels = torch.full((len(seeds),), int(class_label), dtype=torch.int64, device=device)
    return {"class_labels": torch.nn.functional.one_hot(labels, model.num_classes).to(dtype)}


def prepare(model, seeds, outdir, *, sampler: str = "heun", schedule: str = "karras",
            steps: int | None = None, nfe: int | None = None, options: Mapping[str, Any] | None = None,
            sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
            batch: int = 64, class_label: int | None = None, guidance: float = 0.0, subdirs: bool = False,
            grid=None, overwrite: bool = False, device=None, dtype=torch.float32, progress: bool = True,
            trust_pickle: bool = False) -> Plan:
    """Check every argument of :func:`generate` and return the job; raises :class:`GenerateError`.

    Nothing is written. The model is loaded (when given as a spec), the schedule computed, the
    sampler run once on a 1x1 zero problem (checks its options) and the guided denoiser evaluated
    once on one sample (checks the model, its dtype on this device, class labels and guidance).
    """
    try:
        seeds = parse_seeds(seeds)
    except ValueError as e:
        raise GenerateError(str(e), "seeds") from None
    try:
        spec = samplers.get(sampler)
    except ValueError as e:
        raise GenerateError(_one_line(e), "sampler") from None
    steps, nfe_per_image = _steps(spec, steps, nfe)
    batch = _positive_int(batch, "batch", "batch")
    device = _resolve_device(device)
    dtype = _resolve_dtype(dtype)
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise GenerateError(f"guidance must be a number, got {guidance!r}", "guidance") from None
    if not math.isfinite(guidance):
        raise GenerateError(f"guidance must be finite, got {guidance}", "guidance")
    options = dict(options or {})
    for key in options:
        if key not in spec.options:
            valid = ", ".join(spec.options) or "none"
            raise GenerateError(f"sampler {sampler!r} has no option {key}; its options: {valid}", "options")

    model = _load(model, device, dtype, trust_pickle)
    shape = tuple(int(s) for s in model.shape)
    if len(shape) != 3 or shape[0] not in PNG_MODES:
        raise GenerateError(f"cannot write images of shape {list(shape)} as PNG (need [C, H, W], C in 1..4)",
                            "model")
    if class_label is not None:
        if isinstance(class_label, bool) or not isinstance(class_label, (int, np.integer)):
            raise GenerateError(f"class must be an integer, got {class_label!r}", "class_label")
        if not model.num_classes:
            raise GenerateError("this model is unconditional: it takes no class", "class_label")
        if not 0 <= class_label < model.num_classes:
            raise GenerateError(f"class {class_label} is out of range: this model has classes "
                                f"0..{model.num_classes - 1}", "class_label")
        class_label = int(class_label)
    if guidance and not model.num_classes:
        raise GenerateError("classifier-free guidance needs a class-conditional model; this one is "
                            "unconditional", "guidance")

    sigmas, schedule_options = schedule_sigmas(model, schedule, steps, sigma_min, sigma_max, rho)
    _check_sampler(spec.name, options, sigmas)

    outdir = Path(outdir).expanduser()
    check_writable_dir(outdir, "outdir")
    if grid is not None:
        grid = Path(grid).expanduser()
        if grid.is_dir():
            raise GenerateError(f"grid path {grid} is a directory; give a file name such as grid.png", "grid")
        check_writable_dir(grid.parent, "grid")

    denoiser = model.denoiser
    if dtype != _state_dtype(dtype):
        denoiser = _ModelDtype(denoiser, dtype)
    if guidance:
        denoiser = ClassifierFreeGuidance(denoiser, guidance)
    plan = Plan(model=model, seeds=seeds, outdir=outdir, sampler=spec.name, options=options,
                schedule=schedule, schedule_options=schedule_options, sigmas=sigmas, steps=steps,
                nfe=nfe_per_image, batch=batch,
                class_label=class_label, guidance=guidance, subdirs=bool(subdirs), grid=grid,
                overwrite=bool(overwrite), device=device, dtype=dtype, progress=bool(progress),
                denoiser=denoiser)
    _check_denoiser(plan)
    return plan


def _check_denoiser(plan: Plan) -> None:
    """One evaluation of the (guided) denoiser on one sample at sigma_max: fails fast and cleanly."""
    seeds = plan.seeds[:1]
    x = torch.zeros((1, *plan.model.shape), device=plan.device, dtype=plan.state_dtype)
    sigma = torch.full((1,), float(plan.sigmas[0]), device=plan.device, dtype=plan.state_dtype)
    cond = _cond(plan.model, seeds, plan.class_label, plan.device, plan.state_dtype)
    try:
        with torch.no_grad():
            out = plan.denoiser(x, sigma, **cond)
    except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
        raise GenerateError(f"the model fails on this input ({plan.device}, {_dtype_name(plan.dtype)}): "
                            f"{_one_line(e)}", "model") from None
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise GenerateError(f"the model returns {got} for an input of shape {list(x.shape)}", "model")


# ---------------------------------------------------------------------------------------------------
# Running


class Ranks:
    """This process's place among the torchrun workers; sets up torch.distributed when needed."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self._owned = False
        self._device = torch.device("cpu")

    def start(self, device: torch.device) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
            self._owned = True
        if dist.is_available() and dist.is_initialized():
            self.world, self.rank = dist.get_world_size(), dist.get_rank()
            self._device = device if dist.get_backend() == "nccl" else torch.device("cpu")

    @property
    def distributed(self) -> bool:
        import torch.distributed as dist

        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self._device.type == "cuda":
                dist.barrier(device_ids=[self._device.index])
            else:
                dist.barrier()

    def total(self, *counts: int) -> list[int]:
        if not self.distributed:
            return list(counts)
        import torch.distributed as dist

        values = torch.tensor(counts, dtype=torch.int64, device=self._device)
        dist.all_reduce(values)
        return [int(v) for v in values.tolist()]

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._owned = False


@dataclass
class Summary:
    """What a run did (totals over all ranks)."""

    written: int
    skipped: int
    outdir: Path
    grid: Path | None
    grid_size: tuple[int, int] | None
    plan: Plan = field(repr=False)
    rank: int = 0  # this process's rank (the totals are the same on every rank)

    @property
    def total(self) -> int:
        return self.written + self.skipped

    def line(self) -> str:
        text = f"{self.written} images written, {self.skipped} skipped (already there), in {self.outdir}"
        if self.grid is not None and self.grid_size is not None:  # the grid is rank 0's
            text += f"; grid {self.grid_size[0]}x{self.grid_size[1]} in {self.grid}"
        return text


def sample_images(plan: Plan, seeds: list[int]) -> np.ndarray:
    """uint8 ``[B, H, W, C]`` images of ``seeds``."""
    device, dtype = plan.device, plan.state_dtype
    x = samplers.noise.latents(seeds, plan.model.shape, device=device, dtype=torch.float32).to(dtype)
    x = x * float(plan.sigmas[0])
    cond = _cond(plan.model, seeds, plan.class_label, device, dtype)
    images = samplers.sample(plan.denoiser, x, plan.sigmas, plan.sampler, seeds=seeds, cond=cond,
                             **plan.options)
    return to_uint8(images)


def run(plan: Plan) -> Summary:
    """Sample and write the images of ``plan`` (this rank's share under torchrun); the grid on rank 0."""
    from tqdm import tqdm

    ranks = Ranks()
    ranks.start(plan.device)
    try:
        mine = plan.seeds[ranks.rank::ranks.world]
        _remove_stale_temporaries(mine, plan.outdir, plan.subdirs)
        todo = [s for s in mine if plan.overwrite or not plan.path(s).is_file()]
        plan.outdir.mkdir(parents=True, exist_ok=True)
        written = 0
        desc = plan.sampler if ranks.world == 1 else f"{plan.sampler} (rank 0 of {ranks.world})"
        with tqdm(total=len(todo), desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                  disable=not plan.progress or ranks.rank != 0) as bar:
            for start in range(0, len(todo), plan.batch):
                chunk = todo[start:start + plan.batch]
                for seed, image in zip(chunk, sample_images(plan, chunk)):
                    write_png(plan.path(seed), image)
                    written += 1
                bar.update(len(chunk))
        written, skipped = ranks.total(written, len(mine) - len(todo))
        ranks.barrier()  # every rank's PNGs are in place
        grid_size = None
        if plan.grid is not None and ranks.rank == 0:
            grid_size = write_grid([plan.path(s) for s in plan.seeds], plan.grid, plan.model.shape)
        ranks.barrier()
    finally:
        ranks.close()
    return Summary(written=written, skipped=skipped, outdir=plan.outdir, grid=plan.grid, grid_size=grid_size,
                   plan=plan, rank=ranks.rank)


def generate(model, seeds, outdir, *, sampler: str = "heun", schedule: str = "karras",
             steps: int | None = None, nfe: int | None = None, options: Mapping[str, Any] | None = None,
             sigma_min: float | None = None, sigma_max: float | None = None, rho: float | None = None,
             batch: int = 64, class_label: int | None = None, guidance: float = 0.0, subdirs: bool = False,
             grid=None, overwrite: bool = False, device=None, dtype=torch.float32, progress: bool = True,
             trust_pickle: bool = False) -> Summary:
    """Write one PNG per seed of ``model`` into ``outdir``; return what was written.

    Args:
        model: a model spec for :func:`tools.models.load_model` (``"digits"``, a checkpoint path,
            ``"diffusers:DIR"``, a ``.pkl`` with ``trust_pickle``) or a loaded ``LoadedModel``.
        seeds: NVlabs syntax (``"0-63,100"``) or a list of ints; one image per seed.
        sampler, options: a registered sampler and the options to override (``samplers.get(name).options``).
        schedule, rho, sigma_min, sigma_max: the sigma schedule; the range defaults to the model's and
            table schedules get the model's ``sigmas``.
        steps, nfe: the number of steps (default 18) or an NFE budget (the most steps within it).
        batch: images per denoiser batch (changes speed, not images).
        class_label: the class of every image; None draws one per seed (class-conditional models).
        guidance: classifier-free guidance weight w (0: none; diffusers' guidance_scale = 1 + w).
        subdirs: one folder per 1000 seeds. grid: also tile all images into this PNG.
        overwrite: re-create existing PNGs (default: skip them, so an interrupted run resumes).
        device, dtype: where and in which precision the model runs (the sampler's state stays in float32,
            or float64 for a float64 model). Default device: cuda when available, else cpu.
    """
    return run(prepare(model, seeds, outdir, sampler=sampler, schedule=schedule, steps=steps, nfe=nfe,
                       options=options, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho, batch=batch,
                       class_label=class_label, guidance=guidance, subdirs=subdirs, grid=grid,
                       overwrite=overwrite, device=device, dtype=dtype, progress=progress,
                       trust_pickle=trust_pickle))
