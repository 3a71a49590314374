"""Reproducible multi-process data augmentation: seeded workers and a fixed batch order.

nnU-Net augments in worker processes with ``NonDetMultiThreadedAugmenter(seeds=None)``: each
worker seeds its random number generators from the OS and batches arrive in whatever order the
workers finish them, so two trainings with the same settings see different batches (a paired
comparison of two methods is not paired, and no run reproduces). In-process augmentation
(``nnUNet_n_proc_DA=0``) is reproducible but puts augmentation on the training's critical path.

Here every batch is a pure function of ``(seed, stream, index)``: :class:`IndexSeededLoader`
wraps nnU-Net's data loader and, in whichever worker produces batch ``index``, seeds NumPy's
global generator, python's ``random`` and torch from ``SeedSequence([seed, stream, index])``
before nnU-Net samples and augments it (nnU-Net's loader and batchgeneratorsv2's transforms
draw from exactly these generators). batchgenerators' seeded ``MultiThreadedAugmenter`` hands
worker ``i`` of ``n`` the batches ``i, i + n, i + 2n, ...`` and returns them round-robin, i.e. in
index order. Hence:

- two trainings with the same settings see the same batches, on the CPU and on a GPU;
- the batches do not depend on the number of workers (1, 2 or 12 give the same training);
- a training continued from ``checkpoint_latest.pth`` of epoch ``k`` starts its loaders at
  index ``k x iterations`` (the warm-up batch nnU-Net draws when it builds the loaders takes
  that index; epoch ``e`` iteration ``j`` always reads batch ``1 + e x iterations + j``), so it
  sees exactly the batches of the run that never stopped.

With 0 workers nnU-Net's in-process augmenter is used as before: its batches come from the
training process's global generators (restored on resume), so they differ from the seeded
workers' batches, and ``training.augmentation_workers`` 0 and N >= 1 are two different (each
reproducible) trainings.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

STREAMS = {"train": 0, "val": 1}
"""Stream ids of the training and validation loaders in the batch seeds."""


def batch_seed(seed: int, stream: str, index: int) -> int:
    """The 32-bit seed of batch ``index`` (>= 0) of loader ``stream`` ("train" or "val") of a
    training seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed) % 2**63, STREAMS[stream], int(index)])
               .generate_state(1)[0])


def seed_generators(value: int) -> None:
    """Seed NumPy's global generator, python's ``random`` and torch with ``value``."""
    np.random.seed(value)
    random.seed(value)
    torch.manual_seed(value)


class IndexSeededLoader:
    """A data loader whose ``k``-th batch in a worker is batch ``start + thread + k x threads``
    of the stream, generated right after :func:`seed_generators` with its :func:`batch_seed`.

    ``loader``: nnU-Net's ``nnUNetDataLoader`` (any iterator of batches that draws its randomness
    from the global generators); ``threads``: the number of workers that share it;
    ``start``: the index of the first batch (batches consumed by an earlier, interrupted run).
    batchgenerators calls :meth:`set_thread_id` in each worker before the first batch.
    """

    def __init__(self, loader: Any, seed: int, stream: str, threads: int, start: int = 0) -> None:
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")
        if threads < 1 or start < 0:
            raise ValueError(f"threads must be >= 1 and start >= 0, got {threads}, {start}")
        self.loader, self.seed, self.stream = loader, int(seed), stream
        self.threads, self.start = int(threads), int(start)
        self.next_index = self.start

    def set_thread_id(self, thread_id: int) -> None:
        """Worker ``thread_id`` (0-based) produces batches ``start + thread_id + k x threads``."""
        self.next_index = self.start + int(thread_id)
        if hasattr(self.loader, "set_thread_id"):
            self.loader.set_thread_id(thread_id)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        seed_generators(batch_seed(self.seed, self.stream, self.next_index))
        self.next_index += self.threads
        return next(self.loader)


def resolve_workers(value: int | str, device_type: str) -> int:
    """The number of augmentation workers of ``training.augmentation_workers``: an int >= 0 as
    given; ``"auto"``: nnU-Net's own count (``get_allowed_n_proc_DA``, which honours
    ``nnUNet_n_proc_DA``) on CUDA, on the CPU ``nnUNet_n_proc_DA`` when set, else 0."""
    from nnrobustloss.errors import ConfigError

    if value == "auto":
        if device_type == "cuda":
            from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

            return int(get_allowed_n_proc_DA())
        return int(os.environ.get("nnUNet_n_proc_DA", "0"))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"training.augmentation_workers={value!r}: use an integer >= 0 or "
                          "auto.")
    return value


def seeded_augmenter(loader: Any, seed: int, stream: str, workers: int, start: int,
                     pin_memory: bool) -> Any:
    """batchgenerators' ``MultiThreadedAugmenter`` over :class:`IndexSeededLoader` with
    ``workers`` (>= 1) processes: batches ``start, start + 1, ...`` of the stream, in order."""
    from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter

    wrapped = IndexSeededLoader(loader, seed, stream, workers, start)
    return MultiThreadedAugmenter(wrapped, None, num_processes=workers,
                                  num_cached_per_queue=max(2, 6 // workers),
                                  seeds=list(range(workers)), pin_memory=pin_memory,
                                  wait_time=0.002)


__all__ = ["IndexSeededLoader", "STREAMS", "batch_seed", "resolve_workers", "seed_generators",
           "seeded_augmenter"]
