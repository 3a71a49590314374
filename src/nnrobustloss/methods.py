"""The method registry: method id -> trainer class, display name, search space.

``METHODS`` lists the nine methods of the study in the paper's order. Each entry is a
:class:`MethodSpec`; its ``search_space`` holds one :class:`FloatParam` per hyper-parameter with
the paper's range (DESIGN.md section 3):

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

Trainer classes are stored as import paths and resolved on demand
(:meth:`MethodSpec.load_trainer_class`) so that importing the registry does not import nnU-Net.
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

    ``trainer_class`` is an import path ``"module:ClassName"`` (or a class); ``uses_reference``
    is True only for BaselineRef (trained on the reference labels); ``needs_tuning`` is True when
    the method has hyper-parameters to search.
    """

    id: str
    display_name: str
    trainer_class: str | type
    uses_reference: bool
    search_space: tuple[FloatParam, ...] = field(default_factory=tuple)
    needs_tuning: bool = False
    shares_warmup: bool = False

    def load_trainer_class(self) -> type:
        """Import and return the ``nnUNetTrainer`` subclass of this method."""
        if isinstance(self.trainer_class, type):
            return self.trainer_class
        module, _, name = self.trainer_class.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def peers(self) -> int:
        """Networks trained at once: 2 for the co-teaching family (CoT, CoT+, StoCoT, HRL), else 1."""
        return 2 if self.id in TWO_PEER_METHODS else 1

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the hyper-parameters, in search-space order."""
        return tuple(p.name for p in self.search_space)

    def suggest(self, trial: Any) -> dict[str, float]:
        """Sample every hyper-parameter from an Optuna trial; ``{}`` for methods without any."""
        return {p.name: p.suggest(trial) for p in self.search_space}


#: Methods that train two peer networks (co-teaching family).
TWO_PEER_METHODS = frozenset({"CoT", "CoTPlus", "StoCoT", "HRL"})

_T = "nnrobustloss.trainers"
_W = FloatParam("w", 1e-3, 1.0, default=0.5)
_R = FloatParam("forget_rate", 0.0, 0.1)
_A = FloatParam("a", 0.5, 8.0, log=True)
_B = FloatParam("b", 0.5, 8.0, log=True)
_SIGMA = FloatParam("sigma", 0.2, 2.0)

METHODS: dict[str, MethodSpec] = {
    m.id: m for m in (
        MethodSpec("Baseline", "Baseline", f"{_T}:nnUNetTrainer_Baseline", False),
        MethodSpec("BaselineRef", "Baseline (ref.)", f"{_T}:nnUNetTrainer_Baseline", True),
        MethodSpec("APL1", "APL1", f"{_T}:nnUNetTrainer_APL1", False),
        MethodSpec("APL2", "APL2", f"{_T}:nnUNetTrainer_APL2", False, (_W,), True),
        MethodSpec("CoT", "CoT", f"{_T}:nnUNetTrainer_CoT", False, (_R,), True,
                   shares_warmup=True),
        MethodSpec("CoTPlus", "CoT+", f"{_T}:nnUNetTrainer_CoTPlus", False, (_R,), True,
                   shares_warmup=True),
        MethodSpec("StoCoT", "StoCoT", f"{_T}:nnUNetTrainer_StoCoT", False, (_A, _B), True,
                   shares_warmup=True),
        MethodSpec("SVLS", "SVLS", f"{_T}:nnUNetTrainer_SVLS", False, (_SIGMA,), True),
        MethodSpec("HRL", "HRL", f"{_T}:nnUNetTrainer_HRL", False, (_A, _B, _W, _SIGMA), True),
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
