"""Evaluation regions and the label-map helpers that the segmentation and the calibration
metrics share: a task's regions (:func:`build_regions`, KiTS23's hierarchical ones), the
surface-Dice tolerance of a region, the checks of a (pred, ref, spacing) triple, the joint
foreground box, the region masks and the per-label voxel counts. numpy only: the config
validation imports it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from nnrobustloss.errors import ConfigError, InputDataError

KITS23_REGIONS: dict[str, list[int]] = {
    "Kidney+Tumor+Cyst": [1, 2, 3],
    "Tumor+Cyst": [2, 3],
    "Tumor": [2],
}
"""The hierarchical evaluation regions of KiTS23 (label 1 kidney, 2 tumor, 3 cyst)."""

KITS23_TOLERANCES_MM: dict[str, float] = {
    "Kidney+Tumor+Cyst": 1.0331,
    "Tumor+Cyst": 1.1329,
    "Tumor": 1.1498,
}
"""Surface-Dice tolerances (mm) of the official KiTS23 evaluation, per region."""


def build_regions(labels: Mapping[str, int],
                  extra_regions: Mapping[str, Sequence[int]] | None = None) -> dict[str, list[int]]:
    """Return the evaluation regions of a task: one per foreground class, then the extra ones.

    ``labels`` is the task's ``{class name: label value}`` (as in ``dataset.json``); value 0 is
    the background and gets no region. ``extra_regions`` are hierarchical regions
    ``{name: [label values]}`` (e.g. :data:`KITS23_REGIONS`). The result keeps that order:
    ``{class: [value], ..., extra: [values], ...}``. A name used twice raises ConfigError.
    """
    regions: dict[str, list[int]] = {}
    for name, value in labels.items():
        if int(value) != 0:
            regions[str(name)] = [int(value)]
    for name, values in (extra_regions or {}).items():
        if name in regions:
            raise ConfigError(f"regions.{name}: the name is already used by a class of the task's "
                              "labels. Rename the extra region.")
        vals = [int(v) for v in values]
        if not vals:
            raise ConfigError(f"regions.{name}: empty list of label values. Give at least one.")
        regions[str(name)] = vals
    return regions


def tolerance_for(region: str, tolerance_mm: float | Mapping[str, float]) -> float:
    """Surface-Dice tolerance (mm) of ``region``: the number itself, or the region's entry.

    A mapping may hold a ``"default"`` entry used for regions it does not name; a region with
    neither raises ConfigError.
    """
    if isinstance(tolerance_mm, Mapping):
        if region in tolerance_mm:
            value = tolerance_mm[region]
        elif "default" in tolerance_mm:
            value = tolerance_mm["default"]
        else:
            raise ConfigError(f"tolerance_mm: no tolerance for region '{region}'. Add "
                              f"'{region}: <mm>' (or 'default: <mm>') to the task's tolerance_mm.")
    else:
        value = tolerance_mm
    value = float(value)
    if not value >= 0:
        raise ConfigError(f"tolerance_mm: {value} for region '{region}' must be a number "
                          ">= 0 (mm).")
    return value


def check_inputs(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
    """Validate array shapes/dtypes and the spacing; return the spacing as floats."""
    if pred.shape != ref.shape:
        raise InputDataError(f"prediction shape {pred.shape} differs from reference shape "
                             f"{ref.shape}. Resample the prediction to the reference grid.")
    if pred.ndim != 3:
        raise InputDataError(f"label arrays must be 3D (z, y, x), got {pred.ndim}D.")
    for name, arr in (("prediction", pred), ("reference", ref)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise InputDataError(f"{name} labels have dtype {arr.dtype}; integer labels expected.")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise InputDataError(f"spacing {tuple(spacing)} must be three positive numbers "
                             "(mm, z y x).")
    return sp


def bbox(mask_or_labels: Sequence[np.ndarray]) -> tuple[slice, ...] | None:
    """Joint bounding box (slices) of the non-zero voxels of 3D arrays, None if all are zero."""
    return bbox_and_empty(mask_or_labels)[0]


def bbox_and_empty(arrays: Sequence[np.ndarray]) -> tuple[tuple[slice, ...] | None, list[bool]]:
    """:func:`bbox` and, per array, whether it has no non-zero voxel (from the same pass)."""
    # Project along z first: one pass over each array, then the small (y, x) map. An OR
    # reduction is 1.5x faster than .any() on uint8 labels (no cast to bool).
    projs = [np.bitwise_or.reduce(a, axis=0) if a.dtype != bool else a.any(axis=0)
             for a in arrays]
    empty = [not p.any() for p in projs]
    if all(empty):
        return None, empty
    proj = np.logical_or.reduce([p != 0 for p in projs])
    ys = np.flatnonzero(proj.any(axis=1))
    xs = np.flatnonzero(proj.any(axis=0))
    ysl, xsl = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
    zproj = np.logical_or.reduce([a[:, ysl, xsl].any(axis=(1, 2))
                                  for a, e in zip(arrays, empty, strict=True) if not e])
    zs = np.flatnonzero(zproj)
    return (slice(zs[0], zs[-1] + 1), ysl, xsl), empty


def region_mask(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask of the voxels whose label is one of ``values`` (unique integers)."""
    if values.size == 1:
        return labels == values[0]
    lo, hi = int(values.min()), int(values.max())
    if (labels.dtype.kind in "iu" and hi - lo + 1 == values.size
            and np.iinfo(labels.dtype).min <= lo and hi <= np.iinfo(labels.dtype).max):
        # a run of consecutive labels: one subtraction and one comparison in unsigned
        # arithmetic (labels below lo wrap to large values), 5x faster than a lookup table
        unsigned = np.dtype(f"u{labels.dtype.itemsize}")
        shifted = labels.view(unsigned) - np.asarray(lo).astype(labels.dtype).view(unsigned)
        return shifted <= np.asarray(hi - lo, dtype=unsigned)
    if labels.dtype in (np.uint8, np.uint16):
        # a lookup table is several times faster than np.isin for small unsigned labels
        lut = np.zeros(65536 if labels.dtype == np.uint16 else 256, dtype=bool)
        lut[values[(values >= 0) & (values < lut.size)]] = True
        return lut[labels]
    return np.isin(labels, values)


def padded(mask: np.ndarray) -> np.ndarray:
    """The mask with one empty voxel added on every side (bool copy)."""
    out = np.zeros(tuple(s + 2 for s in mask.shape), dtype=bool)
    out[1:-1, 1:-1, 1:-1] = mask
    return out


def label_counts(labels: np.ndarray, values: np.ndarray) -> dict[int, int]:
    """``{value: voxel count}`` of the given label values (unique integers) in an integer array."""
    if values.size <= 8:
        # one comparison pass per value: 5-8x faster than np.bincount (which casts the labels
        # to intp) for the few labels of a region definition
        return {int(v): int(np.count_nonzero(labels == v)) for v in values}
    flat = labels.reshape(-1)
    if flat.dtype in (np.uint8, np.uint16, np.bool_):
        counts = np.bincount(flat.view(np.uint8) if flat.dtype == np.bool_ else flat)
        return {int(v): int(counts[v]) if 0 <= v < counts.size else 0 for v in values}
    present, counts = np.unique(flat, return_counts=True)
    found = dict(zip(present.tolist(), counts.tolist(), strict=True))
    return {int(v): found.get(int(v), 0) for v in values}
