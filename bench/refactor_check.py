"""Check that a refactor of the front end (``tools/``) changes no behaviour: the same commands, run against
the checkout before and the checkout after, must write the same PNG bytes and report the same numbers.

``run`` runs every command of ``CHECKS`` as ``python -m tools.cli ARGS`` against the checkout at ``--root``
(``PYTHONPATH=ROOT``, ``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``, ``--device cpu``; the working folder a
fresh temporary one) and writes, per command: the argv, the exit code, the sha256 of every file it wrote
(by path relative to the working folder; PNGs apart, and a text file's with paths as below), its stdout,
and every value of its result files (``edm-generate.json``, bench's ``results.json``, the tuned schedule
file, ``fid gen --json``'s stdout). Paths of the checkout, the working folder and ``--work`` are written
as ``<root>``, ``<run>`` and ``<work>``, so two checkouts compare equal. Nothing timed is recorded
(progress bars are off and bench runs no ``time`` metric); the seconds each command took go to stderr.

``compare`` puts two such files side by side in a markdown table (command | before | after | identical?),
lists every difference in full below it, and exits 1 when anything differs (0 when all is identical).

The inputs are made by the script: the inpainting mask (8x8, right half white) in the working folder,
and a tiny random-weight Stable Diffusion 1.x pipeline (``tests/pipelines_tiny.build_sd``: seeded, offline)
built once into ``--work`` and reused, so give both runs the same ``--work``. Both are hashed into the
record, so a compare of runs on different inputs shows it. A run takes 4 to 5 minutes on 2 loaded cores.

    git worktree add ../before <commit before the change>
    python bench/refactor_check.py run --root ../before --out before.json --work /tmp/refcheck-work
    python bench/refactor_check.py run --root . --out after.json --work /tmp/refcheck-work
    python bench/refactor_check.py compare before.json after.json --md refactor_check.md

Use a Python environment with the project's dependencies (torch, diffusers, transformers, Pillow); an
editable install elsewhere does not matter, PYTHONPATH decides (each run checks which ``tools`` it got).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

FORMAT = "edm-samplers/refactor-check-v1"
REPO = Path(__file__).resolve().parents[1]  # this script's checkout: its tests/ has the pipeline builder
SD_DIR = "tiny-sd15"  # the tiny Stable Diffusion pipeline, under --work
MASK = "mask-right.png"  # the inpainting mask, in the working folder
CPU = ("--device", "cpu", "--no-progress")
GEN = ("--seeds", "0-7", "--batch", "4", *CPU)  # every digits `edm generate`
TUNED = "file:out/tune/heun11.json"  # the schedule tune-schedule writes


@dataclass(frozen=True)
class Check:
    """One command: ``python -m tools.cli *args`` in the working folder.

    ``{sd}`` in an argument stands for the tiny pipeline's folder. ``results``: files (relative to the
    working folder) whose values are recorded; ``json_stdout``: stdout is one JSON object, recorded alike.
    """

    name: str
    args: tuple[str, ...]
    results: tuple[str, ...] = ()
    json_stdout: bool = False


def generate(name: str, *args: str) -> Check:
    """``edm generate`` of seeds 0-7 of the digits model into ``out/NAME``."""
    return Check(name, ("generate", "--outdir", f"out/{name}", *args, *GEN),
                 (f"out/{name}/edm-generate.json",))


CHECKS = [
    generate("heun", "--sampler", "heun"),
    generate("dpmpp_2m_sde", "--sampler", "dpmpp_2m_sde", "--eta", "0.5", "--nfe", "20"),
    generate("cfg_negative_class", "--class", "3", "--guidance", "1", "--negative-class", "5"),
    generate("autoguidance", "--class", "3", "--guidance", "1", "--guide-model", "digits-weak"),
    generate("classifier_guidance", "--unconditional", "--classifier", "digits-classifier", "--class", "3"),
    # img2img from the heun folder (one init image per seed): as the help's example, then with a class
    generate("img2img", "--init-image", "out/heun", "--strength", "0.3", "--unconditional"),
    generate("img2img_class", "--init-image", "out/heun", "--strength", "0.3", "--class", "3"),
    generate("inpaint", "--init-image", "out/heun/000003.png", "--mask", MASK, "--class", "3"),
    Check("sd15", ("generate", "--outdir", "out/sd15", "--model", "diffusers:{sd}",
                   "--prompt", "a red bicycle", "--schedule", "diffusers", "--sampler", "dpmpp_2m",
                   "--steps", "4", "--seeds", "0-2", "--batch", "2", *CPU), ("out/sd15/edm-generate.json",)),
    Check("fid_gen", ("fid", "gen", "--model", "digits", "--sampler", "heun", "--nfe", "35", "--num", "128",
                      "--ref", "digits", "--batch", "64", "--json", *CPU), json_stdout=True),
    Check("bench_fd", ("bench", "--metrics", "fd", "--sampler", "heun,dpmpp_2m", "--schedule", "karras",
                       "--nfe", "5,10", "--num", "128", "--batch", "64", "--out", "out/bench_fd", *CPU),
          ("out/bench_fd/results.json",)),
    Check("bench_ode", ("bench", "--metrics", "ode", "--sampler", "heun,dpmpp_2m", "--schedule", "karras",
                        "--nfe", "5,10", "--num", "8", "--batch", "8", "--out", "out/bench_ode", *CPU),
          ("out/bench_ode/results.json",)),
    Check("tune_schedule", ("tune-schedule", "--sampler", "heun", "--nfe", "11", "--num", "8", "--max-evals",
                            "30", "--out", "out/tune/heun11.json", *CPU), ("out/tune/heun11.json",)),
    # the tuned file read back (its step count, then resampled)
    generate("tuned_schedule", "--sampler", "heun", "--nfe", "11", "--schedule", TUNED),
    generate("tuned_resampled", "--sampler", "heun", "--nfe", "15", "--schedule", TUNED),
]


# ---------------------------------------------------------------------------------------------------
# Running


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def digest(value: Any) -> str:
    """A short fingerprint of any JSON value (for the table; the record keeps the value itself)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1"}


