"""``tools.fid.score`` and ``tools.fid.make_reference``: FID scoring as a library call, the same numbers
whatever form the images and the reference come in, and what the CLI prints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tools.fid
from _support import assert_usage_error, invoke
from tools.fid import FidError, make_reference, score
from tools.fid.cli import fid
from tools.fid.frechet import frechet_distance
from tools.fid.train_detector import digits_uint8

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    images = digits_uint8()[0].numpy()  # [N, 1, 8, 8] uint8
    folder = tmp_path_factory.mktemp("halves")
    a, b = images[0::2], images[1::2]  # 899 and 898 real digits
    np.save(folder / "a.npy", a)
    np.save(folder / "b.npy", b)
    return folder, a, b


@pytest.mark.slow
def test_score_is_the_same_for_every_form_of_the_images(halves):
    folder, a, _ = halves
    from_file = score(folder / "a.npy", folder / "b.npy", device="cpu")
    from_array = score(a, folder / "b.npy", device="cpu")
    batches = (torch.from_numpy(a[i:i + 64]) for i in range(0, len(a), 64))
    from_batches = score(batches, folder / "b.npy", device="cpu")
    nhwc = (a[i:i + 64].transpose(0, 2, 3, 1) for i in range(0, len(a), 64))  # the same batches
    from_nhwc = score(nhwc, folder / "b.npy", device="cpu")
    values = [r["fd_digits"] for r in (from_file, from_array, from_batches, from_nhwc)]
    assert max(values) - min(values) <= 1e-10
    assert from_batches["num"] == from_file["num"] == len(a) and from_file["detector"] == "digits"
    assert 0 < values[0] < 20  # two halves of the real digits are close


def test_score_against_statistics_in_any_form(halves, tmp_path):
    folder, a, b = halves
    ref = make_reference(b, tmp_path / "new" / "ref.npz", device="cpu")
    assert (tmp_path / "new" / "ref.npz").is_file() and ref["meta"]["num"] == len(b)
    by_images = score(a, b, device="cpu")["fd_digits"]
    by_file = score(a, tmp_path / "new" / "ref.npz", device="cpu")["fd_digits"]
    by_tuple = score(a, (ref["mu"], ref["sigma"]), device="cpu")["fd_digits"]
    by_dict = score(a, {"mu": ref["mu"], "sigma": ref["sigma"]}, device="cpu")["fd_digits"]
    assert max(by_images, by_file, by_tuple, by_dict) - min(by_images, by_file, by_tuple, by_dict) <= 1e-10
    # and it is the Frechet distance of the two sets' statistics
    mine = make_reference(a, device="cpu")
    assert by_file == pytest.approx(float(frechet_distance(mine["mu"], mine["sigma"], ref["mu"],
                                                           ref["sigma"])),
                                    abs=1e-10)


@pytest.mark.slow
def test_score_all_metrics_and_the_cli_prints_the_same(halves):
    folder, a, b = halves
    result = score(a, b, ("fid", "kid", "pr"), device="cpu")
    assert set(result) == {"fd_digits", "kid", "precision", "recall", "detector", "ref", "num"}
    cli = invoke(fid, "calc", "--images", str(folder / "a.npy"), "--ref", str(folder / "b.npy"),
                 "--metrics", "fid,kid,pr", "--device", "cpu", "--no-progress", "--json")
    assert cli.exit_code == 0, cli.output
    printed = json.loads(cli.output.splitlines()[-1])
    for key in ("fd_digits", "kid", "precision", "recall"):
        assert printed[key] == pytest.approx(result[key], abs=1e-10)


def test_bad_arguments_are_fid_errors_naming_the_argument(halves, tmp_path):
    folder, a, b = halves
    cases = [
        (dict(source=a, ref=(np.zeros(3), np.eye(3))), "ref"),  # 3-d statistics, 64-d detector
        (dict(source=a, ref=folder / "b.npy", metrics="fid,xyz"), "metrics"),
        (dict(source=a, ref=(np.zeros(64), np.eye(64)), metrics="kid"), "ref"),  # KID needs images
        (dict(source=tmp_path / "missing", ref="digits"), "source"),
        (dict(source=a, ref="digits", detector="nope"), "detector"),
    ]
    for kwargs, param in cases:
        with pytest.raises(FidError) as error:
            score(device="cpu", **kwargs)
        assert error.value.param == param and "\n" not in str(error.value), kwargs


def test_the_package_exports_the_functions_not_modules():
    assert callable(tools.fid.score) and callable(tools.fid.make_reference)


def test_fid_ref_checks_its_destination_before_any_work(halves, tmp_path, monkeypatch):
    folder, _, _ = halves
    from tools.fid import scoring

    def no_work(*args, **kwargs):
        raise AssertionError("features computed before the destination was checked")

    monkeypatch.setattr(scoring, "statistics", no_work)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(fid, "ref", "--data", str(folder / "b.npy"), "--dest",
                    str(blocker / "r.npz"),
                    "--device", "cpu", "--no-progress")
    assert_usage_error(result, "--dest", "is not a directory")
    assert ".tmp" not in result.output
    monkeypatch.undo()
    # a missing folder is created, as --grid and tune-schedule --out do
    result = invoke(fid, "ref", "--data", str(folder / "b.npy"), "--dest",
                    str(tmp_path / "missing" / "ref.npz"), "--device", "cpu",
                    "--no-progress")
    assert result.exit_code == 0 and (tmp_path / "missing" / "ref.npz").is_file(), result.output
