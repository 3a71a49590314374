"""Where every stage's outputs live under the results folder (docs/layout.md).

Nothing else builds these paths: the Snakemake rules, the ``nnrobustloss`` command and the
stage functions all call this module. Every function takes the results folder first; task,
method and fold may also be Snakemake wildcard placeholders (``"{task}"``, ``"{fold}"``), so the
rules' file patterns come from here too, e.g. ``metrics_csv(R, "{task}", "{method}", "{fold}")``
is ``<R>/metrics/{task}/{method}/fold{fold}.csv``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["CHECKPOINT_FINAL", "CHECKPOINT_LATEST", "WARMUP_CHECKPOINT", "best_params_json",
           "REPLICATE_SUFFIX_PATTERN", "REPLICATE_WILDCARD", "dataset_name", "figures_dir",
           "fold_name", "job_benchmark", "job_log", "metrics_csv", "NNUNET_RESULTS", "nnunet_fold_dir",
           "nnunet_model_dir", "nnunet_results_dir", "nnunet_summary_json", "noise_csv", "parse_fold_name",
           "partial_dir", "replicate_of", "replicate_suffix",
           "predictions_dir", "preprocessed_dataset_dir", "preprocessed_dir",
           "preprocessed_manifest", "progress_csv", "raw_dir", "raw_manifest",
           "reference_labels_dir", "reliability_csv", "splits_json", "stage_benchmark", "study_dir",
           "stage_log", "tables_dir", "task_benchmark", "task_log", "tuning_benchmark", "tuning_log",
           "training_checkpoint", "training_dir", "trials_csv", "warmup_checkpoint",
           "warmup_dir", "worker_marker"]

PathLike = str | os.PathLike[str]
Fold = int | str  # an int, or the wildcard placeholder "{fold}"
Replicate = int | str  # an int >= 0, or the wildcard placeholder "{replicate}" (the suffix)

REPLICATE_WILDCARD = "{replicate}"
"""Placeholder of a rule pattern's replicate: its value is the folder suffix of
:func:`replicate_suffix` ("" for replicate 0, "_rep<r>" otherwise)."""
REPLICATE_SUFFIX_PATTERN = r"(_rep[1-9]\d*)?"
"""Regular expression of :func:`replicate_suffix` values (the rules' wildcard constraint)."""

def replicate_suffix(replicate: Replicate) -> str:
    """The suffix of a replicate's folders and files: "" for replicate 0 (a study with one
    replicate keeps nnU-Net-like ``fold<k>`` names), ``_rep<r>`` for replicate r >= 1; a
    wildcard placeholder (a ``str`` starting with "{") is returned as it is."""
    if isinstance(replicate, str) and replicate.startswith("{"):
        return replicate
    r = int(replicate)
    if r < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate!r}")
    return "" if r == 0 else f"_rep{r}"


def replicate_of(suffix: str) -> int:
    """The replicate number of a :func:`replicate_suffix` value ("" -> 0, "_rep2" -> 2)."""
    match = re.fullmatch(REPLICATE_SUFFIX_PATTERN, suffix)
    if match is None:
        raise ValueError(f"{suffix!r} is not a replicate suffix ('' or '_rep<r>', r >= 1)")
    return int(suffix[4:]) if suffix else 0


def fold_name(fold: Fold, replicate: Replicate = 0) -> str:
    """``fold<k>`` (replicate 0) or ``fold<k>_rep<r>``: the name of a training's folder."""
    return f"fold{fold}{replicate_suffix(replicate)}"


def parse_fold_name(name: str) -> tuple[int, int] | None:
    """(fold, replicate) of a :func:`fold_name` (a trailing ``.csv`` or ``_reliability.csv``
    is not part of it); None when ``name`` is not one."""
    match = re.fullmatch(r"fold(\d+)" + REPLICATE_SUFFIX_PATTERN, name)
    return (int(match.group(1)), replicate_of(match.group(2) or "")) if match else None


