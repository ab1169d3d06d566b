"""Data-parallel ``edm train`` under torchrun (edm.distributed): the rows each rank takes, the draws inside
the network that follow the global batch, and whole runs: 2 processes give the weights of 1, resume the
same way, and write each file once.

The torchrun runs take 10-20 s each on a busy 2-core machine: they are marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _support import invoke
from edm import dit  # noqa: F401  (registers the DiT)
from edm.distributed import BatchShare, RowsOf, global_rows, rows_of_batch, sample_rand
from edm.networks import build_network
from tools.train_cli import train as train_command

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
#: a tiny class-conditional UNet, label dropout on, a batch of 11 (rows 0-5 and 6-10 on 2 ranks)
FLAGS = ["--data", "digits", "--channels", 8, "--blocks", 1, "--batch", 11, "--warmup", 2, "--seed", 4,
         "--label-dropout", 0.1, "--threads", 1, "--no-progress"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchrun(processes: int, *args, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(processes), "-m", "tools.cli", "train", *map(str, args)]
    done = subprocess.run(command, env=ENV, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _state(outdir: Path) -> dict[str, torch.Tensor]:
    record = json.loads((outdir / "training-state.json").read_text())
    return load_file(outdir / record["tensors"])


def _max_difference(a: dict, b: dict, prefix: str) -> float:
    keys = [k for k in a if k.startswith(prefix)]
    assert keys and sorted(keys) == sorted(k for k in b if k.startswith(prefix))
    return max(float((a[k] - b[k]).abs().max()) for k in keys)


# ---------------------------------------------------------------------------------------------------
# The rows of each rank


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_rows_split_uneven_batches_contiguously_and_exactly_once(world):
    for batch in range(world, 30):
        rows = [rows_of_batch(batch, rank, world) for rank in range(world)]
        assert rows[0].start == 0 and rows[-1].stop == batch
        assert all(a.stop == b.start for a, b in zip(rows, rows[1:]))  # contiguous, in rank order
        sizes = [r.stop - r.start for r in rows]
        assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1  # first ranks take more
        assert sum(sizes) == batch
    assert [rows_of_batch(11, r, 2) for r in range(2)] == [slice(0, 6), slice(6, 11)]
    assert [rows_of_batch(10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    with pytest.raises(ValueError):
        rows_of_batch(10, 2, 2)


def test_one_process_is_the_plain_computation():
    share = BatchShare()
    net = torch.nn.Linear(2, 1)
    assert (share.rank, share.world, share.is_main) == (0, 1, True) and share.rows_of(net) is net
    loss = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(share.mean(loss), loss.mean()) and share.rows(5) == slice(0, 5)
    assert share.all_ok(True) and not share.all_ok(False)


class _FakeShare:
    """A rank of ``world`` without a process group: only what :class:`RowsOf` asks for."""

    def __init__(self, rank, world):
        self.rank, self.world = rank, world

    def rows(self, batch):
        return rows_of_batch(batch, self.rank, self.world)


NETWORKS = {"unet": dict(model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.3),
            "dit": dict(patch_size=2, depth=1, width=16, heads=2)}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_draws_inside_the_network_are_rows_of_the_global_draw(name):
    """Label dropout (and the UNet's dropout) on a rank's rows take those rows of the draw for the global
    batch and leave torch's generator where the global batch leaves it: each rank's output is the
    one-process output's rows, and the padding rows are zeros."""
    torch.manual_seed(0)
    net = build_network(name, in_channels=1, out_channels=1, resolution=8, num_classes=10, label_dropout=0.5,
                        **NETWORKS[name]).train()
    with torch.no_grad():  # no zero-initialised layers: every draw shows in the output
        for p in net.parameters():
            p.normal_(0, 0.3)
    batch = 7
    x = torch.randn(batch, 1, 8, 8)
    noise = torch.randn(batch)
    labels = torch.nn.functional.one_hot(torch.arange(batch) % 10, 10).float()
    state = torch.get_rng_state()
    whole = net(x, noise, class_labels=labels)
    after = torch.get_rng_state()
    for rank in range(3):
        torch.set_rng_state(state)
        part = RowsOf(net, _FakeShare(rank, 3))(x, noise, class_labels=labels)
        assert torch.equal(torch.get_rng_state(), after)
        rows = rows_of_batch(batch, rank, 3)
        torch.testing.assert_close(part[rows], whole[rows], rtol=1e-5, atol=1e-5)
        outside = torch.ones(batch, dtype=torch.bool)
        outside[rows] = False
        assert not part[outside].any()
    torch.manual_seed(1)
    reference = torch.rand(5, 3)
    torch.manual_seed(1)
    with global_rows(slice(1, 3), 5):
        assert torch.equal(sample_rand((2, 3)), reference[1:3])


# ---------------------------------------------------------------------------------------------------
# Whole runs under torchrun


@pytest.mark.slow
def test_two_processes_give_the_weights_of_one_and_write_each_file_once(tmp_path):
    """2 processes, batch 11 (rows 6 + 5), label dropout 0.1, 6 steps: raw and EMA weights and Adam's moments
    equal the one-process run's to float round-off (measured max |difference| 9.1e-8 for weights of size up to
    1.0, asserted <= 1e-5; at seed 0, 2.0e-7, and 2.4e-3 when each rank drew its own label dropout); every
    generator state is bit-identical. Rank 0 alone writes: the same files as one process, one summary line."""
    one, two = tmp_path / "one", tmp_path / "two"
    result = invoke(train_command, *FLAGS, "--steps", 6, "--outdir", one)
    assert result.exit_code == 0, result.output
    done = _torchrun(2, *FLAGS, "--steps", 6, "--outdir", two, cwd=tmp_path)
    summary = [line for line in done.stdout.splitlines() if line.startswith("trained")]
    assert len(summary) == 1 and summary[0].startswith("trained 6 steps in ")
    assert summary[0].endswith(f"; model {two / 'network'}.json, state {two / 'training-state.json'}")
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) == [
        "network.json", "network.safetensors", "training-state-00000006.safetensors", "training-state.json"]

    a, b = _state(one), _state(two)
    for prefix in ("net.", "ema.", "adam."):
        assert _max_difference(a, b, prefix) <= 1e-5, prefix
    for key in (k for k in a if k.startswith("rng.")):
        assert torch.equal(a[key], b[key]), key
    ema = load_file(two / "network.safetensors")
    assert max(float((ema[k] - a[f"ema.{k}"]).abs().max()) for k in ema) <= 1e-5
    config_one = json.loads((one / "network.json").read_text())
    config_two = json.loads((two / "network.json").read_text())
    assert config_one["training"]["processes"] == 1 and config_two["training"]["processes"] == 2
    # the global batch is the recipe, not the number of processes
    assert config_two["command"] == config_one["command"].replace(str(one), str(two))
    assert config_two["training"]["loss"] == pytest.approx(config_one["training"]["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_process_resume_equals_the_uninterrupted_run(tmp_path):
    """6 steps in one go (checkpoint every 3) and 3 steps then ``--resume --steps 6``, both on 2 processes:
    the same weights, Adam state and generators, bit for bit."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    _torchrun(2, *FLAGS, "--steps", 6, "--checkpoint-every", 3, "--outdir", whole, cwd=tmp_path)
    _torchrun(2, *FLAGS, "--steps", 3, "--outdir", parts, cwd=tmp_path)
    assert json.loads((parts / "training-state.json").read_text())["step"] == 3
    _torchrun(2, "--resume", parts, "--steps", 6, "--threads", 1, "--no-progress", cwd=tmp_path)
    a, b = _state(whole), _state(parts)
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in whole.iterdir())


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_text_dropout_on_a_ranks_rows_is_those_rows_of_the_global_draw(name):
    """Condition dropout of a text network (the prompt replaced by the null text) draws, on each rank, its
    rows of the global batch's draw, as label dropout does."""
    torch.manual_seed(0)
    kwargs = {k: v for k, v in NETWORKS[name].items() if k != "dropout"}
    net = build_network(name, in_channels=1, out_channels=1, resolution=[8, 16], num_classes=0,
                        text_length=3, label_dropout=0.5, **kwargs).train()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    batch = 7
    x, noise = torch.randn(batch, 1, 8, 16), torch.randn(batch)
    tokens = torch.randint(0, 10, (batch, 3))
    state = torch.get_rng_state()
    whole = net(x, noise, text_tokens=tokens)
    for rank in range(3):
        torch.set_rng_state(state)
        part = RowsOf(net, _FakeShare(rank, 3))(x, noise, text_tokens=tokens)
        rows = rows_of_batch(batch, rank, 3)
        torch.testing.assert_close(part[rows], whole[rows], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_two_processes_equal_one_for_a_text_model_trained_with_the_ddpm_objective(tmp_path):
    """digits-text (text conditioning, condition dropout 0.3) under the DDPM objective, batch 9 on 2
    processes: the weights of one process to float round-off, whatever the conditioning and objective."""
    flags = ["--data", "digits-text", "--objective", "ddpm", "--channels", 8, "--blocks", 1, "--batch", 9,
             "--warmup", 2, "--seed", 1, "--label-dropout", 0.3, "--threads", 1, "--no-progress",
             "--steps", 3]
    one, two = tmp_path / "one", tmp_path / "two"
    result = invoke(train_command, *flags, "--outdir", one)
    assert result.exit_code == 0, result.output
    _torchrun(2, *flags, "--outdir", two, cwd=tmp_path)
    a, b = _state(one), _state(two)
    for prefix in ("net.", "ema."):
        assert _max_difference(a, b, prefix) <= 1e-5, prefix
    config = json.loads((two / "network.json").read_text())
    assert config["condition"]["kind"] == "text" and config["objective"]["name"] == "ddpm"
