"""Validation of source cases and writing of the nnU-Net raw dataset twins of a task.

For a task ``T`` with dataset ids ``N`` (noisy) and ``M`` (reference) this writes:

- ``raw/DatasetN_T/``: ``imagesTr/<case>_0000.nii.gz``, the **noisy** labels as
  ``labelsTr/<case>.nii.gz`` and ``dataset.json``;
- ``raw/DatasetM_TRef/``: the same images with the **reference** labels;
- ``reference/T/<case>.nii.gz``: the reference labels again, for evaluation;
- optionally the manifest (``raw/T.json``), naming the datasets and cases.

All of them are committed as a whole (:func:`nnrobustloss.fileio.versioned_outputs`): they are
built as one version in ``.convert/T/`` beside ``raw/`` and the paths above are symbolic links
through ``.convert/T/current``, which is switched last, so a killed conversion shows the old
complete datasets or the new ones, never a mix.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnrobustloss.datasets.base import CaseData, SourceCase
from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import (
    geometry_mismatch,
    read_image,
    versioned_outputs,
    write_image,
    write_json,
)
from nnrobustloss.layout import dataset_name


@dataclass(frozen=True)
class RawDatasets:
    """Where a task's converted data lives."""

    noisy: Path  # raw/DatasetN_T
    reference: Path  # raw/DatasetM_TRef
    reference_labels: Path  # reference/T
    case_ids: tuple[str, ...]


def check_unique_case_ids(cases: Sequence[SourceCase], task: str) -> None:
    """Raise InputDataError when the task has no cases or two cases share an id."""
    if not cases:
        raise InputDataError(f"task {task}: the sources produced no cases. Check its sources.")
    seen: dict[str, str] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputDataError(
                f"task {task}: case id '{case.case_id}' appears twice ({seen[case.case_id]} and "
                f"{case.origin}). Give the sources distinct case_prefix values.")
        seen[case.case_id] = case.origin


