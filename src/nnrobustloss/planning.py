"""The plan stage: nnU-Net fingerprint, planner and preprocessing for a task's two datasets.

The noisy dataset is planned with the configured planner; its plans are then copied to the
reference twin (only the dataset name changes), so both are preprocessed with identical plans:
same network, patch size, batch size, spacing and intensity normalisation. The task's splits are
copied into both as ``splits_final.json``. Both preprocessed folders are built under a temporary
root and moved into place only when complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nnrobustloss import layout
from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import read_json, write_json
from nnrobustloss.splits import read_splits

PLANS_IDENTIFIER = "nnUNetPlans"

#: config value -> nnU-Net experiment planner class name
PLANNERS: dict[str, str] = {
    "cpu": "ExperimentPlanner",
    "default": "ExperimentPlanner",
    "resenc_m": "nnUNetPlannerResEncM",
    "resenc_l": "nnUNetPlannerResEncL",
    "resenc_xl": "nnUNetPlannerResEncXL",
}


@contextlib.contextmanager
def nnunet_paths(raw: str | os.PathLike[str] | None = None,
                 preprocessed: str | os.PathLike[str] | None = None,
                 results: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Temporarily point nnU-Net's ``nnUNet_raw/_preprocessed/_results`` variables at folders.

    nnU-Net 2.8 reads these variables lazily, so setting them around a call is enough. Previous
    values are restored on exit.
    """
    wanted = {"nnUNet_raw": raw, "nnUNet_preprocessed": preprocessed, "nnUNet_results": results}
    saved = {k: os.environ.get(k) for k in wanted}
    try:
        for k, v in wanted.items():
            if v is not None:
                os.environ[k] = str(Path(v).resolve())
        yield
    finally:
        for k, old in saved.items():
            if old is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = old


