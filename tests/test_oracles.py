"""The oracle libraries are installed: a missing one fails the run here, by name, rather than leaving the
tests that compare against it to fail one by one (they import it plainly and never skip).

The oracles: the test extra of setup.cfg (k-diffusion, diffusers, transformers, scikit-learn; hypothesis and
matplotlib, which tests also use) and two runtime requirements the tests compare against (scipy,
pytorch-fid). k-diffusion imports clip-anytorch, which imports ``pkg_resources``: setuptools 81 removed it,
so the test extra pins ``setuptools<81``.
"""

from __future__ import annotations

import configparser
import importlib
import re
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e '.[test]'"

#: import name -> distribution name (what pip installs)
ORACLES = {
    "k_diffusion": "k-diffusion",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "sklearn": "scikit-learn",
    "scipy": "scipy",
    "pytorch_fid": "pytorch-fid",
    "hypothesis": "hypothesis",
    "matplotlib": "matplotlib",
}
#: in the test extra, not imported by the tests as libraries
TOOLING = {"pytest", "ruff", "setuptools"}


def test_extra() -> list[str]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options.extras_require"]["test"].splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


test_extra.__test__ = False  # a helper, not a test


def distribution(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower()


def test_every_library_of_the_test_extra_is_checked_here():
    named = {distribution(requirement) for requirement in test_extra()} - TOOLING
    assert named <= set(ORACLES.values()), sorted(named - set(ORACLES.values()))


def test_the_test_extra_pins_setuptools_below_81_for_k_diffusion():
    assert "setuptools<81" in [requirement.replace(" ", "") for requirement in test_extra()]


@pytest.mark.parametrize("module", ORACLES)
def test_the_oracle_library_is_installed(module):
    package = ORACLES[module]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except ImportError as error:
        if error.name == "pkg_resources":
            pytest.fail(f"{package} needs pkg_resources, which setuptools 81 removed: "
                        f"pip install 'setuptools<81' (pinned by {INSTALL})", pytrace=False)
        pytest.fail(f"the oracle library {package} is not installed ({error}): {INSTALL}", pytrace=False)
