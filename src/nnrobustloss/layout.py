"""Where every stage's outputs live under the results folder (docs/layout.md).

Nothing else builds these paths: the Snakemake rules, the ``nnrobustloss`` command and the
stage functions all call this module. Every function takes the results folder first; task,
method and fold may also be Snakemake wildcard placeholders (``"{task}"``, ``"{fold}"``), so the
rules' file patterns come from here too, e.g. ``metrics_csv(R, "{task}", "{method}", "{fold}")``
is ``<R>/metrics/{task}/{method}/fold{fold}.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

from nnrobustloss.datasets.raw import dataset_name

__all__ = ["CHECKPOINT_FINAL", "CHECKPOINT_LATEST", "WARMUP_CHECKPOINT", "best_params_json",
           "dataset_name", "figures_dir", "metrics_csv", "noise_csv", "partial_dir",
           "predictions_dir", "preprocessed_dataset_dir", "preprocessed_dir",
           "preprocessed_manifest", "progress_csv", "raw_dir", "raw_manifest",
           "reference_labels_dir", "reliability_csv", "splits_json", "study_dir", "tables_dir",
           "training_checkpoint", "training_dir", "trials_csv", "warmup_checkpoint",
           "warmup_dir", "worker_marker"]

PathLike = str | os.PathLike[str]
Fold = int | str  # an int, or the wildcard placeholder "{fold}"

CHECKPOINT_FINAL = "checkpoint_final.pth"
"""A finished training's checkpoint (nnU-Net's name)."""
CHECKPOINT_LATEST = "checkpoint_latest.pth"
"""The checkpoint an interrupted training continues from (nnU-Net's name)."""
WARMUP_CHECKPOINT = "checkpoint_warmup.pth"
"""The shared co-teaching warm-up's checkpoint (:mod:`nnrobustloss.warmup`)."""


# --- convert, noise report, splits -------------------------------------------------------

def raw_manifest(results_dir: PathLike, task: str) -> Path:
    """``raw/<Task>.json``: the convert stage's manifest (its datasets and case ids)."""
    return Path(results_dir) / "raw" / f"{task}.json"


def raw_dir(results_dir: PathLike, task: str, dataset_id: int, reference: bool = False) -> Path:
    """``raw/DatasetNNN_<Task>[Ref]``."""
    return Path(results_dir) / "raw" / dataset_name(dataset_id, task, reference)


def reference_labels_dir(results_dir: PathLike, task: str) -> Path:
    """``reference/<Task>``: the reference labels used for every evaluation."""
    return Path(results_dir) / "reference" / task


def noise_csv(results_dir: PathLike, task: str) -> Path:
    """``noise/<Task>.csv``: the label-noise report."""
    return Path(results_dir) / "noise" / f"{task}.csv"


def splits_json(results_dir: PathLike, task: str) -> Path:
    """``splits/<Task>.json``: the k-fold splits shared by both datasets of the task."""
    return Path(results_dir) / "splits" / f"{task}.json"


# --- plan ----------------------------------------------------------------------------------

def preprocessed_manifest(results_dir: PathLike, task: str) -> Path:
    """``preprocessed/<Task>.json``: the plan stage's manifest."""
    return Path(results_dir) / "preprocessed" / f"{task}.json"


def preprocessed_dataset_dir(results_dir: PathLike, dataset: str) -> Path:
    """``preprocessed/<dataset>`` for a dataset folder name ``DatasetNNN_<Task>[Ref]``."""
    return Path(results_dir) / "preprocessed" / dataset


def preprocessed_dir(results_dir: PathLike, task: str, dataset_id: int,
                     reference: bool = False) -> Path:
    """``preprocessed/DatasetNNN_<Task>[Ref]``."""
    return preprocessed_dataset_dir(results_dir, dataset_name(dataset_id, task, reference))


# --- tune ----------------------------------------------------------------------------------

def study_dir(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``tuning/<Task>/<Method>/fold<k>``: the study's storage file, trials and results."""
    return Path(results_dir) / "tuning" / task / method / f"fold{fold}"


def worker_marker(results_dir: PathLike, task: str, method: str, fold: Fold,
                  worker: int | str) -> Path:
    """``tuning/<Task>/<Method>/fold<k>/worker<i>.done``: a tuning worker's summary, written
    when its quota of trials is finished."""
    return study_dir(results_dir, task, method, fold) / f"worker{worker}.done"


def trials_csv(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``tuning/<Task>/<Method>/fold<k>/trials.csv``: every trial of a complete study."""
    return study_dir(results_dir, task, method, fold) / "trials.csv"


def best_params_json(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``tuning/<Task>/<Method>/fold<k>/best_params.json``: the study's chosen parameters."""
    return study_dir(results_dir, task, method, fold) / "best_params.json"


def warmup_dir(results_dir: PathLike, task: str, fold: Fold, seed: int | str) -> Path:
    """``tuning/<Task>/warmup/fold<k>/seed<s>``: the shared co-teaching warm-up of the task x
    fold's tuning trials (:mod:`nnrobustloss.warmup`)."""
    return Path(results_dir) / "tuning" / task / "warmup" / f"fold{fold}" / f"seed{seed}"


def warmup_checkpoint(results_dir: PathLike, task: str, fold: Fold, seed: int | str) -> Path:
    """``tuning/<Task>/warmup/fold<k>/seed<s>/checkpoint_warmup.pth``."""
    return warmup_dir(results_dir, task, fold, seed) / WARMUP_CHECKPOINT


# --- train ---------------------------------------------------------------------------------

def training_dir(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``training/<Task>/<Method>/fold<k>``: the nnU-Net output folder of a final training."""
    return Path(results_dir) / "training" / task / method / f"fold{fold}"


def training_checkpoint(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``training/<Task>/<Method>/fold<k>/checkpoint_final.pth``: the trained model."""
    return training_dir(results_dir, task, method, fold) / CHECKPOINT_FINAL


def progress_csv(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``training/<Task>/<Method>/fold<k>/progress.csv``: the final training's epochs."""
    return training_dir(results_dir, task, method, fold) / "progress.csv"


# --- predict, evaluate, report -------------------------------------------------------------

def predictions_dir(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``predictions/<Task>/<Method>/fold<k>``."""
    return Path(results_dir) / "predictions" / task / method / f"fold{fold}"


def partial_dir(output_dir: PathLike) -> Path:
    """``<output_dir>.partial``: the finished items of an unfinished job whose output is the
    folder ``output_dir`` (a Snakemake ``directory()``). A sibling, not inside: Snakemake deletes
    the output of a failed job, never this folder, so a rerun continues where the job stopped."""
    out = Path(output_dir)
    return out.with_name(out.name + ".partial")


def metrics_csv(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``metrics/<Task>/<Method>/fold<k>.csv``: the fold's tidy metrics."""
    return Path(results_dir) / "metrics" / task / method / f"fold{fold}.csv"


def reliability_csv(results_dir: PathLike, task: str, method: str, fold: Fold) -> Path:
    """``metrics/<Task>/<Method>/fold<k>_reliability.csv``: the fold's reliability-diagram bins."""
    return Path(results_dir) / "metrics" / task / method / f"fold{fold}_reliability.csv"


def tables_dir(results_dir: PathLike) -> Path:
    """``tables/``: the report's tables."""
    return Path(results_dir) / "tables"


def figures_dir(results_dir: PathLike) -> Path:
    """``figures/``: the report's figures."""
    return Path(results_dir) / "figures"
