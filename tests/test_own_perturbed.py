"""PAG / SEG / SLG hooks on the project's UNet and DiT (edm.perturb) and on the checkpoints' loaded models.

Oracles: the network run with the layer's forward replaced by the perturbed formula written here (the
identity attention map; queries blurred by torchvision's Gaussian blur or averaged; the block returning
its input), against the hooked network with only some rows masked.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch.testing import assert_close

from _support import invoke
from edm.dit import DiT
from edm.networks import UNet
from edm.perturb import PerturbationError, default_layers, perturb, perturbable_layers, unperturb
from tools.common import BadInput
from tools.models import cli as models_cli
from tools.models.checkpoint import NetworkPerturbation
from tools.models.loader import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

MASK = torch.tensor([False, True, False])


def _randomized(net, seed=0):
    """Fresh networks zero their output layers (and a DiT's modulations); give every weight a seeded nudge."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return net.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def unet():
    # 8x8 and 4x4 with attention at 4x4: enc.0, enc.1 (down), enc.2*, mid.0*, mid.1, dec.0*, dec.1*,
    # dec.2 (up), dec.3, dec.4 (* self-attention)
    return _randomized(UNet(in_channels=1, resolution=8, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                            attn_resolutions=[4], channels_per_head=8))


@pytest.fixture(scope="module")
def dit():
    # 8x8 tokens
    return _randomized(DiT(in_channels=1, resolution=16, patch_size=2, depth=3, width=32, heads=2))


def _inputs(net, batch=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, net.height, net.width, generator=gen)
    return x, torch.linspace(-1.0, 1.0, batch)


# ---------------------------------------------------------------------------------------------------
# The perturbed layers written out, as forwards to patch in


def _unet_attention(attn, change_q=None, identity=False):
    def forward(x):
        B, C, H, W = x.shape
        q, k, v = attn.qkv(attn.norm(x)).reshape(B, 3, attn.heads, C // attn.heads, H * W).unbind(1)
        if change_q is not None:
            q = change_q(q.reshape(B, C, H, W)).reshape(q.shape)
        if identity:  # the attention map is the identity: each pixel's output is its own value
            out = v
        else:
            out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                 v.transpose(-1, -2)).transpose(-1, -2)
        return x + attn.proj(out.reshape(B, C, H, W))

    return forward


def _dit_attention(attn, grid, change_q=None, identity=False):
    def forward(x):
        B, N, C = x.shape
        q, k, v = attn.qkv(x).reshape(B, N, 3, attn.heads, C // attn.heads).permute(2, 0, 3, 1, 4)
        if change_q is not None:  # [B, heads, N, d] -> an image of C channels on the token grid and back
            image = q.permute(0, 1, 3, 2).reshape(B, C, *grid)
            q = change_q(image).reshape(B, attn.heads, C // attn.heads, N).permute(0, 1, 3, 2)
        out = v if identity else F.scaled_dot_product_attention(q, k, v)
        return attn.proj(out.transpose(1, 2).reshape(B, N, C))

    return forward


def _gaussian(kernel, sigma):
    return lambda image: TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])


def _mean(image):
    return image.mean(dim=(-2, -1), keepdim=True).expand_as(image)


def _skip(x, *args, **kwargs):
    return x


def _layer(net, name):
    return net.get_submodule(name)


# (kind, options, which layer's forward to patch, the patched forward)
UNET_CASES = {
    "pag": ("pag", {}, "attn", lambda block, net: _unet_attention(block.attn, identity=True)),
    "seg": ("seg", {"blur_sigma": 0.5}, "attn",  # kernel ceil(6 * 0.5) + 1 rounded to odd = 3
            lambda block, net: _unet_attention(block.attn, _gaussian(3, 0.5))),
    "seg-inf": ("seg", {}, "attn", lambda block, net: _unet_attention(block.attn, _mean)),
    "slg": ("slg", {}, None, lambda block, net: _skip),
}
DIT_CASES = {
    "pag": ("pag", {}, "attn", lambda block, net: _dit_attention(block.attn, (8, 8), identity=True)),
    "seg": ("seg", {"blur_sigma": 0.8}, "attn",  # kernel ceil(4.8) + 1 rounded to odd = 5 < 8 tokens
            lambda block, net: _dit_attention(block.attn, (8, 8), _gaussian(5, 0.8))),
    "seg-inf": ("seg", {"blur_sigma": math.inf}, "attn",
                lambda block, net: _dit_attention(block.attn, (8, 8), _mean)),
    "slg": ("slg", {}, None, lambda block, net: _skip),
}


def _oracle(net, monkeypatch, case, layers, x, c_noise):
    _, _, part, forward = case
    with monkeypatch.context() as patch:
        for name in layers:
            block = _layer(net, name)
            patch.setattr(getattr(block, part) if part else block, "forward", forward(block, net))
        return net(x, c_noise)


def _check_rows(net, monkeypatch, case, layers):
    kind, options, _, _ = case
    x, c_noise = _inputs(net)
    plain = net(x, c_noise)
    expected = _oracle(net, monkeypatch, case, layers, x, c_noise)
    perturbation = perturb(net, kind, layers, **options)
    try:
        with perturbation.rows(MASK):
            got = net(x, c_noise)
    finally:
        unperturb(net)
    assert perturbation.mask is None
    assert not torch.allclose(expected[1], plain[1], atol=1e-3)  # the perturbation changes the output
    assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[~MASK], plain[~MASK])


