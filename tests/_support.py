"""Shared test helpers (plain functions; the fixtures are in conftest.py): an exact denoiser and noise that
both libraries can be fed identically, and click commands run in process with their error lines."""

from __future__ import annotations

import contextlib
import hashlib

import torch
from click.testing import CliRunner

from edm.gaussian_mixture import GaussianMixture

SHAPE = (3, 8, 8)


def invoke(command, *args, **kwargs):
    """Run a click ``command`` in process (click's CliRunner), its arguments as strings."""
    return CliRunner().invoke(command, [str(a) for a in args], **kwargs)


def error_lines(result) -> list[str]:
    """The lines of a command's output that start with ``Error:``."""
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def assert_usage_error(result, *fragments: str) -> str:
    """A usage error: exit 2, no traceback, exactly one ``Error:`` line, which contains each of
    ``fragments``. Returns that line."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    errors = error_lines(result)
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output
    return errors[0]


def mixture(dtype=torch.float64) -> GaussianMixture:
    """A fixed image-shaped Gaussian mixture: its exact denoiser is nonlinear over the sampling range."""
    return GaussianMixture.random(SHAPE, k=8, seed=0, dtype=dtype)


def start(batch=3, sigma_max=80.0, seed=1234, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, *SHAPE), generator=g, dtype=dtype) * sigma_max


def assert_schedule(s, n=None):
    """A usable sigma schedule: 1-D, finite, strictly decreasing, positive but for a final 0."""
    assert s.ndim == 1 and torch.isfinite(s).all()
    assert s[-1] == 0 and (s[:-1] > 0).all()
    assert (s[1:] < s[:-1]).all(), s
    if n is not None:
        assert len(s) == n + 1


class Counting:
    """A denoiser wrapper that counts its calls (NFE checks)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, **cond):
        self.calls += 1
        return self.denoiser(x, sigma, **cond)


class KeyedNoise:
    """Noise that depends only on the interval it is asked for, not on call order.

    Lets k-diffusion's samplers (which sometimes draw noise they then multiply by 0) and ours (which do
    not) see identical noise wherever it matters.
    """

    def __init__(self, like: torch.Tensor, salt: str = ""):
        self.shape, self.dtype, self.salt = like.shape, like.dtype, salt

    def key(self, *sigmas) -> int:
        text = self.salt + "|".join(f"{float(s):.9e}" for s in sigmas)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:7], "little")

    def __call__(self, sigma, sigma_next=None) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.key(sigma, sigma_next))
        return torch.randn(self.shape, generator=g, dtype=self.dtype)


@contextlib.contextmanager
def patched_randn_like(queue):
    """Make torch.randn_like pop from ``queue`` (k-diffusion's churn samplers call it directly)."""
    original = torch.randn_like
    torch.randn_like = lambda x, *a, **k: queue.pop(0)
    try:
        yield
    finally:
        torch.randn_like = original


@contextlib.contextmanager
def default_dtype(dtype):
    """k-diffusion's DPM-Solver builds its time tensors with torch.tensor(float): make them float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def plan_of(model, seeds, outdir, **fields):
    """``tools.generate.prepare`` of a request and an output given as one set of keywords, as
    ``tools.generate.generate`` takes them."""
    from dataclasses import fields as dataclass_fields

    from tools.generate.plan import Output, prepare
    from tools.request import SamplingRequest

    output = {f.name for f in dataclass_fields(Output)}
    kept = {key: fields.pop(key) for key in list(fields) if key in output}
    return prepare(SamplingRequest(model=model, **fields), Output(seeds=seeds, outdir=outdir, **kept))


def tiny_sr_models(root, noise_aug: float | None = 0.2):
    """``(base, sr)``: checkpoint stems of a tiny class-conditional 1x4x4 digits model and a tiny 4x4 -> 8x8
    super-resolution model (``edm train --cond low-res --factor 2``), trained two steps and with their
    zero-initialised weights randomised (else the output layers' zeros make the images ignore the
    condition). ``noise_aug``: the SR model's recorded sampling level (``"sampling": {"noise_aug": ...}``).
    """
    import json
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from edm.train import train

    tiny = {"model_channels": 8, "num_blocks": 1, "attn_resolutions": []}
    root = Path(root)
    base = train("digits-4x4-train", root / "base", steps=2, batch=16, progress=False,
                 network_kwargs={**tiny, "channel_mult": [1]}).checkpoint
    sr = train("digits-train", root / "sr", steps=2, batch=16, cond="low-res", factor=2, progress=False,
               network_kwargs={**tiny, "channel_mult": [1, 2]}).checkpoint
    generator = torch.Generator().manual_seed(7)
    for stem in (base, sr):
        weights = stem.with_suffix(".safetensors")
        tensors = load_file(weights)
        for key, value in tensors.items():
            if value.ndim > 1 and not value.any():
                tensors[key] = torch.randn(value.shape, generator=generator, dtype=value.dtype) * 0.1
        save_file(tensors, weights)
    if noise_aug is not None:
        config = json.loads(sr.with_suffix(".json").read_text())
        config["sampling"] = {"noise_aug": noise_aug}
        sr.with_suffix(".json").write_text(json.dumps(config))
    return base, sr
