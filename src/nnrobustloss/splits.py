"""The splits stage: seeded k-fold splits shared by a task's noisy and reference datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import read_json, write_json


def make_splits(case_ids: Sequence[str], n_folds: int = 3, seed: int = 0) -> list[dict[str, list[str]]]:
    """k-fold splits ``[{"train": [...], "val": [...]}, ...]`` in nnU-Net's format.

    Uses nnU-Net's own ``generate_crossval_split`` (shuffled scikit-learn KFold seeded with
    ``seed``) on the sorted case ids, so the result depends only on the set of ids, ``n_folds``
    and ``seed``. Every case is in exactly one ``val`` list; ``train`` is the rest. Requires
    ``2 <= n_folds <= len(case_ids)`` and unique ids.
    """
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise InputDataError("case ids must be unique to build splits")
    if not 2 <= n_folds <= len(ids):
        raise ConfigError(f"n_folds: must be between 2 and the number of cases ({len(ids)}), "
                          f"got {n_folds}.")
    splits = generate_crossval_split(ids, seed=seed, n_splits=n_folds)
    return [{"train": sorted(map(str, s["train"])), "val": sorted(map(str, s["val"]))}
            for s in splits]


def raw_case_ids(raw_dataset_dir: str | os.PathLike[str]) -> list[str]:
    """Case ids of an nnU-Net raw dataset (the file names in ``labelsTr``), sorted."""
    d = Path(raw_dataset_dir)
    ending = read_json(d / "dataset.json").get("file_ending", ".nii.gz")
    labels = d / "labelsTr"
    if not labels.is_dir():
        raise InputDataError(f"{labels}: folder not found. Run the convert stage first.")
    ids = sorted(p.name[: -len(ending)] for p in labels.iterdir() if p.name.endswith(ending))
    if not ids:
        raise InputDataError(f"{labels}: no label files ending in {ending}.")
    return ids


def write_splits(raw_dataset_dir: str | os.PathLike[str], out_file: str | os.PathLike[str],
                 n_folds: int = 3, seed: int = 0) -> list[dict[str, list[str]]]:
    """Build the splits of a raw dataset's cases and write them (atomically) to ``out_file``."""
    splits = make_splits(raw_case_ids(raw_dataset_dir), n_folds=n_folds, seed=seed)
    write_json(out_file, splits)
    return splits


def _splits_structure_problem(splits: object) -> str | None:
    """What is wrong with the structure of loaded splits, or None when they are well-formed."""
    if not isinstance(splits, list) or not splits:
        return f"expected a non-empty list of folds, got {type(splits).__name__}"
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            return f"fold {k} is not an object with 'train' and 'val' lists"
        for part in ("train", "val"):
            ids = fold[part]
            if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
                return f"fold {k}: '{part}' is not a list of case ids (strings)"
    return None


def read_splits(splits_file: str | os.PathLike[str]) -> list[dict[str, list[str]]]:
    """Read a splits file (nnU-Net's ``splits_final.json`` format, as :func:`write_splits`
    writes it); a missing, invalid or wrongly structured file raises InputDataError naming it."""
    splits = read_json(splits_file)
    problem = _splits_structure_problem(splits)
    if problem:
        raise InputDataError(f"{splits_file}: not a splits file ({problem}); expected "
                             '[{"train": [...], "val": [...]}, ...]. Delete it and rerun the '
                             "splits stage.")
    return splits


def fold_cases(splits_file: str | os.PathLike[str], fold: int, part: str = "val") -> list[str]:
    """The ``part`` ("train" or "val") case ids of ``fold`` in a splits file (checked with
    :func:`read_splits`)."""
    splits = read_splits(splits_file)
    if not 0 <= fold < len(splits):
        raise ConfigError(f"folds: fold {fold} does not exist in {splits_file} "
                          f"({len(splits)} folds).")
    return list(splits[fold][part])
