"""Which rows of an auto table a ``--sampler auto`` run may take (:class:`AutoGate`), and the students it
may run in place of the model asked for.

A model row (``tools.solvers.auto_rows``) names another model, a student distilled from the table's one,
to run instead of it. Two things must agree before it runs: the table's row (the measurement says it is
the best at this budget) and the model's own record, whose ``students`` list (in its checkpoint config:
built-in names, or checkpoint paths relative to the config's folder) names the models distilled from it.
The table alone does not suffice: a user's table is any JSON file, and running a model other than the
one asked for is only safe when the model's own files vouch for it. The student must also make the same
images: the same shape and classes, no text or low-resolution conditioning; else the row is passed over.

Rows that would not honour the request are passed over too: a student or a fitted solver when any
guidance or steering is given (a student is distilled, and a solver fitted, unguided and unsteered), a
student, a solver or a tuned schedule file when a sigma range or rho is given (they bring their own
levels). The next best row then runs, down to the fallback rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["REFUSES", "AutoGate", "named_students"]

#: a row kind -> what a run may ask that the kind cannot honour (AutoGate's attributes)
REFUSES = {"registry": (), "schedule": ("ranged",), "solver": ("ranged", "steered"),
           "model": ("ranged", "steered")}


def named_students(model) -> list[str]:
    """The students a loaded model's record names, as model identities (``tools.models.model_identity``):
    its checkpoint config's ``students``, each a built-in name or a path relative to the config."""
    from tools.models import model_identity
    from tools.models.checkpoint import BUILTIN

    config = (getattr(model, "info", None) or {}).get("config")
    named = config.get("students") if isinstance(config, dict) else None
    if not isinstance(named, list):
        return []
    files = model.info.get("files") or []
    folder = Path(files[0]).parent if files else Path.cwd()
    found = []
    for name in named:
        if isinstance(name, str) and name:
            relative = name not in BUILTIN and not Path(name).expanduser().is_absolute()
            found.append(model_identity(str(folder / name) if relative else name))
    return found


class AutoGate:
    """``accept`` of ``tools.solvers.auto.auto_choice`` for one run: see the module docstring.

    ``steered``: guidance or steering is given; ``ranged``: a sigma range or rho is. A student that passes
    is loaded (on ``device`` in ``dtype``) and kept in :attr:`loaded`, by the row's model name."""

    def __init__(self, model, *, device, dtype, steered: bool, ranged: bool):
        self.model, self.device, self.dtype = model, device, dtype
        self.steered, self.ranged = steered, ranged
        self.loaded: dict[str, Any] = {}
        self._named: list[str] | None = None

    def __call__(self, choice) -> bool:
        if any(getattr(self, why) for why in REFUSES[choice.kind]):
            return False
        return choice.kind != "model" or self._student(choice.model)

    def _student(self, spec: str) -> bool:
        from tools.models import load_model, model_identity
        from tools.models.base import ModelError

        if spec in self.loaded:
            return True
        if self._named is None:
            self._named = named_students(self.model)
        if model_identity(spec) not in self._named or not _plain(self.model):
            return False
        try:
            student = load_model(spec, device=self.device, dtype=self.dtype)
        except ModelError:
            return False  # not installed (yet): the next best row
        teacher = self.model
        if (tuple(student.shape), student.num_classes) != (tuple(teacher.shape), teacher.num_classes) \
                or not _plain(student):
            return False
        self.loaded[spec] = student
        return True


def _plain(model) -> bool:
    """Conditioned on a class at most: no prompts, no low-resolution image, no latent space."""
    return all(getattr(model, name, None) is None for name in ("conditioner", "low_res", "autoencoder"))