CHECKPOINT_FINAL = "checkpoint_final.pth"
"""A finished training's checkpoint (nnU-Net's name)."""
CHECKPOINT_LATEST = "checkpoint_latest.pth"
"""The checkpoint an interrupted training continues from (nnU-Net's name)."""
WARMUP_CHECKPOINT = "checkpoint_warmup.pth"
"""The shared co-teaching warm-up's checkpoint (:mod:`nnrobustloss.warmup`)."""


# --- convert, noise report, splits -------------------------------------------------------

def dataset_name(dataset_id: int, task: str, reference: bool = False) -> str:
    """nnU-Net dataset folder name, e.g. ``Dataset501_Phantom`` / ``Dataset502_PhantomRef``."""
    return f"Dataset{int(dataset_id):03d}_{task}{'Ref' if reference else ''}"


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

def training_dir(results_dir: PathLike, task: str, method: str, fold: Fold,
                 replicate: Replicate = 0) -> Path:
    """``training/<Task>/<Method>/fold<k>[_rep<r>]``: the nnU-Net output folder of a final
    training (:func:`fold_name`)."""
    return Path(results_dir) / "training" / task / method / fold_name(fold, replicate)


def training_checkpoint(results_dir: PathLike, task: str, method: str, fold: Fold,
                        replicate: Replicate = 0) -> Path:
    """``training/<Task>/<Method>/fold<k>[_rep<r>]/checkpoint_final.pth``: the trained model."""
    return training_dir(results_dir, task, method, fold, replicate) / CHECKPOINT_FINAL


def progress_csv(results_dir: PathLike, task: str, method: str, fold: Fold,
                 replicate: Replicate = 0) -> Path:
    """``training/<Task>/<Method>/fold<k>[_rep<r>]/progress.csv``: the final training's epochs."""
    return training_dir(results_dir, task, method, fold, replicate) / "progress.csv"


# --- predict, evaluate, report -------------------------------------------------------------

def predictions_dir(results_dir: PathLike, task: str, method: str, fold: Fold,
                    replicate: Replicate = 0) -> Path:
    """``predictions/<Task>/<Method>/fold<k>[_rep<r>]``."""
    return Path(results_dir) / "predictions" / task / method / fold_name(fold, replicate)


def partial_dir(output_dir: PathLike) -> Path:
    """``<output_dir>.partial``: the finished items of an unfinished job whose output is the
    folder ``output_dir`` (a Snakemake ``directory()``). A sibling, not inside: Snakemake deletes
    the output of a failed job, never this folder, so a rerun continues where the job stopped."""
    out = Path(output_dir)
    return out.with_name(out.name + ".partial")


def metrics_csv(results_dir: PathLike, task: str, method: str, fold: Fold,
                replicate: Replicate = 0) -> Path:
    """``metrics/<Task>/<Method>/fold<k>[_rep<r>].csv``: the fold's tidy metrics."""
    return Path(results_dir) / "metrics" / task / method / f"{fold_name(fold, replicate)}.csv"


def reliability_csv(results_dir: PathLike, task: str, method: str, fold: Fold,
                    replicate: Replicate = 0) -> Path:
    """``metrics/<Task>/<Method>/fold<k>[_rep<r>]_reliability.csv``: the fold's
    reliability-diagram bins."""
    return (Path(results_dir) / "metrics" / task / method
            / f"{fold_name(fold, replicate)}_reliability.csv")


def job_log(results_dir: PathLike, stage: str, task: str, method: str, fold: Fold,
            replicate: Replicate = 0) -> Path:
    """``logs/<stage>/<Task>/<Method>/fold<k>[_rep<r>].log``: the log of a per-training job
    (train, predict, evaluate)."""
    return Path(results_dir) / "logs" / stage / task / method / f"{fold_name(fold, replicate)}.log"


def job_benchmark(results_dir: PathLike, stage: str, task: str, method: str, fold: Fold,
                  replicate: Replicate = 0) -> Path:
    """``benchmarks/<stage>/<Task>/<Method>/fold<k>[_rep<r>].tsv``: Snakemake's ``benchmark:``
    file of a per-training job."""
    return (Path(results_dir) / "benchmarks" / stage / task / method
            / f"{fold_name(fold, replicate)}.tsv")


