"""The sampler registry declares each option once: options are the sampler function's keyword-only
parameters, every option is described, functions are named after their samplers, and restart's
default is a string the --restart-list flag accepts."""

from __future__ import annotations

import inspect
import math

import pytest

import samplers
from samplers import registry
from samplers.phi import phi
from samplers.restart import parse_restart_list, restart_nfe

NAMES = samplers.list()
# restart's default before it became a string (its parsed value must stay this).
RESTART_DEFAULT_TUPLE = ((0.06, 0.30, 2, 3),)


def signature_defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.kind is p.KEYWORD_ONLY and k not in ("noise", "callback")}


@pytest.mark.parametrize("name", NAMES)
def test_options_are_the_signature_defaults(name):
    spec = samplers.get(name)
    assert dict(spec.options) == signature_defaults(spec.fn)


@pytest.mark.parametrize("name", NAMES)
def test_function_is_named_after_its_sampler(name):
    assert samplers.get(name).fn.__name__ == name


def test_function_names_are_distinct():
    fns = [samplers.get(name).fn for name in NAMES]
    assert len({fn.__name__ for fn in fns}) == len(NAMES)
    assert len({id(fn) for fn in fns}) == len(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_option_has_a_one_line_description(name):
    spec = samplers.get(name)
    assert set(spec.option_help) == set(spec.options)
    for key, text in spec.option_help.items():
        assert isinstance(text, str) and text.strip() and "\n" not in text, (name, key)


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


def test_register_takes_options_from_the_signature_and_checks_them():
    reg = registry.register

    def probe(model, x, sigmas, *, noise=None, callback=None, eta=0.5, wiggle=2):
        """Probe sampler."""
        return x

    with pytest.raises(ValueError, match="wiggle"):  # no description anywhere
        reg("probe", order=1, nfe_per_step=1)(probe)
    with pytest.raises(ValueError, match="named 'other'"):
        reg("other", order=1, nfe_per_step=1, option_help={"wiggle": "How much."})(probe)
    with pytest.raises(ValueError, match="not an option"):
        reg("probe", order=1, nfe_per_step=1, option_help={"wiggle": "How much.", "nope": "x"})(probe)

    def kwargs_probe(model, x, sigmas, *, noise=None, callback=None, **options):
        return x

    with pytest.raises(TypeError, match="kwargs"):
        reg("kwargs_probe", order=1, nfe_per_step=1)(kwargs_probe)

    def no_default(model, x, sigmas, *, noise=None, callback=None, eta):
        return x

    with pytest.raises(TypeError, match="no default"):
        reg("no_default", order=1, nfe_per_step=1)(no_default)
    assert "probe" not in samplers.list()
    assert registry.signature_options(probe) == {"eta": 0.5, "wiggle": 2}


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
