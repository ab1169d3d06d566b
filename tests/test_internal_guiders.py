"""The guiders that perturb the network (``--guidance-method pag | slg | seg``,
``samplers.guidance.perturbed``
with the hooks of ``tools.models.perturb``) against diffusers.

Oracles, per seed (``generator=torch.Generator().manual_seed(seed)``, the pipeline's scheduler replaced by
our sampler's counterpart, as ``--schedule diffusers`` reproduces it):

* PAG on tiny SD: ``StableDiffusionPAGPipeline`` (``pag_applied_layers="mid"``), with and without CFG;
* PAG on tiny SD3: ``StableDiffusion3PAGPipeline`` (``"blocks.1"``, and ``"blocks.0"``);
* SLG on tiny SD3: ``StableDiffusion3Pipeline(skip_guidance_layers=[0])`` with its start below step 0 so
  every step is guided (ours has no step window);
* SEG and SLG on the tiny UNet: the guided prediction against the one composed by hand from diffusers'
  hooks on the same blocks (SmoothedEnergyGuidance's ``_gaussian_blur_2d`` on the queries, SkipLayerGuidance's
  block skip) and the guiders' formula with CFG on; ``blur_queries`` against ``_gaussian_blur_2d`` itself.
"""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch

from _support import assert_usage_error, invoke, plan_of
from tools.cli import main

PROMPT, NEGATIVE, STEPS, SEEDS = "a red bicycle", "blurry", 4, (0, 1)
SD3_EXTRA = {"text_encoder_3": None, "tokenizer_3": None}

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


def _ours(path, sampler, guidance, **steering):
    from tools.request import Prompting
    from tools.steering import Steering

    plan = plan_of(f"diffusers:{path}", list(SEEDS), path / "unused", sampler=sampler, schedule="diffusers",
                   steps=STEPS, guidance=guidance, device="cpu", steering=Steering(**steering),
                   prompting=Prompting(prompt=PROMPT, negative_prompt=NEGATIVE))
    return (plan.sampling.images(list(SEEDS)) / 2 + 0.5).clamp(0, 1)


def _theirs(pipe, scheduler, **kwargs):
    pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    images = []
    for seed in SEEDS:
        with torch.no_grad():
            images.append(pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, output_type="pt",
                               generator=torch.Generator().manual_seed(seed), **kwargs).images[0])
    return torch.stack(images)


def _close(ours, theirs):
    assert ours.shape == theirs.shape == (len(SEEDS), 3, 16, 16)
    assert theirs.std() > 0.05
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("guidance", [2.0, 0.0])
def test_pag_on_sd_is_diffusers_pag_pipeline(tiny_pipeline, guidance):
    path = tiny_pipeline("sd")
    pipe = diffusers.StableDiffusionPAGPipeline.from_pretrained(path, local_files_only=True,
                                                                pag_applied_layers="mid")
    scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    theirs = _theirs(pipe, scheduler, guidance_scale=1 + guidance, pag_scale=3.0)
    ours = _ours(path, "ddim", guidance, guidance_method="pag", pag_layers="mid")
    _close(ours, theirs)
    plain = _ours(path, "ddim", guidance)
    assert (plain - theirs).abs().max().item() > 1e-3  # PAG changed the images


@pytest.mark.parametrize("layer", ["blocks.1", "blocks.0"])
def test_pag_on_sd3_is_diffusers_pag_pipeline(tiny_pipeline, layer):
    path = tiny_pipeline("sd3")
    pipe = diffusers.StableDiffusion3PAGPipeline.from_pretrained(path, local_files_only=True,
                                                                 pag_applied_layers=layer, **SD3_EXTRA)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = _theirs(pipe, scheduler, guidance_scale=3.0, pag_scale=2.5)
    ours = _ours(path, "euler", 2.0, guidance_method="pag", pag_layers=layer, pag_scale=2.5)
    _close(ours, theirs)


def test_slg_on_sd3_is_diffusers_skip_guidance_layers(tiny_pipeline):
    path = tiny_pipeline("sd3")
    pipe = diffusers.StableDiffusion3Pipeline.from_pretrained(path, local_files_only=True, **SD3_EXTRA)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    theirs = _theirs(pipe, scheduler, guidance_scale=3.0, skip_guidance_layers=[0],
                     skip_layer_guidance_scale=2.0, skip_layer_guidance_start=-1.0,
                     skip_layer_guidance_stop=1.0)
    ours = _ours(path, "euler", 2.0, guidance_method="slg", slg_layers="blocks.0", slg_scale=2.0)
    _close(ours, theirs)
    plain = _ours(path, "euler", 2.0)
    assert (plain - theirs).abs().max().item() > 1e-3


