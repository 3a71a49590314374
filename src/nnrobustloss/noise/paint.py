"""The per-case engine of the boundary noise: one case dilated or eroded, structure by structure.

:class:`CaseNoise` holds one case: its label counts and structure boxes, and for a given padding
its crop with each structure's distance map; :meth:`CaseNoise.paint` corrupts the crop with given
radii. :func:`corrupt_case` is this engine on its own; :mod:`nnrobustloss.noise.calibration`
chooses the radii of every case so that the dataset reaches a target mean Dice.

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

A :class:`PartialLayer` moves only the first ``count`` voxels, in a seeded order fixed by their
positions, of one distance layer of one structure (:meth:`CaseNoise.layer`); the calibration uses
it to resolve a whole-layer step of the mean Dice that is too coarse.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnrobustloss.noise.dice import dice_from_counts, value_counts
from nnrobustloss.noise.inputs import check_labels, check_spacings, check_structures

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
    values = value_counts(ref_sub[source])
    if len(values) == 1:
        return next(iter(values))
    idx = ndimage.distance_transform_edt(~source, sampling=spacing, return_distances=False,
                                         return_indices=True)
    return ref_sub[tuple(idx)]


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
class PartialLayer:
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
        """Number of voxels in the whole layer."""
        return int(self.coords[0].size)

    def selected(self) -> tuple[np.ndarray, ...]:
        """Box coordinates (one index array per axis) of the first ``count`` voxels: those moved."""
        return tuple(c[:self.count] for c in self.coords)


def _voxel_priority(linear_index: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 per voxel (splitmix64 of its linear index and the seed)."""
    golden = 0x9E3779B97F4A7C15
    z = linear_index.astype(np.uint64) + np.uint64(((seed + 1) * golden) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class CaseNoise:
    """One case: label counts and boxes once, distance caches per padding, painting per radius.

    ``ref``: the case's integer (z, y, x) labels (read only, never modified); ``spacing`` in mm;
    ``groups``, ``parents``, ``roots``: the structures as :func:`check_structures` returns them;
    ``dilate[j]``: structure ``j`` is dilated (else eroded). :meth:`prepare` must be called with a
    padding that covers the largest radius before :meth:`paint`.
    """

    def __init__(self, ref: np.ndarray, spacing: tuple[float, float, float],
                 groups: tuple[tuple[int, ...], ...], parents: list[int | None],
                 roots: list[int | None], dilate: np.ndarray) -> None:
        t0 = time.perf_counter()
        self.ref, self.spacing, self.groups = ref, spacing, groups
        self.parents, self.roots, self.dilate = parents, roots, dilate
        self.ref_counts = value_counts(ref)
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
                multi = len(value_counts(ref_sub[s])) > 1
                dist, near = _distances(outside, sp, ref_sub if multi else None)
                st = _Structure(i, sl, dist, math.inf,
                                near=near if multi else int(ref_sub[s][0]))
            elif outside.any():
                # when the replacement comes from outside S with several labels, the distance
                # transform of S also gives them
                shared = source is outside and len(value_counts(ref_sub[outside])) > 1
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

    def paint(self, radii: np.ndarray, partial: PartialLayer | None = None) -> np.ndarray | None:
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

    def layer(self, case: int, index: int, level_mm: float, seed: int) -> PartialLayer:
        """The voxels of structure ``index`` at distance ``level_mm``, in a seeded order that
        depends only on their position in the volume (not on the crop)."""
        st = next(t for t in self.structures if t.index == index)
        local = np.nonzero(st.dist == np.float32(level_mm))
        offset = [lo + b.start for (lo, _), b in zip(self.case_box, st.box, strict=True)]
        linear = np.ravel_multi_index(tuple(c + o for c, o in zip(local, offset, strict=True)),
                                      self.ref.shape)
        order = np.argsort(_voxel_priority(linear, seed), kind="stable")
        return PartialLayer(case, index, level_mm, tuple(c[order] for c in local))

    def dice(self, crop: np.ndarray | None) -> float:
        """dice_per_case of the painted crop (the rest of the volume equals the reference)."""
        if crop is None:
            return dice_from_counts(self.ref_counts, {}, {})
        diff = crop != self.ref_crop
        return dice_from_counts(self.ref_counts, value_counts(self.ref_crop[diff]),
                                 value_counts(crop[diff]))

    def full(self, crop: np.ndarray | None) -> np.ndarray:
        """The full-size noisy label array (a new array; the reference is not modified)."""
        out = self.ref.copy()
        if crop is not None:
            out[_slices(self.case_box)] = crop
        return out


def corrupt_case(label: np.ndarray, spacing: Sequence[float], radii_mm: Sequence[float],
                 dilate: Sequence[bool],
                 structures: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Corrupt one case with given radii: the building block of
    :func:`nnrobustloss.noise.corrupt_dataset`.

    ``label`` is an integer (z, y, x) array, ``spacing`` its (z, y, x) voxel size in mm;
    ``radii_mm[j]`` (>= 0) and ``dilate[j]`` give structure ``j``'s radius and direction
    (``structures`` as in :func:`~nnrobustloss.noise.corrupt_dataset`; an erosion radius is capped at half the
    structure's greatest depth). Returns a new array of the same shape and dtype whose values
    are reference labels of this case; ``label`` is not modified.
    """
    (lab,) = check_labels([label])
    (sp,) = check_spacings([spacing], 1)
    groups, parents, roots = check_structures(structures)
    radii = np.asarray(radii_mm, dtype=np.float64)
    flags = np.asarray(dilate, dtype=bool)
    if radii.shape != (len(groups),) or not np.all(np.isfinite(radii)) or np.any(radii < 0):
        raise ValueError(f"radii_mm: expected {len(groups)} non-negative finite radii (one per "
                         f"structure), got {radii_mm!r}")
    if flags.shape != (len(groups),):
        raise ValueError(f"dilate: expected {len(groups)} flags (one per structure), "
                         f"got {dilate!r}")
    case = CaseNoise(lab, sp, groups, parents, roots, flags)
    case.prepare(float(radii.max(initial=0.0)))
    return case.full(case.paint(radii))
