"""Steering and editing on the embedded digits models, measured: what each method of the lecture notes does.

Parts (``--parts``, default all; run them in separate processes to use more cores):

* ``guidance``: FD-digits against class accuracy as each method's weight grows: none, classifier-free
  guidance (CFG), CFG inside the sigma interval (0.28, 5.42], CFG with rescale 0.7, autoguidance with
  ``digits-weak``, and classifier guidance of the unconditional model with ``digits-classifier``;
  with the NFE, the network evaluations per image (counted) and the wall time.
* ``classifier``: classifier guidance on the unconditional model: class accuracy against the scale.
* ``inpaint``: real digits with their right half masked, generated with ``--class`` = the digit's class:
  how often the composite is assigned to that class (also with RePaint resampling).
* ``img2img``: real digits through the unconditional model at several strengths: how often the result
  keeps the init image's class.
* ``pc``: predictor-corrector (a Langevin step before each step) against the same predictor alone at
  equal NFE, FD-digits; ``annealed_langevin`` at its defaults, class accuracy.

Every point samples the seeds ``0 .. num-1`` (classes drawn from the seeds as ``edm generate`` does, or
``seed % 10`` where a class is given per image) through the same library call ``edm generate`` makes
(``tools.generate.sampling.prepare_sampling``); the table prints the equivalent command. Class accuracy: an
RBF SVM on raw pixels fitted on the real digits (as ``tests/test_digits_model.py``); FD-digits: against
the shipped reference (``tools.fid.score``).

    PYTHONPATH=. python bench/guidance.py [--num 500] [--parts guidance,classifier,...] [--out DIR | --record]

Writes ``DIR/guidance/<part>.json`` and, once all parts are there, ``DIR/guidance.md`` and
``DIR/guidance.png`` (atomically). Last line printed: ``targets met: X/Y`` for the parts run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

from edm.checkpoint import atomic_write  # noqa: E402
from tools.fid import score  # noqa: E402
from tools.generate.sampling import prepare_sampling  # noqa: E402
from tools.images import to_uint8, write_png  # noqa: E402
from tools.labels import class_labels  # noqa: E402
from tools.models import load_model  # noqa: E402
from tools.request import SamplingRequest  # noqa: E402
from tools.steering import Steering  # noqa: E402

PARTS = ("guidance", "classifier", "inpaint", "img2img", "pc")
INTERVAL = (0.28, 5.42)  # Kynkaanniemi et al. 2024's interval for EDM2 (ImageNet-512), in sigma
RESCALE = 0.7  # Lin et al. 2024's phi
BATCH = 250


class Counted:
    """A network that counts the samples it evaluates (CFG's 2B batch counts 2B)."""

    def __init__(self, fn):
        self.fn = fn
        self.count = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["fn"], name)

    def __call__(self, x, *args, **kwargs):
        self.count += x.shape[0]
        return self.fn(x, *args, **kwargs)


def svm():
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001, C=10.0).fit(digits.data, digits.target)


def to_pixels(images: torch.Tensor) -> np.ndarray:
    return ((images.double() + 1.0) * 8.0).clamp(0, 16).flatten(1).numpy()


def run_point(name: str, weight, command: str, seeds, targets, classify, *, model="digits", steering=None,
              fd=True, **sampling):
    """Sample ``seeds`` as ``prepare_sampling(SamplingRequest(model=..., steering=..., **sampling))``;
    FD-digits, accuracy against ``targets``, NFE, counted network evaluations per image, wall time."""
    loaded = load_model(model) if isinstance(model, str) else model
    main = Counted(loaded.denoiser)
    loaded = dataclasses.replace(loaded, denoiser=main)
    counters = [main]
    if steering is not None and steering.guide_model is not None:
        guide = load_model(steering.guide_model)
        counted = Counted(guide.denoiser)
        counters.append(counted)
        steering = steering.replace(guide_model=dataclasses.replace(guide, denoiser=counted))
    if steering is not None and isinstance(steering.classifier, str):
        from tools.models.classifier import load_classifier_spec

        classifier = load_classifier_spec(steering.classifier, device="cpu", dtype=torch.float32)
        counted = Counted(classifier)
        counted.num_classes, counted.shape = classifier.num_classes, classifier.shape
        counters.append(counted)
        steering = steering.replace(classifier=counted)
    setup = prepare_sampling(SamplingRequest(model=loaded, steering=steering, **sampling))
    setup.check_seeds(seeds)
    for c in counters:
        c.count = 0
    start = time.perf_counter()
    images = torch.cat([setup.sample(seeds[i:i + BATCH]) for i in range(0, len(seeds), BATCH)])
    seconds = time.perf_counter() - start
    uint8 = to_uint8(images)
    row = {"method": name, "weight": weight, "command": command, "nfe": setup.nfe,
           "evaluations": sum(c.count for c in counters) / len(seeds), "seconds": round(seconds, 1),
           "num": len(seeds)}
    if targets is not None:
        row["accuracy"] = float(np.mean(classify.predict(to_pixels(images)) == np.asarray(targets)))
    if fd:
        row["fd_digits"] = score(uint8.transpose(0, 3, 1, 2), "digits", ("fd",))["fd_digits"]
    print(json.dumps({k: v for k, v in row.items() if k != "command"}), flush=True)
    return row, uint8