def build_pipeline(work: Path) -> Path:
    """The tiny SD 1.x pipeline in ``work/tiny-sd15``, built (seeded, offline) only when missing."""
    target = work / SD_DIR
    if target.is_dir():
        return target
    work.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=SD_DIR + ".", dir=work))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pipelines_tiny; "
            "pipelines_tiny.build_sd(sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(REPO / "tests"), str(staging)], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    staging.rename(target)  # whole or not at all
    return target


def write_mask(path: Path) -> None:
    """8x8 grayscale: left half black (kept from the init image), right half white (generated)."""
    import numpy as np
    from PIL import Image

    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 255
    Image.fromarray(mask, mode="L").save(path)


def imported_from(root: Path, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Where ``tools``, ``edm`` and ``samplers`` are imported from; an error unless from ``root``."""
    code = ("import json, edm, samplers, tools; "
            "print(json.dumps({m.__name__: m.__file__ for m in (edm, samplers, tools)}))")
    found = json.loads(subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, check=True,
                                      capture_output=True, text=True).stdout)
    for name, file in found.items():
        if not Path(file).resolve().is_relative_to(root.resolve()):
            sys.exit(f"{name} is imported from {file}, not from {root}: check PYTHONPATH and the environment")
    return found


def git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain", "--", ".") else "")


class Paths:
    """Writes the checkout's, the working folder's and --work's paths as placeholders."""

    def __init__(self, **places: Path):
        pairs = [(str(p), f"<{name}>") for name, p in places.items()]
        pairs += [(str(p.resolve()), f"<{name}>") for name, p in places.items()]
        self.pairs = sorted(set(pairs), key=lambda pair: -len(pair[0]))  # longest first: nested folders

    def text(self, text: str) -> str:
        for path, placeholder in self.pairs:
            text = text.replace(path, placeholder)
        return text

    def file_hash(self, path: Path) -> str:
        """sha256 of a text file with the paths as placeholders (of the bytes for any other file)."""
        try:
            return hashlib.sha256(self.text(path.read_text(encoding="utf-8")).encode()).hexdigest()
        except UnicodeDecodeError:
            return sha256(path)

    def value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(v) for v in value]
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        return value


