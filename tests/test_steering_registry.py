"""The registry of steering kinds (tools.steering): a kind is one module plus its registration.

A toy guidance registered by a plugin module gets its flag onto `edm generate --help`, its check into the
usage errors, its wrapper into the denoiser chain and its cost into the network evaluations, with nothing
else changed (run in a fresh interpreter: the command line takes the flags registered when it is built).
The built-in kinds wrap in the documented order, count their cost from the wrappers they build, and the
given flags are an immutable, comparable value.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from samplers import guidance as g
from tools.common import BadInput
from tools.steering import Flag, Steering, SteeringKind, check_steering, flags, kinds, register, unregister

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

TOY = textwrap.dedent('''
    """A toy guidance: D + w (D - mirror(D')), D' a second evaluation; two evaluations per call."""
    from samplers.guidance import DenoiserWrapper
    from tools.steering import CORRECTION, Flag, SteeringKind, register
    from tools.steering.parse import number


    class Mirrored(DenoiserWrapper):
        evaluations = 2

        def __init__(self, denoiser, w):
            super().__init__(denoiser)
            self.w = w

        def __call__(self, x, sigma, **cond):
            d = self.denoiser(x, sigma, **cond)
            return d + self.w * (d - self.denoiser(x, sigma, **cond).flip(-1))


    class MirrorKind(SteeringKind):
        name = "mirror"
        layer = CORRECTION
        flags = (Flag("mirror_weight", "Guidance", type=float, metavar="W",
                      help="Toy guidance away from the mirrored prediction, with weight W >= 0."),)

        def check(self, c):
            if c.given("mirror_weight"):
                c.settings["mirror"] = number(c.steering.mirror_weight, "mirror weight", "mirror_weight", 0)

        def wrap(self, denoiser, b):
            w = b.settings.get("mirror")
            return denoiser if w is None else Mirrored(denoiser, w)


    register(MirrorKind())
''')

SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path

    # the repository, its tests' helpers, then the plugin's folder
    sys.path[:0] = [sys.argv[2], str(Path(sys.argv[2]) / "tests"), sys.argv[1]]
    import toy_mirror  # noqa: F401  (registers the kind: the plugin's one line)
    from _support import Counting

    from click.testing import CliRunner

    from tools.cli import main
    from tools.generate.sampling import prepare_sampling
    from tools.models import load_model
    from tools.request import SamplingRequest
    from tools.steering import Steering

    out = Path(sys.argv[1])
    run = lambda *args: CliRunner().invoke(main, ["generate", *map(str, args)])  # noqa: E731
    page = run("--help").output
    guidance = page[page.index("Guidance:"):page.index("Editing:")]
    assert "--mirror-weight W" in guidance and "Toy guidance away from the mirrored" in guidance, page

    bad = run("--mirror-weight", "-1", "--outdir", out / "bad")
    assert bad.exit_code == 2 and not (out / "bad").exists(), bad.output
    last = bad.output.strip().splitlines()[-1]
    assert last == ("Error: Invalid value for '--mirror-weight': mirror weight must satisfy 0 <= value, "
                    "got -1"), bad.output

    base = ["--no-progress", "--device", "cpu", "--sampler", "euler", "--steps", 3, "--seeds", "0-1"]
    for name, extra in (("plain", []), ("mirror", ["--mirror-weight", 0.5])):
        result = run(*base, *extra, "--outdir", out / name)
        assert result.exit_code == 0, result.output
    pngs = lambda name: [p.read_bytes() for p in sorted((out / name).glob("*.png"))]  # noqa: E731
    assert len(pngs("mirror")) == 2 and pngs("mirror") != pngs("plain")

    model = load_model("digits")
    counted = Counting(model.denoiser)
    model.denoiser = counted
    setup = prepare_sampling(SamplingRequest(model=model, sampler="euler", steps=3, device="cpu",
                                             class_label=1, steering=Steering(mirror_weight=0.5)))
    assert type(setup.denoiser).__name__ == "Mirrored", setup.denoiser
    assert setup.evaluations == 2 * setup.nfe == 6, setup.evaluations
    counted.calls = 0
    setup.sample([0])
    assert counted.calls == setup.evaluations, counted.calls
    print("ok")
''')


def test_a_kind_registered_by_a_module_is_a_flag_a_check_a_wrapper_and_a_cost(tmp_path):
    (tmp_path / "toy_mirror.py").write_text(TOY)
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_the_builtin_flags_in_order():
    assert list(flags()) == ["negative_class", "guidance_interval", "guidance_start", "guidance_stop",
                             "guidance_rescale", "guidance_method", "apg_eta", "apg_momentum",
                             "apg_norm_threshold", "apg_mix_weight", "apg_mix_start_step",
                             "zero_init_steps", "fdg_scales", "fdg_levels", "fdg_parallel_weights",
                             "mambo_alpha", "pag_scale", "pag_layers", "slg_scale", "slg_layers",
                             "seg_scale", "seg_layers", "seg_blur_sigma", "cfg_pp", "guide_model",
                             "unconditional", "classifier", "classifier_scale", "threshold",
                             "threshold_percentile", "init_image", "strength", "mask", "resample",
                             "corrector", "corrector_steps", "snr"]


class _Clash(SteeringKind):
    name = "clash"
    flags = (Flag("mask", "Editing", help="again"),)


class _Named(SteeringKind):
    name = "threshold"


class _Reserved(SteeringKind):
    name = "reserved"
    flags = (Flag("replace", "Guidance", help="a method of Steering"),)


class _NotAName(SteeringKind):
    name = "not-a-name"
    flags = (Flag("two words", "Guidance", help="not an identifier"),)


class _Private(SteeringKind):
    name = "private"
    flags = (Flag("_hidden", "Guidance", help="starts with an underscore"),)


class _Nameless(SteeringKind):
    name = ""


#: each check register makes, once: what it is given and its message
REFUSED = {
    "taken flag": (_Clash(), "flag --mask is taken or not a name"),
    "taken name": (_Named(), "'threshold' is registered already"),
    "reserved flag": (_Reserved(), "flag --replace is taken or not a name"),
    "flag not an identifier": (_NotAName(), "is taken or not a name"),
    "flag starting with _": (_Private(), "is taken or not a name"),
    "nameless kind": (_Nameless(), "a named SteeringKind instance"),
    "a class, not an instance": (_Clash, "a named SteeringKind instance"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_register_refuses_a_bad_kind(case):
    kind, message = REFUSED[case]
    before = kinds()
    with pytest.raises(ValueError, match=message):
        register(kind)
    assert kinds() == before


def test_steering_is_an_immutable_comparable_value():
    a = Steering(guide_model="digits-weak", mask=None, unconditional=False)
    assert a == Steering(guide_model="digits-weak") and hash(a) == hash(Steering(guide_model="digits-weak"))
    assert a.mask is None and a.unconditional is False and a.guide_model == "digits-weak"
    with pytest.raises(AttributeError):
        a.guide_model = "digits"
    with pytest.raises(TypeError):
        Steering(no_such_flag=1)
    with pytest.raises(AttributeError):
        a.no_such_flag  # noqa: B018
    b = a.replace(guide_model=None, negative_class=3)
    assert b == Steering(negative_class=3) and a.guide_model == "digits-weak"
    assert pickle.loads(pickle.dumps(b)) == b and repr(b) == "Steering(negative_class=3)"
    assert b.given() == {"negative_class": 3} and Steering().given() == {}


def test_a_registered_kind_reads_as_a_steering_field():
    class Toy(SteeringKind):
        name = "toy-field"
        flags = (Flag("toy_level", "Guidance", type=float, help="toy"),)

    register(Toy())
    try:
        assert Steering().toy_level is None and Steering(toy_level=0.5).given() == {"toy_level": 0.5}
    finally:
        unregister("toy-field")
    with pytest.raises(TypeError):
        Steering(toy_level=0.5)


def _chain(denoiser):
    names = []
    while True:
        names.append(type(denoiser).__name__)
        if not isinstance(denoiser, g.DenoiserWrapper):
            return names
        denoiser = denoiser.denoiser


@pytest.fixture(scope="module")
def digits():
    from tools.models import load_model

    return load_model("digits")


def check(digits, steering, guidance=0.0, class_label=None):
    import torch

    return check_steering(steering, digits, guidance=guidance, class_label=class_label, device="cpu",
                          dtype=torch.float32)


def test_the_wrappers_compose_in_layers_and_their_costs_add(digits):
    import torch

    steer = check(digits, Steering(classifier="digits-classifier", threshold="static",
                                   guidance_interval="0.2,5"), guidance=1.0)
    denoiser = steer.denoiser(digits, torch.float32)
    assert _chain(denoiser)[:3] == ["Thresholded", "ClassifierGuidance", "ClassifierFreeGuidance"]
    assert denoiser.denoiser.denoiser.interval == (0.2, 5.0) and steer.evaluations_per_call == 3

    steer = check(digits, Steering(guide_model="digits-weak", unconditional=True), guidance=1.0)
    denoiser = steer.denoiser(digits, torch.float64)
    assert _chain(denoiser)[:2] == ["Autoguidance", "WithoutLabels"]
    assert _chain(denoiser.weak)[0] == "WithoutLabels" and steer.evaluations_per_call == 2

    def plain(x, sigma, **cond):
        return x

    assert [g.ClassifierFreeGuidance(plain, w).evaluations for w in (0, 1.5)] == [1, 2]
    assert check(digits, None).evaluations_per_call == 1
    assert check(digits, None, guidance=2.0).evaluations_per_call == 2
    unscaled = Steering(classifier="digits-classifier", classifier_scale=0)
    assert check(digits, unscaled).evaluations_per_call == 1


def test_errors_name_the_flag(digits):
    with pytest.raises(BadInput) as e:
        check(digits, Steering(snr=0.1))
    assert e.value.param == "snr" and str(e.value) == "--snr is the corrector's: give --corrector langevin"
