"""Fixtures shared by the test modules.

Opt-in fixtures (a module names them in ``pytestmark = pytest.mark.usefixtures(...)`` or a test takes them
as arguments): ``one_thread`` and ``offline``. Built artefacts: ``tiny_pipeline`` (saved tiny diffusers
pipelines, built once per session, read only), ``sr_models`` (a tiny base and super-resolution checkpoint
pair, trained once per session) and ``digits_model`` (the shipped digits model, loaded once
per module). Plain helpers (click commands run in process and their error lines, mixtures, noise) are in
``_support.py``.

Tests marked ``slow`` (registered in pyproject.toml) are left out of the fast lane,
``python -m pytest -m "not slow"``; ``python -m pytest`` runs every test.
"""

from __future__ import annotations

import os

import pipelines_tiny
import pytest
import torch

# before diffusers / huggingface_hub read it: nothing in the tests touches the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """The machine is shared: one thread, which is also fastest for the small models and problems of the
    tests. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1 for the test: diffusers / transformers load local files only."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """``tiny_pipeline(name)``: the folder of a tiny random-weight pipeline saved with ``save_pretrained``
    (names: ``pipelines_tiny.BUILDERS``), built offline on first use and kept for the session.

    Shared by every module that asks: read it, never write into it (copy it to change it)."""
    built: dict[str, os.PathLike] = {}

    def get(name: str):
        if name not in built:
            path = tmp_path_factory.mktemp(f"tiny-{name}")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("HF_HUB_OFFLINE", "1")
                pipelines_tiny.BUILDERS[name](path)
            built[name] = path
        return built[name]

    return get


@pytest.fixture(scope="session")
def sr_models(tmp_path_factory):
    """``(base, sr)``: a tiny 1x4x4 class-conditional model and a tiny 4x4 -> 8x8 super-resolution model
    (``_support.tiny_sr_models``), trained once per session; read them, never write into them."""
    from _support import tiny_sr_models

    return tiny_sr_models(tmp_path_factory.mktemp("sr-models"))


@pytest.fixture(scope="module")
def digits_model():
    """The shipped ``digits`` model, loaded once per module (``tools.models.load_model("digits")``)."""
    from tools.models import load_model

    return load_model("digits")
