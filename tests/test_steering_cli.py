"""The steering and editing flags of `edm generate` (and `edm fid gen`, `edm bench`) end to end, on the
embedded digits model (1x8x8, 10 classes): each image still depends on its seed alone whatever --batch,
each flag changes the images, inpainting keeps the black region of the mask byte for byte, img2img at
strength 1 is plain generation, bad input is one usage line with nothing written, and the folder's record
names the steering so that a rerun with other steering is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import _support
from edm.classifier import NoiseAwareClassifier, save_classifier
from tools.cli import main
from tools.generate.record import RECORD_NAME
from tools.options import SAMPLING_PARAMS, STEERING_FLAGS

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = list(range(8))  # --batch 7: one batch of 7 and one of 1; --batch 1: eight of 1
NAMES = [f"{s:06d}.png" for s in SEEDS]
# float64: the digits network's float32 convolutions round differently per batch size (about 1e-6, the
# network's arithmetic, not the pipeline's), which now and then moves a pixel by one level.
# euler: the cheapest; a later --sampler replaces it (click takes an option's last value).
BASE = ["--no-progress", "--device", "cpu", "--dtype", "float64", "--sampler", "euler", "--steps", 4,
        "--seeds", "0-7"]


def invoke(*args):
    return _support.invoke(main, *args)


def generate(*args):
    return invoke("generate", *BASE, *args)


def ok(*args) -> None:
    result = generate(*args)
    assert result.exit_code == 0, result.output
    assert "8 images written" in result.stdout, result.output


def pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(folder).glob("*.png"))}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def save_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8), "L" if array.ndim == 2 else "RGB").save(path)
    return path


def tiny_classifier(path: Path, num_classes: int) -> str:
    kwargs = {"in_channels": 1, "resolution": 8, "num_classes": num_classes, "sigma_data": 0.752,
              "model_channels": 8, "channel_mult": [1], "num_blocks": 1}
    torch.manual_seed(num_classes)
    net = NoiseAwareClassifier(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    save_classifier(path, net, {"network": {"kwargs": kwargs}, "data": {"shape": [1, 8, 8],
                                                                          "num_classes": num_classes}})
    return str(path)


def tiny_checkpoint(path: Path, resolution: int, num_classes: int) -> str:
    from edm.checkpoint import save_checkpoint
    from edm.networks import build_network

    torch.manual_seed(0)
    kwargs = dict(in_channels=1, resolution=resolution, model_channels=8, channel_mult=[1], num_blocks=1,
                  attn_resolutions=[], channels_per_head=8, num_classes=num_classes)
    save_checkpoint(path, build_network("unet", **kwargs), {
        "network": {"name": "unet", "kwargs": kwargs},
        "precond": {"scheme": "edm", "params": {"sigma_data": 0.5}},
        "data": {"shape": [1, resolution, resolution], "num_classes": num_classes},
        "command": "test fixture"})
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The plain images (also the per-seed init folder), one init PNG spanning 0..255, and the masks."""
    root = tmp_path_factory.mktemp("steering")
    ok("--batch", 7, "--outdir", root / "plain")
    ramp = np.arange(64).reshape(8, 8) * 4
    ramp[-1, -1] = 255
    mask = np.zeros((8, 8))
    mask[:, 4:] = 255  # the right half is generated, the left half kept
    return {"root": root, "plain": root / "plain", "one": save_png(root / "one.png", ramp.T),
            "right": save_png(root / "right.png", mask)}


_runs: dict[str, Path] = {}


def made(files, name: str, args: list, batch: int = 7) -> Path:
    """The folder of ``edm generate ARGS --batch BATCH`` (run once per module)."""
    key = f"{name}-b{batch}"
    if key not in _runs:
        ok(*args, "--batch", batch, "--outdir", files["root"] / key)
        _runs[key] = files["root"] / key
    return _runs[key]


