"""Plant known one-line bugs, one at a time, in a fresh copy of the repository and check the tests see them.

For each entry of ``PLANTED``: export the committed tree (``git archive HEAD``) to a temporary folder,
replace one exact line (the script stops with an error if the line is not found exactly once, so it
cannot pass by planting nothing), and run ``python -m pytest -q -x -p no:cacheprovider FILES`` there
(``PYTHONPATH`` = the copy, ``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``). A bug counts as caught when
pytest exits non-zero with a failing test. The same test files also run once on an unmutated copy,
which must pass: otherwise a "caught" bug could be a test that fails anyway.

    python bench/planted_bugs.py --md bench/results/planted_bugs.md

Exit code 0 when the baseline passes and every bug is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bug:
    name: str
    path: str
    before: str
    after: str
    tests: tuple[str, ...]


PLANTED = (
    Bug("precision/recall radius from the k-th neighbour counting the point itself",
        "tools/fid/frechet.py",
        "radii.append(d.kthvalue(k + 1, dim=1).values)",
        "radii.append(d.kthvalue(k, dim=1).values)",
        ("tests/test_precision_recall.py",)),
    Bug("'linear' schedule log-spaced instead of uniform in sigma",
        "samplers/schedules.py",
        "return torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)",
        "return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()",
        ("tests/test_schedule_values.py",)),
    Bug("EMA decay inverted (ema = decay * new + (1 - decay) * old)",
        "edm/train.py",
        "p_ema.lerp_(p.detach(), 1.0 - beta)",
        "p_ema.lerp_(p.detach(), beta)",
        ("tests/test_training_dynamics.py",)),
    Bug("Inception input scaled to [-1, 1] twice (before the network's own mapping)",
        "tools/fid/detectors.py",
        "x = images.to(torch.float32) / 255.0",
        "x = images.to(torch.float32) / 127.5 - 1.0",
        ("tests/test_inception_parity.py",)),
    Bug("KID: biased MMD^2 (diagonal kept in the within-set sums)",
        "tools/fid/frechet.py",
        "within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))",
        "within = (kxx.sum() + kyy.sum()) / (m * m)",
        ("tests/test_kid.py",)),
)


def export(dest: Path) -> None:
    """The committed tree of HEAD, as git tracks it, into ``dest``."""
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def plant(copy: Path, bug: Bug) -> int:
    """Replace ``bug.before`` by ``bug.after`` in the copy; the line number planted. Exits if the target
    is missing or ambiguous."""
    path = copy / bug.path
    text = path.read_text()
    count = text.count(bug.before)
    if count != 1:
        sys.exit(f"planted_bugs: {bug.path}: expected the target exactly once, found it {count} times: "
                 f"{bug.before!r}")
    path.write_text(text.replace(bug.before, bug.after))
    return text[:text.index(bug.before)].count("\n") + 1


def run_tests(copy: Path, tests) -> dict:
    env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rf", *tests]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
    summary = [line for line in out.strip().splitlines() if re.search(r"\b(passed|failed|error)", line)]
    return {"code": proc.returncode, "failed": failed[0] if failed else None,
            "summary": summary[-1].strip("= ") if summary else "(no summary)", "output": out}


def in_fresh_copy(work: Path, label: str, bug: Bug | None, tests) -> dict:
    copy = work / label
    copy.mkdir()
    export(copy)
    line = plant(copy, bug) if bug else None
    result = run_tests(copy, tests)
    result["line"] = line
    print(f"[{label}] exit {result['code']}: {result['failed'] or result['summary']}", file=sys.stderr)
    return result


def report(baseline: dict, results: list[tuple[Bug, dict]], tests) -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    lines = [
        "# Planted bugs: do the tests notice?",
        "",
        f"Command: `python bench/planted_bugs.py --md bench/results/planted_bugs.md`, run "
        f"{datetime.date.today().isoformat()} on commit {head}, with `OMP_NUM_THREADS=1` (1 thread). "
        "Each row: a fresh `git archive HEAD` copy, one line replaced, then "
        "`python -m pytest -q -x -p no:cacheprovider -rf TESTS` in that copy with `PYTHONPATH` = the copy.",
        "",
        f"Baseline (no bug planted), `{' '.join(tests)}`: exit {baseline['code']}, {baseline['summary']}.",
        "",
        "| bug | planted at | replaced by | tests run | exit | first failing test | caught |",
        "|---|---|---|---|---|---|---|",
    ]
    for bug, result in results:
        caught = result["code"] != 0 and result["failed"] is not None
        lines.append(f"| {bug.name} | `{bug.path}:{result['line']}` `{bug.before}` | `{bug.after}` | "
                     f"{', '.join(bug.tests)} | {result['code']} | `{result['failed']}` | "
                     f"{'yes' if caught else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md", type=Path, help="write the markdown report here (else stdout)")
    args = parser.parse_args(argv)
    tests = sorted({t for bug in PLANTED for t in bug.tests})
    with tempfile.TemporaryDirectory(prefix="planted-bugs-") as tmp:
        work = Path(tmp)
        baseline = in_fresh_copy(work, "baseline", None, tests)
        results = [(bug, in_fresh_copy(work, f"bug{i}", bug, bug.tests)) for i, bug in enumerate(PLANTED, 1)]
    text = report(baseline, results, tests)
    if args.md:
        args.md.write_text(text)
    print(text)
    ok = baseline["code"] == 0 and all(r["code"] != 0 and r["failed"] for _, r in results)
    if baseline["code"] != 0:
        print(baseline["output"][-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
