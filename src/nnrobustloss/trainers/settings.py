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
from nnrobustloss.losses import SVLS_KERNELS
from nnrobustloss.methods import resolve_params
from nnrobustloss.schedule import PAPER_DELAY, PAPER_GRADUAL
from nnrobustloss.selection import STOCOT_MODES

PEER_UPDATE_MODES = ("sequential", "joint")
"""Schedules of a two-peer step (``coteaching.peer_updates``): the same updates with one or both
forward graphs in memory (:mod:`nnrobustloss.trainers.coteaching`)."""


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


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{key}={value!r}: use one of {', '.join(choices)}.")
    return str(value)


@dataclass(frozen=True)
class TrainerSettings:
    """Everything set from outside a trainer; validated at construction.

    ``params`` are the method's hyper-parameters, completed with the registry's defaults and
    range-checked against its search space (:func:`nnrobustloss.methods.resolve_params`);
    epochs and iterations are counts >= 1; ``coteaching_delay`` and ``coteaching_gradual`` are
    epochs >= 0 of the co-teaching ramp (already scaled to this run,
    :func:`nnrobustloss.schedule.scaled_schedule`); ``stocot_thresholds`` is one of
    :data:`nnrobustloss.selection.STOCOT_MODES`; ``coteaching_peer_updates`` one of
    :data:`PEER_UPDATE_MODES`, two schedules of the same updates; ``svls_kernel`` one of
    :data:`nnrobustloss.losses.SVLS_KERNELS`; ``seed`` (an integer) seeds python, NumPy, torch
    and the StoCoT generator. A bad value raises ConfigError naming its config key.
    """

    method: str
    params: dict[str, float] = field(default_factory=dict)
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    coteaching_delay: int = PAPER_DELAY
    coteaching_gradual: int = PAPER_GRADUAL
    stocot_thresholds: str = "random"
    coteaching_peer_updates: str = "sequential"
    svls_kernel: str = "islam"
    svls_hard_dice: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        checked = {
            "params": resolve_params(self.method, self.params),
            "num_epochs": _count(self.num_epochs, "num_epochs", 1),
            "num_iterations_per_epoch": _count(self.num_iterations_per_epoch,
                                               "num_iterations_per_epoch", 1),
            "num_val_iterations_per_epoch": _count(self.num_val_iterations_per_epoch,
                                                   "num_val_iterations_per_epoch", 1),
            "coteaching_delay": _count(self.coteaching_delay, "coteaching.delay", 0),
            "coteaching_gradual": _count(self.coteaching_gradual, "coteaching.gradual", 0),
            "stocot_thresholds": _choice(self.stocot_thresholds, "coteaching.stocot_thresholds",
                                         STOCOT_MODES),
            "coteaching_peer_updates": _choice(self.coteaching_peer_updates,
                                               "coteaching.peer_updates", PEER_UPDATE_MODES),
            "svls_kernel": _choice(self.svls_kernel, "svls.kernel", SVLS_KERNELS),
            "svls_hard_dice": bool(self.svls_hard_dice),
            "seed": _integer(self.seed, "seed"),
        }
        for key, value in checked.items():  # frozen: store the normalised values
            object.__setattr__(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)
