"""What a steering kind is: the flags it declares, the three steps it takes part in, and what it works with
in them (:class:`Checking` while its flags are checked, :class:`Building` while its wrapper is built).

A steering kind (a guidance method, an x0 transform, an edit, a corrector) is one :class:`SteeringKind`
registered with :func:`tools.steering.registry.register`. It declares

* its flags (:class:`Flag`, plain data: the command line renders them, so declaring one imports neither
  click nor torch);
* :meth:`SteeringKind.requires`: which flag combinations it refuses, before anything is loaded;
* :meth:`SteeringKind.check`: its values checked and its files or models loaded, into the settings;
* :meth:`SteeringKind.wrap`: the denoiser wrapper it builds from those settings, at its :attr:`layer`;
* :meth:`SteeringKind.check_sampler`: whether the run's sampler takes what it built (CFG++ needs one that
  declares it).

The cost of a kind in network evaluations is read from the wrapper it builds: a wrapper with an
``evaluations`` attribute (network evaluations per call, counting its inner denoiser as one, as
``samplers.guidance.Autoguidance`` has) adds ``evaluations - 1`` to a call; a wrapper without one adds none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tools.common import BadInput

__all__ = ["CORRECTION", "GUIDANCE", "NETWORK", "X0", "Building", "Checking", "Flag", "SteeringKind"]

#: Layers of the denoiser chain, innermost first; kinds of one layer wrap in registration order.
#: NETWORK wraps every network a call evaluates (the model and a guide model alike), in its dtype.
NETWORK = 0
#: GUIDANCE combines evaluations into a guided prediction (classifier-free guidance, autoguidance).
GUIDANCE = 10
#: CORRECTION adds terms to the guided prediction (classifier guidance's gradient).
CORRECTION = 20
#: X0 transforms the final x0 prediction (thresholding).
X0 = 30


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a steering kind, as plain data.

    ``name`` is the keyword (``guide_model`` is ``--guide-model``); ``section`` the help section it is
    listed in; ``type`` one of ``str``, ``int``, ``float``, ``bool`` (an on/off switch) or
    ``pathlib.Path`` (a file or folder, recorded with its content's hash); ``choices`` the values it
    takes, if listed; ``min`` the lowest value of an ``int``. A flag not given is None (False for a
    ``bool``).
    """

    name: str
    section: str
    help: str
    type: type = str
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    min: int | None = None

    @property
    def flag(self) -> str:
        """The flag as typed: ``--guide-model``."""
        return "--" + self.name.replace("_", "-")

    @property
    def unset(self) -> Any:
        """The value of the flag when it is not given."""
        return False if self.type is bool else None

    @property
    def is_file(self) -> bool:
        return self.type is Path


class SteeringKind:
    """Base of the steering kinds; a subclass sets :attr:`name` (and :attr:`flags`, :attr:`layer`) and
    overrides what it takes part in. Every registered kind takes part in every check, whether or not its
    flags are given (a kind may act on the model alone, as thresholding does with a model's own rule)."""

    name: ClassVar[str] = ""
    flags: ClassVar[tuple[Flag, ...]] = ()
    layer: ClassVar[int] = GUIDANCE

    def requires(self, c: Checking) -> None:
        """Refuse flag combinations that do not fit (``c.requires``), before anything is loaded."""

    def check(self, c: Checking) -> None:
        """Check the flags' values, load what they name and put what the wrapper needs into
        ``c.settings``; :class:`tools.common.BadInput` (one line naming the flag) for anything wrong."""

    def wrap(self, denoiser: Callable, b: Building) -> Callable:
        """The denoiser with this kind's wrapper around it (``denoiser`` itself when the kind is off)."""
        return denoiser

    def check_sampler(self, spec: Any, settings: Mapping[str, Any]) -> None:
        """BadInput (one line naming the flag) when the sampler ``spec`` (a ``samplers.registry.SamplerSpec``)
        cannot run what this kind built from ``settings``."""

    def __repr__(self) -> str:
        return f"<steering kind {self.name}: {', '.join(f.flag for f in self.flags) or 'no flags'}>"


@dataclass
class Checking:
    """One check of a ``tools.steering.Steering`` against a loaded model, shared by every kind in turn.

    ``guidance`` is the guidance weight (``--guidance``); ``class_label`` the class asked for (``--class``;
    None: drawn per seed), checked against ``num_classes`` after every kind; ``prompts`` a text model's
    prompts (its negative condition is classifier-free guidance's); ``num_classes`` the classes of the
    conditioning, the model's unless a kind supplies them (a classifier guiding an unconditional model);
    ``settings`` what the kinds' checks found, read by their wrappers and by the run. The built-in kinds'
    keys: ``classifier_free``, ``negative``, ``interval``, ``steps_window`` (``--guidance-start/stop``, made
    part of ``interval`` once the run's sigmas are known), ``rescale``, ``rule``, ``cfg_pp`` (classifier-free
    guidance), ``perturbed`` (PAG, SLG, SEG),
    ``guide`` (autoguidance), ``drop_labels`` (the unconditional switch), ``classifier``,
    ``classifier_scale``, ``threshold``, ``edit`` (img2img and inpainting's images), ``resample`` and
    ``corrector`` (read by the run's sampler).
    """

    steering: Any  # a tools.steering.Steering
    model: Any
    guidance: float
    device: Any
    dtype: Any
    trust_pickle: bool = False
    prompts: Any = None
    class_label: Any = None
    num_classes: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> bool:
        """The model is conditioned on text."""
        return self.prompts is not None

    def given(self, name: str) -> bool:
        """The flag ``name`` is given."""
        value = getattr(self.steering, name)
        return value is not None and value is not False

    def requires(self, name: str, needed: bool, needs: str) -> None:
        """BadInput ``--NAME NEEDS`` (naming the flag) when flag ``name`` is given and not ``needed``."""
        if self.given(name) and not needed:
            raise BadInput(f"--{name.replace('_', '-')} {needs}", name)


@dataclass(frozen=True)
class Building:
    """One build of the denoiser chain for a model in a dtype, from the checked ``settings``.

    :meth:`network` is a network as every call evaluates it: in ``dtype``, inside the NETWORK-layer
    kinds' wrappers (``network_kinds``). A kind that evaluates another network (autoguidance's guide)
    passes it through :meth:`network` too.
    """

    model: Any
    dtype: Any
    guidance: float
    settings: Mapping[str, Any]
    network_kinds: tuple[SteeringKind, ...] = ()

    def network(self, fn: Callable) -> Callable:
        from tools.device import ModelDtype, state_dtype

        if self.dtype != state_dtype(self.dtype):
            fn = ModelDtype(fn, self.dtype)
        for kind in self.network_kinds:
            fn = kind.wrap(fn, self)
        return fn
