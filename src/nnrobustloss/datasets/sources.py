"""File-based data sources: KiTS23, MM-WHS CT and the generic two-annotator folder layout.

Each reader lists the cases of a source folder and returns :class:`SourceCase` objects that load
lazily; listing checks that the folder exists and holds cases, and that every entry of it ends up
in a case or in an error (a dangling symbolic link, a link loop, a stray folder, a label file
without its image, two spellings of one file such as ``X.nii`` and ``X.nii.gz``); loading
reads and label-maps the files. Geometry, label values and intensities are validated by the writer
(:mod:`nnrobustloss.datasets.raw`), which knows the task's declared labels.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnrobustloss.datasets.base import CaseData, SourceCase
from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import read_image

#: MM-WHS label values -> task labels (LV 1, RV 2, LA 3, RA 4, myocardium 5); the ascending
#: aorta (820) and pulmonary artery (850) become background.
MMWHS_LABEL_MAP: dict[int, int] = {0: 0, 500: 1, 600: 2, 420: 3, 550: 4, 205: 5, 820: 0, 850: 0}

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def _stem(path: Path) -> str:
    """File name without an image suffix (``case_1.nii.gz`` -> ``case_1``)."""
    for suffix in IMAGE_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _case_id(image: Path) -> str:
    """Case id of a folder source's image: its stem without nnU-Net's ``_0000`` channel tag."""
    case = _stem(image)
    return case[: -len("_0000")] if case.endswith("_0000") else case


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise InputDataError(f"{path}: {what} folder not found. Check the source path in the config.")


def _link_problem(entry: Path) -> str | None:
    """Why a symbolic link cannot be followed (a loop, a missing target), or None."""
    if not entry.is_symlink():
        return None
    try:
        entry.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link loop; fix or remove the link"
        return (f"a dangling symbolic link (its target {os.readlink(entry)} does not exist); "
                "restore the target or remove the link")
    return None


def image_entries(folder: Path) -> dict[str, Path]:
    """Every entry of a source folder as ``{stem: file}`` (stem: name without image suffix).

    Regular files without an image suffix (:data:`IMAGE_SUFFIXES`; e.g. a ``README.txt``) are
    not images and are skipped. Every other entry must be an image file (a symbolic link to one
    included): a dangling link, a link loop, a folder or a second file with the same stem
    (``X.nii`` beside ``X.nii.gz``) raises InputDataError naming it, so that no image is dropped
    without a word.
    """
    out: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        problem = _link_problem(entry)
        if problem is None and entry.is_dir():
            problem = "a folder; this source folder holds image files only. Move it away"
        if problem is None and not entry.name.endswith(IMAGE_SUFFIXES):
            continue  # a regular file that is no image (notes, checksums)
        if problem is None and _stem(entry) in out:
            problem = (f"the folder also holds {out[_stem(entry)].name} for the same case; keep "
                       "only one of the two files")
        if problem:
            raise InputDataError(f"{entry}: {problem}.")
        out[_stem(entry)] = entry
    return out


def remap_labels(label: sitk.Image, mapping: Mapping[int, int], path: str) -> sitk.Image:
    """Map label values through ``mapping``; a value not in it raises InputDataError naming ``path``.

    The output has the input's geometry; it is uint8 when every mapped value fits, else int32
    (the writer then reports the values outside the task's labels).
    """
    arr = sitk.GetArrayViewFromImage(label)
    values = np.unique(arr).tolist()
    # Fractions, NaN and inf (float label images) are never in the mapping.
    unknown = [int(v) if float(v).is_integer() else float(v) for v in values
               if not (float(v).is_integer() and int(v) in mapping)]
    if unknown:
        raise InputDataError(
            f"{path}: unexpected label values {unknown}; this source maps only "
            f"{sorted(mapping)}. Fix the file or extend label_map in the config.")
    if not values:
        return sitk.Cast(label, sitk.sitkUInt8)
    # Look-up table over the occurring range (source values may be negative).
    low, high = int(values[0]), int(values[-1])
    targets = [mapping[int(v)] for v in values]
    lut = np.zeros(high - low + 1, dtype=np.uint8 if 0 <= min(targets) and max(targets) <= 255
                   else np.int32)
    for v, dst in zip(values, targets):
        lut[int(v) - low] = dst
    out = sitk.GetImageFromArray(lut[arr.astype(np.int64) - low])
    out.CopyInformation(label)
    return out


def kits23_source(path: str | os.PathLike[str], case_prefix: str = "") -> list[SourceCase]:
    """KiTS23 cases from ``path/case_XXXXX/{imaging,segmentation}.nii.gz`` (official layout).

    Labels: 0 background, 1 kidney, 2 tumor, 3 cyst. The returned cases carry reference labels
    only (``noisy`` is None): the task's boundary-noise step derives the noisy labels.
    """
    root = Path(path)
    _require_dir(root, "KiTS23 dataset")
    # Entries named case_* are cases or errors; the repository's other files (kits.json, ...)
    # and folders are not cases.
    case_dirs = []
    for entry in sorted(e for e in root.iterdir() if e.name.startswith("case_")):
        problem = _link_problem(entry)
        if problem is None and not entry.is_dir():
            problem = "not a case folder; remove it or replace it with the case's folder"
        if problem:
            raise InputDataError(f"{entry}: {problem}.")
        case_dirs.append(entry)
    if not case_dirs:
        raise InputDataError(f"{root}: no case_XXXXX folders found. Point the KiTS23 source at "
                             "the kits23 repository's dataset/ folder.")

    def loader(d: Path):
        def load() -> CaseData:
            img_p, seg_p = d / "imaging.nii.gz", d / "segmentation.nii.gz"
            return CaseData(image=read_image(img_p), reference=read_image(seg_p), noisy=None,
                            files={"image": str(img_p), "reference": str(seg_p)})
        return load

    return [SourceCase(case_id=f"{case_prefix}{d.name}", origin=str(d), load=loader(d))
            for d in case_dirs]


def mmwhs_source(path: str | os.PathLike[str], case_prefix: str = "mmwhs_",
                 label_map: Mapping[int, int] | None = None) -> list[SourceCase]:
    """MM-WHS CT cases from ``path/*_image.nii.gz`` with ``*_label.nii.gz`` beside each.

    Label values are mapped with :data:`MMWHS_LABEL_MAP` (or ``label_map``); the mapped labels are
    both the noisy and the reference labels of the task (their own inter-rater noise).
    """
    root = Path(path)
    _require_dir(root, "MM-WHS")
    entries = image_entries(root)
    for stem, entry in entries.items():
        if not entry.name.endswith(("_image.nii.gz", "_label.nii.gz")):
            raise InputDataError(f"{entry}: neither an *_image.nii.gz nor an *_label.nii.gz file; "
                                 "move it out of the MM-WHS folder.")
        if stem.endswith("_label") and f"{stem[: -len('_label')]}_image" not in entries:
            raise InputDataError(f"{entry}: label file without its image "
                                 f"{entry.name.replace('_label.nii.gz', '_image.nii.gz')}; add "
                                 "the image or remove the label file.")
    images = [e for stem, e in entries.items() if stem.endswith("_image")]
    if not images:
        raise InputDataError(f"{root}: no *_image.nii.gz files found. Point the MM-WHS source at "
                             "the ct_train folder (ct_train_1001_image.nii.gz, ...).")
    mapping = dict(label_map) if label_map is not None else MMWHS_LABEL_MAP

    def loader(img_p: Path):
        def load() -> CaseData:
            lab_p = img_p.with_name(img_p.name.replace("_image.nii.gz", "_label.nii.gz"))
            label = remap_labels(read_image(lab_p), mapping, str(lab_p))
            return CaseData(image=read_image(img_p), reference=label, noisy=label,
                            files={"image": str(img_p), "reference": str(lab_p),
                                   "noisy": str(lab_p)})
        return load

    return [SourceCase(case_id=f"{case_prefix}{img_p.name[: -len('_image.nii.gz')]}",
                       origin=str(img_p), load=loader(img_p)) for img_p in images]


def folder_source(path: str | os.PathLike[str], case_prefix: str = "",
                  label_map: Mapping[int, int] | None = None) -> list[SourceCase]:
    """Two-annotator folder: ``images/``, ``labels_noisy/``, ``labels_reference/``, one file per case.

    A case ``X`` is ``images/X.nii.gz`` (or ``X_0000.nii.gz``) with ``labels_noisy/X.nii.gz`` and
    ``labels_reference/X.nii.gz``; any of the suffixes in :data:`IMAGE_SUFFIXES` is accepted.
    ``label_map`` optionally maps the label values of both label files.
    """
    root = Path(path)
    _require_dir(root, "source")
    for sub in ("images", "labels_noisy", "labels_reference"):
        _require_dir(root / sub, f"'{sub}'")
    images = list(image_entries(root / "images").values())
    if not images:
        raise InputDataError(f"{root / 'images'}: no image files found "
                             f"(expected one of {', '.join(IMAGE_SUFFIXES)}).")
    case_ids = {_case_id(p) for p in images}
    label_files = {sub: image_entries(root / sub) for sub in ("labels_noisy", "labels_reference")}
    for files in label_files.values():
        for stem, entry in files.items():
            if stem not in case_ids:
                raise InputDataError(f"{entry}: label file of case '{stem}' without an image in "
                                     f"{root / 'images'}; add the image or remove the label file.")

    def find_label(folder: Path, case: str) -> Path:
        found = label_files[folder.name].get(case)
        if found is not None:
            return found
        raise InputDataError(f"{folder / (case + '.nii.gz')}: label file of case '{case}' not "
                             f"found. Every image in {root / 'images'} needs a label file here.")

    def loader(img_p: Path, case: str):
        def load() -> CaseData:
            noisy_p = find_label(root / "labels_noisy", case)
            ref_p = find_label(root / "labels_reference", case)
            noisy, ref = read_image(noisy_p), read_image(ref_p)
            if label_map is not None:
                noisy = remap_labels(noisy, label_map, str(noisy_p))
                ref = remap_labels(ref, label_map, str(ref_p))
            return CaseData(image=read_image(img_p), reference=ref, noisy=noisy,
                            files={"image": str(img_p), "reference": str(ref_p),
                                   "noisy": str(noisy_p)})
        return load

    return [SourceCase(case_id=f"{case_prefix}{_case_id(img_p)}", origin=str(img_p),
                       load=loader(img_p, _case_id(img_p))) for img_p in images]
