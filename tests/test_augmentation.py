"""Seeded multi-process augmentation (issue 18 item 4): the same batches on every run, for any
number of workers, and a continued training that equals the uninterrupted one.

The fast tests drive batchgenerators' real ``MultiThreadedAugmenter`` over a loader that draws
from NumPy's, python's and torch's global generators; the slow ones train the phantom of
tests/conftest.py with 2 real augmentation worker processes.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from nnrobustloss.errors import ConfigError
from nnrobustloss.trainers.augmentation import (
    IndexSeededLoader,
    batch_seed,
    resolve_workers,
    seeded_augmenter,
)
from nnrobustloss.trainers.progress import read_progress_csv


class _GlobalRandomLoader:
    """Batches drawn from the three global generators, as nnU-Net's loader and transforms draw."""

    def __init__(self) -> None:
        self.thread_id = 0

    def set_thread_id(self, thread_id: int) -> None:
        self.thread_id = thread_id

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, float]:
        return {"np": float(np.random.uniform()), "py": random.random(),
                "torch": float(torch.rand(1))}


def _batches(workers: int, start: int = 0, n: int = 8) -> list[dict[str, float]]:
    aug = seeded_augmenter(_GlobalRandomLoader(), seed=5, stream="train", workers=workers,
                           start=start, pin_memory=False)
    try:
        return [next(aug) for _ in range(n)]
    finally:
        aug._finish()


def test_batch_seeds_are_distinct_per_index_stream_and_seed() -> None:
    seeds = {batch_seed(s, st, i) for s in (0, 1) for st in ("train", "val") for i in range(50)}
    assert len(seeds) == 200
    assert batch_seed(3, "train", 7) == batch_seed(3, "train", 7)
    with pytest.raises(ValueError, match="stream"):
        IndexSeededLoader(_GlobalRandomLoader(), 0, "test", 1)


def test_in_process_batch_is_a_function_of_its_index() -> None:
    loader = IndexSeededLoader(_GlobalRandomLoader(), seed=5, stream="train", threads=1)
    first = [next(loader) for _ in range(4)]
    again = IndexSeededLoader(_GlobalRandomLoader(), seed=5, stream="train", threads=1, start=2)
    assert [next(again) for _ in range(2)] == first[2:]
    other = IndexSeededLoader(_GlobalRandomLoader(), seed=6, stream="train", threads=1)
    assert next(other) != first[0]


def test_workers_give_the_same_batches_in_the_same_order_for_any_count() -> None:
    one = _batches(1)
    assert _batches(1) == one  # a rerun
    assert _batches(2) == one  # worker 0 makes batches 0, 2, 4, ...; returned round-robin
    assert _batches(3) == one
    assert len({b["np"] for b in one}) == len(one)  # every batch differs
    assert _batches(2, start=3, n=5) == one[3:]  # a continued run starts where it stood


def test_resolve_workers(monkeypatch) -> None:
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    assert resolve_workers("auto", "cpu") == 0
    assert resolve_workers(3, "cpu") == 3
    monkeypatch.setenv("nnUNet_n_proc_DA", "1")
    assert resolve_workers("auto", "cpu") == 1
    assert resolve_workers("auto", "cuda") == 1  # nnU-Net's rule honours the variable
    for bad in (-1, "two", 1.5, True):
        with pytest.raises(ConfigError, match="training.augmentation_workers"):
            resolve_workers(bad, "cpu")


# ------------------------------------------------------------------ real trainings

SHORT = dict(iterations_per_epoch=3, val_iterations_per_epoch=1, device="cpu")


@pytest.fixture(scope="module")
def phantom_dir(request) -> Path:
    """The preprocessed noisy phantom of tests/conftest.py; one torch thread afterwards."""
    info = request.getfixturevalue("preprocessed_phantom")
    from conftest import deterministic_cpu_training

    with deterministic_cpu_training():
        yield Path(info["preprocessed_dir"])


def _rows(folder: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "epoch_seconds"}
            for r in read_progress_csv(folder / "progress.csv")]


class _Killed(Exception):
    pass


def _kill_after_first_epoch(epoch: int, metrics: dict) -> None:
    if epoch == 0:
        raise _Killed


@pytest.mark.slow
def test_two_workers_twice_give_identical_trainings_and_a_continued_one_too(phantom_dir,
                                                                            tmp_path) -> None:
    """2 epochs with 2 augmentation worker processes, twice: identical losses and pseudo Dice;
    a run killed after its first epoch and continued (with 3 workers) equals them too."""
    from nnrobustloss.training import train

    kw = dict(epochs=2, seed=3, augmentation_workers=2, **SHORT)
    a = train(phantom_dir, "Baseline", 0, tmp_path / "a", **kw)
    b = train(phantom_dir, "Baseline", 0, tmp_path / "b", **kw)
    assert _rows(a) == _rows(b)
    assert len(_rows(a)) == 2 and _rows(a)[0]["train_loss"] != _rows(a)[1]["train_loss"]
    with pytest.raises(_Killed):
        train(phantom_dir, "Baseline", 0, tmp_path / "c", epoch_callback=_kill_after_first_epoch,
              **kw)
    c = train(phantom_dir, "Baseline", 0, tmp_path / "c", **{**kw, "augmentation_workers": 3})
    assert _rows(c) == _rows(a)
    wa = torch.load(a / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    wc = torch.load(c / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert all(torch.equal(wa["network_weights"][k], wc["network_weights"][k])
               for k in wa["network_weights"])
    # in-process augmentation draws other batches: a different (equally reproducible) training
    d = train(phantom_dir, "Baseline", 0, tmp_path / "d", **{**kw, "augmentation_workers": 0})
    assert _rows(d)[0]["train_loss"] != _rows(a)[0]["train_loss"]