def run_check(check: Check, root: Path, cwd: Path, sd: Path, paths: Paths) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tools.cli", *(arg.replace("{sd}", str(sd)) for arg in check.args)]
    before = snapshot(cwd)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=environment(root), capture_output=True, text=True)
    seconds = time.perf_counter() - start
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    print(f"  {check.name:<22} {seconds:6.1f} s  {status}", file=sys.stderr, flush=True)
    written = {path: h for path, h in snapshot(cwd).items() if before.get(path) != h}
    values = {}
    for name in check.results:
        path = cwd / name
        values[name] = paths.value(json.loads(path.read_text())) if path.is_file() else None
    if check.json_stdout:
        try:
            values["stdout"] = paths.value(json.loads(done.stdout))
        except ValueError:
            values["stdout"] = None
    record = {
        "argv": ["python", *(paths.text(arg) for arg in argv[1:])],
        "exit_code": done.returncode,
        "pngs": {path: h for path, h in written.items() if path.endswith(".png")},
        "files": {path: paths.file_hash(cwd / path) for path in written if not path.endswith(".png")},
        "stdout": paths.text(done.stdout),
        "values": values,
    }
    if done.returncode != 0:  # for the reader; never compared (it holds tracebacks, timings of bars)
        record["stderr_tail"] = paths.text(done.stderr[-3000:])
    return record