def drawn_classes(seeds):
    return class_labels(seeds, 10, (1, 8, 8)).tolist()


def part_guidance(num, classify):
    seeds = list(range(num))
    targets = drawn_classes(seeds)
    base = f"edm fid gen --num {num} --metrics fd"
    rows = [run_point("none", 0, base, seeds, targets, classify)[0]]
    for w in (0.5, 1.0, 2.0):
        rows.append(run_point("CFG", w, f"{base} --guidance {w:g}", seeds, targets, classify, guidance=w)[0])
        rows.append(run_point("CFG + interval", w, f"{base} --guidance {w:g} --guidance-interval "
                              f"{INTERVAL[0]},{INTERVAL[1]}", seeds, targets, classify, guidance=w,
                              steering=Steering(guidance_interval=INTERVAL))[0])
        rows.append(run_point("CFG + rescale", w, f"{base} --guidance {w:g} --guidance-rescale {RESCALE}",
                              seeds, targets, classify, guidance=w,
                              steering=Steering(guidance_rescale=RESCALE))[0])
    for w in (0.25, 0.5, 1.0, 2.0):
        rows.append(run_point("autoguidance", w, f"{base} --guidance {w:g} --guide-model digits-weak", seeds,
                              targets, classify, guidance=w, steering=Steering(guide_model="digits-weak"))[0])
    return rows


def part_classifier(num, classify):
    seeds = list(range(num))
    targets = drawn_classes(seeds)
    rows = []
    for s in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0):
        command = (f"edm fid gen --num {num} --metrics fd --unconditional --classifier digits-classifier "
                   f"--classifier-scale {s:g}")
        steering = Steering(unconditional=True, classifier="digits-classifier", classifier_scale=s)
        rows.append(run_point("classifier", s, command, seeds, targets, classify, steering=steering)[0])
    return rows


def real_digits(num: int, folder: Path):
    """The last ``num`` real digits as uint8 PNGs ``folder/NNNNNN.png`` (seed i = digit 1797 - num + i), and
    their classes."""
    from edm.data import load_digits

    data = load_digits()
    images = to_uint8(data.images[-num:])
    for i, image in enumerate(images):
        write_png(folder / f"{i:06d}.png", image)
    return data.labels[-num:].tolist()


def part_inpaint(num, classify, tmp: Path):
    seeds = list(range(num))
    classes = real_digits(num, tmp / "real")
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[:, 4:] = 255
    write_png(tmp / "right.png", mask)
    rows = []
    for resample in (None, (3, 3)):
        by_class = []
        outs = []
        for k in range(10):
            mine = [s for s in seeds if classes[s] == k]
            if not mine:
                continue
            steering = Steering(init_image=str(tmp / "real"), mask=str(tmp / "right.png"), resample=resample)
            name = "inpaint" + (" + RePaint 3,3" if resample else "")
            row, uint8 = run_point(name, 0, "", mine, [k] * len(mine), classify, steering=steering,
                                   class_label=k, fd=False)
            by_class.append(row)
            outs.append(uint8)
        total = sum(r["num"] for r in by_class)
        extra = " --resample 3,3" if resample else ""
        rows.append({"method": by_class[0]["method"], "weight": 0, "num": total, "nfe": by_class[0]["nfe"],
                     "evaluations": by_class[0]["evaluations"],
                     "accuracy": sum(r["accuracy"] * r["num"] for r in by_class) / total,
                     "seconds": round(sum(r["seconds"] for r in by_class), 1),
                     "command": f"edm generate --outdir fill --seeds S --class K --init-image real/ --mask "
                                f"right.png{extra}  (per class K, its digits' seeds S)"})
    return rows


def part_img2img(num, classify, tmp: Path):
    seeds = list(range(num))
    classes = real_digits(num, tmp / "real")
    rows = []
    for strength in (0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0):
        command = (f"edm generate --outdir edit --seeds 0-{num - 1} --unconditional --init-image real/ "
                   f"--strength {strength:g}")
        steering = Steering(unconditional=True, init_image=str(tmp / "real"), strength=strength)
        rows.append(run_point("img2img", strength, command, seeds, classes, classify, steering=steering,
                              fd=False)[0])
    return rows


