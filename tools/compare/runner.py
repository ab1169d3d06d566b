"""``run_bench``: every sampler x schedule x NFE budget on the same seeds, measured, and written to a folder.

``prepare_bench(...)`` checks every argument and plans the cells (nothing is written and the model is not
sampled yet); ``Bench.run()`` computes what is missing, writing the outputs after every finished cell so
that an interrupted run resumes where it stopped. ``run_bench(...)`` is both.

Every cell samples the same seeds: the latents of ``samplers.noise.latents`` and, for class-conditional
models, the class labels ``edm generate`` draws, so a cell's samples are the images ``edm generate`` writes
with that sampler, schedule and step count.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

import samplers
from tools.common import BadInput, check_writable_dir, one_line, positive_int
from tools.device import dtype_name, resolve_device, resolve_dtype, state_dtype
from tools.generate.prompts import check_prompting, guidance_or_default
from tools.generate.sampling import check_guidance, check_sampler, fitted_steering
from tools.images import to_uint8
from tools.ode import ReferenceCache, rms_error
from tools.request import Prompting, SamplingRequest
from tools.schedules.steps import DIFFUSERS_SCHEDULE, resize_model, schedule_sigmas
from tools.seeds import format_seeds, parse_seeds
from tools.solvers.use import check_fitted_use, read_fitted, special_sampler
from tools.steering import check_steering

from .grid import Cell, fitted_cell, parse_budgets, plan_cells
from .inputs import (
    BenchError,
    Conditioning,
    as_loaded,
    check_model,
    fd_reference,
    in_precision,
    is_digits,
    load_spec,
)
from .metrics import SamplerTraits, Stopwatch, has_metric, parse_metrics, sampler_traits
from .resume import conflicts, merge_settings, plain, read_previous, reusable_metrics

__all__ = ["DEFAULT_NFE", "Bench", "BenchRequest", "prepare_bench", "run_bench"]

DEFAULT_NFE = (5, 10, 20, 50)
DEFAULT_NUM = 64
DEFAULT_ODE_NUM = 16  # the exact-ODE reference is expensive: by default the ode metric uses this many seeds


@contextlib.contextmanager
def _bench_errors(param: str | None = None):
    """The pipeline's BadInput and the parsers' ValueError as BenchError naming ``param``."""
    try:
        yield
    except BenchError:
        raise
    except BadInput as e:
        raise BenchError(str(e), param or e.param, terms=e.terms) from None
    except ValueError as e:
        raise BenchError(one_line(e), param) from None


def _time_on(metrics: Sequence[str]) -> str:
    """The pass ``time`` measures: the fd/time sampling pass, or the float64 ode pass if there is no other."""
    return "ode" if "ode" in metrics and "fd" not in metrics else "sampling"


@dataclass
class Bench:
    """A checked, planned benchmark (see :func:`prepare_bench`); :meth:`run` does the work."""

    cells: list[Cell]
    metrics: tuple[str, ...]
    settings: dict[str, Any]
    models: dict[torch.dtype, Any]  # the model in each precision a pass runs in (LoadedModel)
    cond: Conditioning
    seeds: list[int]
    ode_num: int | None
    batch: int
    device: torch.device
    dtype: torch.dtype
    options: dict[str, dict[str, Any]]
    traits: dict[str, SamplerTraits]
    fd: tuple | None = None  # (detector, mu, sigma) of the reference
    out: Path | None = None
    previous: list[dict[str, Any]] = field(default_factory=list)
    progress: bool = False
    corrector: Any = None  # samplers.langevin.LangevinCorrector run before every step, or None
    per_call: int = 1  # network passes per denoiser call (2 under guidance)
    loaded: Any = None  # the model before guidance/steering wrap its denoiser: what its fingerprint is of
    solvers: dict[str, Any] = field(default_factory=dict)  # file:PATH -> its fitted solver (LinearSolver)
    computed: int = 0  # cells (re)computed by run()
    written: list[Path] = field(default_factory=list)  # the output files of the last write
    _references: ReferenceCache | None = field(default=None, repr=False)

    def describe(self) -> str:
        """One line: what will be measured on what."""
        axes = ("sampler", "schedule", "budget")
        sizes = [(len({getattr(cell, axis) for cell in self.cells}), axis) for axis in axes]
        grid = " x ".join(f"{n} {axis}{'s' if n > 1 else ''}" for n, axis in sizes)
        dtype = str(self.dtype).removeprefix("torch.")
        text = self.settings.get("text")
        if text:
            lines = text["prompts"]
            grid += f", {lines[0]!r}" if len(lines) == 1 else f", {len(lines)} prompts"
            grid += f" at {text['width']}x{text['height']}"
        return (f"{len(self.cells)} cells ({grid}), {', '.join(self.metrics)} on {len(self.seeds)} samples, "
                f"{self.device} {dtype}" + (f" -> {self.out}" if self.out else ""))

    # -- running

    def run(self) -> list[dict[str, Any]]:
        """Compute every missing metric of every cell; return the cells of this run's grid.

        The outputs (when ``out`` is set) hold these and the previous run's other cells.
        """
        from tqdm import tqdm

        records = {_key(cell): cell for cell in self.previous}
        for cell in self.cells:
            records[cell.key] = self._record(cell, records.get(cell.key))
        todo = [cell for cell in self.cells if self._missing(records[cell.key])]
        if todo:
            self._check_models()
        with tqdm(total=len(todo), desc="bench", unit="cell", file=sys.stderr, dynamic_ncols=True,
                  disable=not self.progress) as bar:
            for cell in todo:
                bar.set_postfix_str(f"{cell.sampler} {cell.schedule} NFE<={cell.budget}")
                record = records[cell.key]
                record.update(self._measure(cell, self._missing(record)))
                self._write(list(records.values()), plots=False)
                bar.update()
        self.computed = len(todo)
        self.written = self._write(list(records.values()), plots=True)
        return [records[cell.key] for cell in self.cells]

    def _record(self, cell: Cell, old: Mapping[str, Any] | None) -> dict[str, Any]:
        record = cell.record(stochastic=self.traits[cell.sampler].stochastic or self.corrector is not None,
                             num=len(self.seeds), per_call=self.per_call)
        record.update(reusable_metrics(old, record))
        return record

    def _missing(self, record: Mapping[str, Any]) -> list[str]:
        if record["status"] != "ok":
            return []
        return [metric for metric in self.metrics if not has_metric(record, metric)]

    def _check_models(self) -> None:
        for dtype, model in self.models.items():
            why = " for the ode metric" if dtype == torch.float64 and "ode" in self.metrics else ""
            check_model(model, self.cond, dtype, self.device, why)

    def _write(self, cells: list[dict[str, Any]], *, plots: bool) -> list[Path]:
        if self.out is None:
            return []
        from .outputs import write_outputs

        return write_outputs(self.out, cells, settings=self.settings, plots=plots)

    # -- measuring one cell

    def _measure(self, cell: Cell, missing: Sequence[str]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        ode = "ode" in missing and not self.traits[cell.sampler].stochastic and self.corrector is None
        timed_pass = _time_on(self.metrics) if "time" in missing else None
        if ode or timed_pass == "ode":
            watch = Stopwatch(self.device)
            ode_seeds = self.seeds[:self.ode_num]
            result = torch.cat(list(self._sample(cell, torch.float64, ode_seeds, watch)))
            if ode:
                values["ode_rmse"] = rms_error(result, self._reference(cell))
            if timed_pass == "ode":
                values.update(watch.metrics(len(ode_seeds)))
        if "fd" in missing or timed_pass == "sampling":
            watch = Stopwatch(self.device)
            batches = self._sample(cell, self.dtype, self.seeds, watch)
            if "fd" in missing:
                values.update(fd=self._fd(batches), detector=self.fd[0].name)
            else:
                collections.deque(batches, maxlen=0)  # sample only, for the clock
            if timed_pass == "sampling":
                values.update(watch.metrics(len(self.seeds)))
        return values

    def _latents(self, seeds: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        # NVlabs' stream, as edm generate draws it: the same noise in every precision
        return samplers.noise.latents(seeds, self.cond.model.shape, device=self.device, dtype=dtype)

    def _sample(self, cell: Cell, dtype: torch.dtype, seeds: Sequence[int],
                watch: Stopwatch) -> Iterator[torch.Tensor]:
        """The cell's samples of ``seeds``, batch by batch, the model in ``dtype``; ``watch`` times them."""
        denoiser = watch.wrap(self.models[dtype].denoiser)
        state = state_dtype(dtype)
        options = self.options.get(cell.sampler, {})
        for start in range(0, len(seeds), self.batch):
            chunk = seeds[start:start + self.batch]
            x = self._latents(chunk, state) * float(cell.sigmas[0])
            cond = self.cond(start, start + len(chunk), state)
            with watch.running():
                runs = self.solvers.get(cell.sampler, cell.sampler)
                result = samplers.sample(denoiser, x, cell.sigmas, runs, seeds=chunk, cond=cond,
                                         langevin=self.corrector, **options)
            yield result

    def _reference(self, cell: Cell) -> torch.Tensor:
        """The exact-ODE result for the ode seeds over the cell's schedule, ending as its sampler ends."""
        if self._references is None:
            seeds = self.seeds[:self.ode_num]
            self._references = ReferenceCache(self.models[torch.float64].denoiser,
                                              self._latents(seeds, torch.float64),
                                              self.cond(0, len(seeds), torch.float64))
        lands_on_zero = self.traits[cell.sampler].lands_on_zero
        return self._references(cell.sigmas if lands_on_zero else cell.sigmas[:-1])

    def _images(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The images of the samples, batch by batch: a latent model's latents decoded by its autoencoder
        (float32, about [-1, 1]), as ``edm generate`` writes them; anything else as it is."""
        autoencoder = getattr(self.models[self.dtype], "autoencoder", None)
        for x in batches:
            # decode() runs without gradients itself: a `with torch.no_grad()` around this yield would
            # leave gradients off in the caller while the generator is suspended
            yield x if autoencoder is None else autoencoder.decode(x)

    def _fd(self, batches: Iterator[torch.Tensor]) -> float:
        """The cell's FD (in pixel space: a latent model's samples decoded first) through the FID library's
        ``score``, with the detector and reference loaded once."""
        from tools.fid import score

        detector, mu_ref, sigma_ref = self.fd
        images = (torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2) for x in self._images(batches))  # uint8
        result = score(images, (mu_ref, sigma_ref), ("fd",), detector=detector, device=self.device,
                       batch=self.batch)
        return result[f"fd_{detector.name}"]


def _key(record: Mapping[str, Any]) -> tuple[str, str, int]:
    return record["sampler"], record["schedule"], record["nfe_budget"]


# ---------------------------------------------------------------------------------------------------
# Checking the arguments


def _names(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return list(dict.fromkeys(str(item).strip() for item in items if str(item).strip()))


def _sampler_names(value: str | Sequence[str]) -> list[str]:
    names = _names(value)
    if not names:
        raise BenchError("no sampler given", "samplers")
    if names == ["all"]:
        return samplers.list()
    with _bench_errors("samplers"):
        return [name if special_sampler(name) == "file" else samplers.get(name).name for name in names]


def _fitted(names: Sequence[str], options: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """file:PATH -> its ``tools.solvers.use.Fitted`` (read and checked; no options for it)."""
    fitted = {}
    for name in names:
        if special_sampler(name) == "file":
            with _bench_errors("samplers"):
                fitted[name] = read_fitted(name, options=options.get(name))
    return fitted


def _check_fitted_budgets(fitted: Mapping[str, Any], budgets: Sequence[int]) -> None:
    """BenchError naming --nfe for a solver file that runs at none of the budgets: all its cells would be
    skipped, leaving a result without a number. Among other budgets it runs at its own (the others are
    skipped cells saying why), so one grid compares it with registered samplers at several budgets."""
    for name, one in fitted.items():
        nfe = one.solver.nfe
        if nfe not in budgets:
            listed = " or ".join(filter(None, [", ".join(map(str, budgets[:-1])), str(budgets[-1])]))
            raise BenchError(f"solver file {name.removeprefix('file:')} runs at {nfe} NFE, not at {listed}: "
                             f"add its budget (--nfe {nfe}) or fit one with edm tune-solver", "nfe")


def _check_no_range(sampling: SamplingRequest) -> None:
    """BenchError naming --sigma-min, --sigma-max or --rho when only fitted solvers are benchmarked: they
    run at their own levels, so the flag would change nothing."""
    for name in ("sigma_min", "sigma_max", "rho"):
        if getattr(sampling, name) is not None:
            raise BenchError(f"fitted solvers bring their own noise levels: drop --{name.replace('_', '-')} "
                             "(it applies to registered samplers)", name)


def _sampler_options(options: Mapping[str, Mapping[str, Any]] | None, names: Sequence[str]) -> dict:
    """Per-sampler option overrides, each checked by a run on a 1x1 zero problem."""
    checked = {}
    for name, given in (options or {}).items():
        if name not in names:
            raise BenchError(f"options given for sampler {name!r}, which is not benchmarked", "options")
        with _bench_errors("options"):
            check_sampler(name, dict(given), samplers.schedules.get("karras")(2, 0.1, 10.0))
        checked[name] = dict(given)
    return checked


def _seeds(seeds, num) -> list[int]:
    if seeds is None:
        with _bench_errors("num"):
            return list(range(DEFAULT_NUM if num is None else positive_int(num, "num", "num")))
    with _bench_errors("seeds"):
        seeds = parse_seeds(seeds)
    if num is not None and num != len(seeds):
        raise BenchError(f"num is {num} but {len(seeds)} seeds are given: give one or the other", "num")
    return seeds


def _ode_num(ode_num, metrics: Sequence[str], seeds: Sequence[int]) -> int | None:
    if "ode" not in metrics:
        return None
    if ode_num is None:
        return min(len(seeds), DEFAULT_ODE_NUM)
    with _bench_errors("ode_num"):
        ode_num = positive_int(ode_num, "ode_num", "ode_num")
    if ode_num > len(seeds):
        raise BenchError(f"ode_num {ode_num} is more than the {len(seeds)} samples", "ode_num")
    return ode_num


def _out(out) -> Path | None:
    if out is None:
        return None
    out = Path(out).expanduser()
    with _bench_errors("out"):
        check_writable_dir(out, "out")
    return out


def _precisions(metrics: Sequence[str], dtype: torch.dtype) -> list[torch.dtype]:
    """ode runs in float64; fd, and time unless measured on the ode pass, in the run's dtype."""
    needed = [dtype] if "fd" in metrics or ("time" in metrics and _time_on(metrics) == "sampling") else []
    return list(dict.fromkeys([*needed, *([torch.float64] if "ode" in metrics else [])]))