def run(root: Path, out: Path, work: Path | None, keep: bool) -> None:
    root = root.resolve()
    work = Path(tempfile.mkdtemp(prefix="refcheck-work-")) if work is None else work.resolve()
    sd = build_pipeline(work)
    cwd = Path(tempfile.mkdtemp(prefix="refcheck-run-"))
    paths = Paths(root=root, run=cwd, work=work)
    env = environment(root)
    write_mask(cwd / MASK)
    meta = {"root": str(root), "commit": git_commit(root), "python": sys.version.split()[0],
            "torch": version("torch"), "imported": paths.value(imported_from(root, env, cwd))}
    inputs = {MASK: sha256(cwd / MASK), SD_DIR: digest(snapshot(sd))}
    print(f"refactor check of {root} ({meta['commit']}) in {cwd}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    commands = {check.name: run_check(check, root, cwd, sd, paths) for check in CHECKS}
    print(f"  {'total':<22} {time.perf_counter() - start:6.1f} s", file=sys.stderr)
    record = {"format": FORMAT, "meta": meta, "inputs": inputs, "commands": commands}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    if keep:
        print(f"outputs kept in {cwd}", file=sys.stderr)
    else:
        shutil.rmtree(cwd)
    failed = [name for name, c in commands.items() if c["exit_code"] != 0]
    if failed:
        print(f"failed (exit code recorded): {', '.join(failed)}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------
# Comparing


def flatten(value: Any, key: str = "") -> dict[str, Any]:
    """Nested JSON as ``{"a.b": leaf}``; a list of numbers or strings stays one leaf, a list of objects is
    keyed by index, or ``[sampler/schedule/nfe_budget]`` for bench's cells."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flatten(v, f"{key}.{k}" if key else str(k)))
        return out
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        out = {}
        for i, v in enumerate(value):
            label = i
            if isinstance(v, dict) and {"sampler", "schedule", "nfe_budget"} <= v.keys():
                label = f"{v['sampler']}/{v['schedule']}/{v['nfe_budget']}"
            out.update(flatten(v, f"{key}[{label}]"))
        return out
    return {key: value}


def is_number(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(is_number(v) for v in value)
    return isinstance(value, float)


def show(value: Any) -> str:
    """A table cell: a number in full, a sha256 shortened; a list, a mapping or long text as its size and
    fingerprint."""
    if value is None:
        return "missing"
    if isinstance(value, list):
        return f"{len(value)} values {digest(value)}"
    if isinstance(value, dict):
        return f"{len(value)} entries {digest(value)}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256 {value[:12]}"
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > 60 or "\n" in text.strip():
        return f"{len(text)} chars {digest(text)}"
    return "`" + text.strip().replace("|", "\\|") + "`" if text.strip() else "(empty)"


def rows(command: dict) -> dict[str, Any]:
    """What is compared of one command, item by item (a table row each): exit code, the PNGs, each other
    file, stdout, each float (or list of floats) of its results, and the rest of its results as one item."""
    items: dict[str, Any] = {"exit code": command["exit_code"], "PNGs": command["pngs"]}
    items.update({f"file {path}": h for path, h in command["files"].items()})
    items["stdout"] = command["stdout"]
    others = {}
    for source, value in command["values"].items():
        for key, leaf in flatten(value).items():
            name = f"{'stdout' if source == 'stdout' else Path(source).name}: {key}"
            if is_number(leaf):
                items[name] = leaf
            else:
                others[name] = leaf
    items["other values"] = others
    return items


def differences(a: Any, b: Any) -> list[str]:
    """The full values that differ, for the list below the table (mappings key by key)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [f"  - {key}: {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}"
                for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
    return [f"  - {json.dumps(a)} -> {json.dumps(b)}"]


def compare(before_path: Path, after_path: Path, md: Path | None) -> int:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    table = ["| command | before | after | identical? |", "|---|---|---|---|"]
    details = []
    missing = {"argv": None, "exit_code": None, "pngs": {}, "files": {}, "stdout": None, "values": {}}
    items = [("inputs", "mask, tiny pipeline", before["inputs"], after["inputs"])]
    for name in dict.fromkeys([*before["commands"], *after["commands"]]):
        old = before["commands"].get(name, missing)
        new = after["commands"].get(name, missing)
        items.append((name, "argv", old["argv"], new["argv"]))
        old_rows, new_rows = rows(old), rows(new)
        items += [(name, item, old_rows.get(item), new_rows.get(item))
                  for item in dict.fromkeys([*old_rows, *new_rows])]
    differing = 0
    for name, item, a, b in items:
        same = a == b
        differing += not same
        table.append(f"| `{name}` {item} | {show(a)} | {show(b)} | {'yes' if same else '**NO**'} |")
        if not same:
            details += [f"- `{name}` {item}:", *differences(a, b)]
    verdict = ("**Identical**: every PNG byte, number, file and line of stdout." if not differing
               else f"**{differing} of {len(items)} items differ** (in full below the table).")
    sides = [f"- {side}: `{r['meta']['root']}` at {r['meta']['commit']}; Python {r['meta']['python']}, "
             f"torch {r['meta']['torch']}" for side, r in (("before", before), ("after", after))]
    commands = [f"- `{name}`: `{' '.join(c['argv'])}`" for name, c in before["commands"].items()]
    text = "\n".join([f"# Refactor check: {before_path.name} against {after_path.name}", "", *sides, "",
                      verdict, "", "Commands (as before ran them, in this order, in one working folder):", "",
                      *commands, "", *table])
    if details:
        text += "\n\n## Differences\n\n" + "\n".join(details)
    text += "\n"
    if md is not None:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)
        print(verdict)
    else:
        print(text)
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run", help="run the commands against one checkout and record what they wrote")
    p.add_argument("--root", type=Path, required=True, help="the checkout under test")
    p.add_argument("--out", type=Path, required=True, help="the record to write (JSON)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the tiny SD pipeline, built once and reused: give both runs the same one "
                        "(default: a fresh temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (its path goes to stderr)")
    c = sub.add_parser("compare", help="compare two records; exit 1 if anything differs")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--md", type=Path, default=None, help="write the markdown report here (else print it)")
    args = parser.parse_args()
    if args.action == "run":
        run(args.root, args.out, args.work, args.keep)
        return 0
    return compare(args.before, args.after, args.md)


if __name__ == "__main__":
    sys.exit(main())