def flag_sets(files) -> dict[str, list]:
    return {
        "negative class": ["--guidance", 1, "--negative-class", 8],
        "guidance interval": ["--guidance", 1, "--guidance-interval", "0.3,5"],
        "guidance rescale": ["--guidance", 1, "--guidance-rescale", 0.7],
        "autoguidance": ["--guidance", 1, "--guide-model", "digits-weak"],
        "classifier": ["--unconditional", "--classifier", "digits-classifier", "--class", 3],
        "tiny classifier": ["--unconditional", "--classifier", files["clf10"], "--class", 3,
                            "--classifier-scale", 2],
        "dynamic threshold": ["--threshold", "dynamic", "--threshold-percentile", 0.9],
        "static threshold": ["--threshold", "static"],
        "img2img folder": ["--init-image", files["plain"], "--strength", 0.5],
        "inpainting": ["--init-image", files["one"], "--mask", files["right"]],
        "inpainting resample": ["--init-image", files["one"], "--mask", files["right"], "--resample", "2,2"],
        "corrector": ["--corrector", "langevin", "--corrector-steps", 2],
        "annealed langevin": ["--sampler", "annealed_langevin", "--steps-per-level", 2],
        # what the sets above are compared with (not batch-checked themselves)
        "cfg": ["--guidance", 1],
        "unconditional": ["--unconditional"],
        "default percentile": ["--threshold", "dynamic"],
    }


#: each set's images must differ from those of the plain command and of these sets (the flag under test
#: is not ignored: e.g. --negative-class must change what --guidance alone gives)
DIFFERS_FROM = {"negative class": ["cfg"], "guidance interval": ["cfg"], "guidance rescale": ["cfg"],
                "autoguidance": ["cfg"], "classifier": ["unconditional"],
                "tiny classifier": ["unconditional"], "dynamic threshold": ["default percentile"],
                "inpainting resample": ["inpainting"]}
SET_NAMES = [name for name in flag_sets(dict.fromkeys(["plain", "one", "right", "clf10"], ""))
             if name not in ("cfg", "unconditional", "default percentile")]


@pytest.fixture(scope="module")
def sets(files) -> dict[str, list]:
    files["clf10"] = Path(tiny_classifier(files["root"] / "clf10", 10))
    return flag_sets(files)


# ---------------------------------------------------------------------------------------------------
# 1. Per seed whatever the batch, and every flag changes the images


@pytest.mark.parametrize("name", SET_NAMES)
@pytest.mark.slow
def test_batch_does_not_change_the_images_and_the_flags_do(files, sets, name):
    args = sets[name]
    one, seven = pngs(made(files, name, args, 1)), pngs(made(files, name, args, 7))
    assert sorted(one) == sorted(seven) == NAMES
    differ = [n for n in NAMES if one[n] != seven[n]]
    assert not differ, f"{name}: --batch 1 and --batch 7 differ for {differ}"
    for other in ["plain", *DIFFERS_FROM.get(name, [])]:
        images = pngs(files["plain"] if other == "plain" else made(files, other, sets[other]))
        changed = [n for n in NAMES if seven[n] != images[n]]
        assert len(changed) >= 6, f"{name}: only {changed} differ from {other}: flag ignored?"


# ---------------------------------------------------------------------------------------------------
# 2. Inpainting keeps the black region exactly


def test_inpainting_keeps_the_known_region_of_one_init_png(files, sets):
    out = made(files, "inpainting", sets["inpainting"])
    init = pixels(files["one"])
    generated = []
    for name in NAMES:
        image = pixels(out / name)
        assert image.shape == init.shape == (8, 8)
        assert np.array_equal(image[:, :4], init[:, :4]), name
        generated.append(not np.array_equal(image[:, 4:], init[:, 4:]))
    assert sum(generated) >= 6, generated


