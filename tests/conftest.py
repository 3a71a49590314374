"""Shared pytest fixtures: a small phantom task converted, split and preprocessed by nnU-Net."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SHARED_KITS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits23_labels"

# Tests run nnU-Net in-process; keep its data augmentation single-threaded and deterministic,
# and never compile (CPU CI).
os.environ.setdefault("nnUNet_compile", "false")


def predict_and_evaluate(cfg: dict, results_dir: Path, task: str, method: str, fold: int,
                         splits_json: Path):
    """Predict fold ``fold`` of a finished training of ``method`` and evaluate it (the predict
    and evaluate stages, on the CPU); the metrics CSV as a DataFrame."""
    import pandas as pd

    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages

    pred_dir = layout.predictions_dir(results_dir, task, method, fold)
    stages.run_predict(stages.predict_params(cfg, task, method, fold), results_dir=results_dir,
                       splits_json=splits_json, out_dir=pred_dir, device="cpu")
    metrics_csv = layout.metrics_csv(results_dir, task, method, fold)
    stages.run_evaluate(stages.evaluate_params(cfg, task, method, fold), results_dir=results_dir,
                        splits_json=splits_json, pred_dir=pred_dir, out_csv=metrics_csv)
    return pd.read_csv(metrics_csv)


@contextlib.contextmanager
def deterministic_cpu_training() -> Iterator[None]:
    """Single-threaded nnU-Net data augmentation (``nnUNet_n_proc_DA=0``) and one torch thread,
    so CPU trainings are deterministic; both are restored on exit. Enter it after planning:
    nnU-Net's planner crashes with ``nnUNet_n_proc_DA=0``."""
    import torch

    old_env, old_threads = os.environ.get("nnUNet_n_proc_DA"), torch.get_num_threads()
    os.environ["nnUNet_n_proc_DA"] = "0"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        if old_env is None:
            os.environ.pop("nnUNet_n_proc_DA", None)
        else:
            os.environ["nnUNet_n_proc_DA"] = old_env


PHANTOM_TEST_TASK = {
    "dataset_id": 981,
    "reference_dataset_id": 982,
    "labels": {"background": 0, "organ": 1, "lesion": 2},
    "noise": {"type": "none"},
    "sources": [{"type": "phantom", "n_cases": 6, "n_noisy_cases": 2,
                 "shape": [20, 40, 40], "spacing": [2.0, 1.0, 1.0]}],
}
PHANTOM_TEST_CPU_PLAN = {"patch_size": [16, 32, 32], "batch_size": 2,
                         "features_per_stage": [8, 16, 32]}


@pytest.fixture(scope="session")
def preprocessed_phantom(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-case phantom task (dataset 981 noisy, 982 reference), converted, split in 3 folds and
    preprocessed with CPU-sized plans (patch 16x32x32, batch 2, 3 stages).

    Returns paths: ``results_dir``, ``preprocessed_dir`` (noisy), ``reference_preprocessed_dir``,
    ``raw_dir``, ``reference_raw_dir``, ``reference_labels`` and ``splits``.
    """
    from nnrobustloss.datasets.convert import convert_task
    from nnrobustloss.planning import plan_and_preprocess
    from nnrobustloss.splits import write_splits

    root = tmp_path_factory.mktemp("phantom_results")
    raw = convert_task("PhantomTest", PHANTOM_TEST_TASK, root, seed=0)
    splits = root / "splits" / "PhantomTest.json"
    write_splits(raw.noisy, splits, n_folds=3, seed=0)
    noisy_pre, ref_pre = plan_and_preprocess(
        "PhantomTest", 981, 982, root, planner="cpu", cpu_plan=PHANTOM_TEST_CPU_PLAN,
        splits_file=splits, num_processes=1)
    return {"results_dir": root, "preprocessed_dir": noisy_pre,
            "reference_preprocessed_dir": ref_pre, "raw_dir": raw.noisy,
            "reference_raw_dir": raw.reference, "reference_labels": raw.reference_labels,
            "splits": splits}
