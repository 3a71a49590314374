"""The settings of one training, set from outside a trainer (docs/methods.md).

:class:`TrainerSettings` is validated when it is constructed: the config schema validates the
config, this class every training built from Python (the pipeline, the command line, tests),
and nothing downstream checks the same values again. It is recorded as ``settings.json`` in the
training's output folder and inside its checkpoints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import PEER_UPDATE_MODES, resolve_options, resolve_params

__all__ = ["PEER_UPDATE_MODES", "TrainerSettings"]  # PEER_UPDATE_MODES: its former home


def _integer(value: Any, key: str) -> int:
    """``value`` as an int (not a bool or a float); ConfigError naming ``key`` otherwise."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be an integer.")
    return int(value)


def _count(value: Any, key: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; ConfigError naming ``key`` otherwise."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}={value!r}: must be an integer >= {minimum}.")
    return int(value)


@dataclass(frozen=True)
class TrainerSettings:
    """Everything set from outside a trainer; validated at construction.

    ``params`` are the method's hyper-parameters, completed with the registry's defaults and
    range-checked against its search space (:func:`nnrobustloss.methods.resolve_params`);
    epochs and iterations are counts >= 1; ``options`` are the config options that the
    method's spec declares (``MethodSpec.options``), ``{"section.key": value}`` (config-shaped
    sections are accepted too), completed with their defaults and checked
    (:func:`nnrobustloss.methods.resolve_options`; options of other methods are dropped);
    ``seed`` (an integer) seeds python, NumPy, torch and the StoCoT generator. A bad value
    raises ConfigError naming its config key.
    """

    method: str
    params: dict[str, float] = field(default_factory=dict)
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        checked = {
            "params": resolve_params(self.method, self.params),
            "num_epochs": _count(self.num_epochs, "num_epochs", 1),
            "num_iterations_per_epoch": _count(self.num_iterations_per_epoch,
                                               "num_iterations_per_epoch", 1),
            "num_val_iterations_per_epoch": _count(self.num_val_iterations_per_epoch,
                                                   "num_val_iterations_per_epoch", 1),
            "options": resolve_options(self.method, self.options),
            "seed": _integer(self.seed, "seed"),
        }
        for key, value in checked.items():  # frozen: store the normalised values
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)
