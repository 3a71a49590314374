"""The method registry: the one place that knows a method (docs/README.md).

``METHODS`` lists the nine methods of the study in the paper's order. Each entry is a
:class:`MethodSpec`: its id (paths, config), display name (tables), trainer class, whether it
trains on the reference labels, its search space, how many peer networks it trains and whether
its tuning trials share the co-teaching warm-up. Everything else is derived from these fields:
a method is tuned when it has a search space, the Snakemake DAG, the cost plan, the trainers'
accepted method and the predictor's trainer lookup all read the registry. Adding a method is one
trainer class and one entry here (README, "Adding a loss").

``search_space`` holds one :class:`FloatParam` per hyper-parameter with the paper's range
(docs/methods.md):

| method | parameters |
| --- | --- |
| APL2 | ``w`` in (0, 1] (sampled from [1e-3, 1]: ``w = 0`` is undefined in GCE_w = (1 - p^w) / w) |
| CoT, CoTPlus | ``forget_rate`` R in [0, 0.1] |
| StoCoT | ``a``, ``b`` in [0.5, 8], log scale (the Beta(a, b) threshold distribution) |
| SVLS | ``sigma`` in [0.2, 2] |
| HRL | ``a``, ``b`` (log), ``w``, ``sigma`` |

Defaults (:func:`default_params`, used when a method is trained without tuning) are the
midpoint of each range, the geometric midpoint for log-scale parameters (a = b = 2), and
``w = 0.5`` (the midpoint of the paper's (0, 1]).

Trainer classes are stored as import paths ``"module:ClassName"`` and resolved on demand
(:meth:`MethodSpec.load_trainer_class`) so that importing the registry does not import nnU-Net
(the Snakefile and the cost plan read it); a class object is accepted too.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nnrobustloss.errors import ConfigError


@dataclass(frozen=True)
class FloatParam:
    """One float hyper-parameter with its search range ``[low, high]`` (inclusive).

    ``log`` makes Optuna sample on a log scale. ``default`` overrides the midpoint rule of
    :meth:`default_value`.
    """

    name: str
    low: float
    high: float
    log: bool = False
    default: float | None = None

    def suggest(self, trial: Any) -> float:
        """Ask an Optuna trial for a value: ``trial.suggest_float(name, low, high, log=log)``."""
        return float(trial.suggest_float(self.name, self.low, self.high, log=self.log))

    def default_value(self) -> float:
        """The untuned value: ``default`` if set, else the (geometric, for log scale) midpoint."""
        if self.default is not None:
            return float(self.default)
        if self.log:
            return float(math.sqrt(self.low * self.high))
        return float((self.low + self.high) / 2.0)

    def check(self, value: Any, method: str) -> float:
        """Return ``value`` as a float; raise ConfigError naming the method and range if invalid."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"params.{self.name} of method {method}: {value!r} is not a number. "
                              f"Give a float in [{self.low}, {self.high}].") from None
        if not math.isfinite(v) or v < self.low or v > self.high:
            raise ConfigError(f"params.{self.name} of method {method}: {v} is outside the search "
                              f"range [{self.low}, {self.high}]. Give a value inside it.")
        return v


