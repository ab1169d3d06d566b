"""The guidance rules of ``samplers.guidance.guiders`` against diffusers' guiders (the oracle): each rule, fed
the same conditional and negative predictions as diffusers' ``forward(pred_cond, pred_uncond)`` over
consecutive evaluations (diffusers driven by ``set_state`` as its pipelines drive it, so APG's momentum,
CFG-Zero*'s zero init and apg_mix's switch are checked across steps), gives the same prediction; the cfg
rule is today's classifier-free guidance bit for bit; a run resets the rules' state; and ``edm generate
--guidance-method`` samples with each method and refuses bad input with one usage line, writing nothing.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from diffusers import guiders as dg

import _support
from samplers.guidance import ClassifierFreeGuidance
from samplers.guidance.guiders import RULES, laplacian_pyramid, make_rule, rebuild_pyramid
from tools.cli import main
from tools.generate.record import RECORD_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
logging.getLogger("diffusers.guiders.guider_utils").setLevel(logging.ERROR)  # "experimental" warnings

STEPS = 8
WEIGHTS = (0.5, 2.0, 6.5)


def predictions(steps: int, shape=(3, 4, 16, 16), seed: int = 0):
    """``steps`` pairs of correlated conditional / negative predictions (float64), as a network gives."""
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(steps):
        neg = torch.randn(shape, generator=g, dtype=torch.float64)
        pairs.append((neg + 0.3 * torch.randn(shape, generator=g, dtype=torch.float64), neg))
    return pairs


def diffusers_run(guider, pairs) -> list[torch.Tensor]:
    """diffusers' guided predictions of ``pairs``, one pipeline step per pair."""
    out = []
    for step, (cond, neg) in enumerate(pairs):
        guider.set_state(step=step, num_inference_steps=len(pairs), timestep=torch.tensor(999 - step))
        guider.prepare_inputs({"x": (cond, neg)})  # creates APG's momentum buffer at step 0
        out.append(guider.forward(cond, neg).pred)
    return out


def our_run(rule, w: float, pairs) -> list[torch.Tensor]:
    rule.reset()
    return [rule(cond, neg, torch.full((cond.shape[0],) + (1,) * (cond.ndim - 1), w, dtype=cond.dtype))
            for cond, neg in pairs]


