"""What ``edm.train.train`` does to the weights, step by step, checked against hand-worked numbers.

The training state written after each call (``load_training_state``: raw weights ``net.*``, EMA
weights ``ema.*``, Adam's parameter groups) lets a run be followed one optimizer step at a time by
resuming it one step further each call (resume is exact; tests/test_train.py checks that).

* EMA, documented as ``ema <- beta * ema + (1 - beta) * net`` after each step, with ``beta`` the fixed
  ``ema_decay`` or ``0.5 ** (batch / halflife)``, ``halflife = min(ema_halflife_kimg * 1000,
  ema_rampup * images seen)``: the EMA weights after steps 1..3 are written out as explicit
  combinations of the raw weights (decay 0.9: 0.9 w0 + 0.1 w1, then 0.81 w0 + 0.09 w1 + 0.1 w2, ...).
* Learning rate: linear warm-up ``lr * min(1, step / warmup)`` for step 1, 2, ...; the first step's
  size is checked on the weights themselves (Adam's first update has magnitude lr on every weight
  with a non-negligible gradient).
* A short real run on the digits: the loss falls.
"""

from __future__ import annotations

import pytest
import torch

from edm.train import load_training_state, train

pytestmark = pytest.mark.usefixtures("one_thread")

# A tiny UNet without dropout; all randomness comes from the seed.
TINY = {"model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4]}


def _states(outdir, last: int, **options) -> list[dict[str, torch.Tensor]]:
    """Tensors of the training state after 0, 1, ..., ``last`` steps of one run (resumed a step at a
    time), with the Adam learning rate of the last step stored under ``"lr"``."""
    train("digits", outdir, steps=0, network_kwargs=TINY, seed=3, progress=False, **options)
    states = []
    for step in range(last + 1):
        if step:
            train(resume=outdir, steps=step, progress=False)
        record, tensors = load_training_state(outdir)
        assert record["step"] == step
        tensors["lr"] = torch.tensor(record["adam_param_groups"][0]["lr"], dtype=torch.float64)
        states.append(tensors)
    return states


def _weights(state, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.double() for k, v in state.items() if k.startswith(prefix)}


def _assert_ema_equals(state, combination, label: str):
    """``ema.*`` of ``state`` == sum of coefficient * raw weights, for every tensor."""
    ema = _weights(state, "ema.")
    assert ema, "no EMA tensors in the training state"
    raw = [(coef, _weights(s, "net.")) for coef, s in combination]
    for name, value in ema.items():
        expected = sum(coef * weights[name] for coef, weights in raw)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7, msg=f"{label}: ema.{name}")


@pytest.fixture(scope="module")
def fixed_decay(tmp_path_factory):
    return _states(tmp_path_factory.mktemp("fixed-decay"), 3, batch=16, lr=2e-3, warmup=4, ema_decay=0.9)


def test_ema_with_fixed_decay_by_hand(fixed_decay):
    w0, w1, w2, w3 = fixed_decay
    # The UNet's output convolution starts at zero, so step 1 moves only it; later steps move all.
    assert not torch.equal(w1["net.conv_out.weight"], w0["net.conv_out.weight"])
    assert not torch.equal(w2["net.conv_in.weight"], w1["net.conv_in.weight"])
    _assert_ema_equals(w0, [(1.0, w0)], "step 0")  # the EMA starts as a copy of the network
    _assert_ema_equals(w1, [(0.9, w0), (0.1, w1)], "step 1")
    _assert_ema_equals(w2, [(0.81, w0), (0.09, w1), (0.1, w2)], "step 2")
    _assert_ema_equals(w3, [(0.729, w0), (0.081, w1), (0.09, w2), (0.1, w3)], "step 3")


def test_learning_rate_warm_up_by_hand(fixed_decay):
    """lr = 2e-3, warmup = 4: steps 1, 2, 3 use 5e-4, 1e-3, 1.5e-3."""
    assert [s["lr"].item() for s in fixed_decay[1:]] == pytest.approx([5e-4, 1e-3, 1.5e-3], rel=1e-12)
    # Adam's first update is lr * g / (|g| + eps): magnitude lr (5e-4) wherever |g| >> eps = 1e-8.
    # Only the zero-initialised output convolution has a gradient at step 1.
    w0, w1 = _weights(fixed_decay[0], "net."), _weights(fixed_decay[1], "net.")
    moves = torch.cat([(w1[k] - w0[k]).abs().flatten() for k in w0])
    assert moves.max().item() == pytest.approx(5e-4, rel=1e-3)
    out = (w1["conv_out.weight"] - w0["conv_out.weight"]).abs()
    assert out.median().item() == pytest.approx(5e-4, rel=1e-3)


def test_learning_rate_after_warm_up_is_the_base_rate(tmp_path):
    states = _states(tmp_path, 3, batch=8, lr=1e-3, warmup=2, ema_decay=0.5)
    assert [s["lr"].item() for s in states[1:]] == pytest.approx([5e-4, 1e-3, 1e-3], rel=1e-12)


def test_ema_half_life_with_ramp_up_by_hand(tmp_path):
    """batch 16, half-life 0.032 kimg = 32 images, ramp-up 0.5 (half-life at most half the images
    seen): step 1 (16 images): half-life 8 -> beta = 0.5^(16/8) = 0.25; step 2: 16 -> 0.5;
    step 3: 24 -> 0.5^(2/3); step 4: min(32, 32) -> 0.5^(1/2)."""
    states = _states(tmp_path, 4, batch=16, lr=2e-3, warmup=1, ema_halflife_kimg=0.032, ema_rampup=0.5)
    betas = [0.25, 0.5, 0.5 ** (2 / 3), 0.5 ** 0.5]
    ema = [_weights(states[0], "ema.")]
    for step, beta in enumerate(betas, start=1):
        raw = _weights(states[step], "net.")
        ema.append({k: beta * ema[-1][k] + (1 - beta) * raw[k] for k in raw})  # the documented update
        for name, value in _weights(states[step], "ema.").items():
            torch.testing.assert_close(value, ema[-1][name], rtol=1e-5, atol=1e-7, msg=f"step {step}: {name}")


def test_loss_falls_on_digits(tmp_path):
    """40 steps of a tiny UNet on the 8x8 digits (fixed seed, deterministic on CPU): the mean loss of
    the last 10 steps is well below that of the first 10 (about 0.75 of it; EDM's loss starts near 1.5
    here, as its weighting makes the untrained network's loss O(1))."""
    options = {"batch": 32, "lr": 5e-3, "warmup": 5, "ema_decay": 0.9, "seed": 0, "network_kwargs": TINY}
    first = train("digits", tmp_path, steps=10, progress=False, **options).loss  # mean of steps 1..10
    train(resume=tmp_path, steps=30, progress=False)
    last = train(resume=tmp_path, steps=40, progress=False).loss  # mean of steps 31..40
    assert 1.0 < first < 3.0
    assert last < 0.85 * first, (first, last)