@torch.no_grad()
@pytest.mark.parametrize("case", list(UNET_CASES))
@pytest.mark.parametrize("layers", [["mid.0"], ["enc.2", "dec.1"]])
def test_unet_rows_match_the_perturbed_network(unet, monkeypatch, case, layers):
    if case == "slg" and layers != ["mid.0"]:
        layers = ["enc.0", "mid.1"]  # the blocks that keep their input's shape
    _check_rows(unet, monkeypatch, UNET_CASES[case], layers)


@torch.no_grad()
@pytest.mark.parametrize("case", list(DIT_CASES))
@pytest.mark.parametrize("layers", [["blocks.1"], ["blocks.0", "blocks.2"]])
def test_dit_rows_match_the_perturbed_network(dit, monkeypatch, case, layers):
    _check_rows(dit, monkeypatch, DIT_CASES[case], layers)


@torch.no_grad()
@pytest.mark.parametrize("kind, options", [("pag", {}), ("seg", {"blur_sigma": 0.5}), ("slg", {})])
@pytest.mark.parametrize("which", ["unet", "dit"])
def test_off_is_bit_exact(request, which, kind, options):
    net = request.getfixturevalue(which)
    x, c_noise = _inputs(net)
    plain = net(x, c_noise)
    layers = perturbable_layers(net, kind)
    perturbation = perturb(net, kind, layers, **options)
    try:
        assert torch.equal(net(x, c_noise), plain)  # hooked, mask None
        with perturbation.rows(torch.zeros(3, dtype=torch.bool)):
            assert torch.equal(net(x, c_noise), plain)
        with perturbation.rows(torch.ones(3, dtype=torch.bool)):
            assert not torch.allclose(net(x, c_noise), plain, atol=1e-3)
    finally:
        unperturb(net)
    with perturbation.rows(torch.ones(3, dtype=torch.bool)):
        assert torch.equal(net(x, c_noise), plain)  # unhooked


@torch.no_grad()
@pytest.mark.parametrize("kind, options", [("pag", {}), ("seg", {"blur_sigma": 0.5}), ("slg", {})])
@pytest.mark.parametrize("which", ["unet", "dit"])
def test_each_row_depends_on_its_own_inputs(request, which, kind, options):
    net = request.getfixturevalue(which)
    x, c_noise = _inputs(net)
    perturbation = perturb(net, kind, **options)
    try:
        with perturbation.rows(MASK):
            batched = net(x, c_noise)
        order = torch.tensor([2, 1, 0, 1])  # another batch size, the rows elsewhere, row 1 twice
        mask = torch.tensor([False, True, False, False])
        with perturbation.rows(mask):
            shuffled = net(x[order], c_noise[order])
        alone = []
        for i in range(3):
            with perturbation.rows(MASK[i:i + 1]):
                alone.append(net(x[i:i + 1], c_noise[i:i + 1]))
    finally:
        unperturb(net)
    # atol: the plain network's rows differ by ~3e-6 between batch sizes
    assert_close(torch.cat(alone), batched, rtol=1e-5, atol=1e-5)
    assert_close(shuffled[[2, 1, 0]], batched, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(shuffled[3], batched[1], atol=1e-3)  # row 1 unperturbed differs


@torch.no_grad()
def test_layers_may_be_one_comma_separated_string(unet):
    x, c_noise = _inputs(unet)
    outputs = []
    for layers in (["enc.2", "dec.1"], "enc.2, dec.1", ["enc.2"]):
        perturbation = perturb(unet, "pag", layers)
        try:
            with perturbation.rows(MASK):
                outputs.append(unet(x, c_noise))
        finally:
            unperturb(unet)
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_layer_names(unet, dit):
    assert perturbable_layers(unet, "pag") == ["enc.2", "mid.0", "dec.0", "dec.1"]
    assert perturbable_layers(unet, "seg") == ["enc.2", "mid.0", "dec.0", "dec.1"]
    assert perturbable_layers(unet, "slg") == ["enc.0", "mid.0", "mid.1"]
    assert [default_layers(unet, kind) for kind in ("pag", "seg", "slg")] == [["mid.0"]] * 3
    for kind in ("pag", "seg", "slg"):
        assert perturbable_layers(dit, kind) == ["blocks.0", "blocks.1", "blocks.2"]
        assert default_layers(dit, kind) == ["blocks.1"]
    assert perturbable_layers(torch.nn.Conv2d(1, 1, 1), "pag") == []


def test_bad_perturbations_are_one_line_errors(unet):
    cases = [
        (("pag", ["mid.7"]), {}, "layers",
         "unknown layer 'mid.7' for pag; valid: enc.2, mid.0, dec.0, dec.1"),
        (("slg", ["dec.0"]), {}, "layers", "unknown layer 'dec.0' for slg; valid: enc.0, mid.0, mid.1"),
        (("slg", []), {}, "layers", "no layers given for slg"),
        (("slg", "mid.0, dec.0"), {}, "layers", "unknown layer 'dec.0' for slg"),
        (("cfg", None), {}, "kind", "unknown perturbation 'cfg'; valid: pag, seg, slg"),
        (("seg", None), {"blur_sigma": 0}, "blur_sigma", "blur_sigma must be a positive number"),
        (("seg", None), {"blur_sigma": "wide"}, "blur_sigma", "blur_sigma must be a positive number"),
        (("seg", None), {"sigma": 2.0}, "sigma", "seg takes only blur_sigma, got sigma"),
        (("pag", None), {"blur_sigma": 2.0}, "blur_sigma", "pag takes no options, got blur_sigma"),
    ]
    for args, options, field, message in cases:
        with pytest.raises(PerturbationError, match=message.replace("(", r"\(")) as error:
            perturb(unet, *args, **options)
        assert error.value.field == field and "\n" not in str(error.value)
    with pytest.raises(PerturbationError, match="pag needs self-attention layers, and none are known in a "
                       r"Conv2d \(known: those of UNet, DiT\)"):
        perturb(torch.nn.Conv2d(1, 1, 1), "pag")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in unet.modules())  # nothing was hooked


