"""Synthetic boundary noise: random dilation or erosion per structure, calibrated to a mean Dice.

The KiTS23 task of the study has a single reference annotation, so its noisy training labels
are made here (paper section 4.1): for every case and every structure, a coin flip chooses a
morphological dilation or erosion whose radius in mm is ``scale * U(0, 2)``. The draws are made
once from ``numpy.random.default_rng(seed)``; only the common ``scale`` is then calibrated so
that the mean over cases of :func:`dice_per_case` (noisy vs reference) equals the target.
Holding the draws fixed (common random numbers) makes the mean Dice a non-increasing step
function of the scale: it changes only where a radius crosses one of the voxel-centre distances
of a structure's distance map. The calibration brackets the target, lists these change points
and bisects over them (about ten evaluations), finding the two neighbouring steps around it.

A structure's boundary moves by whole voxel layers, so one step moves the mean Dice by up to
(class Dice change) / (classes x cases): 0.0006 from the target on the 12 real KiTS23 cases of
the benchmark, but several 0.001 on small datasets. When the closer step is more than 0.001
off, the step is resolved to single voxels: only the first n voxels (in a seeded order fixed
by their positions) of the one distance layer that the step adds or removes are moved, with n
bisected. That single partial layer is the only departure from plain dilation/erosion, and it
is reported in :class:`NoiseCalibration`. When even that cannot come within DICE_TOLERANCE
(a structure of a few voxels), :class:`NoiseCalibrationError` is raised.

Structures are groups of label values processed from outer to inner, by default KiTS23's
kidney+masses ``(1, 2, 3)``, masses ``(2, 3)`` and tumor ``(2,)``. Step by step, on a working
copy of the reference:

1. The group's reference mask ``S`` is dilated (all voxels within ``r`` mm of ``S``) or eroded
   (the voxels of ``S`` more than ``r`` mm from the nearest voxel outside ``S``), giving ``M``.
   An erosion radius is capped at half the structure's greatest depth, so a structure is never
   erased by its own erosion.
2. ``M`` is clipped to the current (already corrupted) region of the innermost enclosing group,
   so an inner structure never leaves its corrupted outer structure.
3. Voxels in ``M`` that do not carry a label of the group get the reference label of the
   nearest voxel of ``S`` (a dilation extends whatever label lies at the boundary).
4. Voxels of the group outside ``M`` get the reference label of the nearest voxel of the
   outermost enclosing group that is not in this group (an eroded tumour becomes the adjacent
   kidney or cyst; the kidney+masses group, having no enclosing group, gives way to background).
   If there is no such voxel in the structure's box, the nearest voxel outside ``S`` is used.

Every value written is a reference label of the same case, so no label value appears that the
case did not have, and an absent structure stays absent. Distances use the voxel spacing
(``scipy.ndimage.distance_transform_edt`` with ``sampling``), so the radius is in mm and the cost
does not depend on it; they are computed per structure on its bounding box (padded by the
largest radius in voxels).

Memory is bounded by one case (:class:`BoundaryNoise`): each case is reduced, as it is added,
to its label counts and the exact step table of its label changes over the scale
(:mod:`nnrobustloss.noise_steps`, a few kB), on which the calibration evaluates the mean Dice;
the distance maps are computed again when the case is painted. Cases are loaded again only for
a partial layer (that one case) and when the scale passes half the tables' padding.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from nnrobustloss.errors import NNRobustLossError
from nnrobustloss.metric_registry import NOISE_CSV_COLUMNS
from nnrobustloss.noise_steps import CaseSteps, case_steps

KITS23_STRUCTURES: tuple[tuple[int, ...], ...] = ((1, 2, 3), (2, 3), (2,))
"""Default structures, outer to inner: KiTS23 kidney+tumor+cyst, tumor+cyst (masses), tumor."""

DICE_TOLERANCE = 0.005
"""Largest accepted distance between the achieved mean Dice and the target."""

_FINE_TOLERANCE = 0.001  # beyond this, the last whole-layer step is resolved to single voxels
_INITIAL_SCALE_MM = 1.0  # DESIGN.md: about 0.7 mm gives mean Dice 0.96 on real KiTS23 cases
_CHUNK = 1 << 23  # voxels per chunk when counting labels (bounds the int64 temporary)
_BINCOUNT_RANGE = 1 << 16


class NoiseCalibrationError(NNRobustLossError, ValueError):
    """The target Dice cannot be reached on this dataset (e.g. no case has any structure)."""


@dataclass(frozen=True)
class NoiseCalibration:
    """What :func:`corrupt_dataset_with_calibration` did, for logs and benchmarks.

    ``scale_mm`` is the calibrated scale: structure ``j`` of case ``i`` was dilated
    (``dilate[i, j]``) or eroded by ``scale_mm * radius_factors[i, j]`` mm, factors in [0, 2).
    ``case_dice`` are the per-case :func:`dice_per_case` values, ``mean_dice`` their mean;
    ``evaluations`` counts the calibration's evaluations of the mean Dice (a look-up in every
    case's step table, or a repaint of one case for a partial layer). ``partial_layer`` is None, or
    (case, structure, distance level in mm, voxels moved, voxels in the layer) when the last
    whole-layer step was more than 0.001 from the target and was resolved by moving only
    part of that structure's next distance layer. ``setup_seconds`` per case: label counts,
    bounding boxes, distance transforms and step table (all rebuilds included);
    ``paint_seconds`` per case: the final corruption into a full-size array, its distance
    transforms included; ``calibration_seconds``: the search, in total.
    """

    target_dice: float
    scale_mm: float
    mean_dice: float
    case_dice: tuple[float, ...]
    evaluations: int
    structures: tuple[tuple[int, ...], ...]
    radius_factors: np.ndarray = field(repr=False)
    dilate: np.ndarray = field(repr=False)
    setup_seconds: tuple[float, ...] = field(repr=False)
    paint_seconds: tuple[float, ...] = field(repr=False)
    calibration_seconds: float = 0.0
    partial_layer: tuple[int, int, float, int, int] | None = None


# ----------------------------------------------------------------------------------- counting


def _value_counts(a: np.ndarray) -> dict[int, int]:
    """Count each value of an integer array, in chunks so that huge volumes need little memory."""
    flat = np.ravel(a)
    if flat.size == 0:
        return {}
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < _BINCOUNT_RANGE and hi <= np.iinfo(np.int64).max:
        counts = np.zeros(hi - lo + 1, dtype=np.int64)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK].astype(np.int64)
            if lo:
                chunk -= lo
            counts += np.bincount(chunk, minlength=counts.size)
        return {int(i) + lo: int(counts[i]) for i in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def _dice_from_counts(ref_counts: dict[int, int], lost: dict[int, int],
                      gained: dict[int, int]) -> float:
    """Mean foreground Dice from reference counts and the changed voxels' old and new labels.

    With ``b`` reference voxels of class c, of which ``lost`` changed away, and ``gained``
    voxels changed to c: intersection = b - lost, noisy volume = b - lost + gained.
    """
    classes = {v for v, c in ref_counts.items() if v != 0 and c > 0}
    classes |= {v for v, c in gained.items() if v != 0 and c > 0}
    if not classes:
        return 1.0
    total = 0.0
    for c in classes:
        b = ref_counts.get(c, 0)
        inter = b - lost.get(c, 0)
        total += 2.0 * inter / (b + inter + gained.get(c, 0))
    return total / len(classes)


def dice_per_case(noisy: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice of ``noisy`` vs ``reference`` over the foreground classes present in either.

    Both are integer label arrays of one shape (any number of dimensions); label 0 is
    background and every other value is a class. A class present in only one array scores 0.
    When neither array has any foreground the result is 1.0 (nothing to get wrong, as the
    KiTS23 evaluation scores two empty masks). The result lies in [0, 1].
    """
    noisy = np.asarray(noisy)
    reference = np.asarray(reference)
    for name, arr in (("noisy", noisy), ("reference", reference)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer label array, got dtype {arr.dtype}")
    if noisy.shape != reference.shape:
        raise ValueError(f"noisy: shape {noisy.shape} differs from reference shape "
                         f"{reference.shape}")
    diff = noisy != reference
    return _dice_from_counts(_value_counts(reference), _value_counts(reference[diff]),
                             _value_counts(noisy[diff]))


# ----------------------------------------------------------------------------------- geometry


def _in_group(a: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Boolean mask of the voxels of ``a`` whose label is one of ``values`` (non-empty)."""
    vs = sorted(set(values))
    if vs[-1] - vs[0] + 1 == len(vs):  # a contiguous range: two comparisons at most
        return a == vs[0] if len(vs) == 1 else (a >= vs[0]) & (a <= vs[-1])
    if len(vs) <= 4:
        mask = a == vs[0]
        for v in vs[1:]:
            mask |= a == v
        return mask
    return np.isin(a, vs)


def _bbox(mask: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Half-open bounding box ((lo, hi) per axis) of a boolean mask, None when it is empty."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _padded(box: tuple[tuple[int, int], ...], pad: Sequence[int],
            shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((max(lo - p, 0), min(hi + p, n)) for (lo, hi), p, n in zip(box, pad, shape,
                                                                              strict=True))


def _slices(box: tuple[tuple[int, int], ...],
            origin: Sequence[int] | None = None) -> tuple[slice, ...]:
    origin = origin or (0,) * len(box)
    return tuple(slice(lo - o, hi - o) for (lo, hi), o in zip(box, origin, strict=True))


def _distances(inp: np.ndarray, spacing: tuple[float, ...], labels: np.ndarray | None,
               ) -> tuple[np.ndarray, np.ndarray | None]:
    """Distance (mm, float32) of each non-zero voxel of ``inp`` to the nearest zero voxel.

    With ``labels``, also the label of that nearest zero voxel, from the same feature transform
    (scipy computes the nearest-voxel indices for the distances anyway).
    """
    if labels is None:
        return ndimage.distance_transform_edt(inp, sampling=spacing).astype(np.float32), None
    dist, idx = ndimage.distance_transform_edt(inp, sampling=spacing, return_indices=True)
    return dist.astype(np.float32), labels[tuple(idx)]


def _nearest_labels(ref_sub: np.ndarray, source: np.ndarray,
                    spacing: tuple[float, ...]) -> np.ndarray | int:
    """Per voxel, the label of the nearest ``source`` voxel (a constant when only one label)."""
    values = _value_counts(ref_sub[source])
    if len(values) == 1:
        return next(iter(values))
    idx = ndimage.distance_transform_edt(~source, sampling=spacing, return_distances=False,
                                         return_indices=True)
    return ref_sub[tuple(idx)]


# ------------------------------------------------------------------------------ structures


def _check_structures(structures: Sequence[Sequence[int]] | None,
                      ) -> tuple[tuple[tuple[int, ...], ...], list[int | None], list[int | None]]:
    """Validate the structure groups; return them with each one's parent and root index.

    The parent of a group is the innermost earlier group that strictly contains it, the root
    the outermost one (None for a top-level group).
    """
    if structures is None:
        structures = KITS23_STRUCTURES
    if isinstance(structures, (str, bytes)) or not isinstance(structures, Sequence):
        raise ValueError("structures: expected a list of label-value groups such as "
                         f"[(1, 2, 3), (2, 3), (2,)], got {structures!r}")
    groups: list[tuple[int, ...]] = []
    for g in structures:
        if isinstance(g, (int, np.integer)):
            g = (g,)
        try:
            vals = tuple(int(v) for v in g)
        except (TypeError, ValueError):
            raise ValueError(f"structures: group {g!r} is not a list of integer labels") from None
        if not vals or any(v != orig for v, orig in zip(vals, g, strict=True)):
            raise ValueError(f"structures: group {g!r} must be a non-empty list of integers")
        if 0 in vals:
            raise ValueError(f"structures: group {g!r} contains 0, the background")
        groups.append(tuple(sorted(set(vals))))
    if not groups:
        raise ValueError("structures: empty; give at least one label-value group")
    parents: list[int | None] = []
    roots: list[int | None] = []
    for i, g in enumerate(groups):
        parent = None
        for j in range(i):
            a, b = set(groups[j]), set(g)
            if a == b:
                raise ValueError(f"structures: group {g} is listed twice")
            if b > a:
                raise ValueError(f"structures: group {g} contains the earlier group "
                                 f"{groups[j]}; list groups from outer to inner")
            if a & b and not a > b:
                raise ValueError(f"structures: groups {groups[j]} and {g} overlap without "
                                 "nesting; groups must be nested or disjoint")
            if a > b:
                parent = j  # later supersets are inner, so the last one is the innermost
        parents.append(parent)
        root = parent
        while root is not None and parents[root] is not None:
            root = parents[root]
        roots.append(root)
    return tuple(groups), parents, roots


@dataclass
class _Structure:
    """Cached geometry of one structure of one case for the current padding."""

    index: int
    box: tuple[slice, ...]  # inside the case crop
    dist: np.ndarray  # float32 mm: to S (dilation) or, inside S, to the outside (erosion)
    cap: float  # largest erosion radius (half the greatest depth); inf for dilation
    near: np.ndarray | int | None = None  # label for voxels entering: nearest S voxel's
    repl: np.ndarray | int | None = None  # label for voxels leaving (None: never needed)


@dataclass
class _Partial:
    """One distance layer of one structure moved only in part (the calibration's last step).

    ``coords`` index the layer's voxels inside the structure's box, in a fixed pseudo-random
    order; the first ``count`` of them move (enter a dilation, leave an erosion).
    """

    case: int
    index: int
    level_mm: float
    coords: tuple[np.ndarray, ...]
    count: int = 0

    @property
    def size(self) -> int:
        return int(self.coords[0].size)

    def selected(self) -> tuple[np.ndarray, ...]:
        return tuple(c[:self.count] for c in self.coords)


def _voxel_priority(linear_index: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per voxel (splitmix64 of its linear index and the seed)."""
    golden = 0x9E3779B97F4A7C15
    z = linear_index.astype(np.uint64) + np.uint64(((seed + 1) * golden) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _CaseNoise:
    """One case: label counts and boxes once, distance caches per padding, painting per radius."""

    def __init__(self, ref: np.ndarray, spacing: tuple[float, float, float],
                 groups: tuple[tuple[int, ...], ...], parents: list[int | None],
                 roots: list[int | None], dilate: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.ref, self.spacing, self.groups = ref, spacing, groups
        self.parents, self.roots, self.dilate = parents, roots, dilate
        self.ref_counts = _value_counts(ref)
        info = np.iinfo(ref.dtype)
        # group values the dtype cannot hold are absent by construction
        self.valid = [tuple(v for v in g if info.min <= v <= info.max) for g in groups]
        union = sorted({v for g in self.valid for v in g})
        self.union_box = _bbox(_in_group(ref, union)) if union else None
        self.boxes: list[tuple[tuple[int, int], ...] | None] = [None] * len(groups)
        if self.union_box is not None:
            sub = ref[_slices(self.union_box)]
            origin = [lo for lo, _ in self.union_box]
            for i, g in enumerate(self.valid):
                b = _bbox(_in_group(sub, g)) if g else None
                if b is not None:
                    self.boxes[i] = tuple((lo + o, hi + o)
                                          for (lo, hi), o in zip(b, origin, strict=True))
        self.pad_mm = -1.0
        self.structures: list[_Structure] = []
        self.seconds = time.perf_counter() - t0

    @property
    def empty(self) -> bool:
        return self.union_box is None

    def extent_mm(self) -> float:
        """Diagonal (mm) of the largest structure bounding box; 0 when there is none."""
        return max((math.dist([0.0] * 3, [(hi - lo) * s for (lo, hi), s in
                                          zip(b, self.spacing, strict=True)])
                    for b in self.boxes if b is not None), default=0.0)

    def prepare(self, pad_mm: float) -> None:
        """Crop the case to its padded structure boxes and cache their distance transforms.

        The padding (``pad_mm`` converted per axis, plus one voxel) must cover the largest
        radius used afterwards: a dilation cannot reach beyond its structure's box.
        """
        if self.empty or pad_mm <= self.pad_mm:
            return
        t0 = time.perf_counter()
        sp = self.spacing
        pad = [math.ceil(pad_mm / s) + 1 for s in sp]
        shape = self.ref.shape
        self.case_box = _padded(self.union_box, pad, shape)
        origin = [lo for lo, _ in self.case_box]
        self.ref_crop = self.ref[_slices(self.case_box)]  # a view: only ever read
        self.structures = []
        for i, box in enumerate(self.boxes):
            if box is None:
                continue
            sl = _slices(_padded(box, pad, shape), origin)
            ref_sub = self.ref_crop[sl]
            s = _in_group(ref_sub, self.valid[i])
            outside = ~s
            # Removal happens on erosion, or when earlier steps left labels of this group
            # beyond its own corruption (an outer dilation, a clipped parent).
            need_repl = not self.dilate[i] or bool(self.structures)
            source = self._replacement_source(i, ref_sub, s, outside) if need_repl else None
            if self.dilate[i]:
                multi = len(_value_counts(ref_sub[s])) > 1
                dist, near = _distances(outside, sp, ref_sub if multi else None)
                st = _Structure(i, sl, dist, math.inf,
                                near=near if multi else int(ref_sub[s][0]))
            elif outside.any():
                # when the replacement comes from outside S with several labels, the distance
                # transform of S also gives them
                shared = source is outside and len(_value_counts(ref_sub[outside])) > 1
                dist, repl = _distances(s, sp, ref_sub if shared else None)
                st = _Structure(i, sl, dist, 0.5 * float(dist.max()), repl=repl)
            else:  # the structure fills its box (and the volume): no boundary to erode
                st = _Structure(i, sl, np.full(s.shape, np.inf, np.float32), math.inf)
            if not self.dilate[i]:
                # An eroded mask lies inside S, where the nearest S voxel is the voxel itself;
                # re-adding happens where an earlier disjoint structure had covered S.
                st.near = ref_sub
            if need_repl and st.repl is None:
                # nothing outside S in the box: leave the labels as they are
                st.repl = ref_sub if source is None else _nearest_labels(ref_sub, source, sp)
            self.structures.append(st)
        self.pad_mm = pad_mm
        self.seconds += time.perf_counter() - t0

    def _replacement_source(self, i: int, ref_sub: np.ndarray, s: np.ndarray,
                            outside: np.ndarray) -> np.ndarray | None:
        """Where voxels leaving structure i take their label from: the voxels of its root group
        outside it, else (none in the box, or a top-level group) everything outside it; None
        when the box holds nothing but the structure."""
        root = self.roots[i]
        if root is not None:
            source = _in_group(ref_sub, self.valid[root]) & outside
            if source.any():
                return source
        return outside if outside.any() else None

    def paint(self, radii: np.ndarray, partial: _Partial | None = None) -> np.ndarray | None:
        """Corrupt the case crop with per-structure radii (mm); None for a case without any.

        ``partial`` moves part of one further distance layer of one structure.
        """
        if self.empty:
            return None
        crop = self.ref_crop.copy()
        for st in self.structures:
            sub = crop[st.box]
            r = float(radii[st.index])
            m = st.dist <= r if self.dilate[st.index] else st.dist > min(r, st.cap)
            if partial is not None and partial.index == st.index:
                m[partial.selected()] = bool(self.dilate[st.index])
            parent = self.parents[st.index]
            if parent is not None:  # stay inside the corrupted enclosing structure
                m &= _in_group(sub, self.valid[parent])
            cur = _in_group(sub, self.valid[st.index])
            add = m & ~cur
            rem = cur & ~m
            for sel, src in ((add, st.near), (rem, st.repl)):
                if sel.any():
                    if src is None:  # only a first dilation skips repl, and it removes nothing
                        raise AssertionError("boundary noise: missing replacement labels")
                    sub[sel] = src if isinstance(src, int) else src[sel]
        return crop

    def layer(self, case: int, index: int, level_mm: float, seed: int) -> _Partial:
        """The voxels of structure ``index`` at distance ``level_mm``, in a seeded order that
        depends only on their position in the volume (not on the crop)."""
        st = next(t for t in self.structures if t.index == index)
        local = np.nonzero(st.dist == np.float32(level_mm))
        offset = [lo + b.start for (lo, _), b in zip(self.case_box, st.box, strict=True)]
        linear = np.ravel_multi_index(tuple(c + o for c, o in zip(local, offset, strict=True)),
                                      self.ref.shape)
        order = np.argsort(_voxel_priority(linear, seed), kind="stable")
        return _Partial(case, index, level_mm, tuple(c[order] for c in local))

    def dice(self, crop: np.ndarray | None) -> float:
        """dice_per_case of the painted crop (the rest of the volume equals the reference)."""
        if crop is None:
            return _dice_from_counts(self.ref_counts, {}, {})
        diff = crop != self.ref_crop
        return _dice_from_counts(self.ref_counts, _value_counts(self.ref_crop[diff]),
                                 _value_counts(crop[diff]))

    def full(self, crop: np.ndarray | None) -> np.ndarray:
        """The full-size noisy label array (a new array; the reference is not modified)."""
        out = self.ref.copy()
        if crop is not None:
            out[_slices(self.case_box)] = crop
        return out


# ------------------------------------------------------------------------------ validation


def _check_label(lab: np.ndarray, k: int) -> np.ndarray:
    if not isinstance(lab, np.ndarray):
        raise ValueError(f"labels[{k}]: expected a numpy array, got {type(lab).__name__}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels[{k}]: expected an integer dtype, got {lab.dtype}")
    if lab.ndim != 3:
        raise ValueError(f"labels[{k}]: expected a 3-D (z, y, x) array, got shape {lab.shape}")
    return lab


def _check_labels(labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(labels, np.ndarray) or not isinstance(labels, Sequence):
        raise ValueError("labels: expected a list of 3-D integer arrays, one per case")
    if len(labels) == 0:
        raise ValueError("labels: the list is empty; give at least one case")
    return [_check_label(lab, k) for k, lab in enumerate(labels)]


def _check_spacing(sp: Sequence[float], k: int) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in sp)
    except (TypeError, ValueError):
        raise ValueError(f"spacings[{k}]: {sp!r} is not three numbers") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"spacings[{k}]: {sp!r} must be three positive finite numbers "
                         "(z, y, x) in mm")
    return vals


def _check_spacings(spacings: Sequence[Sequence[float]], n: int) -> list[tuple[float, ...]]:
    if isinstance(spacings, (str, bytes)) or not isinstance(spacings, Sequence | np.ndarray):
        raise ValueError("spacings: expected a list of (z, y, x) spacings in mm, one per case")
    if len(spacings) != n:
        raise ValueError(f"spacings: {len(spacings)} spacings for {n} label arrays; give one "
                         "(z, y, x) spacing per case")
    return [_check_spacing(sp, k) for k, sp in enumerate(spacings)]


def _check_target(target_dice: float) -> float:
    try:
        t = float(target_dice)
    except (TypeError, ValueError):
        raise ValueError(f"target_dice: {target_dice!r} is not a number") from None
    if isinstance(target_dice, bool) or not (0.0 < t <= 1.0):
        raise ValueError(f"target_dice: {target_dice!r} must lie in (0, 1]")
    return t


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: {seed!r} must be a non-negative integer")
    return int(seed)


# -------------------------------------------------------------------------------- public API


def corrupt_case(label: np.ndarray, spacing: Sequence[float], radii_mm: Sequence[float],
                 dilate: Sequence[bool],
                 structures: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Corrupt one case with given radii: the building block of :func:`corrupt_dataset`.

    ``label`` is an integer (z, y, x) array, ``spacing`` its (z, y, x) voxel size in mm;
    ``radii_mm[j]`` (>= 0) and ``dilate[j]`` give structure ``j``'s radius and direction
    (``structures`` as in :func:`corrupt_dataset`; an erosion radius is capped at half the
    structure's greatest depth). Returns a new array of the same shape and dtype whose values
    are reference labels of this case; ``label`` is not modified.
    """
    (lab,) = _check_labels([label])
    (sp,) = _check_spacings([spacing], 1)
    groups, parents, roots = _check_structures(structures)
    radii = np.asarray(radii_mm, dtype=np.float64)
    flags = np.asarray(dilate, dtype=bool)
    if radii.shape != (len(groups),) or not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError(f"radii_mm: expected {len(groups)} non-negative finite radii (one per "
                         f"structure), got {radii_mm!r}")
    if flags.shape != (len(groups),):
        raise ValueError(f"dilate: expected {len(groups)} flags (one per structure), "
                         f"got {dilate!r}")
    case = _CaseNoise(lab, sp, groups, parents, roots, flags)
    case.prepare(float(radii.max(initial=0.0)))
    return case.full(case.paint(radii))


Loader = Callable[[int], tuple[np.ndarray, Sequence[float]]]
"""``load(k)`` -> case ``k``'s (label array, (z, y, x) spacing) again, e.g. read from disk."""


@dataclass(frozen=True)
class _CaseSummary:
    """What the calibration keeps of a case: no volume, only counts and its step table."""

    ref_counts: dict[int, int]
    extent_mm: float
    empty: bool
    steps: CaseSteps | None  # None: empty case, or target 1 (nothing to calibrate)


class BoundaryNoise:
    """Calibrated boundary noise for cases seen one at a time, in memory bounded by one case.

    ``BoundaryNoise(n_cases, target_dice, seed, structures)`` makes the random draws of
    :func:`corrupt_dataset`; ``add_case(k, label, spacing)`` for every case ``k`` in
    ``range(n_cases)`` keeps only a summary (label counts and the step table of
    :mod:`nnrobustloss.noise_steps`, a few kB); ``calibrate(load)`` finds the scale;
    ``paint(k, label, spacing)`` then returns case ``k``'s noisy labels. ``load(k)`` must give
    the case again as added: the calibration calls it only for the one case of a partial layer,
    and for every case when the scale passes half the step tables' padding (4 mm at first, so
    only for strong noise, mean Dice below about 0.8 on KiTS23). The noisy labels are exactly
    those of :func:`corrupt_dataset` on all cases at once (it is built on this class).
    ``log``, when given, receives a progress line per case loaded again.
    Bad arguments raise ValueError naming them; an unreachable target NoiseCalibrationError.
    """

    def __init__(self, n_cases: int, target_dice: float = 0.96, seed: int = 0,
                 structures: Sequence[Sequence[int]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) \
                or n_cases < 1:
            raise ValueError(f"n_cases: {n_cases!r} must be a positive integer")
        self.n_cases = int(n_cases)
        self.target = _check_target(target_dice)
        self.seed = _check_seed(seed)
        self.groups, self.parents, self.roots = _check_structures(structures)
        self.log = log
        # All random draws first, for every (case, structure) pair present or not, so that a
        # case's draws do not depend on the other cases' contents.
        rng = np.random.default_rng(self.seed)
        self.factors = rng.uniform(0.0, 2.0, size=(self.n_cases, len(self.groups)))
        self.dilate = rng.random(size=(self.n_cases, len(self.groups))) < 0.5
        self.pad_mm = 4.0 * _INITIAL_SCALE_MM  # the first evaluation (1 mm) prepares for this
        self.summaries: list[_CaseSummary | None] = [None] * self.n_cases
        self.seconds = [0.0] * self.n_cases
        self.scale: float | None = None
        self.partial: tuple[int, int, float, int, int] | None = None

    def _case(self, k: int, label: np.ndarray, spacing: Sequence[float]) -> _CaseNoise:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
                or not 0 <= k < self.n_cases:
            raise ValueError(f"case index {k!r} must be an integer in [0, {self.n_cases})")
        lab, sp = _check_label(label, int(k)), _check_spacing(spacing, int(k))
        return _CaseNoise(lab, sp, self.groups, self.parents, self.roots, self.dilate[k])

    def _summarise(self, k: int, label: np.ndarray, spacing: Sequence[float]) -> None:
        t0 = time.perf_counter()
        c = self._case(k, label, spacing)
        old = self.summaries[k]
        if old is not None and old.ref_counts != c.ref_counts:
            raise ValueError(f"labels[{k}]: differs from the label map added for this case "
                             "(other label counts); load(k) must return the same case")
        steps = None
        if not c.empty and self.target < 1.0:
            c.prepare(self.pad_mm)
            steps = case_steps(c.ref_crop, c.structures, c.valid, c.parents, c.dilate,
                               self.factors[k], self.pad_mm)
        self.summaries[k] = _CaseSummary(c.ref_counts, c.extent_mm(), c.empty, steps)
        self.seconds[k] += time.perf_counter() - t0

    def add_case(self, k: int, label: np.ndarray, spacing: Sequence[float]) -> None:
        """Summarise case ``k`` (an integer (z, y, x) label array and its spacing in mm): label
        counts, boxes, distance transforms and the step table; the arrays are not kept."""
        if self.scale is not None:
            raise ValueError("add_case: the noise is already calibrated; add every case first")
        self._summarise(k, label, spacing)

    def resummarise(self, pad_mm: float, load: Loader) -> None:
        """Rebuild every case's step table for a larger padding, loading each case again."""
        self.pad_mm = pad_mm
        for k in range(self.n_cases):
            if self.log:
                self.log(f"boundary noise: case {k + 1}/{self.n_cases} again, for radii up to "
                         f"{pad_mm:g} mm")
            self._summarise(k, *load(k))

    def case_dice(self, k: int, scale: float) -> float:
        """dice_per_case of case ``k`` painted at ``scale`` (from its summary)."""
        s = self.summaries[k]
        assert s is not None
        if s.steps is None:
            return _dice_from_counts(s.ref_counts, {}, {})
        return _dice_from_counts(s.ref_counts, *s.steps.counts(scale))

    def prepared_case(self, k: int, load: Loader) -> _CaseNoise:
        """Case ``k`` loaded again and prepared for the current padding."""
        c = self._case(k, *load(k))
        c.prepare(self.pad_mm)
        return c

    def calibrate(self, load: Loader) -> NoiseCalibration:
        """Find the radius scale (see :func:`corrupt_dataset`) from the cases' summaries.

        Returns what the calibration did; ``paint_seconds`` is empty (painting comes after).
        """
        missing = [k for k, s in enumerate(self.summaries) if s is None]
        if missing:
            raise ValueError(f"calibrate: case(s) {missing[:5]} not added; call add_case for "
                             f"each of the {self.n_cases} cases first")
        target, groups = self.target, self.groups
        if target < 1.0 and all(s is not None and s.empty for s in self.summaries):
            raise NoiseCalibrationError(
                f"target_dice={target} cannot be reached: no case contains any label of the "
                f"structures {list(groups)}, so every case keeps Dice 1. Check the label values "
                "or the structures.")
        t0 = time.perf_counter()
        objective = _MeanDice(self, load)
        limit = max(2.0 * max(s.extent_mm for s in self.summaries if s is not None),
                    _INITIAL_SCALE_MM)
        scale, partial = 0.0, None
        if target < 1.0:
            s_a, s_b, edge = _bracket_steps(objective, target, limit)
            d_a, d_b = objective(s_a), objective(s_b)
            scale = s_a if d_a - target < target - d_b else s_b
            achieved = objective(scale)
            if abs(achieved - target) > _FINE_TOLERANCE:
                partial = _refine(objective, target, s_a, s_b, edge, self.seed)
                if partial is not None:
                    scale, achieved = s_a, objective.partial_mean(s_a, partial)
            if abs(achieved - target) > DICE_TOLERANCE:
                raise NoiseCalibrationError(
                    f"target_dice={target} cannot be met within {DICE_TOLERANCE}: the mean Dice "
                    f"jumps from {d_a:.4f} to {d_b:.4f} when the radius scale passes {edge:.4g} "
                    "mm (a small structure gains or loses a layer of voxels at once). Use more "
                    "cases, a finer spacing or another target.")
        if partial is not None:
            achieved, per_case = objective.partial_memo[(scale, partial.count)]
        else:
            achieved, per_case = objective.memo.get(scale, (1.0, [1.0] * self.n_cases))
        self.scale = scale
        self.partial = None if partial is None else (
            partial.case, partial.index, partial.level_mm, partial.count, partial.size)
        return NoiseCalibration(
            target_dice=target, scale_mm=scale, mean_dice=achieved, case_dice=tuple(per_case),
            evaluations=len(objective.memo) + len(objective.partial_memo), structures=groups,
            radius_factors=self.factors, dilate=self.dilate, partial_layer=self.partial,
            setup_seconds=tuple(self.seconds), paint_seconds=(),
            calibration_seconds=time.perf_counter() - t0)

    def paint(self, k: int, label: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
        """Case ``k``'s noisy labels at the calibrated scale: a new array of the label's shape
        and dtype (``label``, the case as added, is not modified)."""
        if self.scale is None:
            raise ValueError("paint: call calibrate first")
        c = self._case(k, label, spacing)
        if self.scale == 0.0:  # target 1 leaves every case as it is
            return c.ref.copy()
        c.prepare(self.pad_mm)  # the padding the calibration ended with, as its tables
        part = None
        if self.partial is not None and self.partial[0] == k:
            part = c.layer(k, self.partial[1], self.partial[2], self.seed)
            part.count = self.partial[3]
        return c.full(c.paint(self.scale * self.factors[k], part))


def corrupt_dataset_with_calibration(
        labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
        target_dice: float = 0.96, seed: int = 0,
        structures: Sequence[Sequence[int]] | None = None,
) -> tuple[list[np.ndarray], NoiseCalibration]:
    """:func:`corrupt_dataset` that also returns what the calibration did."""
    labels = _check_labels(labels)
    spacings = _check_spacings(spacings, len(labels))
    noise = BoundaryNoise(len(labels), target_dice, seed, structures)
    for k, (lab, sp) in enumerate(zip(labels, spacings, strict=True)):
        noise.add_case(k, lab, sp)
    info = noise.calibrate(lambda k: (labels[k], spacings[k]))
    noisy, paint_seconds = [], []
    for k, (lab, sp) in enumerate(zip(labels, spacings, strict=True)):
        t1 = time.perf_counter()
        noisy.append(noise.paint(k, lab, sp))
        paint_seconds.append(time.perf_counter() - t1)
    return noisy, replace(info, paint_seconds=tuple(paint_seconds))


class _MeanDice:
    """The calibration objective: mean dice_per_case at a radius scale, memoised."""

    def __init__(self, noise: BoundaryNoise, load: Loader) -> None:
        self.noise, self.load, self.factors = noise, load, noise.factors
        self.memo: dict[float, tuple[float, list[float]]] = {}
        self.partial_memo: dict[tuple[float, int], tuple[float, list[float]]] = {}
        self._case: tuple[int, _CaseNoise] | None = None  # the one case of a partial layer

    def __call__(self, scale: float) -> float:
        if scale not in self.memo:
            if 2.0 * scale > self.noise.pad_mm:  # the largest radius is scale * 2
                self.noise.resummarise(4.0 * scale, self.load)  # headroom: the bracket may
                self._case = None                               # double once more
            per_case = [self.noise.case_dice(k, scale) for k in range(self.noise.n_cases)]
            self.memo[scale] = (float(np.mean(per_case)), per_case)
        return self.memo[scale][0]

    def case(self, k: int) -> _CaseNoise:
        """Case ``k`` with its distance maps (loaded again; only the last one is kept)."""
        if self._case is None or self._case[0] != k:
            self._case = None
            if self.noise.log:
                self.noise.log(f"boundary noise: case {k + 1}/{self.noise.n_cases} again, for "
                               "a partial layer")
            self._case = (k, self.noise.prepared_case(k, self.load))
        return self._case[1]

    def partial_mean(self, scale: float, partial: _Partial) -> float:
        """Mean Dice at ``scale`` with a partial layer: only its own case is repainted."""
        key = (scale, partial.count)
        if key not in self.partial_memo:
            self(scale)
            per_case = list(self.memo[scale][1])
            k = partial.case
            c = self.case(k)
            per_case[k] = c.dice(c.paint(scale * self.factors[k], partial))
            self.partial_memo[key] = (float(np.mean(per_case)), per_case)
        return self.partial_memo[key][0]

    def breakpoints(self, lo: float, hi: float) -> np.ndarray:
        """Scales in (lo, hi) where some case's corruption changes."""
        found = [s.steps.breakpoints(lo, hi) for s in self.noise.summaries
                 if s is not None and s.steps is not None]
        return np.concatenate(found) if found else np.zeros(0)

    def layers_at(self, edge: float) -> list[tuple[int, tuple[int, float]]]:
        """(case, (structure, distance level)) of every case with a crossing at ``edge``."""
        return [(k, hit) for k, s in enumerate(self.noise.summaries)
                if s is not None and s.steps is not None
                and (hit := s.steps.layer_at(edge)) is not None]


def _bracket_steps(mean_dice: _MeanDice, target: float, limit: float,
                   ) -> tuple[float, float, float]:
    """Scales of the two neighbouring steps around ``target`` and the change point between.

    ``mean_dice`` is a non-increasing step function of the scale with mean_dice(0) = 1: it
    changes only where some structure's radius ``scale * factor`` crosses one of the distances
    in its cached distance map. The scale is first bracketed (doubling from 1 mm, up to
    ``limit``); then the bracket's change points are listed and bisected, evaluating each
    constant piece at its midpoint, in about log2(number of change points) evaluations.
    Returns (s_a, s_b, edge) with mean_dice(s_a) > target >= mean_dice(s_b), s_a < edge <= s_b.
    """
    lo, hi = 0.0, _INITIAL_SCALE_MM
    while mean_dice(hi) > target:
        if hi >= limit:
            raise NoiseCalibrationError(
                f"target_dice={target} cannot be reached: the strongest noise (radius up to "
                f"{2 * hi:.1f} mm) still gives a mean Dice of {mean_dice(hi):.4f}. Raise "
                "target_dice, or use larger structures or more cases.")
        lo, hi = hi, min(2.0 * hi, limit)
    edges = np.unique(np.concatenate([mean_dice.breakpoints(lo, hi), [lo, hi]]))
    # piece k is [edges[k], edges[k+1]); the first is represented by lo, the last by hi
    reps = np.concatenate([[lo], 0.5 * (edges[1:-2] + edges[2:-1]), [hi]])
    a, b = 0, len(reps) - 1  # invariant: mean_dice(reps[a]) > target >= mean_dice(reps[b])
    while b - a > 1:
        m = (a + b) // 2
        if mean_dice(float(reps[m])) > target:
            a = m
        else:
            b = m
    return float(reps[a]), float(reps[b]), float(edges[b])


def _refine(mean_dice: _MeanDice, target: float, s_a: float, s_b: float, edge: float,
            seed: int) -> _Partial | None:
    """Resolve the step at ``edge`` to single voxels; None when that is not possible.

    Going from s_a to s_b, one structure of one case gains (dilation) or loses (erosion) a
    whole distance layer. Moving only the first n voxels of that layer, in a seeded order
    fixed by their positions, interpolates the mean Dice between the two steps; n is
    bisected. When several structures cross at the same scale (exact ties), or the
    interpolation does not bracket the target, the whole-layer result stands.
    """
    found = mean_dice.layers_at(edge)
    if len(found) != 1:
        return None
    k, (index, level) = found[0]
    partial = mean_dice.case(k).layer(k, index, level, seed)
    n = partial.size

    def at(count: int) -> float:
        partial.count = count
        return mean_dice.partial_mean(s_a, partial)

    if not (at(0) > target >= at(n)) or at(n) != mean_dice(s_b):
        return None
    lo, hi = 0, n
    while hi - lo > 1:
        m = (lo + hi) // 2
        if at(m) > target:
            lo = m
        else:
            hi = m
    partial.count = lo if at(lo) - target < target - at(hi) else hi
    return partial


def corrupt_dataset(labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                    target_dice: float = 0.96, seed: int = 0,
                    structures: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Boundary-noise copies of ``labels`` whose mean Dice against them is ``target_dice``.

    ``labels``: integer (z, y, x) label arrays, one per case (0 is background);
    ``spacings``: their (z, y, x) voxel sizes in mm. For every case and structure a coin flip
    chooses a dilation or an erosion by ``scale * U(0, 2)`` mm (draws from
    ``numpy.random.default_rng(seed)``, made before the calibration); ``scale`` is calibrated
    so that the mean over cases of ``dice_per_case(noisy, reference)`` is as close as the
    data allow to ``target_dice`` in (0, 1] (0.0006 off on 12 real KiTS23 cases) and within
    ``DICE_TOLERANCE`` (0.005); 1 gives exact copies. ``structures``: label-value groups
    from outer to inner, nested or disjoint
    (default KiTS23: ``[(1, 2, 3), (2, 3), (2,)]``; a plain label map: ``[(1,), (2,), ...]``);
    labels outside every group are not corrupted themselves but may be covered by a dilation.
    See the module docstring for how nested structures are painted.

    Returns new arrays with the inputs' shapes and dtypes; every value in a noisy case is a
    label of its reference case. The inputs are not modified; the result is a deterministic
    function of the arguments. Raises ValueError naming the bad argument, and
    NoiseCalibrationError (a ValueError) when the target cannot be reached.
    """
    noisy, _ = corrupt_dataset_with_calibration(labels, spacings, target_dice, seed, structures)
    return noisy


def measure_noise_levels(noisy_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str],
                         regions: Mapping[str, Sequence[int]],
                         tolerance_mm: float | Mapping[str, float], task: str = "") -> pd.DataFrame:
    """Label noise of a dataset: each ``noisy_dir/<case>.nii.gz`` against
    ``reference_dir/<case>.nii.gz``, per region, with :func:`nnrobustloss.metrics.evaluate_case`
    (Dice, ASD in mm with the image spacing, surface Dice at the tolerance).

    Returns a tidy frame with columns ``task, case, region, metric, value`` (cases sorted, regions
    in the given order). A missing reference file raises InputDataError naming it.
    """
    import SimpleITK as sitk

    from nnrobustloss.fileio import read_image
    from nnrobustloss.metrics import evaluate_case

    rows = []
    files = sorted(Path(noisy_dir).glob("*.nii.gz"))
    for i, f in enumerate(files, 1):
        case = f.name[: -len(".nii.gz")]
        noisy_img, ref_img = read_image(f), read_image(Path(reference_dir) / f.name)
        res = evaluate_case(sitk.GetArrayFromImage(noisy_img), sitk.GetArrayFromImage(ref_img),
                            ref_img.GetSpacing()[::-1], regions, tolerance_mm)
        for region, metrics in res.items():
            for metric, value in metrics.items():
                rows.append({"task": task, "case": case, "region": region, "metric": metric,
                             "value": value})
        print(f"[noise {task}] {i}/{len(files)} {case}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows, columns=list(NOISE_CSV_COLUMNS))