def test_inpainting_keeps_the_known_region_of_each_seeds_init(files):
    out = made(files, "inpainting folder", ["--init-image", files["plain"], "--mask", files["right"]])
    generated = []
    for name in NAMES:
        image, init = pixels(out / name), pixels(files["plain"] / name)
        assert np.array_equal(image[:, :4], init[:, :4]), name
        generated.append(not np.array_equal(image[:, 4:], init[:, 4:]))
    assert sum(generated) >= 6, generated
    # each seed kept its own init image: the kept halves differ between seeds as the inits do
    assert len({pixels(out / n)[:, :4].tobytes() for n in NAMES}) == len(
        {pixels(files["plain"] / n)[:, :4].tobytes() for n in NAMES})


# ---------------------------------------------------------------------------------------------------
# 3. img2img: strength 1 is plain generation, 0.5 is neither the init nor plain


@pytest.mark.parametrize("init", ["one", "plain"])
@pytest.mark.slow
def test_strength_one_is_plain_generation(files, init):
    out = made(files, f"strength 1 {init}", ["--init-image", files[init], "--strength", 1])
    assert pngs(out) == pngs(files["plain"])


def test_strength_half_differs_from_init_and_plain(files, sets):
    out = pngs(made(files, "img2img folder", sets["img2img folder"]))
    plain = pngs(files["plain"])  # also the init images
    assert sum(out[n] != plain[n] for n in NAMES) >= 6
    folder = made(files, "img2img one", ["--init-image", files["one"], "--strength", 0.5])
    init = pixels(files["one"])
    assert sum(pngs(folder)[n] != plain[n] for n in NAMES) >= 6
    assert sum(not np.array_equal(pixels(folder / n), init) for n in NAMES) >= 6
    # the init image shows through: closer to it than the plain images are
    distance = np.mean([np.abs(pixels(folder / n).astype(int) - init).mean() for n in NAMES])
    plain_distance = np.mean([np.abs(pixels(files["plain"] / n).astype(int) - init).mean() for n in NAMES])
    assert distance < plain_distance


# ---------------------------------------------------------------------------------------------------
# 4. Bad input: one line, exit 2, nothing written


def bad_inputs(files) -> dict[str, list]:
    root = files["root"] / "bad"
    root.mkdir(exist_ok=True)
    small = save_png(root / "small.png", np.zeros((6, 6)))
    rgb = save_png(root / "rgb.png", np.zeros((8, 8, 3)))
    partial = root / "partial"
    shutil.copytree(files["plain"], partial)
    (partial / "000005.png").unlink()
    one, right = files["one"], files["right"]
    return {  # name: (the flag the error names, the arguments)
        "mask of another size": ("--mask", ["--init-image", one, "--mask", small]),
        "init of another size": ("--init-image", ["--init-image", small]),
        "RGB init for a 1-channel model": ("--init-image", ["--init-image", rgb]),
        "strength 0": ("--strength", ["--init-image", one, "--strength", 0]),
        "strength 1.5": ("--strength", ["--init-image", one, "--strength", 1.5]),
        "strength without init": ("--strength", ["--strength", 0.5]),
        "mask without init": ("--mask", ["--mask", right]),
        "resample without mask": ("--resample", ["--init-image", one, "--resample", "2,2"]),
        "classifier scale without classifier": ("--classifier-scale", ["--classifier-scale", 2]),
        "negative class 10": ("--negative-class", ["--guidance", 1, "--negative-class", 10]),
        "negative class -1": ("--negative-class", ["--guidance", 1, "--negative-class", -1]),
        "negative class without guidance": ("--negative-class", ["--negative-class", 3]),
        "guidance rescale 1.5": ("--guidance-rescale", ["--guidance", 1, "--guidance-rescale", 1.5]),
        "reversed guidance interval": ("--guidance-interval",
                                       ["--guidance", 1, "--guidance-interval", "5,1"]),
        "percentile without threshold": ("--threshold-percentile", ["--threshold-percentile", 0.9]),
        "percentile with static threshold": ("--threshold-percentile",
                                             ["--threshold", "static", "--threshold-percentile", 0.9]),
        "snr without corrector": ("--snr", ["--snr", 0.2]),
        "corrector steps without corrector": ("--corrector-steps", ["--corrector-steps", 2]),
        "corrector with restart": ("--corrector", ["--corrector", "langevin", "--sampler", "restart"]),
        "init folder missing a seed": ("--init-image", ["--init-image", partial]),
        "missing init image": ("--init-image", ["--init-image", root / "nope.png"]),
        "guide model of another shape": ("--guide-model", [
            "--guidance", 1, "--guide-model", tiny_checkpoint(root / "guide16", 16, 10)]),
        "guide model of other classes": ("--guide-model", [
            "--guidance", 1, "--guide-model", tiny_checkpoint(root / "guide_uncond", 8, 0)]),
        "classifier of other classes": ("--classifier", [
            "--unconditional", "--classifier", tiny_classifier(root / "clf5", 5), "--class", 3]),
        "CFG without the class": ("--guidance", ["--guidance", 1, "--unconditional"]),
    }