# (rule name, its options, the diffusers guider with the same options at weight w)
CASES = {
    "cfg": ({}, lambda w: dg.ClassifierFreeGuidance(guidance_scale=1 + w)),
    "apg": ({"eta": 0.3, "momentum": -0.5, "norm_threshold": 5.0},  # the differences' norms are about 10
            lambda w: dg.AdaptiveProjectedGuidance(guidance_scale=w, eta=0.3,
                                                   adaptive_projected_guidance_momentum=-0.5,
                                                   adaptive_projected_guidance_rescale=5.0,
                                                   use_original_formulation=True)),
    "apg-default": ({}, lambda w: dg.AdaptiveProjectedGuidance(guidance_scale=w,
                                                               use_original_formulation=True)),
    "apg_mix": ({"apg_weight": 4.0, "eta": 0.2, "momentum": -0.6, "norm_threshold": 6.0, "start_step": 2},
                lambda w: dg.AdaptiveProjectedMixGuidance(
                    guidance_scale=w, adaptive_projected_guidance_scale=4.0, eta=0.2,
                    adaptive_projected_guidance_momentum=-0.6, adaptive_projected_guidance_rescale=6.0,
                    adaptive_projected_guidance_start_step=2, use_original_formulation=True)),
    "cfg_zero_star": ({"zero_init_steps": 2},
                      lambda w: dg.ClassifierFreeZeroStarGuidance(guidance_scale=1 + w, zero_init_steps=2)),
    "tcfg": ({}, lambda w: dg.TangentialClassifierFreeGuidance(guidance_scale=1 + w)),
    "fdg": ({"weights": (5.0, 2.0, 0.5), "parallel_weights": (0.5, 1.0, 0.25)},
            lambda w: dg.FrequencyDecoupledGuidance(guidance_scales=[5.0, 2.0, 0.5],
                                                    parallel_weights=[0.5, 1.0, 0.25],
                                                    use_original_formulation=True)),
    "mambo": ({"alpha": 2.0}, lambda w: dg.MagnitudeAwareGuidance(guidance_scale=1 + w, alpha=2.0)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("w", WEIGHTS)
def test_each_rule_is_diffusers_guider_over_consecutive_evaluations(case, w):
    options, guider = CASES[case]
    rule = make_rule(case.split("-")[0], **options)
    # diffusers' mambo_guidance fails on [B, C, H, W] (torch.norm's Frobenius norm takes two dimensions):
    # [B, tokens, channels], as its transformer pipelines give it
    pairs = predictions(STEPS, (3, 64, 16) if case == "mambo" else (3, 4, 16, 16))
    ours, theirs = our_run(rule, w, pairs), diffusers_run(guider(w), pairs)
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert (a - b).abs().max().item() <= 1e-6, (case, w, step)
    # the rule acts at all: it is not plain CFG (except cfg itself), so the comparison can fail
    cfg = our_run(make_rule("cfg"), w, pairs)
    assert (case == "cfg") == all(torch.equal(a, b) for a, b in zip(ours, cfg))


def test_fdg_without_weights_is_w_at_every_level_and_the_pyramid_inverts():
    assert make_rule("fdg", levels=3, parallel_weights=(0.5,)).parallel_weights == (0.5, 0.5, 0.5)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert len(laplacian_pyramid(x, 3)) == 3
    assert torch.allclose(rebuild_pyramid(laplacian_pyramid(x, 3)), x, atol=1e-12)
    pairs = predictions(2)
    ours = our_run(make_rule("fdg"), 2.0, pairs)
    theirs = diffusers_run(dg.FrequencyDecoupledGuidance(guidance_scales=[3.0, 3.0]), pairs)
    assert max((a - b).abs().max().item() for a, b in zip(ours, theirs)) <= 1e-6


def toy(x, sigma, class_labels):
    """A conditional denoiser whose halves differ non-linearly (so the rules differ from CFG)."""
    return torch.tanh(x / (1 + sigma.view(-1, 1, 1, 1))) + class_labels[:, :1].view(-1, 1, 1, 1) * x.sin()


def test_the_cfg_rule_is_todays_guidance_bit_for_bit():
    x = torch.randn(3, 1, 8, 8)
    sigma = torch.full((3,), 2.5)
    cond = {"class_labels": torch.eye(10)[[1, 2, 3]]}
    plain = ClassifierFreeGuidance(toy, 1.5, interval=(0.5, 5.0), rescale=0.3)
    ruled = ClassifierFreeGuidance(toy, 1.5, interval=(0.5, 5.0), rescale=0.3, rule=make_rule("cfg"))
    expected = f"ClassifierFreeGuidance({toy!r}, w=1.5, interval=(0.5, 5.0), rescale=0.3)"
    assert repr(plain) == repr(ruled) == expected
    d_both = toy(torch.cat([x, x]), torch.cat([sigma, sigma]),
                 torch.cat([cond["class_labels"], torch.zeros_like(cond["class_labels"])]))
    formula = d_both[:3] + 1.5 * (d_both[:3] - d_both[3:])
    from samplers.guidance import cfg_rescale

    assert torch.equal(plain(x, sigma, **cond), cfg_rescale(formula, d_both[:3], 0.3))
    assert torch.equal(ruled(x, sigma, **cond), plain(x, sigma, **cond))
    assert "rule=apg(eta=1.0" in repr(ClassifierFreeGuidance(toy, 1.0, rule=make_rule("apg")))


def test_a_run_resets_the_rule_so_a_sample_depends_on_its_seed_alone():
    import samplers

    sigmas = samplers.schedules.get("karras")(5, 0.002, 80.0)
    for name in RULES:
        guided = ClassifierFreeGuidance(toy, 2.0, rule=make_rule(name))
        run = [samplers.sample(guided, samplers.noise.latents([s], (1, 8, 8)) * 80, sigmas, "heun", seeds=[s],
                               cond={"class_labels": torch.eye(10)[[s]]}) for s in (0, 1, 0)]
        both = samplers.sample(guided, samplers.noise.latents([0, 1], (1, 8, 8)) * 80, sigmas, "heun",
                               seeds=[0, 1], cond={"class_labels": torch.eye(10)[[0, 1]]})
        assert torch.equal(run[0], run[2]), name  # the second run of seed 0 starts afresh
        assert torch.allclose(torch.cat(run[:2]), both, atol=1e-5), name
        assert guided.rule.count == 9  # heun: 2 evaluations per step but the last
    # through a wrapper that only forwards attributes (as edm bench's timer does) the reset reaches the rule
    again = samplers.sample(Forwarding(guided), samplers.noise.latents([0], (1, 8, 8)) * 80, sigmas, "heun",
                            seeds=[0], cond={"class_labels": torch.eye(10)[[0]]})
    assert torch.equal(again, run[0]) and guided.rule.count == 9


class Forwarding:
    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.__dict__["inner"], name)

    def __call__(self, x, sigma, **cond):
        return self.inner(x, sigma, **cond)


def test_rule_options_are_checked():
    for name, options, fragment in [("apg", {"eta": 1.5}, "eta must be a number in [0, 1]"),
                                    ("mambo", {"alpha": -1.0}, "alpha"),
                                    ("fdg", {"weights": (1.0, 2.0), "levels": 3}, "2 weights for 3 levels"),
                                    ("nope", {}, "unknown guidance rule")]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            make_rule(name, **options)
    with pytest.raises(ValueError, match="divisible by 4"):
        laplacian_pyramid(torch.zeros(1, 1, 6, 6), 3)


# The command line


def generate(tmp_path, *args):
    return _support.invoke(main, "generate", "--no-progress", "--device", "cpu", "--model", "digits",
                           "--seeds", "0-1", "--steps", 6, "--outdir", tmp_path / "out", *args)


@pytest.mark.parametrize("method", ["apg", "apg_mix", "cfg_zero_star", "tcfg", "fdg", "mambo"])
def test_generate_with_each_method_writes_images_and_records_it(tmp_path, method):
    result = generate(tmp_path, "--guidance", 1, "--guidance-method", method)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    record = json.loads((tmp_path / "out" / RECORD_NAME).read_text())
    assert record["steering"] == {"guidance_method": method}, record


def test_options_and_guidance_stop_change_the_images_and_the_defaults_do_not(tmp_path):
    def images(*args):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        result = _support.invoke(main, "generate", "--no-progress", "--device", "cpu", "--model", "digits",
                                 "--seeds", "0-1", "--steps", 6, "--guidance", 2, "--outdir", out, *args)
        assert result.exit_code == 0, result.output
        return [p.read_bytes() for p in sorted(out.glob("*.png"))]

    plain, apg = images(), images("--guidance-method", "apg", "--apg-eta", 0)
    assert plain == images("--guidance-method", "cfg") == images("--guidance-start", 0, "--guidance-stop", 1)
    assert plain != apg != images("--guidance-method", "apg", "--apg-eta", 0, "--guidance-stop", 0.5)


@pytest.mark.parametrize("args, fragments", [
    (("--guidance", 1, "--guidance-method", "nope"), ("--guidance-method",)),
    (("--guidance-method", "apg"), ("--guidance-method", "--guidance W > 0")),
    (("--guidance", 1, "--guidance-method", "apg", "--mambo-alpha", 2), ("--mambo-alpha", "mambo")),
    (("--guidance", 1, "--apg-eta", 0.5), ("--apg-eta", "apg")),
    (("--guidance", 1, "--guidance-method", "apg", "--apg-eta", 2), ("--apg-eta", "0 <= value <= 1")),
    (("--guidance", 1, "--guidance-method", "fdg", "--fdg-scales", "1,x"), ("--fdg-scales",)),
    (("--guidance", 1, "--guidance-method", "fdg", "--fdg-levels", 4), ("--fdg-levels", "8x8")),
    (("--guidance", 1, "--guidance-method", "fdg", "--fdg-scales", "3,1", "--fdg-levels", 3),
     ("--fdg-levels", "2 weights for 3 levels")),
    (("--guidance", 1, "--guidance-method", "pag", "--cfg-pp"), ("--cfg-pp", "does not combine with")),
    (("--guidance", 1, "--guidance-start", 0.5, "--guidance-stop", 0.2), ("--guidance-start",)),
    (("--guidance", 1, "--guidance-start", 0.5, "--guidance-stop", 0.55), ("guide no step of the 6",)),
])
def test_bad_method_input_is_one_usage_line_and_writes_nothing(tmp_path, args, fragments):
    result = generate(tmp_path, *args)
    _support.assert_usage_error(result, *fragments)
    assert not (tmp_path / "out").exists()


def test_guidance_start_stop_are_diffusers_steps_as_a_sigma_interval():
    import samplers
    from tools.steering.interval import steps_interval

    sigmas = samplers.schedules.get("karras")(10, 0.002, 80.0)
    lo, hi = steps_interval(sigmas, (0.2, 0.75), None)  # diffusers: steps int(2.0) <= i < int(7.5)
    guided = [i for i in range(10) if lo < sigmas[i] <= hi]
    assert guided == [2, 3, 4, 5, 6]
    lo, hi = steps_interval(sigmas, (0.2, 0.75), (0.5, 10.0))
    assert [i for i in range(10) if lo < sigmas[i] <= hi] == [i for i in guided if 0.5 < sigmas[i] <= 10]


def test_bench_takes_the_method_flags_but_not_step_fractions(tmp_path):
    # the method's flags parse (the refusal below comes after them); a whole bench is too slow for here
    result = _support.invoke(main, "bench", "--no-progress", "--device", "cpu", "--sampler", "euler",
                             "--nfe", 4, "--num", 2, "--guidance", 1, "--guidance-method", "apg",
                             "--apg-eta", 0.5, "--guidance-stop", 0.5, "--out", tmp_path / "bench")
    _support.assert_usage_error(result, "--guidance-stop", "--guidance-interval")
    assert not (tmp_path / "bench").exists()


@pytest.mark.slow  # a tiny Stable Diffusion pipeline: about 20 s
@pytest.mark.usefixtures("offline")
def test_methods_compose_with_text_prompts_and_a_negative_class(tiny_pipeline, tmp_path):
    sd = tiny_pipeline("sd")

    def images(*args):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        result = _support.invoke(main, "generate", "--no-progress", "--device", "cpu", "--seeds", "0-1",
                                 "--steps", 4, "--outdir", out, *args)
        assert result.exit_code == 0, result.output
        assert json.loads((out / RECORD_NAME).read_text())["steering"]["guidance_method"] == args[-1]
        return [p.read_bytes() for p in sorted(out.glob("*.png"))]

    text = ("--model", f"diffusers:{sd}", "--prompt", "a red square", "--sampler", "dpmpp_2m",
            "--guidance", 3, "--guidance-method")
    # (apg at its defaults is cfg while the difference is under its norm threshold: eta 1, no momentum)
    assert images(*text, "cfg") != images(*text, "mambo") != images(*text, "tcfg")
    digits = ("--model", "digits", "--class", 3, "--negative-class", 5, "--sampler", "dpmpp_sde",
              "--guidance", 2, "--guidance-interval", "0.5,20", "--guidance-method")
    assert images(*digits, "cfg") != images(*digits, "cfg_zero_star")


@pytest.mark.parametrize("method", ["apg_mix", "cfg_zero_star"])
def test_a_seed_gives_the_same_bytes_whatever_the_batch_with_a_stateful_rule(tmp_path, method):
    def images(batch):
        out = tmp_path / f"b{batch}"
        # float64: the digits network's float32 convolutions round differently per batch size
        result = _support.invoke(main, "generate", "--no-progress", "--device", "cpu", "--model", "digits",
                                 "--dtype", "float64", "--seeds", "0-2", "--steps", 8, "--sampler", "heun",
                                 "--guidance", 2, "--guidance-method", method, "--batch", batch,
                                 "--outdir", out)
        assert result.exit_code == 0, result.output
        return {p.name: p.read_bytes() for p in out.glob("*.png")}

    assert images(3) == images(1)
