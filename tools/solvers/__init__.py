"""Fitted few-step solvers on the tools side: one home for solver files, ``--sampler file:PATH``,
``--sampler auto`` and the fit itself.

:mod:`.file` reads and writes solver files (JSON, with the fingerprint of the model's weights);
:mod:`.use` checks a fitted solver or an auto pick against the model it runs on; :mod:`.auto` holds the
auto tables (``edm bench --write-auto``) and the fallback rule, :mod:`.auto_rows` the kinds of their rows
and :mod:`.students` which rows a run may take (the students a model's record names); :mod:`.tune` fits
a solver to the near-exact ODE solution (``edm tune-solver``). The solver itself is
``samplers.fitted.LinearSolver``.

Names are imported on first use, so importing the package does not import torch.
"""

from tools.common import lazy_exports

_EXPORTS = {
    "SolverFile": ".file", "load_solver": ".file", "save_solver": ".file", "fingerprint": ".file",
    "auto_choice": ".auto", "write_auto_table": ".auto", "save_auto_table": ".auto",
    "SolverFit": ".tune", "tune_solver": ".tune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
