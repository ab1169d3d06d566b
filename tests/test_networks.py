"""The network registry and the EDM-style UNet backbone."""

from __future__ import annotations

import pytest
import torch

from edm.networks import SelfAttention, UNet, build_network, list_networks, register_network, unet_resolutions


def _onehot(labels, num_classes=10):
    return torch.nn.functional.one_hot(torch.as_tensor(labels), num_classes).float()


def _randomize(net):
    """A fresh UNet outputs exactly 0 (zero-initialised last conv); perturb every weight."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return net


@pytest.mark.parametrize(
    "resolution, channels, mult, attn",
    [(8, 1, (1, 2), (4,)), (16, 3, (1, 2, 2), (8,)), (32, 3, (1, 2, 2), (8,)), (64, 3, (1, 1, 2, 2), (8,))],
)
def test_unet_shapes(resolution, channels, mult, attn):
    torch.manual_seed(0)
    net = build_network("unet", in_channels=channels, resolution=resolution, model_channels=16,
                        channel_mult=mult, num_blocks=1, attn_resolutions=attn, num_classes=10)
    x = torch.randn(2, channels, resolution, resolution)
    out = net(x, torch.tensor([-1.0, 0.5]), _onehot([3, 7]))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0  # zero-initialised output layer
    out = _randomize(net)(x, torch.tensor([-1.0, 0.5]))  # class_labels omitted = unconditional
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_unet_out_channels_and_scalar_noise_label():
    net = _randomize(UNet(in_channels=3, out_channels=6, resolution=8, model_channels=8,
                          channel_mult=(1, 2), num_blocks=1, attn_resolutions=()))
    out = net(torch.randn(4, 3, 8, 8), torch.tensor(0.3))
    assert out.shape == (4, 6, 8, 8)


def test_unet_float64_and_backward():
    net = _randomize(UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                          attn_resolutions=(4,), num_classes=3, embedding="fourier")).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = net(x, torch.zeros(2, dtype=torch.float64), _onehot([0, 2], 3).double())
    assert out.dtype == torch.float64
    out.square().sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_class_conditioning_changes_output():
    torch.manual_seed(0)
    net = _randomize(UNet(in_channels=1, resolution=8, model_channels=16, channel_mult=(1, 2),
                          num_blocks=1, attn_resolutions=(4,), num_classes=10)).eval()
    x = torch.randn(1, 1, 8, 8).expand(3, -1, -1, -1)
    sigma = torch.zeros(3)
    labels = torch.stack([_onehot(1), _onehot(2), torch.zeros(10)])
    out = net(x, sigma, labels)
    assert not torch.allclose(out[0], out[1])
    assert not torch.allclose(out[0], out[2])
    torch.testing.assert_close(out[2:], net(x[:1], sigma[:1]))  # zeros == no class given


def test_label_dropout_only_in_training_mode():
    torch.manual_seed(0)
    net = _randomize(UNet(in_channels=1, resolution=8, model_channels=16, channel_mult=(1, 2),
                          num_blocks=1, attn_resolutions=(), num_classes=10, label_dropout=0.5))
    x = torch.randn(1, 1, 8, 8).expand(256, -1, -1, -1)
    sigma = torch.zeros(256)
    labels = _onehot([4] * 256)
    net.eval()
    conditional = net(x[:1], sigma[:1], labels[:1])
    unconditional = net(x[:1], sigma[:1])
    evaluated = net(x, sigma, labels)
    torch.testing.assert_close(evaluated, conditional.expand_as(evaluated))  # eval: never dropped

    net.train()
    trained = net(x, sigma, labels)
    dropped = (trained - unconditional).flatten(1).abs().amax(1) < 1e-5
    kept = (trained - conditional).flatten(1).abs().amax(1) < 1e-5
    assert bool((dropped ^ kept).all())  # every sample is one or the other
    assert 0.3 < dropped.float().mean() < 0.7


def test_no_label_dropout_keeps_labels_in_training():
    net = _randomize(UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1,
                          attn_resolutions=(), num_classes=10)).train()
    x, sigma, labels = torch.randn(8, 1, 8, 8), torch.zeros(8), _onehot(list(range(8)))
    torch.testing.assert_close(net(x, sigma, labels), net.eval()(x, sigma, labels))


def test_bad_inputs():
    net = UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1,
               attn_resolutions=(), num_classes=10)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 8\]"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="class_labels"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), torch.tensor([1, 2]))
    uncond = UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(torch.randn(2, 1, 8, 8), torch.zeros(2), _onehot([1, 2]))
    with pytest.raises(ValueError, match="divisible"):
        UNet(resolution=12, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="embedding"):
        UNet(embedding="sinusoid")


def test_registry():
    assert "unet" in list_networks()
    assert isinstance(build_network("unet", resolution=8, channel_mult=(1,), model_channels=8), UNet)
    with pytest.raises(ValueError, match="unknown network 'nope'.*unet"):
        build_network("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_network("unet")(UNet)

    @register_network("test-identity")
    class Identity(torch.nn.Module):
        def forward(self, x, noise_labels):
            return x

    try:
        assert "test-identity" in list_networks()
        assert isinstance(build_network("test-identity"), Identity)
    finally:
        from edm import networks

        networks._NETWORKS.pop("test-identity")


def _attention_blocks(net) -> dict[str, int]:
    """How many blocks of the encoder, middle and decoder have self-attention."""
    return {part: sum(isinstance(m, SelfAttention) for m in getattr(net, part).modules())
            for part in ("enc", "mid", "dec")}


def test_attention_resolutions_must_be_the_networks():
    assert unet_resolutions(8, (1, 2)) == [8, 4]
    assert unet_resolutions(32, (1, 2, 2)) == [32, 16, 8]
    assert unet_resolutions(8, (1,)) == [8]
    small = {"in_channels": 1, "resolution": 8, "model_channels": 8, "num_blocks": 1}
    # 8x8 input with two levels works at 8 and 4: 5 (or 16) would silently give no attention.
    for attn, bad in [((5,), "resolution 5 is"), ((4, 16, 2), "resolutions 2, 16 are")]:
        with pytest.raises(ValueError, match=f"attention {bad} not among this UNet's resolutions 8, 4 "):
            UNet(channel_mult=(1, 2), attn_resolutions=attn, **small)
        with pytest.raises(ValueError, match="resolutions 8, 4"):
            build_network("unet", channel_mult=(1, 2), attn_resolutions=list(attn), **small)
    with pytest.raises(ValueError, match="resolutions 8 "):
        UNet(channel_mult=(1,), attn_resolutions=(4,), **small)
    # Valid ones get attention in every block at that resolution (1 encoder + 2 decoder blocks here).
    assert _attention_blocks(UNet(channel_mult=(1, 2), attn_resolutions=(4,), **small)) == \
        {"enc": 1, "mid": 1, "dec": 2}
    assert _attention_blocks(UNet(channel_mult=(1, 2), attn_resolutions=(8, 4), **small)) == \
        {"enc": 2, "mid": 1, "dec": 4}
    assert _attention_blocks(UNet(channel_mult=(1, 2), attn_resolutions=(), **small)) == \
        {"enc": 0, "mid": 1, "dec": 0}


def test_default_attention_is_at_16_when_the_network_has_it():
    net = UNet(in_channels=1, resolution=32, model_channels=8, channel_mult=(1, 2, 2), num_blocks=1)
    assert _attention_blocks(net) == {"enc": 1, "mid": 1, "dec": 2}  # the level at 16
    net = UNet(in_channels=1, resolution=8, model_channels=8, channel_mult=(1, 2), num_blocks=1)
    assert _attention_blocks(net) == {"enc": 0, "mid": 1, "dec": 0}  # no 16: only the middle block