def _sigmas(model, name: str, rho: float | None, steps: int) -> torch.Tensor:
    return schedule_sigmas(model, name, steps, rho=rho)[0]


def _schedules(value: str | Sequence[str], model, steps: int, rho: float | None = None) -> dict[str, Any]:
    """Name -> steps -> sigmas; each one tried once, so unknown names and schedules that cannot serve this
    model (table schedules on a continuous one) are usage errors, not a grid of skipped cells."""
    schedules = {name: functools.partial(_sigmas, model, name, rho) for name in _names(value)}
    if not schedules:
        raise BenchError("no schedule given", "schedules")
    if DIFFUSERS_SCHEDULE in schedules:
        raise BenchError(f"edm bench does not take --schedule {DIFFUSERS_SCHEDULE} (its sigmas, start and "
                         "end follow each sampler's diffusers counterpart); compare samplers on a shared "
                         "schedule such as karras", "schedules")
    for schedule in schedules.values():
        with _bench_errors("schedules"):
            schedule(steps)
    return schedules


def _prompted(raw: Mapping[torch.dtype, Any], prompting: Prompting | None) -> tuple[dict, dict]:
    """Each pass's model at the asked size and its checked prompts (None for a model without text), as
    ``edm generate`` checks them (BadInput naming the flag: a text model without a prompt, a prompt given to
    a model without text, a size the model cannot take)."""
    checked = {p: check_prompting(prompting, model, resize_model) for p, model in raw.items()}
    return ({p: model for p, (model, _) in checked.items()},
            {p: prompts for p, (_, prompts) in checked.items()})


