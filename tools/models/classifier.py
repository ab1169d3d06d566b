"""Noise-aware classifiers for classifier guidance, by name for the front end.

A *classifier spec* is

- ``digits-classifier``: the classifier shipped in ``edm/weights`` (for the built-in ``digits`` model);
- a classifier file pair ``NAME.json`` + ``NAME.safetensors``, given as NAME or either file;
- a run directory of ``edm train-classifier`` (its ``classifier.*``), or any folder holding exactly one
  classifier pair.

:func:`load_classifier_spec` returns the :class:`edm.classifier.NoiseAwareClassifier` in eval mode
with frozen parameters; every failure is a :class:`ModelError` (param ``classifier``) with one line
naming the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tools.common import one_line

from .base import ModelError

__all__ = ["load_classifier_spec", "list_builtin_classifiers"]

PARAM = "classifier"


def list_builtin_classifiers() -> list[str]:
    from edm.classifier import BUILTIN_CLASSIFIERS

    return sorted(BUILTIN_CLASSIFIERS)


def _is_classifier_json(path: Path) -> bool:
    from edm.classifier import CLASSIFIER_FORMAT

    try:
        return f'"{CLASSIFIER_FORMAT}"' in path.read_text(errors="replace")
    except OSError:
        return False


def _stem(spec: str) -> Path | str:
    """The built-in name, or the file stem the spec names (a directory is searched for one pair)."""
    from edm.classifier import BUILTIN_CLASSIFIERS
    from edm.train_classifier import CLASSIFIER_NAME

    if spec in BUILTIN_CLASSIFIERS:
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / f"{CLASSIFIER_NAME}.json").is_file():
            return path / CLASSIFIER_NAME
        stems = sorted(p.with_suffix("") for p in path.glob("*.json") if _is_classifier_json(p))
        if len(stems) != 1:
            found = ", ".join(s.name for s in stems) or "none"
            raise ModelError(f"{path} must hold exactly one classifier NAME.json + NAME.safetensors "
                             f"(found: {found}); name the classifier file instead", PARAM)
        return stems[0]
    if not path.exists() and not path.with_name(path.name + ".json").exists() and path.suffix not in (
            ".json", ".safetensors"):
        raise ModelError(f"unknown classifier {spec!r}: no such file; expected "
                         f"{', '.join(list_builtin_classifiers())}, a classifier NAME[.json|.safetensors] "
                         "or a train-classifier run directory", PARAM)
    return path


def load_classifier_spec(spec, *, device="cpu", dtype=torch.float32):
    """The classifier named by ``spec`` (see the module doc) on ``device`` in ``dtype``, in eval mode with
    ``requires_grad`` off on its parameters (guidance differentiates with respect to ``x`` only)."""
    from edm.classifier import ClassifierError, load_classifier

    stem = _stem(str(spec))
    try:
        return load_classifier(stem, device=device, dtype=dtype)
    except ClassifierError as e:
        raise ModelError(one_line(e), PARAM) from None
    except (RuntimeError, TypeError, ValueError) as e:  # device or dtype the weights cannot take
        raise ModelError(f"cannot load classifier {spec}: {one_line(e)}", PARAM) from None