def validate_case(case: SourceCase, data: CaseData, label_values: Sequence[int]) -> None:
    """Check one loaded case; raise InputDataError naming the offending file.

    Checks: a 3D single-channel image with only finite intensities; label images on exactly the
    image's grid (size, spacing, origin, direction); label values within ``label_values``.
    """
    img_name = data.files.get("image", case.origin)
    if data.image.GetDimension() != 3 or data.image.GetNumberOfComponentsPerPixel() != 1:
        raise InputDataError(f"{img_name}: expected a 3D single-channel image, got "
                             f"{data.image.GetDimension()}D with "
                             f"{data.image.GetNumberOfComponentsPerPixel()} channel(s).")
    arr = sitk.GetArrayViewFromImage(data.image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise InputDataError(f"{img_name}: {bad} NaN or infinite intensities. Replace them "
                                 "(for example with the background value) before conversion.")
    allowed = {int(v) for v in label_values}
    for role, label in (("reference", data.reference), ("noisy", data.noisy)):
        if label is None:
            continue
        name = data.files.get(role, f"{case.origin} ({role} labels)")
        diff = geometry_mismatch(data.image, label)
        if diff:
            raise InputDataError(f"{name}: label geometry differs from the image {img_name}: "
                                 f"{diff}. Resample the labels onto the image grid.")
        values = np.unique(sitk.GetArrayViewFromImage(label)).tolist()
        # Float label images may hold fractions, NaN or inf: report them as they are.
        unexpected = [int(v) if float(v).is_integer() else float(v) for v in values
                      if not (float(v).is_integer() and int(v) in allowed)]
        if unexpected:
            raise InputDataError(f"{name}: unexpected label values {unexpected}; the task declares "
                                 f"{sorted(allowed)}. Fix the file or the task's labels.")


def _as_label_image(label: sitk.Image) -> sitk.Image:
    return sitk.Cast(label, sitk.sitkUInt8)


def make_dataset_json(labels: Mapping[str, int], n_cases: int, channel: str, name: str,
                      description: str) -> dict[str, Any]:
    """nnU-Net v2 ``dataset.json`` content for a single-channel dataset."""
    return {"channel_names": {"0": channel}, "labels": {k: int(v) for k, v in labels.items()},
            "numTraining": int(n_cases), "file_ending": ".nii.gz", "name": name,
            "description": description}


def write_raw_datasets(task: str, cases: Sequence[SourceCase], dataset_id: int,
                       reference_dataset_id: int, labels: Mapping[str, int],
                       raw_root: str | os.PathLike[str], reference_root: str | os.PathLike[str],
                       channel: str = "MRI", noise: Mapping[str, Any] | None = None,
                       seed: int = 0, manifest: str | os.PathLike[str] | None = None
                       ) -> RawDatasets:
    """Validate every case and write the noisy/reference raw datasets and the reference labels.

    ``labels`` maps class names to values (must contain ``background: 0``); ``channel`` is the
    nnU-Net channel name (``CT`` selects CT normalisation). ``noise`` is the task's noise
    config: ``{"type": "none"}`` uses the sources' noisy labels; ``{"type": "boundary",
    "target_dice": t, "structures": [[1, 2, 3], ...]}`` derives them from the reference labels
    with :func:`nnrobustloss.noise.corrupt_dataset` (seeded with ``seed``; streamed, one case in
    memory at a time, see :class:`nnrobustloss.noise.BoundaryNoise`; ``target_dice`` defaults to
    :data:`nnrobustloss.noise.DEFAULT_TARGET_DICE`). ``manifest``, when
    given, is written with the datasets (``{"task", "noisy", "reference", "case_ids"}``).

    Everything is committed as a whole (module docstring): nothing visible changes when a case
    fails validation or the process is killed; one conversion of a task runs at a time
    (:class:`~nnrobustloss.errors.StageLockedError` otherwise).
    """
    if labels.get("background") != 0:
        raise InputDataError(f"task {task}: labels must map 'background' to 0, got {dict(labels)}.")
    check_unique_case_ids(cases, task)
    noise = dict(noise or {"type": "none"})
    derive_noise = noise.get("type", "none") == "boundary"
    raw_root, reference_root = Path(raw_root), Path(reference_root)
    names = {"noisy": dataset_name(dataset_id, task),
             "reference": dataset_name(reference_dataset_id, task, reference=True)}
    noisy_final, ref_final = raw_root / names["noisy"], raw_root / names["reference"]
    labels_final = reference_root / task
    ids = tuple(c.case_id for c in cases)
    links = {noisy_final: names["noisy"], ref_final: names["reference"], labels_final: "reference"}
    if manifest is not None:
        links[Path(manifest)] = "manifest.json"

    with versioned_outputs(raw_root.parent / ".convert" / task, links,
                           f"convert stage of task {task}") as version:
        noisy_dir, ref_dir, lab_dir = (version / names["noisy"], version / names["reference"],
                                       version / "reference")
        for d in (noisy_dir, ref_dir):
            (d / "imagesTr").mkdir(parents=True)
            (d / "labelsTr").mkdir()
        lab_dir.mkdir()
        boundary = _BoundaryNoiseWriter(task, noise, seed, len(cases), ref_dir / "labelsTr",
                                        noisy_dir / "labelsTr") if derive_noise else None
        for i, case in enumerate(cases, 1):
            data = case.load()
            if data.noisy is None and not derive_noise:
                raise InputDataError(f"{case.origin}: this source has no noisy labels; set the "
                                     f"task's noise to {{type: boundary}} to derive them.")
            validate_case(case, data, list(labels.values()))
            img_file = noisy_dir / "imagesTr" / f"{case.case_id}_0000.nii.gz"
            write_image(data.image, img_file)
            shutil.copyfile(img_file, ref_dir / "imagesTr" / img_file.name)
            ref = _as_label_image(data.reference)
            write_image(ref, ref_dir / "labelsTr" / f"{case.case_id}.nii.gz")
            shutil.copyfile(ref_dir / "labelsTr" / f"{case.case_id}.nii.gz",
                            lab_dir / f"{case.case_id}.nii.gz")
            if boundary is None:
                assert data.noisy is not None
                write_image(_as_label_image(data.noisy),
                            noisy_dir / "labelsTr" / f"{case.case_id}.nii.gz")
            del data  # the image: only one case is held at a time
            if boundary is not None:
                boundary.add(i - 1, case.case_id, ref)
            print(f"[convert {task}] {i}/{len(cases)} {case.case_id}", file=sys.stderr, flush=True)
        if boundary is not None:
            boundary.write()
        for d, did, ref_flag, what in ((noisy_dir, dataset_id, False, "noisy training labels"),
                                       (ref_dir, reference_dataset_id, True, "reference labels")):
            write_json(d / "dataset.json", make_dataset_json(
                labels, len(cases), channel, dataset_name(did, task, ref_flag),
                f"nnRobustLoss task {task}: {what}"))
        if manifest is not None:
            write_json(version / "manifest.json", {"task": task, "noisy": names["noisy"],
                                                   "reference": names["reference"],
                                                   "case_ids": list(ids)})
    return RawDatasets(noisy=noisy_final, reference=ref_final, reference_labels=labels_final,
                       case_ids=ids)


class _BoundaryNoiseWriter:
    """Boundary noise streamed over the cases (:class:`nnrobustloss.noise.BoundaryNoise`).

    The convert loop adds each case's reference labels as it writes them; :meth:`write` then
    calibrates on the kept summaries and paints case by case, reading the reference labels
    back from the written files. Memory stays that of one case, whatever the number of cases.
    """

    def __init__(self, task: str, noise: Mapping[str, Any], seed: int, n_cases: int,
                 ref_labels: Path, out_dir: Path) -> None:
        from nnrobustloss.noise.calibration import BoundaryNoise
        from nnrobustloss.noise.inputs import DEFAULT_TARGET_DICE

        structures = None
        if noise.get("structures"):
            structures = [tuple(int(v) for v in s) for s in noise["structures"]]
        self.target = float(noise.get("target_dice", DEFAULT_TARGET_DICE))
        self.task, self.ref_labels, self.out_dir = task, ref_labels, out_dir
        self.model = BoundaryNoise(n_cases, self.target, seed, structures, log=self._log)
        # per case: id, spacing in array (z, y, x) order, and the image geometry to write with
        self.cases: list[tuple[str, tuple[float, ...], tuple[Any, Any, Any]]] = []

    def _log(self, message: str) -> None:
        print(f"[convert {self.task}] {message}", file=sys.stderr, flush=True)

    def add(self, k: int, case_id: str, ref: sitk.Image) -> None:
        """Summarise case ``k`` from its reference label image (uint8, as written)."""
        spacing = tuple(float(s) for s in ref.GetSpacing()[::-1])
        self.cases.append((case_id, spacing, (ref.GetSpacing(), ref.GetOrigin(),
                                              ref.GetDirection())))
        self.model.add_case(k, sitk.GetArrayViewFromImage(ref), spacing)  # read only

    def _load(self, k: int) -> tuple[np.ndarray, tuple[float, ...]]:
        case_id, spacing, _ = self.cases[k]
        img = read_image(self.ref_labels / f"{case_id}.nii.gz")
        return sitk.GetArrayFromImage(img), spacing

    def write(self) -> None:
        """Calibrate, then paint and write every case's noisy labels."""
        n = len(self.cases)
        self._log(f"calibrating boundary noise on {n} cases (target Dice {self.target})")
        info = self.model.calibrate(self._load)
        self._log(f"radius scale {info.scale_mm:.4f} mm, mean Dice {info.mean_dice:.4f} "
                  f"({info.evaluations} evaluations)")
        for k, (case_id, _, (spacing, origin, direction)) in enumerate(self.cases):
            img = sitk.GetImageFromArray(self.model.paint(k, *self._load(k)).astype(
                np.uint8, copy=False))
            img.SetSpacing(spacing)  # the geometry of the reference image, as CopyInformation
            img.SetOrigin(origin)
            img.SetDirection(direction)
            write_image(img, self.out_dir / f"{case_id}.nii.gz")
            self._log(f"noisy labels {k + 1}/{n} {case_id}")
