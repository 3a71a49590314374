"""Segmentation metrics: Dice, average symmetric surface distance (ASD) and surface Dice.

The numbers are those of the surface-distance package (DeepMind, Nikolov et al. 2021) that the
KiTS23 evaluation uses: surface elements ("surfels") sit on the corner lattice of the voxel grid,
one per 2x2x2 neighbourhood that is neither empty nor full, with the marching-cubes area of
surface-distance's lookup table; the distance of a surfel is the Euclidean distance (in mm) to
the nearest surfel of the other surface. The computation is organised for speed:

- the label maps are cropped once to the joint foreground bounding box (every region is a set
  of non-zero labels, so nothing outside it matters) and each region again to its own box;
- the crop is padded by one empty voxel on every side, which reproduces surface-distance's
  zero padding, so objects touching the volume border get the same closed surface;
- nearest surfels come from a lattice search (offsets nearest first, the first hit is exact);
  after its first 15 offsets a block test sends the surfels with no target surfel within its
  reach (speckle far from the other surface) straight to the fallback, which is, as a fitted
  cost model finds cheaper, either per slice of the target along one axis scipy's 2D feature
  transform, the minimum over the slices giving the nearest surfel (cheap along a thick-slice
  axis), or a KD-tree over the target's surfels; distances are computed from the integer
  lattice offset exactly as ``scipy.ndimage.distance_transform_edt`` does, so thresholds at
  the tolerance agree too;
- label counts decide the empty-mask cases before any mask is built, and regions holding the
  same labels on both sides (Tumor+Cyst and Tumor of a case without cysts) share their
  surface distances.

Measured (benchmarks/results/metrics.txt, 12 real KiTS23 cases, CPU time): 6.5-20.5x faster
than the official-style evaluation in total per kind of prediction and slice group (lowest:
boundary errors on thick slices 6.5x; scattered wrong voxels 7.6x thick, 7.9x thin).

Empty masks (:data:`nnrobustloss.metric_registry.ONE_EMPTY_RULE`): both empty gives Dice 1 and
surface Dice 1 (ASD 0), as the KiTS23 evaluation; exactly one empty gives Dice 0, surface Dice 0
and, as ASD, the worst case: the diagonal of the image's field of view in mm
(:func:`worst_case_asd`), never NaN, so that a lost structure is never left out of an ASD mean.

Calibration (:func:`ece`, :func:`mce`, :func:`brier`, :func:`nll`, per case
:func:`calibration_statistics`): one-vs-rest per region against the reference labels, i.e.
confidence = the softmax probability of the region (sum over its labels), correct = the voxel
belongs to the region in the reference; within a band of ``band_mm`` mm around the reference and
the predicted region (:func:`calibration_band`), and over all voxels (metric names ``*_all``).
The predict stage stores a case's sufficient statistics (per-bin counts and sums, Brier and NLL
sums; :class:`CalibrationStats`, a few kB), the evaluate stage turns them into metric rows and
the fold's reliability bins (:func:`calibration_folder`).
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.ndimage import distance_transform_edt
from scipy.spatial import cKDTree
from surface_distance import lookup_tables

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, geometry_mismatch, read_image
from nnrobustloss.metric_registry import (
    CALIBRATION_METRIC_NAMES,
    METRICS_CSV_COLUMNS,
    SEGMENTATION_METRICS,
    VOXEL_SETS,
    calibration_name,
)

METRIC_NAMES: tuple[str, ...] = SEGMENTATION_METRICS
"""Metrics computed per region, in the order they are written to the tidy CSV
(:data:`nnrobustloss.metric_registry.METRICS` holds their labels, units and directions)."""

CSV_COLUMNS: tuple[str, ...] = METRICS_CSV_COLUMNS
"""Columns of the tidy metrics CSV ``metrics/<Task>/<Method>/fold<k>.csv``."""

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

GEOMETRY_ATOL = 1e-4
"""Largest difference of spacing, origin and direction accepted between prediction and reference."""

def _padded_normals() -> np.ndarray:
    """surface-distance's marching-cubes normals per neighbourhood code, zero-padded (256, K, 3)."""
    table = lookup_tables._NEIGHBOUR_CODE_TO_NORMALS
    out = np.zeros((256, max(len(n) for n in table), 3))
    for code, normals in enumerate(table):
        out[code, :len(normals)] = normals
    return out


_NORMALS = _padded_normals()


def _area_table(spacing: Sequence[float]) -> np.ndarray:
    """Surfel area (mm^2) per neighbourhood code: surface-distance's
    ``create_table_neighbour_code_to_surface_area`` vectorised (its Python loop over 256 codes
    took 3-10 ms per case, a tenth of a small thick-slice case) with the same floating-point
    operations, so the table is bit-identical: the normal scaled as ``(n * s_a) * s_b``, its
    length as ``sqrt(n . n)`` (``n @ n`` per normal reaches the same dot product as
    ``np.linalg.norm``), the areas of a code summed in order."""
    s0, s1, s2 = (float(s) for s in spacing)
    n = (_NORMALS * np.array([s1, s0, s0])) * np.array([s2, s2, s1])
    lengths = np.sqrt((n[..., None, :] @ n[..., :, None])[..., 0, 0])
    out = np.zeros(len(n))
    for k in range(lengths.shape[1]):  # zero padding adds exactly nothing
        out += lengths[:, k]
    return out


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


