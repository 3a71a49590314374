"""Per-case evaluation: Dice, ASD and surface Dice per region of a case (:func:`evaluate_case`)
and of a folder of predictions against the reference labels (:func:`evaluate_folder`, the
evaluate stage). The surface distances come from :mod:`nnrobustloss.metrics.surface`.

Empty masks (:data:`nnrobustloss.metrics.registry.ONE_EMPTY_RULE`): both empty gives Dice 1 and
surface Dice 1 (ASD 0), as the KiTS23 evaluation; exactly one empty gives Dice 0, surface Dice 0
and, as ASD, the worst case: the diagonal of the image's field of view in mm
(:func:`worst_case_asd`), never NaN, so that a lost structure is never left out of an ASD mean.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, geometry_mismatch, read_image
from nnrobustloss.metrics.regions import (
    bbox,
    bbox_and_empty,
    check_inputs,
    label_counts,
    padded,
    region_mask,
    tolerance_for,
)
from nnrobustloss.metrics.registry import (
    METRICS_CSV_COLUMNS,
    SEGMENTATION_METRICS,
)
from nnrobustloss.metrics.surface import (
    LATTICE_OFFSETS,
    asd_and_surface_dice,
    offsets_within,
    surface_distances,
    surfel_area_table,
)

METRIC_NAMES: tuple[str, ...] = SEGMENTATION_METRICS
"""Metrics computed per region, in the order they are written to the tidy CSV
(:data:`nnrobustloss.metrics.registry.METRICS` holds their labels, units and directions)."""

CSV_COLUMNS: tuple[str, ...] = METRICS_CSV_COLUMNS
"""Columns of the tidy metrics CSV ``metrics/<Task>/<Method>/fold<k>.csv``."""

GEOMETRY_ATOL = 1e-4
"""Largest difference of spacing, origin and direction accepted between prediction and reference."""


def worst_case_asd(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The ASD (mm) of a region empty in exactly one of prediction and reference: the diagonal
    of the image's field of view, sqrt(sum_i (shape_i x spacing_i)^2), an upper bound of every
    surface distance inside the image (a 20 x 40 x 40 image of 2 x 1 x 1 mm: 69.3 mm)."""
    return float(np.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing,
                                                                          strict=True))))