@pytest.mark.parametrize("sigma", [0.7, 2.0, 30.0])
@pytest.mark.parametrize("height,width", [(8, 8), (7, 7), (4, 4)])
def test_blur_queries_is_diffusers_gaussian_blur(sigma, height, width):
    from diffusers.hooks.smoothed_energy_guidance_utils import _gaussian_blur_2d

    from samplers.guidance.perturbed import blur_queries

    q = torch.randn(3, height * width + 5, 6, generator=torch.Generator().manual_seed(1))
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    # threshold 0: diffusers' blur branch (its branches are named the other way round: a sigma above the
    # threshold blurs, one below takes the mean)
    theirs = _gaussian_blur_2d(q.clone(), size, sigma, 0.0)[:, : height * width]
    ours = blur_queries(q, height, width, sigma)
    torch.testing.assert_close(ours[:, height * width:], q[:, height * width:], rtol=0, atol=0)
    torch.testing.assert_close(ours[:, : height * width], theirs, rtol=0, atol=1e-6)
    mean = blur_queries(q, height, width, math.inf)
    theirs_mean = _gaussian_blur_2d(q.clone(), size, sigma, math.inf)  # below the threshold: the mean
    torch.testing.assert_close(mean, theirs_mean, rtol=0, atol=1e-6)


def _diffusers_seg_hook(unet, fqn, blur):
    from diffusers.hooks.smoothed_energy_guidance_utils import (
        SmoothedEnergyGuidanceConfig,
        _apply_smoothed_energy_guidance_hook,
    )

    _apply_smoothed_energy_guidance_hook(unet, SmoothedEnergyGuidanceConfig(indices=[0], fqn=fqn), blur,
                                         name="oracle")


def _diffusers_slg_hook(unet, fqn, _):
    from diffusers.hooks.layer_skip import LayerSkipConfig, _apply_layer_skip_hook

    _apply_layer_skip_hook(unet, LayerSkipConfig(indices=[0], fqn=fqn), name="oracle")


@pytest.mark.parametrize("kind,hook", [("seg", _diffusers_seg_hook), ("slg", _diffusers_slg_hook)])
def test_seg_and_slg_on_the_unet_are_diffusers_hooks_with_the_guider_formula(tiny_pipeline, kind, hook):
    """The perturbed prediction of diffusers' hook (SmoothedEnergyGuidance's query blur; SkipLayerGuidance's
    whole-block skip) on the mid block, combined by the guiders' formula with CFG on."""
    from diffusers.hooks import HookRegistry

    from samplers.guidance.perturbed import PerturbedGuidance
    from tools.models.pipelines import load_pipeline

    model = load_pipeline(tiny_pipeline("sd"))
    unet = model.denoiser.inner.backbone.unet
    cond = model.conditioner.encode([PROMPT, "a cat"], height=16, width=16)
    negative = model.conditioner.encode([NEGATIVE, None], height=16, width=16)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 5
    sigma = torch.tensor([5.0, 0.8])
    w, s, blur = 1.5, 2.8, 1e5  # a blur above diffusers' threshold takes its blur branch
    with torch.no_grad():
        d_cond = model.denoiser(x, sigma, **cond)
        d_neg = model.denoiser(x, sigma, **negative)
        hook(unet, "mid_block.attentions.0.transformer_blocks", blur)
        d_pert = model.denoiser(x, sigma, **cond)
        for module in unet.modules():
            registry = getattr(module, "_diffusers_hook", None)
            if isinstance(registry, HookRegistry) and "oracle" in registry.hooks:
                registry.remove_hook("oracle")
        assert torch.equal(model.denoiser(x, sigma, **cond), d_cond)  # the oracle's hooks are gone
        # the guiders' forward with CFG on (use_original_formulation False), on x0
        theirs = d_neg + (1 + w) * (d_cond - d_neg) + s * (d_cond - d_pert)
        perturbation = model.perturbation(kind, ["mid"], **({"blur_sigma": blur} if kind == "seg" else {}))
        try:
            ours = PerturbedGuidance(model.denoiser, perturbation, s, w, negative)(x, sigma, **cond)
        finally:
            perturbation.remove()
    assert (d_pert - d_cond).abs().max() > 1e-3
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_hooks_leave_the_network_as_it_was(tiny_pipeline):
    from tools.models.pipelines import load_pipeline

    model = load_pipeline(tiny_pipeline("sd3"))
    cond = model.conditioner.encode([PROMPT, "a cat"], height=16, width=16)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([2.0, 2.0])
    with torch.no_grad():
        before = model.denoiser(x, sigma, **cond)
        for kind, layers in (("pag", ["blocks.0"]), ("seg", ["blocks.1"]), ("slg", ["blocks.0", "blocks.1"])):
            perturbation = model.perturbation(kind, layers)
            alone = model.denoiser(x, sigma, **cond)  # hooked, no rows selected
            with perturbation.rows(torch.tensor([False, True])):
                mixed = model.denoiser(x, sigma, **cond)
            with perturbation.rows(torch.tensor([True, True])):
                both = model.denoiser(x, sigma, **cond)
            perturbation.remove()
            assert torch.equal(alone, before) and torch.equal(mixed[0], before[0])
            torch.testing.assert_close(mixed[1], both[1], rtol=0, atol=1e-6)
            assert (both[1] - before[1]).abs().max() > 1e-4, kind
        assert torch.equal(model.denoiser(x, sigma, **cond), before)