def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_error(result) -> str | None:
    """The error line of a usage error (exit 2, one 'Error:' line, no traceback, nothing on stdout)."""
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    if result.exit_code != 2 or len(errors) != 1 or "Traceback" in result.output or result.stdout:
        return None
    return errors[0]


@pytest.mark.slow
def test_bad_inputs(files):
    cases = bad_inputs(files)
    before = snapshot(files["root"])
    failures = []
    for i, (name, (flag, args)) in enumerate(cases.items()):
        out = files["root"] / "bad" / f"out{i}"
        result = generate(*args, "--outdir", out)
        error = one_error(result)
        if error is None or f"'{flag}'" not in error:
            failures.append(f"{name}: exit {result.exit_code}, no one error naming {flag}: {result.output!r}")
        if out.exists() and any(out.iterdir()):
            failures.append(f"{name}: wrote {snapshot(out)}")
        if snapshot(files["root"]) != before:
            failures.append(f"{name}: wrote {sorted(set(snapshot(files['root'])) - set(before))}")
            before = snapshot(files["root"])
    assert not failures, "\n".join(failures)


def test_an_unknown_guide_model_is_named_as_the_guide_model(files):
    result = generate("--guidance", 1, "--guide-model", files["root"] / "no-such-guide", "--outdir",
                      files["root"] / "bad" / "unknown-guide")
    error = one_error(result)
    assert error is not None and "'--guide-model'" in error, result.output


def test_fid_gen_and_bench_refuse_editing_they_cannot_do(files):
    result = invoke("fid", "gen", "--no-progress", "--device", "cpu", "--steps", 2, "--num", 4, "--ref",
                    "digits", "--mask", files["right"])
    assert one_error(result) is not None and "--mask" in result.stderr, result.output
    out = files["root"] / "bench"
    result = invoke("bench", "--no-progress", "--device", "cpu", "--sampler", "euler", "--nfe", 4, "--num", 2,
                    "--init-image", files["one"], "--out", out)
    assert one_error(result) is not None and "--init-image" in result.stderr, result.output
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------------
# 5. The folder's record names the steering