def _time_label(metrics: Sequence[str], dtype: torch.dtype) -> str | None:
    if "time" not in metrics:
        return None
    if _time_on(metrics) == "ode":
        return "the ode pass: the first ode_num seeds, float64"
    return f"the sampling pass: all seeds, {str(dtype).removeprefix('torch.')}"


#: settings beyond tools.compare.resume's that must match too: a text model's prompts and image size
_SAME_TOO = ("text", "image_shape")


def _resume(out: Path | None, settings: dict[str, Any], overwrite: bool) -> tuple[list, dict[str, Any]]:
    """The previous run's cells in ``out`` and the settings of all cells; a usage error if they disagree."""
    settings = plain(settings)
    if out is None or overwrite:
        return [], settings
    old, cells = read_previous(out)
    if not old and not cells:
        return [], settings
    differences = conflicts(old, settings)
    differences += [f"{key}: {old.get(key)!r} there, {settings.get(key)!r} here" for key in _SAME_TOO
                    if old.get(key) != settings.get(key)]
    if differences:
        raise BenchError(f"{out} holds a benchmark with other settings ({'; '.join(differences)}); "
                         "use another --out or --overwrite", "out")
    return cells, merge_settings(old, settings)


@dataclass(frozen=True, kw_only=True)
class BenchRequest:
    """What a benchmark asks (unchecked): a sampling request whose model, range, class, guidance, steering,
    text, device and dtype every cell shares, and the grid and measurements (see :func:`run_bench` for each
    field's meaning). ``shape``, ``sigmas``, ``cond`` and ``name`` describe a plain denoiser callable given
    as the model."""

    sampling: SamplingRequest
    samplers: str | Sequence[str] = "all"
    schedules: str | Sequence[str] = ("karras",)
    nfe: str | int | Sequence[int] = DEFAULT_NFE
    metrics: str | Sequence[str] = ("ode", "time")
    num: int | None = None
    seeds: Any = None
    ode_num: int | None = None
    options: Mapping[str, Mapping[str, Any]] | None = None
    batch: int = 64
    detector: str | None = None
    detector_weights: Any = None
    ref: Any = None
    out: Any = None
    overwrite: bool = False
    progress: bool = False
    shape: Any = None
    sigmas: Any = None
    cond: Mapping[str, Any] | None = None
    name: str | None = None

    @classmethod
    def of(cls, model, **fields: Any) -> BenchRequest:
        """The request of :func:`run_bench`'s keywords: those of :class:`tools.request.SamplingRequest`
        (``options`` and ``nfe`` excepted: here they are per sampler and a list) go to ``sampling``."""
        own = {f.name for f in dataclasses.fields(cls)}
        shared = {key: fields.pop(key) for key in list(fields) if key not in own}
        return cls(sampling=SamplingRequest(model=model, **shared), **fields)