@torch.no_grad()
def test_a_mask_of_the_wrong_batch_is_refused(unet):
    x, c_noise = _inputs(unet)
    perturbation = perturb(unet, "pag")
    try:
        with perturbation.rows(torch.ones(2, dtype=torch.bool)):
            with pytest.raises(ValueError, match="the pag mask has shape \\[2\\] for a batch of 3"):
                unet(x, c_noise)
    finally:
        unperturb(unet)


# ---------------------------------------------------------------------------------------------------
# The loaded models of the project's checkpoints


@torch.no_grad()
def test_digits_is_perturbed_through_its_loaded_model(monkeypatch):
    model = load_model("digits")
    network = model.denoiser.inner.backbone
    assert perturbable_layers(network, "pag") == ["enc.3", "enc.4", "mid.0", "dec.0", "dec.1", "dec.2"]
    assert perturbable_layers(network, "slg") == ["enc.0", "enc.1", "enc.4", "mid.0", "mid.1"]
    gen = torch.Generator().manual_seed(0)
    x, sigma = torch.randn(3, 1, 8, 8, generator=gen), torch.full((3,), 2.0)
    labels = F.one_hot(torch.tensor([3, 3, 3]), 10).float()
    plain = model.denoiser(x, sigma, class_labels=labels)
    perturbation = model.perturbation("pag", ["mid.0"])
    try:
        with perturbation.rows(MASK):
            got = model.denoiser(x, sigma, class_labels=labels)
    finally:
        unperturb(network)
    attn = network.mid[0].attn
    monkeypatch.setattr(attn, "forward", _unet_attention(attn, identity=True))
    expected = model.denoiser(x, sigma, class_labels=labels)
    assert torch.equal(got[~MASK], plain[~MASK])
    assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[1], plain[1], atol=1e-3)


def test_edm_info_lists_the_layers():
    result = invoke(models_cli.info, "digits")
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 2)[1:] for line in result.output.splitlines() if line.startswith("guider "))
    assert rows == {"layers": "pag, seg: enc.3, enc.4, mid.0 (default), dec.0, dec.1, dec.2; "
                              "slg: enc.0, enc.1, enc.4, mid.0 (default), mid.1"}
    assert NetworkPerturbation(torch.nn.Conv2d(1, 1, 1)).describe() == "none"


def test_loaded_models_refuse_bad_perturbations_in_one_line():
    dit = load_model("digits-dit")
    depth = dit.info["network"]["kwargs"]["depth"]
    valid = ", ".join(f"blocks.{i}" for i in range(depth))
    cases = [
        (lambda: dit.perturbation("slg", ["mid.0"]), "slg_layers",
         f"unknown layer 'mid.0' for slg; valid: {valid}"),
        (lambda: dit.perturbation("seg", None, blur_sigma=-1), "seg_blur_sigma", "positive number"),
        (lambda: dit.perturbation("pgd", None), "guidance_method", "unknown perturbation 'pgd'"),
        (lambda: NetworkPerturbation(torch.nn.Conv2d(1, 1, 1))("seg"), "guidance_method",
         "seg needs self-attention layers, and none are known in a Conv2d"),
    ]
    assert dataclasses.replace(dit, perturb_hooks=None).perturbation("pag") is None  # the kind says so
    for call, param, message in cases:
        with pytest.raises(BadInput, match=message) as error:
            call()
        assert error.value.param == param and "\n" not in str(error.value)
    network = dit.denoiser.inner.backbone
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in network.modules())
