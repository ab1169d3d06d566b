"""The pipeline family registry: which family each model_index.json ``_class_name`` loads with, what
``register`` refuses, and that a family added by registration alone loads a saved pipeline.

The loading itself (denoisers, conditioners, VAE against diffusers' own pipelines) is tested in
``test_pipelines.py``; here a family registered by a test reuses Stable Diffusion's parts, so its model
must be Stable Diffusion's under another name.
"""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest
import torch

from tools.models import ModelError
from tools.models.families import FAMILIES, PIPELINES, for_pipeline, register
from tools.models.families.base import PipelineFamily
from tools.models.families.sd import StableDiffusion
from tools.models.families.sd3 import StableDiffusion3

pytestmark = pytest.mark.usefixtures("one_thread")

#: the pipelines the registry must know, in the order messages list them
EXPECTED = [
    ("StableDiffusionPipeline", ("sd", 7.5)),
    ("StableDiffusionImg2ImgPipeline", ("sd", 7.5)),
    ("StableDiffusionInpaintPipeline", ("sd", 7.5)),
    ("StableDiffusionXLPipeline", ("sdxl", 5.0)),
    ("StableDiffusion3Pipeline", ("sd3", 7.0)),
    ("DiTPipeline", ("dit", 4.0)),
    ("PixArtAlphaPipeline", ("pixart", 4.5)),
    ("PixArtSigmaPipeline", ("pixart", 4.5)),
    ("StableDiffusionUpscalePipeline", ("sd-upscale", 9.0)),
    ("LatentConsistencyModelPipeline", ("lcm", 8.5)),
]


@pytest.fixture
def registry():
    """The registry restored after the test, whatever the test registered."""
    families, pipelines = dict(FAMILIES), dict(PIPELINES)
    yield
    FAMILIES.clear()
    FAMILIES.update(families)
    PIPELINES.clear()
    PIPELINES.update(pipelines)


def test_the_registered_families():
    assert list(FAMILIES) == ["sd", "sdxl", "sd3", "dit", "pixart", "sd-upscale", "lcm"]
    assert list(PIPELINES.items()) == EXPECTED
    for class_name, (name, _) in EXPECTED:
        assert for_pipeline(class_name) is FAMILIES[name]
    assert for_pipeline("KandinskyPipeline") is None and for_pipeline(["not", "a name"]) is None


class _Renamed(StableDiffusion):
    """Stable Diffusion's parts under another pipeline class name."""

    name = "renamed-sd"
    display_name = "Stable Diffusion, renamed"
    pipelines = MappingProxyType({"RenamedPipeline": 3.0})


@pytest.mark.usefixtures("registry")
def test_register_refuses_what_would_fail_at_load():
    class Again(_Renamed):
        name = "sd"

    class Taken(_Renamed):
        pipelines = MappingProxyType({"StableDiffusionXLPipeline": 5.0})

    class NoNetwork(_Renamed):
        required = ("vae", "text_encoder", "tokenizer", "scheduler")

    class Both(_Renamed):
        optional = ("tokenizer", "safety_checker")

    class NoSchedulerKind(_Renamed):
        scheduler = "eps"

    with pytest.raises(ValueError, match="'sd' is already registered"):
        register(Again)
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline already belong to sdxl"):
        register(Taken)
    with pytest.raises(ValueError, match="must require unet"):
        register(NoNetwork)
    with pytest.raises(ValueError, match="tokenizer both required and optional"):
        register(Both)
    with pytest.raises(ValueError, match="must be a SchedulerKind instance"):
        register(NoSchedulerKind)
    assert "renamed-sd" not in FAMILIES and "RenamedPipeline" not in PIPELINES
    assert register(_Renamed) is _Renamed
    assert for_pipeline("RenamedPipeline").display_name == "Stable Diffusion, renamed"


def test_the_base_family_declares_a_unet_default_geometry():
    class Config(dict):
        __getattr__ = dict.__getitem__

    geometry = PipelineFamily().geometry(Config(sample_size=[6, 8], in_channels=4))
    assert geometry == ((4, 6, 8), 1, None)
    config = Config(sample_size=8, in_channels=16, patch_size=2, pos_embed_max_size=96)
    assert StableDiffusion3().geometry(config) == ((16, 8, 8), 2, 192)  # 96 patches of 2 latent pixels


@pytest.mark.usefixtures("registry")
def test_a_registered_family_loads_its_pipelines(tmp_path):
    from pipelines_tiny import build_sd

    from tools.models.pipelines import load_pipeline

    sd_path = tmp_path / "sd"
    build_sd(sd_path)
    renamed_path = tmp_path / "renamed"
    renamed_path.mkdir()
    for entry in sd_path.iterdir():
        if entry.is_dir():
            (renamed_path / entry.name).symlink_to(entry, target_is_directory=True)
    index = json.loads((sd_path / "model_index.json").read_text())
    (renamed_path / "model_index.json").write_text(json.dumps({**index, "_class_name": "RenamedPipeline"}))

    with pytest.raises(ModelError, match="'RenamedPipeline' is not supported") as error:
        load_pipeline(renamed_path)
    assert str(error.value).endswith("(supported: " + ", ".join(name for name, _ in EXPECTED) + ")")
    register(_Renamed)
    renamed, sd = load_pipeline(renamed_path), load_pipeline(sd_path)
    assert renamed.info["family"] == "Stable Diffusion, renamed" and renamed.info["guidance_scale"] == 3.0
    assert renamed.default_guidance == 2.0 and sd.default_guidance == 6.5
    assert renamed.info["pipeline"] == "RenamedPipeline"
    cond = sd.conditioner.encode(["a cat"], height=16, width=16)
    x = torch.randn(1, *sd.shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.0])
    with torch.no_grad():
        assert renamed.denoiser(x, sigma, **cond).equal(sd.denoiser(x, sigma, **cond))
