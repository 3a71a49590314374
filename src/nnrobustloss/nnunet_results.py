"""The nnU-Net results tree: every final training as a model of nnU-Net's own layout
(docs/layout.md, "The nnU-Net results tree").

For each task x method of the config and each fold, ``nnunet_results`` links::

    nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>/
        plans.json, dataset.json, dataset_fingerprint.json  -> preprocessed/<Dataset>/
        fold_<k>/checkpoint_final.pth, progress.png, progress.csv, settings.json, debug.json
                                                              -> training/<Task>/<Method>/fold<k>/
        fold_<k>/validation/<case>.nii.gz                    -> predictions/<Task>/<Method>/fold<k>/
        fold_<k>/validation/summary.json   (written: nnU-Net's compute_metrics_on_folder2)

All but ``summary.json`` are relative symbolic links, never copies (a ResEnc-L checkpoint is
0.8 GB). With ``nnUNet_results`` pointing at the tree and ``nnUNet_extTrainer`` at the
package's ``trainers`` folder, stock ``nnUNetv2_predict`` and ``nnUNetv2_export_model_to_zip``
use these models. What is in the tree:

- ``<Dataset>`` is the dataset the method trained on: the noisy ``DatasetNNN_<Task>``, or the
  reference twin ``DatasetMMM_<Task>Ref`` for a method with ``uses_reference`` (BaselineRef). So
  Baseline and BaselineRef, which share ``nnUNetTrainer_Baseline``, are two models. Two methods
  of one config that train the same trainer class on the same dataset would be one nnU-Net
  model: :func:`nnunet_models` refuses that config.
- Replicate 0 of every training (the study's seed, ``training/<Task>/<Method>/fold<k>``);
  replicates r >= 1 (``fold<k>_rep<r>``) are not in the tree: nnU-Net has one model per fold.
- A two-peer method's model is peer A (nnU-Net's ``network_weights`` key of the checkpoint),
  the network the predict stage uses unless ``prediction.average_peers`` is on.
- ``validation/summary.json`` is nnU-Net's summary of the predict stage's held-out cases
  against the **reference** labels (nnU-Net's own validation compares with the training labels,
  which are the noisy ones here).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nnrobustloss import layout
from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, link_relative, read_json
from nnrobustloss.methods import get_method
from nnrobustloss.planning import PLANS_IDENTIFIER

FOLD_FILES = ("checkpoint_final.pth", "progress.png", "progress.csv", "settings.json",
              "debug.json")
"""Files of a training folder linked into ``fold_<k>/`` (the first is required; nnU-Net's zip
export also takes ``progress.png`` and ``debug.json``)."""

MODEL_FILES = {"plans.json": f"{PLANS_IDENTIFIER}.json", "dataset.json": "dataset.json",
               "dataset_fingerprint.json": "dataset_fingerprint.json"}
"""The model folder's files and their source in the preprocessed dataset."""


def model_of(config: Mapping[str, Any], task: str, method: str) -> tuple[str, str]:
    """``(dataset folder name, trainer class name)`` of the model that (task, method) trains."""
    t = config["tasks"][task]
    spec = get_method(method)
    ds = t["reference_dataset_id"] if spec.uses_reference else t["dataset_id"]
    return layout.dataset_name(ds, task, reference=spec.uses_reference), spec.trainer_name


def nnunet_models(config: Mapping[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """Every model of the tree: ``{(dataset, trainer): (task, method)}`` for the config's tasks
    and methods. ConfigError when two methods would be one model (same trainer class on the
    same dataset)."""
    models: dict[tuple[str, str], tuple[str, str]] = {}
    for task in config["tasks"]:
        for method in config["methods"]:
            key = model_of(config, task, method)
            if key in models:
                raise ConfigError(
                    f"methods: {models[key][1]} and {method} both train {key[1]} on {key[0]}, so "
                    f"they would be one model of results/{layout.NNUNET_RESULTS}. List one of "
                    "them, or give one its own trainer class.")
            models[key] = (task, method)
    return models


def link_fold(results_dir: str | os.PathLike[str], task: str, method: str, fold: int,
              dataset: str, trainer: str, configuration: str,
              plans: str = PLANS_IDENTIFIER) -> Path:
    """Link replicate 0 of the (task, method, fold) training and its predictions into the tree
    (module doc) and write the fold's ``validation/summary.json`` with nnU-Net's
    ``compute_metrics_on_folder2`` against ``reference/<Task>``; returns that file.
    InputDataError naming the file when the training, its predictions or the preprocessed
    dataset are missing. Rerunning replaces the links (and drops predictions no longer there)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2

    r = Path(results_dir)
    model = layout.nnunet_model_dir(r, dataset, trainer, plans, configuration)
    pre = layout.preprocessed_dataset_dir(r, dataset)
    train = layout.training_dir(r, task, method, fold)
    preds = layout.predictions_dir(r, task, method, fold)
    reference = layout.reference_labels_dir(r, task)
    for src, stage in ((pre / MODEL_FILES["plans.json"], "plan"),
                       (train / layout.CHECKPOINT_FINAL, "train"), (preds, "predict"),
                       (reference, "convert")):
        if not src.exists():
            raise InputDataError(f"{src}: not found. Run the {stage} stage for task {task} "
                                 f"(method {method}, fold {fold}) first.")
    for name, source in MODEL_FILES.items():
        link_relative(model / name, pre / source)
    fold_dir = layout.nnunet_fold_dir(r, dataset, trainer, plans, configuration, fold)
    for name in FOLD_FILES:
        if (train / name).is_file():
            link_relative(fold_dir / name, train / name)
    validation = fold_dir / "validation"
    ending = read_json(pre / "dataset.json")["file_ending"]
    if validation.is_dir():
        for old in validation.iterdir():
            if old.is_symlink():
                old.unlink()
    cases = sorted(p for p in preds.iterdir() if p.name.endswith(ending))
    if not cases:
        raise InputDataError(f"{preds}: no predicted segmentations (*{ending}). Rerun the "
                             f"predict stage of {method}, fold {fold}.")
    for case in cases:
        link_relative(validation / case.name, case)
    summary = layout.nnunet_summary_json(r, dataset, trainer, plans, configuration, fold)
    with atomic_path(summary) as tmp:
        compute_metrics_on_folder2(str(reference), str(validation), str(model / "dataset.json"),
                                   str(model / "plans.json"), output_file=str(tmp),
                                   num_processes=1, chill=True)
    return summary