def listing(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def refused(folder: Path, *args, named: tuple[str, ...]) -> None:
    before = listing(folder)
    result = generate(*args, "--batch", 7, "--outdir", folder)
    error = one_error(result)
    assert error is not None, result.output
    assert "--outdir" in error and "--overwrite" in error and all(n in error for n in named), error
    assert listing(folder) == before


@pytest.mark.slow
def test_a_rerun_with_other_steering_is_refused(files, sets):
    auto = made(files, "autoguidance", sets["autoguidance"])
    record = json.loads((auto / RECORD_NAME).read_text())
    assert record["steering"] == {"guide_model": "digits-weak"}, record
    refused(auto, "--guidance", 1, named=("guide_model=digits-weak",))
    other = tiny_checkpoint(files["root"] / "other_guide", 8, 10)  # same shape and classes: a valid guide
    refused(auto, "--guidance", 1, "--guide-model", other, named=("guide_model=digits-weak", other))

    base = ["--guidance", 1, "--negative-class", 8, "--threshold", "dynamic", "--init-image", files["plain"],
            "--strength", 0.6]
    folder = made(files, "record", base)
    steering = json.loads((folder / RECORD_NAME).read_text())["steering"]
    assert {k: steering[k] for k in ("negative_class", "threshold", "init_image", "strength")} == {
        "negative_class": 8, "threshold": "dynamic", "init_image": str(files["plain"].resolve()),
        "strength": 0.6}, steering
    assert "threshold_percentile" not in steering and "mask" not in steering
    result = generate(*base, "--batch", 7, "--outdir", folder)  # the same settings resume
    assert result.exit_code == 0 and "0 images written, 8 skipped" in result.stdout, result.output
    for flag, value in [("--negative-class", 2), ("--threshold", "static"), ("--strength", 0.8)]:
        key = flag[2:].replace("-", "_")
        changed = list(base)
        old, changed[changed.index(flag) + 1] = changed[changed.index(flag) + 1], value
        refused(folder, *changed, named=(f"{key}={old}", f"{key}={value}"))
        before = pngs(folder)
        result = generate(*changed, "--batch", 7, "--outdir", folder, "--overwrite")
        assert result.exit_code == 0 and "8 images written" in result.stdout, result.output
        assert json.loads((folder / RECORD_NAME).read_text())["steering"][key] == value
        assert sum(before[n] != pngs(folder)[n] for n in NAMES) >= 6, flag  # re-created, not kept
        base = changed
    result = generate("--guidance", 1, "--batch", 7, "--outdir", auto, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "steering" not in json.loads((auto / RECORD_NAME).read_text())
    _runs.pop("autoguidance-b7")  # no longer autoguidance's images


# ---------------------------------------------------------------------------------------------------
# 6. Help


NEW_FLAGS = ["--negative-class", "--guidance-interval", "--guidance-start", "--guidance-stop",
             "--guidance-rescale", "--guidance-method", "--apg-eta", "--apg-momentum",
             "--apg-norm-threshold", "--apg-mix-weight", "--apg-mix-start-step", "--zero-init-steps",
             "--fdg-scales", "--fdg-levels", "--fdg-parallel-weights", "--mambo-alpha", "--pag-scale",
             "--pag-layers", "--slg-scale", "--slg-layers", "--seg-scale", "--seg-layers",
             "--seg-blur-sigma", "--cfg-pp", "--guide-model", "--unconditional", "--classifier",
             "--classifier-scale", "--threshold", "--threshold-percentile", "--init-image", "--strength",
             "--mask", "--resample", "--corrector", "--corrector-steps", "--snr"]


@pytest.mark.parametrize("command", [["generate"], ["fid", "gen"]])
def test_help_describes_every_new_flag(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert sorted(NEW_FLAGS) == sorted("--" + k.replace("_", "-") for k in STEERING_FLAGS)
    for key in STEERING_FLAGS:
        flag = "--" + key.replace("_", "-")
        help_text = SAMPLING_PARAMS[key][2].get("help", "")
        assert len(help_text) > 20, flag
        words = " ".join(help_text.split()[:6])
        assert f"{flag} " in text and words in text, (flag, words)
    for section in ("Guidance:", "Editing:"):
        assert section in result.output


def test_samplers_lists_annealed_langevin_with_its_nfe_rule():
    for args in (["samplers"], ["samplers", "annealed_langevin"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        rows = [line.split() for line in result.output.splitlines() if line.startswith("annealed_langevin")]
        assert rows and rows[0][2] == "5N+1", result.output
