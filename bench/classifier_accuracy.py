"""Accuracy of a noise-aware classifier on noisy digits, per noise level: the table of
``bench/results/digits_classifier.md``.

For each sigma, every held-out image (the split the classifier's JSON records, never trained on) is
noised ``draws`` times, ``x = y + sigma * n`` with seeded noise (``edm.classifier.accuracy_at_sigma``:
draw d at the k-th sigma from a generator seeded ``seed + 1000 k + d``), and classified at that sigma.
The training split is scored the same way, to show the generalisation gap. A yardstick for what is
achievable at each sigma: the exact posterior ``p(class | x)`` under the *empirical* prior (the data
distribution taken to be the training images themselves, ``p(x | c) = mean_i N(x; y_i, sigma^2 I)`` over
the class's training images), scored on the same noisy held-out images.

    PYTHONPATH=. python bench/classifier_accuracy.py [--classifier digits-classifier] [--draws 5]
                                                     [--seed 0] [--dtype float32] [--out DIR | --record]

Prints the markdown table and writes it to ``DIR/classifier_accuracy.md`` atomically (default a scratch
folder; ``--record``: ``bench/results``). Takes about 10 s on one CPU core.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outdir import add_out_arguments, out_dir  # noqa: E402 (bench/ is on sys.path when run)

from edm.checkpoint import atomic_write  # noqa: E402
from edm.classifier import accuracy_at_sigma, noise_draws  # noqa: E402
from edm.data import load_dataset  # noqa: E402
from edm.train_classifier import EVAL_SIGMAS, held_out_data, holdout_split  # noqa: E402
from tools.models.classifier import load_classifier_spec  # noqa: E402


@torch.no_grad()
def empirical_bayes_accuracy(train_images, train_labels, images, labels, sigmas, *, draws: int,
                             seed: int) -> dict[float, float]:
    """Accuracy of the exact posterior under the empirical prior of the training images, on the noisy
    held-out images of :func:`edm.classifier.accuracy_at_sigma` (the same seeds, the same noise)."""
    templates = train_images.flatten(1).double()
    classes = int(train_labels.max()) + 1
    correct = [0] * len(sigmas)
    for k, sigma, noise in noise_draws(images.shape, sigmas, draws, seed):
        x = (images + sigma * noise).flatten(1).double()
        log_kernel = -torch.cdist(x, templates) ** 2 / (2 * sigma**2)
        scores = torch.stack([log_kernel[:, train_labels == c].logsumexp(1) for c in range(classes)], 1)
        correct[k] += int((scores.argmax(1) == labels).sum())
    return {float(sigma): c / (draws * len(images)) for sigma, c in zip(sigmas, correct)}


def accuracy_table(spec: str, draws: int, seed: int, dtype: torch.dtype) -> str:
    classifier = load_classifier_spec(spec, dtype=dtype)
    record = classifier.config
    held_images, held_labels = held_out_data(record)
    dataset = load_dataset(record["data"]["name"])
    train_idx, _ = holdout_split(dataset.labels, record["split"]["holdout"], record["split"]["seed"])
    held = accuracy_at_sigma(classifier, held_images, held_labels, EVAL_SIGMAS, draws=draws, seed=seed)
    train = accuracy_at_sigma(classifier, dataset.images[train_idx], dataset.labels[train_idx], EVAL_SIGMAS,
                              draws=draws, seed=seed)
    bayes = empirical_bayes_accuracy(dataset.images[train_idx], dataset.labels[train_idx], held_images,
                                     held_labels, EVAL_SIGMAS, draws=draws, seed=seed)
    n_held, n_train = len(held_labels), len(train_idx)
    lines = [f"| sigma | held-out accuracy ({n_held} images x {draws} draws) | correct | "
             f"training-split accuracy ({n_train} x {draws}) | empirical-prior posterior, held out |",
             "|---:|---:|---:|---:|---:|"]
    for sigma in EVAL_SIGMAS:
        correct = round(held[sigma] * n_held * draws)
        lines.append(f"| {sigma:g} | {held[sigma]:.4f} | {correct}/{n_held * draws} | {train[sigma]:.4f} | "
                     f"{bayes[sigma]:.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", default="digits-classifier",
                        help="classifier spec: digits-classifier, NAME[.json|.safetensors] or a run folder")
    parser.add_argument("--draws", type=int, default=5, help="noise draws per image and sigma")
    parser.add_argument("--seed", type=int, default=0, help="first noise seed")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    add_out_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    table = accuracy_table(args.classifier, args.draws, args.seed, getattr(torch, args.dtype))
    text = (f"Classifier `{args.classifier}`, {args.dtype}, noise seeds from {args.seed}, "
            f"{args.draws} draws per image and sigma.\n\n{table}\n")
    out = out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "classifier_accuracy.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    print(f"({time.perf_counter() - started:.1f} s; written to {out / 'classifier_accuracy.md'})")


if __name__ == "__main__":
    main()
