"""What a new user runs from the README: the training example reproduces the embedded model's recipe, and
nothing the README's commands write lands in tracked files by default."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _flags(words: list[str]) -> dict[str, str]:
    flags, i = {}, 0
    while i < len(words):
        if words[i].startswith("--"):
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            flags[words[i]] = words[i + 1] if has_value else ""
            i += 2 if has_value else 1
        else:
            i += 1
    return flags


def test_readme_train_example_is_the_recipe_of_the_embedded_model():
    readme = (ROOT / "README.md").read_text().replace("\\\n", " ")  # continuation lines joined
    match = re.search(r"^edm train --data digits[^\n]*", readme, re.M)
    assert match, "no `edm train --data digits` example in the README"
    example = _flags(shlex.split(match.group(0)))
    recorded = _flags(shlex.split(json.loads((ROOT / "edm/weights/digits.json").read_text())["command"]))
    decisive = ("--steps", "--batch", "--lr", "--channels", "--channel-mult", "--blocks", "--attn",
                "--sigma-data", "--seed")
    for flag in decisive:
        assert example.get(flag) == recorded[flag], (flag, example.get(flag), recorded[flag])


def test_the_quick_start_output_and_scratch_folders_are_ignored_by_git():
    paths = ["out/digits/000000.png", "out/digits-grid.png", "bench-out/accuracy.md"]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.split() == paths


def test_bench_scripts_write_a_scratch_folder_unless_asked_to_record():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from outdir import RECORDED, SCRATCH, add_out_arguments, out_dir
    finally:
        sys.path.remove(str(ROOT / "bench"))
    parser = argparse.ArgumentParser()
    add_out_arguments(parser)
    assert out_dir(parser.parse_args([])) == SCRATCH == Path("bench-out")
    assert out_dir(parser.parse_args(["--record"])) == RECORDED == ROOT / "bench" / "results"
    assert out_dir(parser.parse_args(["--out", "x"])) == Path("x")
    for script in ("overhead.py", "fd.py", "accuracy.py"):
        text = (ROOT / "bench" / script).read_text()
        assert "add_out_arguments(parser)" in text and "out_dir(args)" in text, script


def test_the_readme_request_example_writes_what_edm_generate_writes(tmp_path, monkeypatch):
    """The README's Python example of a sampling request gives the images of the command it names."""
    import hashlib

    from _support import invoke
    from tools.cli import main

    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "SamplingRequest(" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    result = invoke(main, "generate", "--sampler", "dpmpp_2m", "--nfe", "10", "--class", "3",
                    "--seeds", "0-3", "--outdir", "cli", "--no-progress")
    assert result.exit_code == 0, result.output
    digest = lambda path: hashlib.sha256(path.read_bytes()).hexdigest()  # noqa: E731
    for seed in range(4):
        name = f"{seed:06d}.png"
        assert digest(tmp_path / "out" / "threes" / name) == digest(tmp_path / "cli" / name)