def test_separate_call_equals_batched(tiny_pipeline):
    """``batched=False`` (the perturbed rows as a second call) gives the batched guider's prediction."""
    from samplers.guidance.perturbed import PerturbedGuidance
    from tools.models.pipelines import load_pipeline

    model = load_pipeline(tiny_pipeline("sd"))
    cond = model.conditioner.encode([PROMPT, "a cat"], height=16, width=16)
    negative = model.conditioner.encode([NEGATIVE, None], height=16, width=16)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * 3
    sigma = torch.tensor([3.0, 1.0])
    perturbation = model.perturbation("pag", ["mid", "up.0"])
    calls = []
    handle = model.denoiser.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            one = PerturbedGuidance(model.denoiser, perturbation, 2.0, 1.0, negative)(x, sigma, **cond)
            two = PerturbedGuidance(model.denoiser, perturbation, 2.0, 1.0, negative,
                                    batched=False)(x, sigma, **cond)
    finally:
        handle.remove()
        perturbation.remove()
    assert calls == [6, 4, 2]
    torch.testing.assert_close(one, two, rtol=0, atol=1e-5)


@pytest.mark.parametrize("args,message", [
    (["--guidance-method", "pag", "--pag-layers", "mid,down.9"], "no layer 'down.9'"),
    (["--guidance-method", "pag", "--pag-layers", "middle"], "no layer 'middle'"),
    (["--guidance-method", "slg", "--slg-layers", "blocks.0"], "its layers: down.1, up.0, mid"),
    (["--guidance-method", "pag", "--pag-scale", "-1"], "--pag-scale': must be a finite number >= 0"),
    (["--guidance-method", "seg", "--seg-blur-sigma", "0"], "--seg-blur-sigma': must be > 0"),
    (["--pag-scale", "2"], "--pag-scale needs --guidance-method pag"),
    (["--guidance-method", "slg", "--seg-layers", "mid"], "--seg-layers needs --guidance-method seg"),
    (["--guidance-method", "pag", "--guidance", "1", "--guide-model", "digits-weak"],
     "--guide-model does not combine with --guidance-method pag"),
])
def test_bad_input_is_one_error_line(tiny_pipeline, tmp_path, args, message):
    path = tiny_pipeline("sd")
    result = invoke(main, "generate", "--model", f"diffusers:{path}", "--prompt", PROMPT, "--steps", "2",
                    "--seeds", "0", "--outdir", str(tmp_path / "out"), "--device", "cpu", "--no-progress",
                    *args)
    assert_usage_error(result, message)
    assert not (tmp_path / "out").exists()


def test_a_model_without_hooks_is_refused(tiny_pipeline, tmp_path):
    """A diffusers DiT transformer has no hooks here."""
    path = tiny_pipeline("dit")
    result = invoke(main, "generate", "--model", f"diffusers:{path}", "--steps", "2", "--seeds", "0",
                    "--guidance", "1", "--class", "207",
                    "--outdir", str(tmp_path / "out"), "--device", "cpu", "--no-progress",
                    "--guidance-method", "pag")
    assert_usage_error(result, "--guidance-method pag needs a network with self-attention hooks")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["pag", "seg"])
def test_the_batch_does_not_change_the_images(tiny_pipeline, tmp_path, method):
    """A sample's rows are perturbed alone whatever its batch; the network's float arithmetic itself is
    not bit-identical across batch sizes (about 3e-6 on this UNet without any guidance), so a value at an
    8-bit rounding boundary may move by one: at most one value in a thousand, by one."""
    from PIL import Image

    path = tiny_pipeline("sd")
    written = {}
    for batch in (1, 3):
        out = tmp_path / f"b{batch}"
        result = invoke(main, "generate", "--model", f"diffusers:{path}", "--prompt", PROMPT, "--steps", "3",
                        "--seeds", "0-2", "--batch", str(batch), "--outdir", str(out), "--device", "cpu",
                        "--no-progress", "--guidance", "2", "--guidance-method", method)
        assert result.exit_code == 0, result.output
        written[batch] = torch.stack([torch.from_numpy(np.array(Image.open(out / f"{seed:06d}.png")))
                                      for seed in range(3)]).int()
    moved = (written[1] - written[3]).abs()
    assert moved.max() <= 1 and (moved > 0).float().mean() <= 1e-3