def task_log(results_dir: PathLike, stage: str, task: str) -> Path:
    """``logs/<stage>/<Task>.log``: the log of a per-task job (convert, noise, splits, plan)."""
    return Path(results_dir) / "logs" / stage / f"{task}.log"


def task_benchmark(results_dir: PathLike, stage: str, task: str) -> Path:
    """``benchmarks/<stage>/<Task>.tsv``: Snakemake's ``benchmark:`` file of a per-task job."""
    return Path(results_dir) / "benchmarks" / stage / f"{task}.tsv"


def tuning_log(results_dir: PathLike, task: str, method: str, fold: Fold, job: str) -> Path:
    """``logs/tune/<Task>/<Method>/fold<k>/<job>.log``: the log of a tuning job of a study
    (``worker<i>``, ``select_best``); the shared warm-up's method is ``warmup`` and its job
    ``seed<s>``."""
    return Path(results_dir) / "logs" / "tune" / task / method / fold_name(fold) / f"{job}.log"


def tuning_benchmark(results_dir: PathLike, task: str, method: str, fold: Fold, job: str) -> Path:
    """``benchmarks/tune/<Task>/<Method>/fold<k>/<job>.tsv``: Snakemake's ``benchmark:`` file
    of a tuning job (the names of :func:`tuning_log`)."""
    return (Path(results_dir) / "benchmarks" / "tune" / task / method / fold_name(fold)
            / f"{job}.tsv")


def stage_log(results_dir: PathLike, stage: str) -> Path:
    """``logs/<stage>.log``: the log of a once-per-workflow job (report)."""
    return Path(results_dir) / "logs" / f"{stage}.log"


def stage_benchmark(results_dir: PathLike, stage: str) -> Path:
    """``benchmarks/<stage>.tsv``: Snakemake's ``benchmark:`` file of a once-per-workflow job."""
    return Path(results_dir) / "benchmarks" / f"{stage}.tsv"


def tables_dir(results_dir: PathLike) -> Path:
    """``tables/``: the report's tables."""
    return Path(results_dir) / "tables"


def figures_dir(results_dir: PathLike) -> Path:
    """``figures/``: the report's figures."""
    return Path(results_dir) / "figures"


# --- nnU-Net results tree --------------------------------------------------------------------

NNUNET_RESULTS = "nnUNet_results"
"""The folder of the nnU-Net results tree (point nnU-Net's ``nnUNet_results`` at it)."""


def nnunet_results_dir(results_dir: PathLike) -> Path:
    """``nnUNet_results/``: every final training as a model of nnU-Net's own layout
    (:mod:`nnrobustloss.nnunet_results`)."""
    return Path(results_dir) / NNUNET_RESULTS


def nnunet_model_dir(results_dir: PathLike, dataset: str, trainer: str, plans: str,
                     configuration: str) -> Path:
    """``nnUNet_results/<dataset>/<Trainer>__<Plans>__<configuration>``: nnU-Net's model folder
    (``nnunetv2.utilities.file_path_utilities.get_output_folder``)."""
    return nnunet_results_dir(results_dir) / dataset / f"{trainer}__{plans}__{configuration}"


def nnunet_fold_dir(results_dir: PathLike, dataset: str, trainer: str, plans: str,
                    configuration: str, fold: Fold) -> Path:
    """``.../<Trainer>__<Plans>__<configuration>/fold_<k>``: nnU-Net's fold folder."""
    return nnunet_model_dir(results_dir, dataset, trainer, plans, configuration) / f"fold_{fold}"


def nnunet_summary_json(results_dir: PathLike, dataset: str, trainer: str, plans: str,
                        configuration: str, fold: Fold) -> Path:
    """``.../fold_<k>/validation/summary.json``: nnU-Net's validation summary of a fold (the
    file that completes the fold in the tree)."""
    return (nnunet_fold_dir(results_dir, dataset, trainer, plans, configuration, fold)
            / "validation" / "summary.json")
