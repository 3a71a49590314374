"""Exact resumption of a training: the RNG states and what the checkpoint adds to nnU-Net's.

A run continued from ``checkpoint_latest.pth`` must draw the same batches and make the same
updates as one that never stopped. nnU-Net's checkpoint holds the weights, the optimiser, the
grad scaler, its logger and the epoch; :class:`ResumeState` adds, under the key
:data:`CHECKPOINT_KEY`, the settings, the progress history and the global RNG states (python
``random``, NumPy, torch CPU and CUDA). The states are restored only after the data loaders were
built and warmed up (``on_train_start``), exactly where the interrupted run stood. This is exact
with ``nnUNet_n_proc_DA=0`` (single-threaded augmentation reads only the global RNGs); nnU-Net's
multi-process augmenter seeds its workers from the OS, so with workers the continuation is
statistically, not bitwise, the same.

:class:`CheckpointSchedule` decides after which epochs ``checkpoint_latest.pth`` is written
(``checkpoint_minutes``): never a result setting, since the checkpoint holds the RNG states.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from time import time
from typing import Any

import numpy as np
import torch

CHECKPOINT_KEY = "nnrobustloss"
"""Key of this package's additions in a checkpoint dict."""


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states a training step reads: python, NumPy, torch CPU (and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (tensors may sit on any device)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, NumPy's global RNG and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ResumeState:
    """What a checkpoint needs beyond nnU-Net's keys, and the RNG state waiting to be restored."""

    def __init__(self) -> None:
        self._pending_rng: Mapping[str, Any] | None = None

    @staticmethod
    def extras(settings: Mapping[str, Any],
               progress_history: list[dict[str, Any]]) -> dict[str, Any]:
        """``{CHECKPOINT_KEY: {settings, progress_history, rng_state}}`` for the checkpoint dict;
        ``settings`` as ``TrainerSettings.to_dict()``, the RNG states captured now."""
        return {CHECKPOINT_KEY: {"settings": dict(settings),
                                 "progress_history": [dict(r) for r in progress_history],
                                 "rng_state": capture_rng_state()}}

    def load(self, checkpoint: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        """Take the RNG state of ``checkpoint`` for :meth:`restore_pending` and return its
        progress history; None for a checkpoint without this package's additions."""
        extra = checkpoint.get(CHECKPOINT_KEY)
        if extra is None:
            return None
        self._pending_rng = extra.get("rng_state")
        return [dict(r) for r in extra.get("progress_history", [])]

    def restore_pending(self) -> None:
        """Restore the loaded RNG state once (call after the data loaders' warm-up)."""
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None


class CheckpointSchedule:
    """Whether an epoch ends with ``checkpoint_latest.pth``: after every epoch (``minutes`` 0),
    else after the first epoch that ends at least ``minutes`` after the previous checkpoint
    (or the start of training)."""

    def __init__(self, minutes: float = 0.0) -> None:
        self.minutes = float(minutes)
        self._last = time()

    def start(self) -> None:
        """Start the clock (the start of training counts as a checkpoint)."""
        self._last = time()

    def due(self) -> bool:
        """True when this epoch's checkpoint is to be written (and restart the clock then)."""
        if time() - self._last >= 60.0 * self.minutes:
            self._last = time()
            return True
        return False