class _Toy:
    """A denoiser whose 'network' answers ``x * a + cond`` with ``a = 2`` on perturbed rows, 1 elsewhere:
    the perturbed prediction differs from the conditional one by ``x`` exactly."""

    def __init__(self, perturbation):
        self.perturbation, self.batches = perturbation, []

    def __call__(self, x, sigma, c):
        self.batches.append(x.shape[0])
        rows = self.perturbation.selected(x.shape[0])
        scale = torch.ones(x.shape[0]) if rows is None else 1.0 + rows.float()
        return x * scale.view(-1, 1) + c


@pytest.mark.parametrize("w,s", [(1.5, 2.0), (0.0, 2.0), (1.5, 0.0)])
def test_the_combination_is_the_closed_form(w, s):
    from samplers.guidance.perturbed import PerturbedGuidance, RowPerturbation

    perturbation = RowPerturbation("pag")
    toy = _Toy(perturbation)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    c, c_neg = torch.randn(3, 4), torch.randn(3, 4)
    guider = PerturbedGuidance(toy, perturbation, s, w, {"c": c_neg})
    out = guider(x, torch.tensor([1.0, 2.0, 3.0]), c=c)
    d_cond, d_neg, d_pert = x + c, x + c_neg, 2 * x + c
    torch.testing.assert_close(out, d_cond + w * (d_cond - d_neg) + s * (d_cond - d_pert))
    assert toy.batches == [3 * guider.evaluations] and guider.evaluations == 1 + (w != 0) + (s != 0)
    assert perturbation.mask is None  # cleared after the call


def test_intervals_limit_the_terms_per_sample():
    from samplers.guidance.perturbed import PerturbedGuidance, RowPerturbation

    perturbation = RowPerturbation("slg")
    toy = _Toy(perturbation)
    x, c, c_neg = torch.ones(3, 2), torch.zeros(3, 2), torch.full((3, 2), 5.0)
    sigma = torch.tensor([0.5, 2.0, 20.0])
    guider = PerturbedGuidance(toy, perturbation, 3.0, 1.0, {"c": c_neg}, interval=(0.0, 10.0),
                               perturb_interval=(1.0, 100.0))
    out = guider(x, sigma, c=c)
    # sample 0: CFG only; sample 1: both terms; sample 2: outside the interval of both
    expected = torch.tensor([1 + 1 * (1 - 6), 1 + 1 * (1 - 6) + 3 * (1 - 2), 1.0])
    torch.testing.assert_close(out[:, 0], expected)
    toy.batches.clear()
    guider(x, torch.full((3,), 50.0), c=c)  # nothing guided anywhere: one plain call of B
    assert toy.batches == [3]


def test_row_perturbation_checks():
    from samplers.guidance.perturbed import RowPerturbation

    with pytest.raises(ValueError, match="one of pag, seg, slg"):
        RowPerturbation("xyz")
    perturbation = RowPerturbation("seg", {"blur_sigma": 2.0})
    undone = []
    perturbation.on_remove(lambda: undone.append(1))
    perturbation.on_remove(lambda: undone.append(2))
    with perturbation.rows(torch.tensor([True, False])):
        assert perturbation.selected(4).tolist() == [True, False, True, False]
        with pytest.raises(ValueError, match="3 rows for a mask of 2"):
            perturbation.selected(3)
    assert perturbation.selected(2) is None
    perturbation.remove()
    perturbation.remove()
    assert undone == [2, 1]


def test_default_layers_the_network_lacks_are_named(tiny_pipeline, tmp_path):
    """SD3's SLG default (blocks 7-9, as diffusers recommends) on a two-block transformer."""
    path = tiny_pipeline("sd3")
    result = invoke(main, "generate", "--model", f"diffusers:{path}", "--prompt", PROMPT, "--steps", "2",
                    "--seeds", "0", "--outdir", str(tmp_path / "out"), "--device", "cpu", "--no-progress",
                    "--guidance-method", "slg")
    assert_usage_error(result, "--slg-layers", "no layer 'blocks.7'", "its layers: blocks.0, blocks.1",
                       "the network's default layers")
    assert not (tmp_path / "out").exists()
