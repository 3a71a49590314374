"""The co-teaching schedule: when voxel selection starts and how fast it ramps up
(docs/methods.md). Plain Python, no torch: the Snakefile, the cost plan and the shared warm-up
use it too.

The paper's schedule is ``delay`` = ``gradual`` = 20 epochs (:data:`PAPER_DELAY`,
:data:`PAPER_GRADUAL`, the config's defaults), in its 50-epoch tuning trials and its 200-epoch
final trainings alike; :func:`scaled_schedule` caps each at ``max_fraction`` (default
:data:`MAX_SCHEDULE_FRACTION`) of a shorter run, and :func:`ramp` is the selection's strength in
an epoch; :func:`run_schedule` reads a two-peer trainer's options (``settings.options``) and
gives the schedule of its run. The values reach these functions validated (the config schema, then
:class:`nnrobustloss.trainers.settings.TrainerSettings`); the functions keep their own
argument checks as the contract of a public function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nnrobustloss.errors import ConfigError

if TYPE_CHECKING:
    from nnrobustloss.trainers.settings import TrainerSettings

PAPER_DELAY = 20
"""Epochs of plain training before the selection starts (``coteaching.delay``)."""
PAPER_GRADUAL = 20
"""Epochs over which the selection ramps up to its full strength (``coteaching.gradual``)."""
MAX_SCHEDULE_FRACTION = 0.4
"""Default cap of ``delay`` and of ``gradual``, as a share of a run's epochs: the paper's 20 + 20
epochs of a 50-epoch tuning trial (``coteaching.max_fraction``)."""


def ramp(epoch: int, delay: int, gradual: int) -> float:
    """Selection schedule in [0, 1]: 0 before ``delay``, then linear to 1 over ``gradual`` epochs.

    ``ramp(e) = 0`` for ``e < delay``, ``min(1, (e - delay) / gradual)`` for ``e >= delay``
    (``gradual = 0``: a step to 1 at ``e = delay``). Epochs count from 0 as nnU-Net's
    ``current_epoch``. This is the schedule of the StoCoT authors' code (``rate_schedule[delay:
    delay + gradual] = linspace(0, 1, gradual, endpoint=False)``): with delay 20 and gradual 20
    the ramp is 0 up to epoch 20, 0.5 at epoch 30 and 1 from epoch 40 on, so a 50-epoch tuning
    trial (epochs 0..49) reaches the full rate at epoch 40.
    """
    if delay < 0 or gradual < 0:
        raise ConfigError(f"coteaching.delay={delay!r} and coteaching.gradual={gradual!r} must "
                          "be >= 0 epochs; fix the config")
    if epoch < delay:
        return 0.0
    if gradual == 0:
        return 1.0
    return min(1.0, (epoch - delay) / gradual)


def scaled_schedule(delay: int, gradual: int, epochs: int,
                    max_fraction: float = MAX_SCHEDULE_FRACTION) -> tuple[int, int]:
    """The co-teaching schedule (delay, gradual) of a run of ``epochs`` epochs.

    Each of ``delay`` and ``gradual`` (epochs, the paper's absolute values) is capped at
    ``floor(max_fraction * epochs)``, so a run keeps the paper's proportions when it is shorter
    than the paper's and the paper's absolute schedule when it is long enough. With the paper's
    20 + 20 and ``max_fraction`` 0.4: a 50-epoch tuning trial gets 20 + 20 (full rate at epoch
    40), a 200-epoch final training 20 + 20, a 10-epoch trial 4 + 4 and a 30-epoch training
    12 + 12. ``max_fraction`` is in (0, 1]. Returns integer epochs (delay, gradual) for
    :func:`ramp`.
    """
    if not 0.0 < float(max_fraction) <= 1.0:
        raise ConfigError(f"coteaching.max_fraction={max_fraction!r} must be in (0, 1]; fix the "
                          "config")
    if delay < 0 or gradual < 0 or epochs < 1:
        raise ConfigError(f"coteaching.delay={delay!r}, coteaching.gradual={gradual!r} must be "
                          f">= 0 and epochs={epochs!r} >= 1; fix the config")
    cap = math.floor(float(max_fraction) * epochs + 1e-9)
    return min(int(delay), cap), min(int(gradual), cap)


def run_schedule(options: Mapping[str, Any], epochs: int) -> tuple[int, int]:
    """The (delay, gradual) of a two-peer run of ``epochs`` epochs from its method options
    ``{"coteaching.delay": ..., "coteaching.gradual": ..., "coteaching.max_fraction": ...}``
    (a trainer's ``settings.options``; a missing one takes its default: :data:`PAPER_DELAY`,
    :data:`PAPER_GRADUAL`, :data:`MAX_SCHEDULE_FRACTION`), scaled by :func:`scaled_schedule`.
    The co-teaching trainers and the shared warm-up read the schedule here."""
    return scaled_schedule(int(options.get("coteaching.delay", PAPER_DELAY)),
                           int(options.get("coteaching.gradual", PAPER_GRADUAL)), int(epochs),
                           options.get("coteaching.max_fraction", MAX_SCHEDULE_FRACTION))


def shared_epochs(settings: TrainerSettings) -> int:
    """The epochs of a run with ``settings`` (a method that shares the warm-up) that do not
    depend on its hyper-parameters: its scaled co-teaching delay. A warm-up checkpoint past it
    cannot start the run."""
    return run_schedule(settings.options, settings.num_epochs)[0]