def evaluate_case(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                  regions: Mapping[str, Sequence[int]],
                  tolerance_mm: float | Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Dice, ASD and surface Dice of one case, per region.

    pred, ref: integer label arrays of the same shape (z, y, x); spacing: voxel size in mm in
    the same axis order; regions: ``{name: [label values]}`` (a class is a region of one
    label); tolerance_mm: surface-Dice tolerance in mm, one number or ``{region: mm}``.

    Returns ``{region: {"dice", "asd", "surface_dice"}}`` as floats, regions in the given order:
    Dice and surface Dice in [0, 1], ASD in mm = (sum of gt->pred surfel distances x gt surfel
    areas + sum of pred->gt distances x pred areas) / (total gt + pred surfel area). Both masks
    empty: 1, 0, 1; exactly one empty: Dice 0, surface Dice 0 and ASD :func:`worst_case_asd`
    (never NaN). Equal to the surface-distance package (``compute_surface_distances``) up to
    floating-point rounding where both masks are non-empty.
    """
    return evaluate_case_flagged(pred, ref, spacing, regions, tolerance_mm)[0]


def evaluate_case_flagged(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                          regions: Mapping[str, Sequence[int]],
                          tolerance_mm: float | Mapping[str, float]
                          ) -> tuple[dict[str, dict[str, float]], set[str]]:
    """:func:`evaluate_case` and the set of regions whose values are the worst case (exactly one
    of prediction and reference empty)."""
    sp = check_inputs(pred, ref, spacing)
    spacing_arr = np.asarray(sp, dtype=np.float64)
    label_sets = {name: np.unique(np.asarray(list(vals), dtype=np.int64))
                  for name, vals in regions.items()}
    for name, vals in label_sets.items():
        if vals.size == 0:
            raise ConfigError(f"regions.{name}: empty list of label values. Give at least one.")

    # Every region made of non-zero labels lies inside the joint foreground box: crop once.
    if any((vals == 0).any() for vals in label_sets.values()):
        crop_pred, crop_ref = pred, ref
    else:
        box, empty = bbox_and_empty([pred, ref])
        if box is None:
            crop_pred = crop_ref = np.zeros((1, 1, 1), dtype=np.uint8)
        else:
            crop_pred, crop_ref = pred[box], ref[box]
            # an empty array needs no counting pass (an empty prediction is a common case)
            crop_pred = crop_pred if not empty[0] else np.zeros((1, 1, 1), dtype=np.uint8)
            crop_ref = crop_ref if not empty[1] else np.zeros((1, 1, 1), dtype=np.uint8)
    # Voxel counts per label decide the empty-mask cases without building any mask.
    values = np.unique(np.concatenate([np.zeros(0, np.int64), *label_sets.values()]))
    count_pred, count_ref = label_counts(crop_pred, values), label_counts(crop_ref, values)

    area_table: np.ndarray | None = None
    lattice: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    # Regions whose masks hold the same labels on both sides (e.g. Tumor+Cyst and Tumor of
    # a case without cysts) share Dice and surface distances; only the tolerance differs.
    done: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, tuple[np.ndarray, ...]]] = {}
    results: dict[str, dict[str, float]] = {}
    worst: set[str] = set()
    for name, vals in label_sets.items():
        tol = tolerance_for(name, tolerance_mm)
        in_pred = tuple(int(v) for v in vals if count_pred[int(v)])
        in_ref = tuple(int(v) for v in vals if count_ref[int(v)])
        if not in_pred and not in_ref:
            results[name] = {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
            continue
        if not in_pred or not in_ref:
            results[name] = {"dice": 0.0, "asd": worst_case_asd(pred.shape, sp),
                             "surface_dice": 0.0}
            worst.add(name)
            continue
        if (in_pred, in_ref) not in done:
            m_pred = region_mask(crop_pred, np.asarray(in_pred))
            m_ref = region_mask(crop_ref, np.asarray(in_ref))
            n_pred = sum(count_pred[v] for v in in_pred)
            n_ref = sum(count_ref[v] for v in in_ref)
            dice = 2.0 * np.count_nonzero(m_pred & m_ref) / (n_pred + n_ref)
            box = bbox([m_pred, m_ref])
            assert box is not None
            if area_table is None or lattice is None:
                area_table = surfel_area_table(sp)
                lattice = offsets_within(spacing_arr, LATTICE_OFFSETS)
            done[(in_pred, in_ref)] = dice, surface_distances(
                padded(m_ref[box]), padded(m_pred[box]), spacing_arr, area_table, lattice)
        dice, distances = done[(in_pred, in_ref)]
        asd, sdice = asd_and_surface_dice(*distances, tol)
        results[name] = {"dice": float(dice), "asd": asd, "surface_dice": sdice}
    return results, worst


def check_geometry(pred_path: Path, ref_path: Path, pred_img: sitk.Image,
                    ref_img: sitk.Image) -> None:
    """Raise InputDataError naming both files when size, spacing, origin or direction differ
    by more than :data:`GEOMETRY_ATOL` (absolute, every field)."""
    diff = geometry_mismatch(pred_img, ref_img, GEOMETRY_ATOL, rtol=0.0,
                             origin_atol=GEOMETRY_ATOL)
    if diff:
        raise InputDataError(
            f"{pred_path}: geometry differs from the reference {ref_path}: {diff}. The "
            "prediction must be on the reference image grid; re-run the predict stage for this "
            "case.")


def _evaluate_files(job: tuple[str, str, str, dict[str, list[int]], float | dict[str, float]]
                    ) -> tuple[str, tuple[dict[str, dict[str, float]], set[str]]]:
    """Worker: read a prediction/reference pair, check geometry, evaluate (picklable)."""
    case, pred_file, ref_file, regions, tolerance_mm = job
    pred_path, ref_path = Path(pred_file), Path(ref_file)
    pred_img, ref_img = read_image(pred_path), read_image(ref_path)
    check_geometry(pred_path, ref_path, pred_img, ref_img)
    pred = sitk.GetArrayFromImage(pred_img)
    ref = sitk.GetArrayFromImage(ref_img)
    for path, arr in ((pred_path, pred), (ref_path, ref)):
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.array_equal(arr, np.round(arr)):
                raise InputDataError(f"{path}: voxel values are not integer labels. "
                                     "Write label maps with integer values.")
            arr = arr.astype(np.int64)
        if path == pred_path:
            pred = arr
        else:
            ref = arr
    spacing = tuple(float(s) for s in ref_img.GetSpacing()[::-1])
    return case, evaluate_case_flagged(pred, ref, spacing, regions, tolerance_mm)


def evaluate_folder(pred_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str],
                    case_ids: Iterable[str], task: str, method: str, fold: int,
                    regions: Mapping[str, Sequence[int]],
                    tolerance_mm: float | Mapping[str, float],
                    out_csv: str | os.PathLike[str], n_workers: int = 1,
                    extra_rows: pd.DataFrame | None = None, replicate: int = 0) -> pd.DataFrame:
    """Evaluate the predictions of one fold against the reference labels; write the tidy CSV.

    Reads ``<pred_dir>/<case>.nii.gz`` and ``<reference_dir>/<case>.nii.gz`` for every case id,
    checks that both share size, spacing, origin and direction (within 1e-4), evaluates them
    with :func:`evaluate_case` (in ``n_workers`` processes when > 1, with a progress bar) and
    writes ``out_csv`` atomically with the columns :data:`CSV_COLUMNS` (metric in dice, asd,
    surface_dice; rows ordered by case, region, metric; ``replicate`` the given one;
    ``worst_case`` 1 on the rows of a region empty in exactly one mask; NaN as "NaN").
    ``extra_rows`` (the first seven columns, e.g. :func:`calibration_folder`'s metrics) are
    appended after these rows (``worst_case`` 0). A missing file or a geometry mismatch raises
    InputDataError naming the file(s).
    Returns the written table.
    """
    from tqdm import tqdm

    pred_dir, reference_dir = Path(pred_dir), Path(reference_dir)
    cases = [str(c) for c in case_ids]
    regions_plain = {str(k): [int(v) for v in vals] for k, vals in regions.items()}
    tol_plain: float | dict[str, float] = (
        {str(k): float(v) for k, v in tolerance_mm.items()}
        if isinstance(tolerance_mm, Mapping) else float(tolerance_mm))
    for name in regions_plain:  # fail on a bad tolerance before reading any image
        tolerance_for(name, tol_plain)
    jobs = []
    for case in cases:
        pred_file = pred_dir / f"{case}.nii.gz"
        ref_file = reference_dir / f"{case}.nii.gz"
        if not pred_file.is_file():
            raise InputDataError(f"{pred_file}: prediction not found for case {case} "
                                 f"({task}/{method}/fold{fold}). Run the predict stage first.")
        if not ref_file.is_file():
            raise InputDataError(f"{ref_file}: reference label not found for case {case}. "
                                 "Run the convert stage first.")
        jobs.append((case, str(pred_file), str(ref_file), regions_plain, tol_plain))

    desc = f"evaluate {task}/{method}/fold{fold}"
    results: dict[str, dict[str, dict[str, float]]] = {}
    if n_workers > 1 and len(jobs) > 1:
        # spawn: safe with the threads torch/tqdm may have started in this process
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(min(n_workers, len(jobs))) as pool:
            for case, res in tqdm(pool.imap_unordered(_evaluate_files, jobs), total=len(jobs),
                                  desc=desc, unit="case"):
                results[case] = res
    else:
        for job in tqdm(jobs, desc=desc, unit="case"):
            case, res = _evaluate_files(job)
            results[case] = res

    rows = [(task, method, int(fold), case, region, metric, values[metric], int(replicate),
             int(region in results[case][1]))
            for case in cases
            for region, values in results[case][0].items()
            for metric in METRIC_NAMES]
    df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
    if extra_rows is not None and len(extra_rows):
        extra = extra_rows[list(CSV_COLUMNS[:7])].assign(replicate=int(replicate), worst_case=0)
        df = pd.concat([df, extra], ignore_index=True)
    df["value"] = df["value"].astype(np.float64)
    with atomic_path(out_csv) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")
    return df