@dataclass(frozen=True)
class MethodSpec:
    """A method of the study.

    ``id``: the identifier in paths and configs; ``display_name``: the paper's name in tables;
    ``trainer_class``: an import path ``"module:ClassName"`` (or the class) of its
    ``nnUNetTrainer`` subclass; ``uses_reference``: trained on the reference labels (only
    BaselineRef); ``search_space``: its hyper-parameters (empty: nothing to tune); ``peers``: 2
    for the co-teaching family (two networks per step; twice the compute of an epoch), else 1;
    ``shares_warmup``: its tuning trials may start from the shared co-teaching warm-up
    (:mod:`nnrobustloss.warmup`; only methods that train both peers hyper-parameter-free with
    plain CE + Dice before the delay).
    """

    id: str
    display_name: str
    trainer_class: str | type
    uses_reference: bool = False
    search_space: tuple[FloatParam, ...] = field(default_factory=tuple)
    peers: int = 1
    shares_warmup: bool = False

    def __post_init__(self) -> None:
        if self.peers not in (1, 2):
            raise ConfigError(f"method {self.id}: peers={self.peers!r}; a method trains 1 or 2 "
                              "networks.")
        if self.shares_warmup and self.peers != 2:
            raise ConfigError(f"method {self.id}: only a two-peer method can share the "
                              "co-teaching warm-up.")

    def load_trainer_class(self) -> type:
        """Import and return the ``nnUNetTrainer`` subclass of this method."""
        if isinstance(self.trainer_class, type):
            return self.trainer_class
        module, _, name = self.trainer_class.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def trainer_name(self) -> str:
        """The trainer's class name (as nnU-Net's checkpoints record it), without importing it."""
        if isinstance(self.trainer_class, type):
            return self.trainer_class.__name__
        return self.trainer_class.partition(":")[2]

    @property
    def needs_tuning(self) -> bool:
        """Whether the method has hyper-parameters to tune (a non-empty search space)."""
        return bool(self.search_space)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the hyper-parameters, in search-space order."""
        return tuple(p.name for p in self.search_space)

    def suggest(self, trial: Any) -> dict[str, float]:
        """Sample every hyper-parameter from an Optuna trial; ``{}`` for methods without any."""
        return {p.name: p.suggest(trial) for p in self.search_space}


_SINGLE = "nnrobustloss.trainers.single"
_TWO = "nnrobustloss.trainers.coteaching"
_W = FloatParam("w", 1e-3, 1.0, default=0.5)
_R = FloatParam("forget_rate", 0.0, 0.1)
_A = FloatParam("a", 0.5, 8.0, log=True)
_B = FloatParam("b", 0.5, 8.0, log=True)
_SIGMA = FloatParam("sigma", 0.2, 2.0)

METHODS: dict[str, MethodSpec] = {
    m.id: m for m in (
        MethodSpec("Baseline", "Baseline", f"{_SINGLE}:nnUNetTrainer_Baseline"),
        MethodSpec("BaselineRef", "Baseline (ref.)", f"{_SINGLE}:nnUNetTrainer_Baseline",
                   uses_reference=True),
        MethodSpec("APL1", "APL1", f"{_SINGLE}:nnUNetTrainer_APL1"),
        MethodSpec("APL2", "APL2", f"{_SINGLE}:nnUNetTrainer_APL2", search_space=(_W,)),
        MethodSpec("CoT", "CoT", f"{_TWO}:nnUNetTrainer_CoT", search_space=(_R,), peers=2,
                   shares_warmup=True),
        MethodSpec("CoTPlus", "CoT+", f"{_TWO}:nnUNetTrainer_CoTPlus", search_space=(_R,),
                   peers=2, shares_warmup=True),
        MethodSpec("StoCoT", "StoCoT", f"{_TWO}:nnUNetTrainer_StoCoT", search_space=(_A, _B),
                   peers=2, shares_warmup=True),
        MethodSpec("SVLS", "SVLS", f"{_SINGLE}:nnUNetTrainer_SVLS", search_space=(_SIGMA,)),
        MethodSpec("HRL", "HRL", f"{_TWO}:nnUNetTrainer_HRL", search_space=(_A, _B, _W, _SIGMA),
                   peers=2),
    )
}


def get_method(name: str) -> MethodSpec:
    """Return the spec of method ``name`` (an id such as ``CoTPlus``); ConfigError if unknown."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method {name!r} is unknown. Known methods: "
                          f"{', '.join(METHODS)}.") from None


def default_params(method: str | MethodSpec) -> dict[str, float]:
    """The hyper-parameters used when ``method`` is trained without tuning (see module doc)."""
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    return {p.name: p.default_value() for p in spec.search_space}


def resolve_params(method: str | MethodSpec,
                   params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Complete ``params`` with defaults and check them against the search space.

    Unknown names and values outside the range raise ConfigError; the result holds exactly the
    method's parameters as floats.
    """
    spec = method if isinstance(method, MethodSpec) else get_method(method)
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.param_names))
    if unknown:
        known = ", ".join(spec.param_names) or "none"
        raise ConfigError(f"params of method {spec.id}: unknown parameter(s) {', '.join(unknown)}. "
                          f"Its parameters: {known}.")
    out = default_params(spec)
    for p in spec.search_space:
        if p.name in params:
            out[p.name] = p.check(params[p.name], spec.id)
    return out


def methods_of_trainer(trainer: type) -> list[str]:
    """Ids of the registered methods whose trainer is the class ``trainer`` (registry order);
    e.g. ``["Baseline", "BaselineRef"]`` for ``nnUNetTrainer_Baseline``. Compared by class name
    without importing the other trainers (trainer classes have unique names, as nnU-Net
    requires to find them from a checkpoint)."""
    return [m.id for m in METHODS.values() if m.trainer_name == trainer.__name__]


def trainer_by_name(name: str) -> type | None:
    """The trainer class called ``name`` of a registered method (as a checkpoint's
    ``trainer_name`` records it), or None when no registered method uses such a trainer."""
    for spec in METHODS.values():
        if spec.trainer_name == name:
            return spec.load_trainer_class()
    return None
