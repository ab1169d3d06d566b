"""The sampler registry declares each option once: options are the sampler function's keyword-only
parameters, every option is described, functions are named after their samplers (``register`` refuses an
entry otherwise, at import: each of its checks is tried once here on a probe, not re-checked per
sampler), and restart's default is a string the --restart-list flag accepts."""

from __future__ import annotations

import math

import pytest

import samplers
from samplers import registry
from samplers.phi import phi
from samplers.restart import parse_restart_list, restart_nfe

# restart's default before it became a string (its parsed value must stay this).
RESTART_DEFAULT_TUPLE = ((0.06, 0.30, 2, 3),)


def test_option_defaults_are_today_s():
    """The defaults the registry passed before options moved into the signatures."""
    churn = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}
    expected = {
        "euler": churn, "heun": churn, "dpm_2": churn, "edm": churn,
        "euler_ancestral": {"eta": 1.0, "s_noise": 1.0}, "ddim": {"eta": 0.0, "s_noise": 1.0},
        "ddpm": {"s_noise": 1.0}, "dpm_2_ancestral": {"eta": 1.0, "s_noise": 1.0},
        "dpmpp_2s_ancestral": {"eta": 1.0, "s_noise": 1.0}, "lms": {"order": 4},
        "dpmpp_2m": {}, "dpmpp_2m_sde": {"eta": 1.0, "s_noise": 1.0, "solver_type": "midpoint"},
        "dpmpp_3m_sde": {"eta": 1.0, "s_noise": 1.0}, "dpmpp_3m": {}, "res_multistep": {},
        "dpm_fast": {"eta": 0.0, "s_noise": 1.0},
        "dpm_adaptive": {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0,
                         "icoeff": 1.0, "dcoeff": 0.0, "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0},
        "dpmpp_sde": {"eta": 1.0, "s_noise": 1.0, "r": 0.5},
        "unipc": {"order": 3, "variant": "bh2", "corrector": True, "lower_order_final": True},
        "ipndm": {"max_order": 4, "afs": False}, "ipndm_afs": {"max_order": 4, "afs": True},
        "deis": {"order": 3},
    }
    for name, options in expected.items():
        assert dict(samplers.get(name).options) == options, name
    restart = dict(samplers.get("restart").options)
    assert restart.keys() == {"restart_list", "s_noise"} and restart["s_noise"] == 1.0


def test_restart_list_default_is_a_string_that_parses_to_the_old_default():
    default = samplers.get("restart").options["restart_list"]
    assert isinstance(default, str)
    assert default == "0.06,0.30,2,3"
    assert parse_restart_list(default) == RESTART_DEFAULT_TUPLE
    assert parse_restart_list(RESTART_DEFAULT_TUPLE) == RESTART_DEFAULT_TUPLE
    sigmas = samplers.schedules.get("karras")(10, 0.002, 80.0).tolist()
    assert restart_nfe(sigmas) == restart_nfe(sigmas, default) == restart_nfe(sigmas, RESTART_DEFAULT_TUPLE)
    assert registry.nfe_on("restart", sigmas) == restart_nfe(sigmas, RESTART_DEFAULT_TUPLE) > 19


@pytest.fixture
def empty_registry(monkeypatch):
    """A fresh sampler registry for the test: probes registered there leave the real one alone."""
    monkeypatch.setattr(registry, "_REGISTRY", registry.Registry("sampler"))


def probe(model, x, sigmas, *, noise=None, callback=None, eta=0.5, wiggle=2):
    """Probe sampler.

    More text."""
    return x


WIGGLE = {"wiggle": "How much."}


@pytest.mark.usefixtures("empty_registry")
def test_register_takes_options_from_the_signature_and_their_descriptions():
    assert registry.register("probe", order=1, nfe_per_step=1, option_help=WIGGLE)(probe) is probe
    spec = samplers.get("probe")
    assert spec.fn is probe and samplers.list() == ["probe"]
    assert dict(spec.options) == registry.signature_options(probe) == {"eta": 0.5, "wiggle": 2}
    assert dict(spec.option_help) == {"eta": registry.OPTION_HELP["eta"], "wiggle": "How much."}
    assert spec.description == "Probe sampler." and spec.last_step_nfe == 1
    with pytest.raises(ValueError, match="'probe' is already registered"):
        registry.register("probe", order=1, nfe_per_step=1, option_help=WIGGLE)(probe)


def _no_kwargs(model, x, sigmas, *, noise=None, callback=None, **options):
    return x


def _no_default(model, x, sigmas, *, noise=None, callback=None, eta):
    return x


def _two_positional(model, x, *, noise=None, callback=None):
    return x


def _no_callback(model, x, sigmas, *, noise=None):
    return x


def _noise_not_none(model, x, sigmas, *, noise=0, callback=None):
    return x


#: (function, register's keywords, the error and its message): each check register makes, once
REFUSED = {
    "misnamed": (probe, {"name": "other", "option_help": WIGGLE}, ValueError, "must be named 'other'"),
    "no description": (probe, {}, ValueError, "wiggle have no one-line description"),
    "blank description": (probe, {"option_help": {"wiggle": "  "}}, ValueError, "no one-line description"),
    "two-line description": (probe, {"option_help": {"wiggle": "How\nmuch."}}, ValueError,
                             "no one-line description"),
    "help for a non-option": (probe, {"option_help": {**WIGGLE, "nope": "x"}}, ValueError,
                              "option_help for nope, which is not an option"),
    "unknown noise kind": (probe, {"option_help": WIGGLE, "noise": "pink"}, ValueError,
                           "noise must be one of"),
    "**kwargs": (_no_kwargs, {}, TypeError, "takes \\*\\*kwargs"),
    "option without default": (_no_default, {}, TypeError, "option 'eta' .* has no default"),
    "not (model, x, sigmas)": (_two_positional, {}, TypeError, "must take \\(model, x, sigmas\\)"),
    "no callback": (_no_callback, {}, TypeError, "must take callback=None"),
    "noise not None": (_noise_not_none, {}, TypeError, "must take noise=None"),
}


@pytest.mark.usefixtures("empty_registry")
@pytest.mark.parametrize("case", REFUSED)
def test_register_refuses_a_bad_entry(case):
    fn, keywords, error, message = REFUSED[case]
    keywords = {"name": fn.__name__, **keywords}
    name = keywords.pop("name")
    with pytest.raises(error, match=message):
        registry.register(name, order=1, nfe_per_step=1, **keywords)(fn)
    assert samplers.list() == []


def test_traceback_names_the_sampler():
    def failing(x, sigma):
        raise RuntimeError("boom")

    import torch

    sigmas = samplers.schedules.get("karras")(3, 0.1, 10.0)
    for name in ("ddpm", "dpmpp_2m_sde", "heun"):
        with pytest.raises(RuntimeError) as info:
            samplers.sample(failing, torch.ones(1, 2), sigmas, name, seeds=[0])
        assert name in [entry.name for entry in info.traceback]


# --- the phi helper -------------------------------------------------------------------------------


def phi_exact(k, z):
    """phi_k(z) by its series in exact rational steps of Python floats summed to convergence (small z)
    or the closed form e^z - sum_{j<k} z^j / j! over z^k (large z)."""
    if abs(z) < 2:
        return math.fsum(z**j / math.factorial(j + k) for j in range(60))
    return (math.exp(z) - math.fsum(z**j / math.factorial(j) for j in range(k))) / z**k


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("z", [-30.0, -5.0, -1.0, -0.5, -0.49, -0.1, -1e-3, -1e-9, 0.0, 1e-9, 1e-3, 0.3,
                               0.5, 0.7, 2.0, 8.0])
def test_phi_is_accurate_including_small_arguments(k, z):
    assert phi(k, z) == pytest.approx(phi_exact(k, z), rel=1e-13, abs=0)


def test_phi_basics():
    assert phi(0, 1.5) == math.exp(1.5)
    assert phi(1, 2.0) == math.expm1(2.0) / 2.0
    assert [phi(k, 0.0) for k in range(1, 5)] == [1.0, 0.5, 1 / 6, 1 / 24]
    with pytest.raises(ValueError):
        phi(-1, 0.5)