def prepare_bench(request: BenchRequest) -> Bench:
    """Check every field of ``request`` and plan its cells; raises :class:`BenchError`."""
    r, sampling = request, request.sampling
    model, steering, guidance = sampling.model, sampling.steering, sampling.guidance
    sigma_min, sigma_max, rho = sampling.sigma_min, sampling.sigma_max, sampling.rho
    with _bench_errors("metrics"):
        metrics = parse_metrics(r.metrics)
    with _bench_errors("nfe"):
        budgets = parse_budgets(r.nfe)
    sampler_names = _sampler_names(r.samplers)
    fitted = _fitted(sampler_names, r.options or {})
    if len(fitted) == len(sampler_names):
        _check_no_range(sampling)
    _check_fitted_budgets(fitted, budgets)
    options = _sampler_options(r.options, [n for n in sampler_names if n not in fitted])
    seeds = _seeds(r.seeds, r.num)
    ode_num = _ode_num(r.ode_num, metrics, seeds)
    if "fd" in metrics and len(seeds) < 2:
        raise BenchError("the fd metric needs at least 2 samples", "num")
    with _bench_errors():
        batch = positive_int(r.batch, "batch", "batch")
        device, dtype = resolve_device(sampling.device), resolve_dtype(sampling.dtype)
    out = _out(r.out)

    loaded = as_loaded(model, shape=r.shape, sigma_min=sigma_min, sigma_max=sigma_max, sigmas=r.sigmas,
                       name=r.name)
    precisions = _precisions(metrics, dtype)
    raw = {p: loaded if loaded is not None else load_spec(model, p, device, sampling.trust_pickle)
           for p in precisions}
    with _bench_errors():
        # a text model at the asked size, with its prompts (each pass encodes with its own model)
        raw, prompts = _prompted(raw, sampling.prompting)
        text = prompts[precisions[0]]
        guidance = check_guidance(raw[precisions[0]], guidance_or_default(guidance, raw[precisions[0]], text))
        if steering is not None and (steering.init_image is not None or steering.mask is not None):
            raise BenchError("edm bench compares samplers on generation: it takes no --init-image/--mask",
                             "init_image")
        steers = {p: check_steering(steering, raw[p], guidance=guidance, class_label=sampling.class_label,
                                    device=device, dtype=p, trust_pickle=sampling.trust_pickle,
                                    prompts=prompts[p])
                  for p in precisions}
        for name in sampler_names:  # a kind may need what only some samplers have (CFG++)
            spec = fitted[name].solver.spec if name in fitted else samplers.get(name)
            steers[precisions[0]].check_sampler(spec)
    for one in fitted.values():  # each solver file is for this model, guidance weight and thresholding
        with _bench_errors():  # all cells share the steering: a solver's is checked, not filled in
            check_fitted_use(one, raw[precisions[0]], guidance or 0.0)
            fitted_steering(one, steering, fill_in=False)
    precise = {p: in_precision(raw[p], p) for p in precisions}
    models = {p: replace(precise[p], denoiser=steers[p].denoiser(precise[p], p)) for p in precisions}
    steer = steers[precisions[0]]
    class_label = steer.class_label
    if steer.corrector is not None and "ode" in metrics:
        raise BenchError("a Langevin corrector makes every sampler stochastic: the ode metric does not apply "
                         "(use --metrics fd,time)", "metrics")
    base = next(iter(models.values()))  # its sigma range is the schedules'
    base = replace(base, sigma_min=base.sigma_min if sigma_min is None else float(sigma_min),
                   sigma_max=base.sigma_max if sigma_max is None else float(sigma_max))
    schedule_fns = _schedules(r.schedules, base, budgets[0], rho)
    conditioning = Conditioning(base, seeds, device, r.cond, class_label, steer.num_classes,
                                prompts={state_dtype(p): prompts[p] for p in precisions if text is not None})
    fd = detector_name = ref_name = None
    ref = r.ref
    if "fd" in metrics:
        if ref is None and not is_digits(model, base):
            raise BenchError("the fd metric needs a reference (--ref): statistics .npz or a set of images",
                             "ref")
        ref = "digits" if ref is None else ref
        detector_fn, mu, sigma, ref_name = fd_reference(ref, base.image_shape, detector=r.detector,
                                                        detector_weights=r.detector_weights, device=device,
                                                        batch=batch)
        if ref == "digits":  # the shipped statistics by name, not by this install's path: results resume
            ref_name = "digits"  # from any checkout (the detector setting tells the two digits refs apart)
        fd, detector_name = (detector_fn, mu, sigma), detector_fn.name

    settings = {
        "model": str(model) if loaded is None else loaded.source, "shape": list(base.shape),
        "sigma_min": base.sigma_min, "sigma_max": base.sigma_max, "seeds": format_seeds(seeds),
        "num": len(seeds), "ode_num": ode_num, "dtype": dtype_name(dtype),
        "device": device.type, "detector": detector_name, "ref": ref_name,
        "time_measured_on": _time_label(metrics, dtype), "samplers": sampler_names,
        "schedules": list(schedule_fns), "nfe": budgets, "metrics": list(metrics), "options": options,
        "batch": batch, "rho": rho, "class": class_label, "guidance": guidance or None,
    }
    if steering is not None and steering.given():
        settings["steering"] = steering.given()
    if text is not None:  # results with other prompts, or at another size, are not mixed on resume
        settings["text"] = text.record()
    if base.autoencoder is not None:  # fd's images are the decoded latents
        settings["image_shape"] = list(base.image_shape)
    previous, settings = _resume(out, settings, r.overwrite)
    # a fitted solver is deterministic and ends with the denoised mix, at sigma = 0
    traits = {s: SamplerTraits(stochastic=False, lands_on_zero=True) if s in fitted
              else sampler_traits(s, options.get(s)) for s in sampler_names}
    corrector_steps = steer.corrector.steps if steer.corrector is not None else 0
    if fitted and corrector_steps:
        raise BenchError("a fitted solver runs as fitted: it takes no corrector", "corrector")
    registered = [s for s in sampler_names if s not in fitted]
    cells = plan_cells(registered, schedule_fns, budgets, options, corrector_steps)
    cells += [fitted_cell(name, one.solver, budget) for name, one in fitted.items() for budget in budgets]
    return Bench(cells=cells, metrics=metrics, settings=settings, models=models, cond=conditioning,
                 seeds=seeds, ode_num=ode_num, batch=batch, device=device, dtype=dtype, options=options,
                 traits=traits, fd=fd, out=out, previous=previous, progress=r.progress,
                 corrector=steer.corrector, per_call=steer.evaluations_per_call,
                 solvers={name: one.solver for name, one in fitted.items()},
                 loaded=precise[precisions[0]])