def part_pc(num, classify):
    seeds = list(range(num))
    targets = drawn_classes(seeds)
    base = f"edm fid gen --num {num} --metrics fd"
    rows = []
    for sampler, nfe in (("euler", 35), ("heun", 35), ("euler_ancestral", 35)):
        rows.append(run_point(sampler, 0, f"{base} --sampler {sampler} --nfe {nfe}", seeds, targets, classify,
                              sampler=sampler, nfe=nfe)[0])
        rows.append(run_point(sampler + " + Langevin corrector", 1,
                              f"{base} --sampler {sampler} --nfe {nfe} --corrector langevin", seeds, targets,
                              classify, sampler=sampler, nfe=nfe, steering=Steering(corrector="langevin"))[0])
    rows.append(run_point("annealed_langevin", 0, f"{base} --sampler annealed_langevin", seeds, targets,
                          classify, sampler="annealed_langevin")[0])
    return rows


def report(folder: Path, results: dict, num: int) -> tuple[str, int, int]:
    """The markdown report and its targets (met, total)."""
    met = total = 0
    lines = [f"# Steering and editing on the digits models (`bench/guidance.py`, {num} seeds per point)", "",
             f"Run {time.strftime('%Y-%m-%d')} on {platform.machine()} CPU, torch {torch.__version__}, "
             f"{torch.get_num_threads()} thread(s), machine shared with other jobs (times are indicative; "
             "compare them within one table).", ""]

    def table(rows, columns):
        out = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            out.append("| " + " | ".join(f(r) for _, f in columns) + " |")
        return out

    num_fmt = {"method": lambda r: r["method"], "weight": lambda r: f"{r['weight']:g}",
               "NFE": lambda r: str(r["nfe"]), "network evals / image": lambda r: f"{r['evaluations']:.1f}",
               "FD-digits": lambda r: f"{r['fd_digits']:.3f}" if "fd_digits" in r else "-",
               "class accuracy": lambda r: f"{r['accuracy']:.3f}" if "accuracy" in r else "-",
               "time (s)": lambda r: f"{r['seconds']:.1f}", "command": lambda r: f"`{r['command']}`"}
    columns = list(num_fmt.items())
    if "guidance" in results:
        rows = results["guidance"]
        none = rows[0]["fd_digits"]
        lines += ["## Guidance: FD-digits against class accuracy (`guidance.png`)", "",
                  "Class-conditional model `digits`, heun, 18 steps; classes drawn from the seeds. "
                  "Classifier guidance (last rows) samples the unconditional model towards each seed's "
                  "class.", ""]
        rows = rows + results.get("classifier", [])
        lines += table(rows, columns) + [""]
        best = {}
        for r in rows[1:]:
            if r["weight"] and r["fd_digits"] < best.get(r["method"], (np.inf,))[0]:
                best[r["method"]] = (r["fd_digits"], r["weight"])
        # each method against its own unguided run: the conditional model for CFG and autoguidance, the
        # unconditional one (classifier scale 0) for classifier guidance
        base = {m: none for m in best}
        base.update({r["method"]: r["fd_digits"] for r in rows
                     if r["method"] == "classifier" and not r["weight"]})
        verdicts = []
        for m, (fd, w) in best.items():
            change = 100 * (fd / base[m] - 1)
            verdicts.append(f"{m}: best FD-digits {fd:.3f} at w={w:g}, {abs(change):.0f}% "
                            f"{'lower' if change < 0 else 'higher'} than its unguided {base[m]:.3f}")
        lines += [f"No guidance (conditional model): FD-digits {none:.3f}. " + "; ".join(verdicts) + ".",
                  "", "Times: wall seconds for all the point's images on one thread; the machine was shared "
                  "and its load changed during the run, so compare the evaluation counts, not the times, "
                  "across rows.", ""]
    if "classifier" in results:
        rows = results["classifier"]
        from tools.steering import DEFAULT_CLASSIFIER_SCALE

        default = [r for r in rows if r["weight"] == DEFAULT_CLASSIFIER_SCALE]
        ok = bool(default) and default[0]["accuracy"] >= 0.90
        met, total = met + ok, total + 1
        lines += ["## Classifier guidance of the unconditional model: accuracy against scale", "",
                  "`--unconditional --classifier digits-classifier --class K` (here K drawn per seed).", ""]
        lines += table(rows, columns) + [""]
        lines += [f"Target: >= 0.90 at the default scale {DEFAULT_CLASSIFIER_SCALE:g}: "
                  f"{default[0]['accuracy']:.3f} {'met' if ok else 'NOT met'}." if default else
                  "Target: the default scale was not measured.", ""]
    if "inpaint" in results:
        rows = results["inpaint"]
        ok = rows[0]["accuracy"] >= 0.90
        met, total = met + ok, total + 1
        lines += ["## Inpainting: right half generated, `--class` = the real digit's class", "",
                  f"The last {rows[0]['num']} real digits; the composite (left half kept byte for byte, "
                  "right half generated) classified by the SVM.", ""]
        lines += table(rows, columns) + [""]
        lines += [f"Target: >= 0.90 assigned to the init digit's class: {rows[0]['accuracy']:.3f} "
                  f"{'met' if ok else 'NOT met'}.", ""]
    if "img2img" in results:
        rows = results["img2img"]
        at = [r for r in rows if r["weight"] == 0.3]
        ok = bool(at) and at[0]["accuracy"] >= 0.95
        met, total = met + ok, total + 1
        lines += ["## img2img on real digits, unconditional model: agreement with the init image's class", "",
                  "heun, 18-step Karras schedule; strength S runs its last floor(18 S) steps.", ""]
        lines += table(rows, columns) + [""]
        lines += [f"Target: >= 0.95 at strength 0.3: {at[0]['accuracy']:.3f} {'met' if ok else 'NOT met'}."
                  if at else "", ""]
    if "pc" in results:
        rows = results["pc"]
        al = [r for r in rows if r["method"] == "annealed_langevin"]
        ok = bool(al) and al[0]["accuracy"] >= 0.90
        met, total = met + ok, total + 1
        lines += ["## Predictor-corrector at equal NFE, and annealed Langevin", "",
                  "One Langevin corrector step (snr 0.16) before each predictor step, the predictor's steps "
                  "reduced so the NFE stays within the same budget.", ""]
        lines += table(rows, columns) + [""]
        lines += [f"Target: annealed_langevin (defaults: 5 steps per level, step size 1, 18 levels) class "
                  f"accuracy >= 0.90: {al[0]['accuracy']:.3f} at {al[0]['nfe']} NFE "
                  f"{'met' if ok else 'NOT met'}." if al else "", ""]
    return "\n".join(lines) + "\n", met, total


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    rows = results.get("guidance", []) + results.get("classifier", [])
    none = [r for r in rows if r["method"] == "none"]
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "none"):
        mine = none + [r for r in rows if r["method"] == method] if method != "classifier" else \
            [r for r in rows if r["method"] == method]
        label = "classifier (unconditional model)" if method == "classifier" else method
        ax.plot([r["accuracy"] for r in mine], [r["fd_digits"] for r in mine], "o-", label=label)
        for r in mine[1:] if method != "classifier" else mine:
            ax.annotate(f"{r['weight']:g}", (r["accuracy"], r["fd_digits"]), fontsize=7)
    ax.set_xlabel("class accuracy (SVM on pixels)")
    ax.set_ylabel("FD-digits (lower is better; log scale)")
    ax.set_yscale("log")
    ax.set_title("Guidance on the digits model: each curve as its weight grows")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=500, help="seeds per point (default 500)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated among {', '.join(PARTS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    add_out_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {', '.join(sorted(unknown))}; valid: {', '.join(PARTS)}")
    folder = out_dir(args)
    (folder / "guidance").mkdir(parents=True, exist_ok=True)
    classify = svm()
    with tempfile.TemporaryDirectory() as tmp:
        for part in parts:
            fn = {"guidance": part_guidance, "classifier": part_classifier, "pc": part_pc}.get(part)
            rows = fn(args.num, classify) if fn else {"inpaint": part_inpaint, "img2img": part_img2img}[part](
                args.num, classify, Path(tmp) / part)
            text = json.dumps({"num": args.num, "threads": args.threads, "rows": rows}, indent=1)
            atomic_write(folder / "guidance" / f"{part}.json", lambda t, text=text: Path(t).write_text(text))
    results, num = {}, args.num
    for part in PARTS:
        path = folder / "guidance" / f"{part}.json"
        if path.is_file():
            data = json.loads(path.read_text())
            results[part], num = data["rows"], data["num"]
    text, met, total = report(folder, results, num)
    atomic_write(folder / "guidance.md", lambda t: Path(t).write_text(text))
    if "guidance" in results:
        plot(results, folder / "guidance.png")
    print(f"wrote {folder / 'guidance.md'}; pid {os.getpid()}")
    print(f"targets met: {met}/{total}")


if __name__ == "__main__":
    main()
