"""Conditioning kinds (none, class, text, image concat) and the text-to-image model ``digits-text``.

The rendering is checked against canvases laid out by hand (column numbers written out, glyph pixels
copied from scikit-learn's digits); the tokenizer against literal ids; the networks by their shapes, the
modules each kind adds, and by what the condition changes (condition dropout = the null text); the shipped
model through ``edm generate`` (8x40 PNGs, per-seed reproducibility, the prompt of each seed, bad input)
and by the digits detector's reading of what it draws.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _support import assert_usage_error, invoke
from edm.conditions import PAD, batch_condition, check_kind, default_kind, tokenize
from edm.data import load_digits
from edm.digits_text import HELD_OUT, TRAIN_GLYPHS, column_of, load_digits_text, render
from edm.dit import DiT
from edm.networks import UNet
from tools.cli import main


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def text_data():
    return load_digits_text()


# ---------------------------------------------------------------------------------------------------
# Rendering and data


# first column of each character, written out: k characters start at column 4 (5 - k), 8 apart
COLUMNS = {1: [16], 2: [12, 20], 3: [8, 16, 24], 4: [4, 12, 20, 28], 5: [0, 8, 16, 24, 32]}


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_render_places_glyphs_centred_left_to_right(digits, length):
    glyphs = [digits.images[i] for i in (10, 21, 32, 43, 54)[:length]]
    canvas = render(glyphs).numpy()
    expected = np.full((1, 8, 40), -1.0, dtype=np.float32)
    for start, index in zip(COLUMNS[length], (10, 21, 32, 43, 54)):
        expected[0, :, start:start + 8] = load_digits().images[index, 0].numpy()
    np.testing.assert_array_equal(canvas, expected)
    assert [column_of(length, i) for i in range(length)] == COLUMNS[length]


def test_render_pixels_are_the_sklearn_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    raw = sklearn_digits().images  # 0..16
    canvas = render([torch.from_numpy(raw[5].astype(np.float32) / 8 - 1)]).numpy()
    np.testing.assert_array_equal((canvas[0, :, 16:24] + 1) * 8, raw[5])
    assert (canvas[0, :, :16] == -1).all() and (canvas[0, :, 24:] == -1).all()


def test_render_refuses_no_glyph_or_six():
    glyph = torch.zeros(1, 8, 8)
    for n in (0, 6):
        with pytest.raises(ValueError, match="1 to 5 glyphs"):
            render([glyph] * n)


def test_training_draws_use_training_glyphs_and_skip_held_out_strings(digits, text_data):
    images, texts = text_data.draw(400, torch.Generator().manual_seed(3))
    assert images.shape == (400, 1, 8, 40) and len(texts) == 400
    assert not set(texts) & set(HELD_OUT)
    lengths = np.bincount([len(t) for t in texts], minlength=6)
    assert lengths[0] == 0 and lengths[1:].min() > 50  # uniform over 1..5: 80 expected each
    train = digits.images[:TRAIN_GLYPHS, 0]
    for image, text in zip(images[:60], texts[:60]):
        for i, char in enumerate(text):
            start = COLUMNS[len(text)][i]
            cell = image[0, :, start:start + 8]
            same = (train == cell).flatten(1).all(1)
            assert same.any(), (text, i)  # a training glyph, pixel for pixel...
            assert (digits.labels[:TRAIN_GLYPHS][same] == int(char)).all()  # ... of that digit
        covered = np.zeros(40, dtype=bool)
        covered[COLUMNS[len(text)][0]:COLUMNS[len(text)][-1] + 8] = True
        assert (image[0][:, ~covered] == -1).all()


def test_draws_follow_the_generator(text_data):
    a = text_data.draw(8, torch.Generator().manual_seed(5))
    b = text_data.draw(8, torch.Generator().manual_seed(5))
    assert a[1] == b[1] and torch.equal(a[0], b[0])


# ---------------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenize_pads_on_the_right_and_none_is_the_null_text():
    ids = tokenize(["2024", "7", None, "", "61537"], 5)
    assert ids.dtype == torch.int64
    assert ids.tolist() == [[2, 0, 2, 4, 10], [7, 10, 10, 10, 10], [10] * 5, [10] * 5, [6, 1, 5, 3, 7]]
    assert PAD == 10


@pytest.mark.parametrize("text, match", [("123456", "at most 5"), ("12a", "'a'"), ("1 2", "' '")])
def test_tokenize_refuses_bad_text(text, match):
    with pytest.raises(ValueError, match=match):
        tokenize([text], 5)


# ---------------------------------------------------------------------------------------------------
# Networks: non-square sizes and the conditioning kinds


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn at random (a fresh network's zero-initialised outputs would hide its inputs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


UNET = dict(in_channels=1, model_channels=16, channel_mult=[1, 2], num_blocks=1)
DIT = dict(in_channels=1, patch_size=4, depth=2, width=32, heads=2)


@pytest.mark.parametrize("make", [lambda **k: UNet(**UNET, **k), lambda **k: DiT(**DIT, **k)],
                         ids=["unet", "dit"])
def test_non_square_networks_keep_the_shape(make):
    net = _randomise(make(resolution=[8, 40]))
    x = torch.randn(3, 1, 8, 40)
    out = net(x, torch.zeros(3))
    assert out.shape == (3, 1, 8, 40)
    with pytest.raises(ValueError, match=r"\[B, 1, 8, 40\]"):
        net(torch.randn(3, 1, 40, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="not divisible"):
        make(resolution=[8, 41])


def test_non_square_unet_names_levels_by_height():
    net = UNet(**UNET, resolution=[8, 40], attn_resolutions=[4])
    attended = [b.attn is not None for b in net.enc if hasattr(b, "attn")]
    assert attended == [False, True]  # 8x40 without, 4x20 with
    with pytest.raises(ValueError, match="8, 4"):
        UNet(**UNET, resolution=[8, 40], attn_resolutions=[20])


def test_kinds_add_only_their_modules(tmp_path):
    from edm.checkpoint import read_config

    none = UNet(**UNET, resolution=8)
    klass = UNet(**UNET, resolution=8, num_classes=10)
    text = UNet(**UNET, resolution=[8, 40], text_length=5)
    keys = set(none.state_dict())
    assert set(klass.state_dict()) - keys == {"map_label.weight"}
    extra = set(text.state_dict()) - keys
    assert extra and all(k.startswith(("text.", "map_text.")) or ".cross." in k for k in extra)
    assert not any(k.startswith("map_label") for k in text.state_dict())
    # the shipped class-conditional model's checkpoint builds exactly as before: no key more or less
    import edm

    stem = f"{edm.__path__[0]}/weights/digits"
    config = read_config(stem)
    from safetensors.torch import load_file

    assert set(UNet(**config["network"]["kwargs"]).state_dict()) == set(load_file(stem + ".safetensors"))


@pytest.mark.parametrize("cls, kw", [(UNet, UNET), (DiT, DIT)], ids=["unet", "dit"])
def test_text_network_reads_its_text_and_drops_it_to_the_null_text(cls, kw):
    net = _randomise(cls(**kw, resolution=[8, 40], text_length=5))
    x, noise = torch.randn(2, 1, 8, 40), torch.full((2,), 0.3)
    a = net(x, noise, text_tokens=tokenize(["12", "12"], 5))
    b = net(x, noise, text_tokens=tokenize(["12", "98765"], 5))
    torch.testing.assert_close(a[0], b[0])
    assert (a[1] - b[1]).abs().max() > 1e-3
    null = net(x, noise, text_tokens=tokenize([None, None], 5))
    net.train()
    net.label_dropout = 0.999999  # condition dropout: every text becomes the null text
    with torch.no_grad():
        dropped = net(x, noise, text_tokens=tokenize(["12", "98765"], 5))
    torch.testing.assert_close(dropped, null)
    net.eval()
    with pytest.raises(ValueError, match="text-conditioned"):
        net(x, noise)
    with pytest.raises(ValueError, match=r"\[B, 5\]"):
        net(x, noise, text_tokens=torch.zeros(2, 5))  # float ids


@pytest.mark.parametrize("cls, kw", [(UNet, UNET), (DiT, DIT)], ids=["unet", "dit"])
def test_image_concat_conditioning(cls, kw):
    net = _randomise(cls(**kw, resolution=8, cond_channels=2))
    first = net.conv_in if cls is UNet else net.embed_patch
    assert first.weight.shape[1] == (3 if cls is UNet else 3 * 4 * 4)  # 1 image + 2 conditioning channels
    x, low = torch.randn(2, 1, 8, 8), torch.randn(2, 2, 8, 8)
    out = net(x, torch.zeros(2), cond_image=low)
    assert out.shape == (2, 1, 8, 8)
    other = net(x, torch.zeros(2), cond_image=low.flip(0))
    assert (out - other).abs().max() > 1e-3
    with pytest.raises(ValueError, match="image-conditioned"):
        net(x, torch.zeros(2))
    with pytest.raises(ValueError, match="image-conditioned"):
        net(x, torch.zeros(2), cond_image=torch.randn(2, 2, 4, 4))
    plain = cls(**kw, resolution=8)
    with pytest.raises(ValueError, match="cond_channels=0"):
        plain(x, torch.zeros(2), cond_image=low)


def test_batch_condition_per_kind(digits, text_data):
    g = torch.Generator().manual_seed(7)
    images, cond = batch_condition(digits, "class", 16, g)
    index = torch.randperm(len(digits), generator=torch.Generator().manual_seed(7))[:16]
    torch.testing.assert_close(images, digits.images[index])
    assert cond["class_labels"].argmax(1).tolist() == digits.labels[index].tolist()
    assert (cond["class_labels"].sum(1) == 1).all()
    assert batch_condition(digits, "none", 16, torch.Generator().manual_seed(7))[1] == {}
    images, cond = batch_condition(text_data, "text", 6, torch.Generator().manual_seed(1))
    _, texts = text_data.draw(6, torch.Generator().manual_seed(1))
    assert torch.equal(cond["text_tokens"], tokenize(texts, 5))
    assert default_kind(digits) == "class" and default_kind(text_data) == "text"
    check_kind(digits, "none")
    for data, kind in ((digits, "text"), (text_data, "class")):
        with pytest.raises(ValueError, match=f"conditioning '{kind}' needs"):
            check_kind(data, kind)


# ---------------------------------------------------------------------------------------------------
# Training a text model (tiny) and loading it


def test_train_text_model_and_load_it(tmp_path):
    out = tmp_path / "run"
    result = invoke(main, "train", "--data", "digits-text", "--outdir", out, "--steps", 2, "--batch", 4,
                    "--channels", 8, "--blocks", 1, "--warmup", 1, "--threads", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "network.json").read_text())
    assert config["condition"] == {"kind": "text", "alphabet": "0123456789", "length": 5,
                                   "held_out": list(HELD_OUT)}
    assert config["data"]["shape"] == [1, 8, 40] and config["data"]["num_classes"] == 0
    assert config["network"]["kwargs"]["resolution"] == [8, 40]
    from tools.models import load_model

    model = load_model(str(out / "network"))
    assert model.num_classes == 0 and model.shape == (1, 8, 40)
    tokens = model.conditioner.encode(["38"], height=8, width=40)["text_tokens"]
    assert tokens.tolist() == [[3, 8, 10, 10, 10]]


def test_text_training_resumes_exactly(tmp_path):
    """The strings, glyphs and condition dropout all come from the saved generators: 2 steps + resume to 3
    gives the bytes of 3 uninterrupted steps."""
    tiny = ("--data", "digits-text", "--batch", 4, "--channels", 8, "--blocks", 1, "--warmup", 1,
            "--threads", 1, "--no-progress", "--label-dropout", 0.5)
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert invoke(main, "train", *tiny, "--outdir", whole, "--steps", 3).exit_code == 0
    assert invoke(main, "train", *tiny, "--outdir", part, "--steps", 2).exit_code == 0
    result = invoke(main, "train", "--resume", part, "--steps", 3, "--threads", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    assert (part / "network.safetensors").read_bytes() == (whole / "network.safetensors").read_bytes()


@pytest.mark.parametrize("args, fragment", [
    (["--data", "digits", "--cond", "text"], "conditioning 'text' needs a dataset with texts"),
    (["--data", "digits-text", "--cond", "class"], "conditioning 'class' needs a dataset with class labels"),
])
def test_train_refuses_impossible_conditioning(tmp_path, args, fragment):
    out = tmp_path / "run"
    result = invoke(main, "train", *args, "--outdir", out, "--steps", 1, "--no-progress")
    assert_usage_error(result, fragment)
    assert not out.exists()


def test_train_unconditional_on_labelled_data(tmp_path):
    out = tmp_path / "run"
    result = invoke(main, "train", "--data", "digits", "--cond", "none", "--outdir", out, "--steps", 1,
                    "--batch", 4, "--channels", 8, "--blocks", 1, "--threads", 1, "--no-progress")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "network.json").read_text())
    assert config["condition"] == {"kind": "none"} and config["network"]["kwargs"]["num_classes"] == 0


# ---------------------------------------------------------------------------------------------------
# The shipped model through the front end


def generate(*args):
    return invoke(main, "generate", "--model", "digits-text", "--no-progress", "--steps", 6, *args)


def pngs(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def test_generate_writes_8x40_pngs_per_seed_reproducibly(tmp_path):
    from PIL import Image

    one, four = tmp_path / "one", tmp_path / "four"
    for folder, batch in ((one, 1), (four, 4)):
        result = generate("--prompt", "2024", "--seeds", "0-3", "--batch", batch, "--outdir", folder)
        assert result.exit_code == 0, result.output
    images = pngs(one)
    assert list(images) == [f"{s:06d}.png" for s in range(4)]
    assert images == pngs(four)  # batch 1 and batch 4: the same bytes
    with Image.open(one / "000000.png") as image:
        assert image.size == (40, 8) and image.mode == "L"
    record = json.loads((one / "edm-generate.json").read_text())
    assert "2024" in json.dumps(record)


def test_prompts_file_cycles_lines_over_seeds(tmp_path):
    lines = ["7", "38", "905"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(lines) + "\n")
    both = tmp_path / "file"
    assert generate("--prompts", prompts, "--seeds", "0-4", "--outdir", both).exit_code == 0
    written = pngs(both)
    for k, seed in enumerate(range(5)):
        alone = tmp_path / f"alone{seed}"
        assert generate("--prompt", lines[k % 3], "--seeds", seed, "--outdir", alone).exit_code == 0
        assert pngs(alone)[f"{seed:06d}.png"] == written[f"{seed:06d}.png"]


def test_negative_prompt_and_guidance_change_the_image(tmp_path):
    base, neg, w0 = tmp_path / "base", tmp_path / "neg", tmp_path / "w0"
    assert generate("--prompt", "38", "--seeds", 1, "--outdir", base).exit_code == 0
    assert generate("--prompt", "38", "--negative-prompt", "", "--seeds", 1, "--outdir", tmp_path / "empty"
                    ).exit_code == 0
    assert pngs(tmp_path / "empty") == pngs(base)  # the default negative is the empty prompt (null text)
    assert generate("--prompt", "38", "--negative-prompt", "3", "--seeds", 1, "--outdir", neg).exit_code == 0
    assert generate("--prompt", "38", "--guidance", 0, "--seeds", 1, "--outdir", w0).exit_code == 0
    assert pngs(neg) != pngs(base) and pngs(w0) != pngs(base)


@pytest.mark.parametrize("args, flag, fragment", [
    ([], "--prompt", "give --prompt TEXT or --prompts FILE"),
    (["--prompt", "123456"], "--prompt", "'123456' must be 1 to 5 digits"),
    (["--prompt", "12a"], "--prompt", "'12a' must be 1 to 5 digits"),
    (["--prompt", "12", "--negative-prompt", "x"], "--negative-prompt", "'x' must be 1 to 5 digits"),
    (["--prompt", "12", "--class", 3], "--class", "takes no class"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, flag, fragment):
    out = tmp_path / "out"
    assert_usage_error(generate(*args, "--seeds", "0-1", "--outdir", out), flag, fragment)
    assert not out.exists()


def test_bad_prompts_file_line_names_the_flag(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("12\n1234567\n")
    out = tmp_path / "out"
    assert_usage_error(generate("--prompts", prompts, "--outdir", out), "--prompts", "'1234567'")
    assert not out.exists()


def test_prompt_on_the_class_model_is_refused(tmp_path):
    out = tmp_path / "out"
    result = invoke(main, "generate", "--model", "digits", "--prompt", "12", "--outdir", out, "--no-progress")
    assert_usage_error(result, "--prompt", "takes no text")
    assert not out.exists()


def test_info_shows_the_text_model():
    result = invoke(main, "info", "digits-text")
    assert result.exit_code == 0, result.output
    assert "1 x 8 x 40" in result.output
    assert "text: 1 to 5 digits (--prompt" in result.output
    assert "default --guidance" in result.output


def test_shipped_model_draws_the_held_out_strings(tmp_path):
    """50 images (10 per held-out string, never drawn in training) with the model's default guidance at 12
    heun steps: each 8x8 cell at its column, read by the digits detector, is the asked digit. Measured
    when written: 100% of cells and strings (8 steps: 94% / 82%, too coarse);
    bench/results/digits_text.md measures 500 seeds per string at the full defaults."""
    from PIL import Image

    from tools.fid.detectors import get_detector

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(HELD_OUT) + "\n")
    out = tmp_path / "out"
    result = invoke(main, "generate", "--model", "digits-text", "--prompts", prompts, "--seeds", "0-49",
                    "--steps", 12, "--batch", 50, "--outdir", out, "--no-progress")
    assert result.exit_code == 0, result.output
    cells, targets, owners = [], [], []
    for seed in range(50):
        text = HELD_OUT[seed % 5]
        with Image.open(out / f"{seed:06d}.png") as image:
            pixels = np.asarray(image)
        for i, char in enumerate(text):
            start = COLUMNS[len(text)][i]
            cells.append(pixels[:, start:start + 8])
            targets.append(int(char))
            owners.append(seed)
    logits = get_detector("digits").classify(torch.from_numpy(np.stack(cells))[:, None])
    right = logits.argmax(1).numpy() == np.array(targets)
    whole = [right[np.array(owners) == s].all() for s in range(50)]
    assert right.mean() >= 0.95, right.mean()
    assert np.mean(whole) >= 0.9, np.mean(whole)
