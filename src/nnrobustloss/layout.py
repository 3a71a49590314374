"""Where every stage's outputs live under the results folder (DESIGN.md section 2)."""

from __future__ import annotations

import os
from pathlib import Path

from nnrobustloss.datasets.raw import dataset_name

__all__ = ["dataset_name", "raw_dir", "reference_labels_dir", "preprocessed_dir", "study_dir",
           "warmup_dir", "training_dir", "predictions_dir", "partial_dir"]


def raw_dir(results_dir: str | os.PathLike[str], task: str, dataset_id: int,
            reference: bool = False) -> Path:
    """``raw/DatasetNNN_<Task>[Ref]``."""
    return Path(results_dir) / "raw" / dataset_name(dataset_id, task, reference)


def reference_labels_dir(results_dir: str | os.PathLike[str], task: str) -> Path:
    """``reference/<Task>``: the reference labels used for every evaluation."""
    return Path(results_dir) / "reference" / task


def preprocessed_dir(results_dir: str | os.PathLike[str], task: str, dataset_id: int,
                     reference: bool = False) -> Path:
    """``preprocessed/DatasetNNN_<Task>[Ref]``."""
    return Path(results_dir) / "preprocessed" / dataset_name(dataset_id, task, reference)


def study_dir(results_dir: str | os.PathLike[str], task: str, method: str, fold: int) -> Path:
    """``tuning/<Task>/<Method>/fold<k>``: the study's storage file, trials and results."""
    return Path(results_dir) / "tuning" / task / method / f"fold{fold}"


def warmup_dir(results_dir: str | os.PathLike[str], task: str, fold: int, seed: int) -> Path:
    """``tuning/<Task>/warmup/fold<k>/seed<s>``: the shared co-teaching warm-up of the task x fold's
    tuning trials (:mod:`nnrobustloss.warmup`)."""
    return Path(results_dir) / "tuning" / task / "warmup" / f"fold{fold}" / f"seed{seed}"


def training_dir(results_dir: str | os.PathLike[str], task: str, method: str, fold: int) -> Path:
    """``training/<Task>/<Method>/fold<k>``: the nnU-Net output folder of a final training."""
    return Path(results_dir) / "training" / task / method / f"fold{fold}"


def predictions_dir(results_dir: str | os.PathLike[str], task: str, method: str, fold: int) -> Path:
    """``predictions/<Task>/<Method>/fold<k>``."""
    return Path(results_dir) / "predictions" / task / method / f"fold{fold}"


def partial_dir(output_dir: str | os.PathLike[str]) -> Path:
    """``<output_dir>.partial``: the finished items of an unfinished job whose output is the
    folder ``output_dir`` (a Snakemake ``directory()``). A sibling, not inside: Snakemake deletes
    the output of a failed job, never this folder, so a rerun continues where the job stopped."""
    out = Path(output_dir)
    return out.with_name(out.name + ".partial")