def cpu_strides(patch_size: Sequence[int], n_stages: int) -> list[list[int]]:
    """Pooling strides of a U-Net with ``n_stages`` for ``patch_size`` (axes in plans order).

    Stage 0 does not pool; every later stage halves each axis whose current size is at least 8
    (so no axis drops below 4 voxels), as nnU-Net's topology rules do for small patches.
    """
    sizes = [int(s) for s in patch_size]
    strides = [[1] * len(sizes)]
    for _ in range(1, n_stages):
        stage = [2 if s >= 8 else 1 for s in sizes]
        sizes = [s // st for s, st in zip(sizes, stage)]
        strides.append(stage)
    return strides


MIN_STAGES = 3
"""Fewest U-Net stages a plan may have: nnU-Net's deep-supervision weights (1/2^i over the
outputs but the lowest, normalised) are 0/0 with fewer (the schema's ``minItems`` of
``planning.cpu_plan.features_per_stage``)."""


def apply_cpu_plan(plans: dict[str, Any], configuration: str, cpu_plan: Mapping[str, Any]) -> dict:
    """Return a copy of ``plans`` whose ``configuration`` uses the CPU-sized network and patch.

    ``cpu_plan`` gives ``patch_size`` (voxels, plans axis order), ``batch_size`` and
    ``features_per_stage`` (one entry per U-Net stage). Kernel sizes become 3 on every axis,
    strides follow :func:`cpu_strides`, and each patch axis must be divisible by its total stride.
    """
    import copy

    out = copy.deepcopy(plans)
    conf = out["configurations"][configuration]
    patch = [int(v) for v in cpu_plan["patch_size"]]
    feats = [int(v) for v in cpu_plan["features_per_stage"]]
    if len(feats) < MIN_STAGES:
        raise ConfigError(f"planning.cpu_plan.features_per_stage: {len(feats)} stages; a network "
                          f"needs at least {MIN_STAGES} (nnU-Net's deep-supervision weights are "
                          "0/0 with fewer, and every loss would be NaN). Give three or more "
                          "entries, e.g. [8, 16, 32].")
    strides = cpu_strides(patch, len(feats))
    for axis, size in enumerate(patch):
        total = 1
        for st in strides:
            total *= st[axis]
        if size % total:
            raise ConfigError(f"planning.cpu_plan.patch_size: axis {axis} size {size} is not "
                              f"divisible by the network's total stride {total} along it; use a "
                              f"multiple of {total}.")
    conf["patch_size"] = patch
    conf["batch_size"] = int(cpu_plan["batch_size"])
    kw = conf["architecture"]["arch_kwargs"]
    kw["n_stages"] = len(feats)
    kw["features_per_stage"] = feats
    kw["kernel_sizes"] = [[3] * len(patch) for _ in feats]
    kw["strides"] = strides
    for key in ("n_conv_per_stage", "n_blocks_per_stage"):
        if key in kw:
            kw[key] = [2] * len(feats) if key == "n_conv_per_stage" else [1] * len(feats)
    kw["n_conv_per_stage_decoder"] = [2] * (len(feats) - 1)
    return out


def raw_cases(raw: Path) -> list[str]:
    """The case ids of nnU-Net raw dataset ``raw`` (its ``labelsTr``), after checking that every
    case has its image for each channel of ``dataset.json`` and that ``numTraining`` counts them;
    InputDataError naming the missing file or the inconsistent ``dataset.json``."""
    info = read_json(raw / "dataset.json")
    ending = info.get("file_ending", ".nii.gz")
    labels = raw / "labelsTr"
    cases = sorted(p.name[: -len(ending)] for p in labels.glob(f"*{ending}")) \
        if labels.is_dir() else []
    todo = "Rerun the convert stage of this task (delete its raw datasets if it says done)."
    for case in cases:
        for channel in sorted(int(c) for c in info.get("channel_names", {"0": ""})):
            image = raw / "imagesTr" / f"{case}_{channel:04d}{ending}"
            if not image.is_file():
                raise InputDataError(f"{image}: image of case {case} is missing (its labels "
                                     f"are in {labels}). {todo}")
    if len(cases) != info.get("numTraining"):
        raise InputDataError(f"{raw / 'dataset.json'}: numTraining is {info.get('numTraining')} "
                             f"but {labels} holds {len(cases)} label files. {todo}")
    return cases


def _check_split_cases(splits: list[dict[str, list[str]]], cases: list[str], splits_file: Path,
                       raw: Path) -> None:
    """InputDataError naming ``splits_file`` when a fold names a case that ``raw`` lacks."""
    known = set(cases)
    for k, fold in enumerate(splits):
        unknown = sorted(c for part in ("train", "val") for c in fold[part] if c not in known)
        if unknown:
            raise InputDataError(f"{splits_file}: fold {k} names case(s) {', '.join(unknown[:5])}"
                                 f"{' ...' if len(unknown) > 5 else ''} that {raw.name} does not "
                                 "have. Delete the splits file and rerun the splits stage (it "
                                 "writes them from the converted dataset).")


def plan_and_preprocess(task: str, dataset_id: int, reference_dataset_id: int,
                        results_dir: str | os.PathLike[str], planner: str = "default",
                        configuration: str = "3d_fullres",
                        cpu_plan: Mapping[str, Any] | None = None,
                        splits_file: str | os.PathLike[str] | None = None,
                        num_processes: int = 2) -> tuple[Path, Path]:
    """Plan and preprocess ``raw/DatasetN_T`` and its reference twin into ``preprocessed/``.

    ``planner`` is a key of :data:`PLANNERS`; ``cpu`` starts from nnU-Net's default plans and
    replaces the network and patch by ``cpu_plan`` (:func:`apply_cpu_plan`). The plans file is
    always ``nnUNetPlans.json``. ``splits_file`` (the task's ``splits/<Task>.json``) is copied
    into both datasets as ``splits_final.json``. Returns the two preprocessed dataset folders.
    """
    if planner not in PLANNERS:
        raise ConfigError(f"planning.planner: unknown planner {planner!r}; use one of "
                          f"{', '.join(PLANNERS)}.")
    if planner == "cpu" and not cpu_plan:
        raise ConfigError("planning.cpu_plan: required when planning.planner is 'cpu'.")
    raw_dirs = (layout.raw_dir(results_dir, task, dataset_id),
                layout.raw_dir(results_dir, task, reference_dataset_id, reference=True))
    names = tuple(d.name for d in raw_dirs)
    for raw in raw_dirs:
        if not (raw / "dataset.json").is_file():
            raise InputDataError(f"{raw / 'dataset.json'}: raw dataset not found. "
                                 f"Run the convert stage for task {task} first.")
    cases = raw_cases(raw_dirs[0])  # every case with its images, before anything is written
    raw_cases(raw_dirs[1])
    raw_root = raw_dirs[0].parent
    splits = read_splits(splits_file) if splits_file is not None else None
    if splits is not None:
        _check_split_cases(splits, cases, Path(splits_file), raw_dirs[0])

    finals = (layout.preprocessed_dir(results_dir, task, dataset_id),
              layout.preprocessed_dir(results_dir, task, reference_dataset_id, reference=True))
    final_root = finals[0].parent
    final_root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{task}-", dir=final_root))
    try:
        with nnunet_paths(raw=raw_root, preprocessed=tmp_root):
            from nnunetv2.experiment_planning.plan_and_preprocess_api import (
                extract_fingerprints,
                plan_experiments,
                preprocess,
            )

            print(f"[plan {task}] fingerprint and {planner} plans of {names[0]}", file=sys.stderr)
            extract_fingerprints([dataset_id], num_processes=num_processes,
                                 check_dataset_integrity=True, show_progress_bar=False)
            plan_experiments([dataset_id], PLANNERS[planner],
                             overwrite_plans_name=PLANS_IDENTIFIER)
            noisy_dir, ref_dir = (tmp_root / n for n in names)
            plans = read_json(noisy_dir / f"{PLANS_IDENTIFIER}.json")
            if planner == "cpu":
                assert cpu_plan is not None
                plans = apply_cpu_plan(plans, configuration, cpu_plan)
                write_json(noisy_dir / f"{PLANS_IDENTIFIER}.json", plans)
            # The reference twin gets the very same plans (and fingerprint) under its own name.
            ref_dir.mkdir()
            ref_plans = dict(plans, dataset_name=names[1])
            write_json(ref_dir / f"{PLANS_IDENTIFIER}.json", ref_plans)
            shutil.copyfile(noisy_dir / "dataset_fingerprint.json",
                            ref_dir / "dataset_fingerprint.json")
            shutil.copyfile(raw_dirs[1] / "dataset.json", ref_dir / "dataset.json")
            print(f"[plan {task}] preprocessing {names[0]} and {names[1]} ({configuration})",
                  file=sys.stderr)
            preprocess([dataset_id, reference_dataset_id], PLANS_IDENTIFIER, [configuration],
                       [num_processes], show_progress_bar=False)
        if splits is not None:
            for name in names:
                write_json(tmp_root / name / "splits_final.json", splits)
        for name, final in zip(names, finals, strict=True):
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp_root / name, final)
        return finals[0], finals[1]
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