def _check_inputs(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
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


def _bbox(mask_or_labels: Sequence[np.ndarray]) -> tuple[slice, ...] | None:
    """Joint bounding box (slices) of the non-zero voxels of 3D arrays, None if all are zero."""
    return _bbox_and_empty(mask_or_labels)[0]


def _bbox_and_empty(arrays: Sequence[np.ndarray]) -> tuple[tuple[slice, ...] | None, list[bool]]:
    """:func:`_bbox` and, per array, whether it has no non-zero voxel (from the same pass)."""
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


def _surfels(mask: np.ndarray, area_table: np.ndarray, margin: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surfels of a mask padded by one empty voxel on every side.

    Returns the border map on the corner lattice (shape = mask shape - 1) with ``margin[i]``
    empty lattice points added at both ends of axis i (bool; the lattice search reads offsets
    up to the margin away without leaving the array), the flat indices of the surfels into it
    (ascending, i.e. C order) and their areas (N,) in mm^2.
    """
    m = mask.view(np.uint8)
    n = [s - 1 for s in m.shape]
    h = [int(v) for v in margin]
    code = np.zeros(tuple(a + 2 * b for a, b in zip(n, h, strict=True)), dtype=np.uint8)
    inner = code[h[0]:h[0] + n[0], h[1]:h[1] + n[1], h[2]:h[2] + n[2]]
    # surface-distance's neighbourhood code (kernel weight 2^(7 - 4 kz - 2 ky - kx) for corner
    # (kz, ky, kx) of the 2x2x2 cell) built axis by axis: 6 passes instead of 16
    x = m[:, :, :-1] << 1
    x |= m[:, :, 1:]
    y = x[:, :-1] << 2
    y |= x[:, 1:]
    np.left_shift(y[:-1], 4, out=inner)
    inner |= y[1:]
    border = (code - np.uint8(1)) < np.uint8(254)  # neither empty (0) nor full (255); wraps
    # flat indices: 5-10x cheaper than np.nonzero's three index arrays and their gathers
    lin = np.flatnonzero(border)
    return border, lin, area_table[code.ravel()[lin]]


def _coords(lin: np.ndarray, shape: Sequence[int], margin: np.ndarray) -> np.ndarray:
    """Lattice coordinates (N, 3) int64 of flat indices into a border map of ``shape`` that has
    ``margin`` points added at both ends of every axis (see :func:`_surfels`), margin removed."""
    z, rest = np.divmod(lin.astype(np.int64, copy=False), int(shape[1]) * int(shape[2]))
    y, x = np.divmod(rest, int(shape[2]))
    return np.stack([z, y, x], axis=1) - margin


def _offsets_within(spacing: np.ndarray, n_target: int = 400
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice offsets within a radius of the origin, sorted by their physical distance.

    The radius (mm) is chosen so that about ``n_target`` offsets lie inside it, but at least
    the smallest spacing. Returns (offsets (M, 3) int, distances (M,) mm, half-widths (3,) int);
    distances are computed as scipy's distance transform does (offset * spacing, squared,
    summed over axes in order, sqrt) so that they are bit-identical to surface-distance's.
    """
    radius = max(float(np.cbrt(n_target * 3.0 * np.prod(spacing) / (4.0 * np.pi))),
                 float(spacing.min()))
    half = np.floor(radius / spacing).astype(np.int64)
    grids = np.meshgrid(*(np.arange(-h, h + 1) for h in half), indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    dist = _lattice_distance(offsets, spacing)
    inside = dist <= radius
    order = np.argsort(dist[inside], kind="stable")
    return offsets[inside][order], dist[inside][order], half


def _lattice_distance(delta: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Euclidean length (mm) of integer lattice offsets (N, 3), as scipy's EDT computes it."""
    d = delta.astype(np.float64) * spacing
    np.multiply(d, d, out=d)
    return np.sqrt(np.add.reduce(d, axis=1))


LATTICE_OFFSETS = 400
"""About how many lattice offsets the nearest-surfel search tries before its fallback."""

LATTICE_FIRST = 15
"""Offsets tried on every point before the block test (the first four chunks, 1 + 2 + 4 + 8):
the surfels of a realistic prediction are nearly all resolved within them."""

# Cost model of the far-point fallback (:func:`_far_plan`), CPU ns, fitted on the far points
# of real KiTS23 labels (scattered, boundary and extra predictions; median error 15-20 %).
SLICE_NS_PER_PIXEL = 20.0
"""Per plane pixel and slice of :func:`_distances_by_slices` (2D feature transform etc.)."""
SLICE_NS_PER_POINT = 6.0
"""Per point and slice of :func:`_distances_by_slices`."""
SLICE_NS_PER_SLICE = 9000.0
"""Per slice of :func:`_distances_by_slices` (calls)."""
KD_NS_PER_TARGET = 90.0
"""Per target surfel: building the KD-tree."""

SLICE_MAX_PIXELS = 1 << 26
"""Most plane pixels over all slices in :func:`_distances_by_slices` (4 bytes each are kept)."""

_ROW_BLOCK = 1 << 15  # points per block of the chunked lattice search (bounds its memory)


def _lattice_search(lin: np.ndarray, flat: np.ndarray, off_lin: np.ndarray,
                    off_dist: np.ndarray, dist: np.ndarray, todo: np.ndarray,
                    first_chunk: int = 1) -> np.ndarray:
    """Resolve points by trying lattice offsets nearest first; return the unresolved ones.

    ``lin`` are the points' linear indices into ``flat`` (the target border with its margin),
    ``todo`` their positions in ``dist``, which receives the distance of every resolved point.
    Offsets are tried in chunks of doubling size from ``first_chunk`` (one 2D gather per chunk
    instead of one Python-level pass per offset): within a chunk the first hit is the nearest,
    as earlier chunks (and earlier calls with the offsets before ``off_lin``) missed.
    """
    left = []
    for b in range(0, lin.size, _ROW_BLOCK):
        blin, btodo = lin[b:b + _ROW_BLOCK], todo[b:b + _ROW_BLOCK]
        k, size = 0, first_chunk
        while k < off_lin.size and btodo.size:
            hits = flat[blin[:, None] + off_lin[None, k:k + size]]
            first = hits.argmax(axis=1)
            found = hits[np.arange(first.size), first]
            dist[btodo[found]] = off_dist[k + first[found]]
            miss = ~found
            blin, btodo = blin[miss], btodo[miss]
            k, size = k + size, min(2 * size, 64)
        left.append(btodo)
    return np.concatenate(left) if left else todo


def _near_blocks(points: np.ndarray, target_points: np.ndarray, half: np.ndarray,
                 shape: Sequence[int]) -> np.ndarray:
    """Whether each lattice point (N, 3) may have a target surfel within ``half`` lattice steps
    per axis (bool (N,)); False is certain. Blocks of ``half`` steps per axis that hold a target
    surfel, grown by one block: a point within the offsets of the lattice search lies in one."""
    b = np.maximum(half, 1)
    occupied = np.zeros(tuple(int(n) for n in np.asarray(shape) // b + 3), dtype=bool)
    tb = target_points // b + 1
    occupied[tb[:, 0], tb[:, 1], tb[:, 2]] = True
    for axis in range(3):  # a 3x3x3 dilation as three 1D passes (separable)
        src = occupied.copy()
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        occupied[tuple(lo)] |= src[tuple(hi)]
        occupied[tuple(hi)] |= src[tuple(lo)]
    pb = points // b + 1
    return occupied[pb[:, 0], pb[:, 1], pb[:, 2]]


def _joint_box(points: np.ndarray, target_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box (lo, hi exclusive) of two non-empty sets of lattice points (N, 3)."""
    lo = np.minimum(points.min(axis=0), target_points.min(axis=0))
    hi = np.maximum(points.max(axis=0), target_points.max(axis=0)) + 1
    return lo, hi


def _kd_ns(n_points: int, n_targets: int) -> float:
    """Cost model (CPU ns) of a KD-tree over ``n_targets`` surfels queried from ``n_points``
    points far from them: the build, then 0.4 us per query at 1e3 targets, 1.9 us at 1e5."""
    return (KD_NS_PER_TARGET * n_targets
            + n_points * max(300.0, 320.0 * math.log(max(n_targets, 1)) - 1800.0))


def _far_plan(points: np.ndarray, target_points: np.ndarray) -> int:
    """The cheapest exact method for distances from ``points`` (N, 3) to the target surfels by
    the cost model (:func:`_kd_ns`, :data:`SLICE_NS_PER_PIXEL` etc.): the axis (0-2) of
    :func:`_distances_by_slices`, or -1 for the KD-tree."""
    lo, hi = _joint_box(points, target_points)
    size = hi - lo
    best, best_ns = -1, _kd_ns(len(points), len(target_points))
    for axis in range(3):
        n_slices = int(np.count_nonzero(np.bincount(target_points[:, axis] - lo[axis])))
        pixels = n_slices * int(np.prod(size)) // int(size[axis])
        ns = (pixels * SLICE_NS_PER_PIXEL
              + n_slices * (len(points) * SLICE_NS_PER_POINT + SLICE_NS_PER_SLICE))
        if pixels <= SLICE_MAX_PIXELS and ns < best_ns:
            best, best_ns = axis, ns
    return best


def _distances_by_slices(points: np.ndarray, target_border: np.ndarray,
                         target_points: np.ndarray, margin: np.ndarray, spacing: np.ndarray,
                         axis: int) -> np.ndarray:
    """Exact distance (mm) from lattice points (N, 3) to the nearest target surfel, slice by
    slice along ``axis``: the squared distance to the nearest surfel of a slice is the squared
    distance between the slices plus the squared in-plane distance, which scipy's 2D feature
    transform of the slice gives for every point of the plane; the minimum over the slices
    that hold target surfels is the nearest surfel. The plane is the joint box of the points
    and the target surfels (which has every surfel that can be nearest). The chosen surfel's
    integer offset is turned into the distance as scipy's distance transform does.

    Costs (slices with surfels) x (plane + points) instead of the whole box (3D feature
    transform) or a KD-tree query per point: much the cheapest along a thick-slice axis.
    """
    lo, hi = _joint_box(points, target_points)
    b, c = (i for i in range(3) if i != axis)
    nb, nc = int(hi[b] - lo[b]), int(hi[c] - lo[c])
    slices = np.flatnonzero(np.bincount(target_points[:, axis] - lo[axis])) + lo[axis]
    plane = tuple(slice(int(lo[i] + margin[i]), int(hi[i] + margin[i])) for i in (b, c))
    box = [slice(None)] * 3
    pa = points[:, axis]
    pb, pc = points[:, b] - lo[b], points[:, c] - lo[c]
    at = pb * nc + pc
    ib = np.arange(nb, dtype=np.int32)[:, None]
    ic = np.arange(nc, dtype=np.int32)[None, :]
    feature = np.empty((2, nb, nc), dtype=np.int32)
    nearest_in = np.empty((slices.size, nb * nc), dtype=np.int32)  # flat in-plane feature
    best = np.full(len(points), np.inf)
    best_k = np.zeros(len(points), dtype=np.intp)
    better = np.empty(len(points), dtype=bool)
    for k, s in enumerate(slices):
        box[axis], box[b], box[c] = int(s + margin[axis]), plane[0], plane[1]
        distance_transform_edt(~target_border[tuple(box)], sampling=(spacing[b], spacing[c]),
                               return_distances=False, return_indices=True, indices=feature)
        g = (feature[0] - ib) * spacing[b]
        g *= g
        h = (feature[1] - ic) * spacing[c]
        h *= h
        g += h
        np.multiply(feature[0], nc, out=nearest_in[k].reshape(nb, nc))
        nearest_in[k] += feature[1].ravel()
        d = (pa - s) * spacing[axis]
        d *= d
        d += g.ravel()[at]
        np.less(d, best, out=better)
        np.copyto(best, d, where=better)
        np.copyto(best_k, k, where=better)
    flat = nearest_in[best_k, at]
    delta = np.empty_like(points)
    delta[:, axis] = slices[best_k] - pa
    delta[:, b] = flat // nc - pb
    delta[:, c] = flat % nc - pc
    return _lattice_distance(delta, spacing)


def _far_distances(points: np.ndarray, target_border: np.ndarray, target_points: np.ndarray,
                   margin: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Exact distance (mm) from lattice points (N, 3) to the nearest target surfel, for points
    the lattice search left: :func:`_distances_by_slices` over the target border (which has
    ``margin`` points added on every side) or a KD-tree over the target surfels, whichever
    :func:`_far_plan` finds cheaper. Both give the nearest surfel's integer offset, whose
    length is computed as scipy's distance transform computes it."""
    axis = _far_plan(points, target_points)
    if axis >= 0:
        return _distances_by_slices(points, target_border, target_points, margin, spacing, axis)
    tree = cKDTree(target_points * spacing, leafsize=64, balanced_tree=False,
                   compact_nodes=False)
    _, nearest = tree.query(points * spacing, k=1)
    return _lattice_distance(target_points[nearest] - points, spacing)


def _nearest_distances(lin: np.ndarray, target_border: np.ndarray, target_lin: np.ndarray,
                       spacing: np.ndarray,
                       lattice: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Distance (mm) from each surfel to the nearest surfel of the target surface.

    ``lin``, ``target_lin``: flat indices of the surfels and of the target surfels into
    ``target_border`` (the target's border map with the lattice search's margin, as
    :func:`_surfels` returns them); ``lattice``: :func:`_offsets_within`'s offsets, distances
    and half-widths (the margin).

    First a lattice search: the offsets within a small radius are tried in order of increasing
    distance, so the first hit is the exact nearest surfel (anything outside the radius is
    farther). Most surfels of a realistic prediction are resolved within the first few offsets.
    Of the rest, those in no block next to a block with target surfels (:func:`_near_blocks`;
    e.g. speckle far from a compact target) are certainly farther; when the feature transform
    is the cheaper fallback for them, it takes every unresolved point, else the near ones go on
    with the remaining offsets and what is left goes to the KD-tree (:func:`_far_distances`).
    All paths give the numbers of scipy's distance transform (that surface-distance uses).
    """
    offsets, off_dist, half = lattice
    dist = np.empty(lin.size)
    if lin.size == 0:
        return dist
    flat = target_border.ravel()
    shape = target_border.shape
    # int32 linear indices halve the memory traffic of the gathers below
    itype = np.int32 if flat.size < 2**31 - 1 else np.int64
    off_lin = (offsets @ np.array([shape[1] * shape[2], shape[2], 1])).astype(itype)
    lin = lin.astype(itype)
    k = min(LATTICE_FIRST, off_lin.size)
    todo = _lattice_search(lin, flat, off_lin[:k], off_dist[:k], dist, np.arange(lin.size))
    if todo.size == 0:
        return dist
    target_points = _coords(target_lin, shape, half)
    if k < off_lin.size:
        points = _coords(lin[todo], shape, half)
        near = _near_blocks(points, target_points, half, np.asarray(shape) - 2 * half)
        # the slice method costs little per extra point: then it takes the near ones too
        if near.all() or _far_plan(points[~near], target_points) < 0:
            left = _lattice_search(lin[todo[near]], flat, off_lin[k:], off_dist[k:], dist,
                                   todo[near], first_chunk=16)
            todo = np.concatenate([todo[~near], left])
    if todo.size:
        dist[todo] = _far_distances(_coords(lin[todo], shape, half), target_border,
                                    target_points, half, spacing)
    return dist


def _surface_distances(mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: np.ndarray,
                       area_table: np.ndarray,
                       lattice: tuple[np.ndarray, np.ndarray, np.ndarray]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """surface-distance's ``compute_surface_distances`` for two non-empty masks padded by one
    empty voxel: (gt->pred distances, gt surfel areas, pred->gt distances, pred areas)."""
    margin = lattice[2]
    border_gt, lin_gt, area_gt = _surfels(mask_gt, area_table, margin)
    border_pr, lin_pr, area_pr = _surfels(mask_pred, area_table, margin)
    d_gt = _nearest_distances(lin_gt, border_pr, lin_pr, spacing, lattice)
    d_pr = _nearest_distances(lin_pr, border_gt, lin_gt, spacing, lattice)
    return d_gt, area_gt, d_pr, area_pr


def _asd_and_surface_dice(d_gt: np.ndarray, area_gt: np.ndarray, d_pr: np.ndarray,
                          area_pr: np.ndarray, tolerance: float) -> tuple[float, float]:
    """ASD (mm) and surface Dice at ``tolerance`` (mm) from :func:`_surface_distances`."""
    total = area_gt.sum() + area_pr.sum()
    # not np.dot: OpenBLAS threads it, and its idle worker then spins for milliseconds of CPU
    asd = ((d_gt * area_gt).sum() + (d_pr * area_pr).sum()) / total
    sdice = (area_gt[d_gt <= tolerance].sum() + area_pr[d_pr <= tolerance].sum()) / total
    return float(asd), float(sdice)


def _region_mask(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
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


def _padded(mask: np.ndarray) -> np.ndarray:
    """The mask with one empty voxel added on every side (bool copy)."""
    out = np.zeros(tuple(s + 2 for s in mask.shape), dtype=bool)
    out[1:-1, 1:-1, 1:-1] = mask
    return out


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
    sp = _check_inputs(pred, ref, spacing)
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
        box, empty = _bbox_and_empty([pred, ref])
        if box is None:
            crop_pred = crop_ref = np.zeros((1, 1, 1), dtype=np.uint8)
        else:
            crop_pred, crop_ref = pred[box], ref[box]
            # an empty array needs no counting pass (an empty prediction is a common case)
            crop_pred = crop_pred if not empty[0] else np.zeros((1, 1, 1), dtype=np.uint8)
            crop_ref = crop_ref if not empty[1] else np.zeros((1, 1, 1), dtype=np.uint8)
    # Voxel counts per label decide the empty-mask cases without building any mask.
    values = np.unique(np.concatenate([np.zeros(0, np.int64), *label_sets.values()]))
    count_pred, count_ref = _label_counts(crop_pred, values), _label_counts(crop_ref, values)

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
            m_pred = _region_mask(crop_pred, np.asarray(in_pred))
            m_ref = _region_mask(crop_ref, np.asarray(in_ref))
            n_pred = sum(count_pred[v] for v in in_pred)
            n_ref = sum(count_ref[v] for v in in_ref)
            dice = 2.0 * np.count_nonzero(m_pred & m_ref) / (n_pred + n_ref)
            box = _bbox([m_pred, m_ref])
            assert box is not None
            if area_table is None or lattice is None:
                area_table = _area_table(sp)
                lattice = _offsets_within(spacing_arr, LATTICE_OFFSETS)
            done[(in_pred, in_ref)] = dice, _surface_distances(
                _padded(m_ref[box]), _padded(m_pred[box]), spacing_arr, area_table, lattice)
        dice, distances = done[(in_pred, in_ref)]
        asd, sdice = _asd_and_surface_dice(*distances, tol)
        results[name] = {"dice": float(dice), "asd": asd, "surface_dice": sdice}
    return results, worst


def _label_counts(labels: np.ndarray, values: np.ndarray) -> dict[int, int]:
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


def _check_geometry(pred_path: Path, ref_path: Path, pred_img: sitk.Image,
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
    _check_geometry(pred_path, ref_path, pred_img, ref_img)
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


# --------------------------------------------------------------------------------------------
# calibration

DEFAULT_BINS = 15
"""Equal-width confidence bins of ECE, MCE and the reliability diagrams."""

DEFAULT_BAND_MM = 5.0
"""Half-width (mm) of the band around the reference and predicted region."""

NLL_EPS = 1e-7
"""Probabilities are clipped to [eps, 1 - eps] in the NLL (float32's resolution near 1)."""

CALIBRATION_SUFFIX = "_calibration.npz"
"""File name ending of a case's calibration statistics next to its prediction."""

RELIABILITY_COLUMNS: tuple[str, ...] = (
    "task", "method", "fold", "region", "voxels", "band_mm", "bin", "lower", "upper", "count",
    "confidence_sum", "correct_sum")
"""Columns of ``metrics/<Task>/<Method>/fold<k>_reliability.csv``: per region, voxel set
(``band``/``all``) and confidence bin [lower, upper), the voxel count, the sum of confidences and
the number of voxels of the region in the reference, summed over the fold's cases."""

_CHUNK = 1 << 22  # voxels per accumulation step (bounds the float64 temporaries)


def calibration_metric_names() -> list[str]:
    """Metric names of the calibration rows, in CSV order: band first, then ``<name>_all``."""
    return list(CALIBRATION_METRIC_NAMES)


def _check_calibration_inputs(confidence: np.ndarray, correct: np.ndarray, n_bins: int
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Flattened confidence and correctness; InputDataError when their shapes differ,
    ConfigError for a bin count that is not a positive integer."""
    c, y = np.asarray(confidence), np.asarray(correct)
    if c.shape != y.shape:
        raise InputDataError(f"confidence shape {c.shape} differs from correctness shape "
                             f"{y.shape}; give one value of each per voxel.")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"calibration bins: {n_bins} must be a positive integer.")
    return c.reshape(-1), y.reshape(-1)


def _calibration_sums(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS,
                      eps: float = NLL_EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float,
                                                     float]:
    """Sufficient statistics of ECE, MCE, Brier and NLL over the given voxels.

    Returns (counts[n_bins] int64, confidence_sum[n_bins], correct_sum[n_bins], squared-error
    sum, NLL sum), bin b = min(floor(c * n_bins), n_bins - 1), i.e. [b/B, (b+1)/B) with the last
    bin closed. Works in chunks of float64 so that a whole CT volume fits in memory.
    """
    c_all, y_all = _check_calibration_inputs(confidence, correct, n_bins)
    counts = np.zeros(n_bins, dtype=np.int64)
    conf_sum = np.zeros(n_bins)
    corr_sum = np.zeros(n_bins)
    sq, nll_total = 0.0, 0.0
    for start in range(0, c_all.size, _CHUNK):
        c = c_all[start:start + _CHUNK].astype(np.float64)
        y = y_all[start:start + _CHUNK]
        if y.dtype != bool:
            if not np.all((y == 0) | (y == 1)):
                raise InputDataError("correctness values must be 0 or 1 (or booleans).")
            y = y.astype(bool)
        lo, hi = c.min(), c.max()
        if not (lo >= -1e-5 and hi <= 1 + 1e-5):  # also catches NaN
            bad = c[~((c >= -1e-5) & (c <= 1 + 1e-5))][0]
            raise InputDataError(f"confidence value {bad} is not a probability in [0, 1].")
        if lo < 0 or hi > 1:
            np.clip(c, 0.0, 1.0, out=c)
        b = (c * n_bins).astype(np.intp)
        np.minimum(b, n_bins - 1, out=b)
        counts += np.bincount(b, minlength=n_bins)
        conf_sum += np.bincount(b, weights=c, minlength=n_bins)
        corr_sum += np.bincount(b[y], minlength=n_bins)
        c_true = c[y]
        # sum (c - y)^2 = sum c^2 - 2 sum_{y=1} c + #{y=1}
        sq += float(np.dot(c, c)) - 2.0 * float(c_true.sum()) + c_true.size
        # NLL = -sum_{y=0} log(1 - c) - sum_{y=1} log(c), probabilities clipped to [eps, 1-eps]
        log_rest = np.log(np.clip(np.subtract(1.0, c, out=c), eps, 1.0 - eps, out=c), out=c)
        nll_total -= (float(log_rest.sum()) - float(log_rest[y].sum())
                      + float(np.log(np.clip(c_true, eps, 1.0 - eps)).sum()))
    return counts, conf_sum, corr_sum, max(sq, 0.0), nll_total  # sq: rounding below 0


def ece_from_histogram(counts: np.ndarray, confidence_sum: np.ndarray,
                       correct_sum: np.ndarray) -> float:
    """ECE from per-bin voxel counts n_b, confidence sums S_b and correct counts A_b.

    ECE = sum_b (n_b / N) |A_b / n_b - S_b / n_b| = (1 / N) sum_b |A_b - S_b|, N = sum_b n_b;
    in [0, 1]; NaN when N = 0.
    """
    n = float(np.sum(counts))
    if n == 0:
        return float("nan")
    return float(np.abs(np.asarray(correct_sum) - np.asarray(confidence_sum)).sum() / n)


def mce_from_histogram(counts: np.ndarray, confidence_sum: np.ndarray,
                       correct_sum: np.ndarray) -> float:
    """MCE = max over non-empty bins of |A_b / n_b - S_b / n_b| (see :func:`ece_from_histogram`);
    in [0, 1]; NaN when every bin is empty."""
    counts = np.asarray(counts)
    full = counts > 0
    if not full.any():
        return float("nan")
    gap = np.abs(np.asarray(correct_sum)[full] - np.asarray(confidence_sum)[full]) / counts[full]
    return float(gap.max())


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins.

    confidence: probabilities c_i in [0, 1] (any shape); correct: the outcomes y_i in {0, 1} of
    the same shape. Voxel i falls in bin b = min(floor(c_i B), B - 1), i.e. [b/B, (b+1)/B) with
    the last bin [1 - 1/B, 1]. ECE = sum_b (n_b / N) |acc_b - conf_b| with acc_b the mean of y
    and conf_b the mean of c in bin b. NaN for no voxels.
    """
    return ece_from_histogram(*_calibration_sums(confidence, correct, n_bins)[:3])


def mce(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error: max over non-empty bins b of |acc_b - conf_b| (bins as in
    :func:`ece`). NaN for no voxels."""
    return mce_from_histogram(*_calibration_sums(confidence, correct, n_bins)[:3])


def brier(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Brier score (1 / N) sum_i (c_i - y_i)^2 of probabilities c_i for outcomes y_i in {0, 1};
    in [0, 1]; NaN for no voxels."""
    counts, _, _, squared_error, _ = _calibration_sums(confidence, correct, 1)
    return squared_error / int(counts.sum()) if counts.sum() else float("nan")


def nll(confidence: np.ndarray, correct: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (nats) -(1 / N) sum_i [y_i log c_i + (1 - y_i) log(1 - c_i)],
    with c clipped to [eps, 1 - eps] (so at most -log(eps) = 16.1 per voxel for eps = 1e-7);
    NaN for no voxels."""
    counts, _, _, _, total = _calibration_sums(confidence, correct, 1, eps)
    return total / int(counts.sum()) if counts.sum() else float("nan")


def calibration_band(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                     band_mm: float = DEFAULT_BAND_MM) -> np.ndarray:
    """The voxels within ``band_mm`` (Euclidean, in mm with ``spacing``) of the reference or the
    predicted mask, the masks included: a bool array of the masks' shape (z, y, x); all False
    when both masks are empty. The distance transform runs on the union's bounding box grown
    by floor(band_mm / spacing) + 1 voxels per axis (no voxel outside it can be that close).
    """
    out = np.zeros(ref_mask.shape, dtype=bool)
    box, band = _band_in_box(ref_mask, pred_mask, spacing, band_mm)
    if box is not None:
        out[box] = band
    return out


def _band_in_box(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                 band_mm: float) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """:func:`calibration_band` as (box, band inside the box); (None, empty) for no band."""
    if ref_mask.shape != pred_mask.shape:
        raise InputDataError(f"reference mask shape {ref_mask.shape} differs from prediction "
                             f"mask shape {pred_mask.shape}.")
    if not band_mm > 0:
        raise ConfigError(f"calibration band: {band_mm} mm must be > 0.")
    union = ref_mask.astype(bool, copy=False) | pred_mask.astype(bool, copy=False)
    box = _bbox([union])
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=bool)
    grown = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(
        box, (int(band_mm // sp) + 1 for sp in spacing), union.shape, strict=True))
    dist = distance_transform_edt(~union[grown], sampling=tuple(float(s) for s in spacing))
    return grown, dist <= band_mm


class CalibrationStats:
    """Per-case calibration statistics of every region, the content of ``<case>_calibration.npz``.

    Arrays (R regions, S = 2 voxel sets :data:`VOXEL_SETS`, B bins): ``counts`` [R, S, B] int64
    voxels per bin, ``confidence_sum`` [R, S, B] sum of the confidences, ``correct_sum`` [R, S, B]
    number of voxels of the region in the reference, ``squared_error_sum`` [R, S] and
    ``nll_sum`` [R, S] (sums over voxels, see :func:`brier` and :func:`nll`). ``regions``,
    ``n_bins`` and ``band_mm`` say how they were computed.
    """

    def __init__(self, regions: Sequence[str], n_bins: int, band_mm: float, counts: np.ndarray,
                 confidence_sum: np.ndarray, correct_sum: np.ndarray,
                 squared_error_sum: np.ndarray, nll_sum: np.ndarray) -> None:
        self.regions = [str(r) for r in regions]
        self.n_bins, self.band_mm = int(n_bins), float(band_mm)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.confidence_sum = np.asarray(confidence_sum, dtype=np.float64)
        self.correct_sum = np.asarray(correct_sum, dtype=np.float64)
        self.squared_error_sum = np.asarray(squared_error_sum, dtype=np.float64)
        self.nll_sum = np.asarray(nll_sum, dtype=np.float64)
        shape = (len(self.regions), len(VOXEL_SETS), self.n_bins)
        for name in ("counts", "confidence_sum", "correct_sum"):
            if getattr(self, name).shape != shape:
                raise InputDataError(f"calibration statistics: {name} has shape "
                                     f"{getattr(self, name).shape}, expected {shape}.")
        for name in ("squared_error_sum", "nll_sum"):
            if getattr(self, name).shape != shape[:2]:
                raise InputDataError(f"calibration statistics: {name} has shape "
                                     f"{getattr(self, name).shape}, expected {shape[:2]}.")

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{region: {metric: value}}`` with the names of :func:`calibration_metric_names`:
        ECE, MCE, Brier (in [0, 1]) and NLL (nats per voxel) within the band, then over all
        voxels; NaN where the voxel set is empty (the band of a region absent from both the
        reference and the prediction)."""
        out: dict[str, dict[str, float]] = {}
        for r, region in enumerate(self.regions):
            values: dict[str, float] = {}
            for s, vs in enumerate(VOXEL_SETS):
                hist = (self.counts[r, s], self.confidence_sum[r, s], self.correct_sum[r, s])
                n = int(self.counts[r, s].sum())
                values[calibration_name("ece", vs)] = ece_from_histogram(*hist)
                values[calibration_name("mce", vs)] = mce_from_histogram(*hist)
                values[calibration_name("brier", vs)] = (
                    float(self.squared_error_sum[r, s]) / n if n else float("nan"))
                values[calibration_name("nll", vs)] = (float(self.nll_sum[r, s]) / n if n
                                                       else float("nan"))
            out[region] = values
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics atomically as a compressed ``.npz`` (a few kB)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, regions=np.asarray(self.regions, dtype=str),
                                n_bins=self.n_bins, band_mm=self.band_mm, counts=self.counts,
                                confidence_sum=self.confidence_sum, correct_sum=self.correct_sum,
                                squared_error_sum=self.squared_error_sum, nll_sum=self.nll_sum)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationStats:
        """Read statistics written by :meth:`save`; InputDataError naming the file otherwise."""
        p = Path(path)
        if not p.is_file():
            raise InputDataError(f"{p}: calibration statistics not found. Rerun the predict "
                                 "stage with evaluation.calibration: true.")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(z["regions"].tolist(), int(z["n_bins"]), float(z["band_mm"]),
                           z["counts"], z["confidence_sum"], z["correct_sum"],
                           z["squared_error_sum"], z["nll_sum"])
        except InputDataError as e:
            raise InputDataError(f"{p}: {e}. Delete it and rerun the predict stage.") from e
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise InputDataError(f"{p}: not readable calibration statistics ({e}). Delete it "
                                 "and rerun the predict stage.") from e


def calibration_statistics(probabilities: np.ndarray, ref: np.ndarray, pred: np.ndarray,
                           spacing: Sequence[float], regions: Mapping[str, Sequence[int]],
                           n_bins: int = DEFAULT_BINS,
                           band_mm: float = DEFAULT_BAND_MM) -> CalibrationStats:
    """Calibration statistics of one case against its reference labels, per region.

    probabilities: softmax output [K, z, y, x] (channel k = label value k, each voxel summing
    to 1); ref, pred: integer label arrays (z, y, x) (pred: the segmentation made from these
    probabilities); spacing: voxel size in mm (z, y, x); regions: ``{name: [label values]}``.

    One-vs-rest per region r with label set L: confidence c_i = sum_{k in L} p_ik, correctness
    y_i = [ref_i in L]. Voxel sets: the band, i.e. the voxels within ``band_mm`` mm of the
    reference or the predicted region (:func:`calibration_band`), and all voxels of the image.
    Returns :class:`CalibrationStats`, from which :meth:`CalibrationStats.metrics` gives ECE,
    MCE (``n_bins`` equal-width bins), Brier score and NLL.
    """
    sp = _check_inputs(pred, ref, spacing)
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or probs.shape[1:] != ref.shape:
        raise InputDataError(f"probabilities of shape {probs.shape} do not match the label "
                             f"shape {ref.shape}; expected [classes, *{ref.shape}].")
    names = list(regions)
    shape = (len(names), len(VOXEL_SETS), int(n_bins))
    counts = np.zeros(shape, dtype=np.int64)
    conf_sum, corr_sum = np.zeros(shape), np.zeros(shape)
    sq, nll_sum = np.zeros(shape[:2]), np.zeros(shape[:2])
    for r, name in enumerate(names):
        values = np.unique(np.asarray(list(regions[name]), dtype=np.int64))
        if values.size == 0 or values.min() < 0 or values.max() >= probs.shape[0]:
            raise InputDataError(f"region {name}: label values {values.tolist()} are not all "
                                 f"channels of the {probs.shape[0]}-class probabilities.")
        confidence = probs[values[0]]
        if values.size > 1:  # sum channel by channel (no copy of the selected channels)
            confidence = confidence.astype(np.float32, copy=True)
            for v in values[1:]:
                confidence += probs[v]
        correct = _region_mask(ref, values)
        box, band = _band_in_box(correct, _region_mask(pred, values), sp, band_mm)
        empty = np.zeros(0)
        for s, (c, y) in enumerate(((confidence[box][band], correct[box][band])
                                    if box is not None else (empty, empty.astype(bool)),
                                    (confidence, correct))):
            counts[r, s], conf_sum[r, s], corr_sum[r, s], sq[r, s], nll_sum[r, s] = \
                _calibration_sums(c, y, n_bins)
    return CalibrationStats(names, n_bins, band_mm, counts, conf_sum, corr_sum, sq, nll_sum)


def calibration_folder(pred_dir: str | os.PathLike[str], case_ids: Iterable[str], task: str,
                       method: str, fold: int, regions: Sequence[str], n_bins: int,
                       band_mm: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration rows of a fold from the cases' ``<pred_dir>/<case>_calibration.npz``.

    Returns (metrics, reliability): ``metrics`` in the first seven tidy columns of
    :data:`CSV_COLUMNS` (per case and region the metrics of :func:`calibration_metric_names`, NaN
    where the band is empty);
    ``reliability`` in :data:`RELIABILITY_COLUMNS`, per region, voxel set and bin the counts and
    sums over the fold's cases (the bins of a reliability diagram). Statistics computed for other
    regions, bins or band than asked raise InputDataError naming the file.
    """
    pred_dir = Path(pred_dir)
    rows = []
    total: CalibrationStats | None = None
    for case in (str(c) for c in case_ids):
        path = pred_dir / f"{case}{CALIBRATION_SUFFIX}"
        stats = CalibrationStats.load(path)
        if (stats.regions != list(regions) or stats.n_bins != int(n_bins)
                or not math.isclose(stats.band_mm, float(band_mm))):
            raise InputDataError(
                f"{path}: computed for regions {stats.regions}, {stats.n_bins} bins, band "
                f"{stats.band_mm} mm, but the evaluation asks for {list(regions)}, {n_bins} bins, "
                f"{band_mm} mm. Rerun the predict stage.")
        for region, values in stats.metrics().items():
            rows += [(task, method, int(fold), case, region, m, values[m])
                     for m in calibration_metric_names()]
        if total is None:
            total = stats
        else:
            for name in ("counts", "confidence_sum", "correct_sum"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
    metrics = pd.DataFrame(rows, columns=list(CSV_COLUMNS[:7]))
    metrics["value"] = metrics["value"].astype(np.float64)
    rel = []
    if total is not None:
        edges = np.linspace(0.0, 1.0, total.n_bins + 1)
        for r, region in enumerate(total.regions):
            for s, vs in enumerate(VOXEL_SETS):
                rel += [(task, method, int(fold), region, vs, total.band_mm, b, edges[b],
                         edges[b + 1],
                         int(total.counts[r, s, b]), float(total.confidence_sum[r, s, b]),
                         float(total.correct_sum[r, s, b])) for b in range(total.n_bins)]
    return metrics, pd.DataFrame(rel, columns=list(RELIABILITY_COLUMNS))