def run_bench(model, **kwargs) -> list[dict[str, Any]]:
    """Benchmark samplers on ``model``: every sampler x schedule x NFE budget on the same seeds.

    ``model`` may also be a whole :class:`BenchRequest` (then without keywords); the keywords below are
    its fields, those of its sampling request (:class:`tools.request.SamplingRequest`) included.

    Args:
        model: a model spec (``"digits"``, a checkpoint, ``"diffusers:DIR"``, ...), a
            ``tools.models.LoadedModel``, or a plain denoiser ``D(x, sigma, **cond)`` with ``shape=``
            (C, H, W), ``sigma_min=`` and ``sigma_max=`` (default: its own attributes) and optionally
            ``sigmas=`` (a discrete model's ascending sigma table), ``cond=`` (keyword arguments of every
            call; tensors with one row per sample are split by batch) and ``name=`` (its name in settings).
            ``sigma_min``/``sigma_max`` also narrow a loaded model's schedules.
        samplers: names, or ``"all"``. schedules: registry names or ``file:PATH``. nfe: the budgets; each
            cell runs the most steps whose exact NFE fits its budget (cells that cannot fit, and adaptive
            samplers, are reported as skipped).
        metrics: ``ode`` (RMS error against the exact probability-flow ODE from the same noise, for
            deterministic samplers; sampler, model and reference all in float64, on the first ``ode_num``
            seeds, default ``min(num, 16)``), ``fd`` (alias ``fid``: Frechet distance through ``detector``
            against ``ref``, by default the shipped statistics for the digits model) and ``time`` (wall
            time per sample and the denoiser's share of it, on the fd/time pass in ``dtype``, or on the ode
            pass when ``ode`` is the only other metric).
        num, seeds: the samples: seeds ``0..num-1`` (default 64), or a seed list such as ``"0-99"``.
        prompting: a text-to-image model's prompts, negative prompt and size
            (:class:`tools.generate.prompts.Prompting`, as ``edm generate`` takes it): the k-th seed gets
            prompt k (cycling), CFG's negative is the negative prompt, ``guidance`` None is the pipeline's
            default; fd scores the decoded images, ode compares latents.
        options: per-sampler option overrides, e.g. ``{"restart": {"s_noise": 1.0}}``.
        batch, device, dtype: as for ``edm generate`` (default: cuda when available, float32).
        out: a folder for ``results.csv``/``.json``/``.md`` and plots; a previous run there with the same
            settings is resumed (only missing cells and metrics are computed) unless ``overwrite``.

    Returns the cells of this grid: flat dicts with the keys ``tools.compare.CELL_KEYS``.
    Raises :class:`BenchError` (one line, ``.param`` naming the argument) on bad input, before any work.
    """
    if isinstance(model, BenchRequest):
        if kwargs:
            raise BenchError(f"run_bench takes a BenchRequest or keywords, not both (got "
                             f"{', '.join(kwargs)})")
        return prepare_bench(model).run()
    return prepare_bench(BenchRequest.of(model, **kwargs)).run()
