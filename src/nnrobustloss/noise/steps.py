"""A case's boundary noise as an exact step function of the radius scale, without its volume.

The calibration (:mod:`nnrobustloss.noise.calibration`) evaluates the mean Dice over all cases
at about ten radius scales. Keeping every case's volume and distance maps for that grows memory
with the number of cases (about 30 GB for the 489 KiTS23 cases). :func:`case_steps` instead reduces
one prepared case to what the Dice needs: the voxels that change label at a scale ``s`` and the
labels they take, as a table of (scale, label counts) steps, a few kB to a few 100 kB a case.

Why this is exact: painting is pointwise. A voxel's noisy label follows from its reference
label, the fixed nearest/replacement labels of each structure at it, and per structure one
boolean, "inside the dilated or eroded mask". That boolean compares the voxel's distance
(float32) with ``float32(min(scale * factor, cap))``, exactly as the painter does, so it flips
once, at the smallest float64 scale for which the comparison holds; that scale is found by
bisection on the float64 bit patterns, with the painter's own arithmetic. Between flips a voxel
keeps its label, and at scale 0 every voxel keeps its reference label. So the lost and gained
label counts, and with them the Dice, are integer step functions of the scale whose steps are
these flip scales; they are tabulated up to the padding's reach (``pad_mm``): a scale beyond
half of it needs a new table (the painter needs a new padding then too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class PreparedStructure(Protocol):
    """What :func:`case_steps` reads of one prepared structure (``noise_paint._Structure``)."""

    index: int
    box: tuple[slice, ...]
    dist: np.ndarray
    cap: float
    near: Any
    repl: Any


@dataclass(frozen=True)
class CaseSteps:
    """Label changes of one case as step functions of the radius scale (:func:`case_steps`).

    ``times`` are the sorted scales where some voxel changes label; row ``i`` of ``lost`` and
    ``gained`` counts, per label value in ``values``, the voxels that differ from the reference
    for scales in ``[times[i], times[i+1])`` (by their reference label, resp. their noisy label).
    ``levels[j]`` are the distinct distances (float32, mm) in (0, min(pad_mm * factor, cap)] of
    structure ``index[j]``'s map, with its ``factor`` and ``cap``, for the change points.
    """

    pad_mm: float
    values: np.ndarray
    times: np.ndarray
    lost: np.ndarray
    gained: np.ndarray
    index: tuple[int, ...]
    factor: tuple[float, ...]
    cap: tuple[float, ...]
    levels: tuple[np.ndarray, ...]

    def counts(self, scale: float) -> tuple[dict[int, int], dict[int, int]]:
        """(lost, gained) label counts at ``scale`` (<= pad_mm / 2), zero counts left out."""
        if not 0.0 <= 2.0 * scale <= self.pad_mm:
            raise ValueError(f"scale {scale} mm is beyond the table's padding {self.pad_mm} mm")
        row = int(np.searchsorted(self.times, scale, side="right")) - 1
        if row < 0:
            return {}, {}
        return ({int(v): int(n) for v, n in zip(self.values, self.lost[row], strict=True) if n},
                {int(v): int(n) for v, n in zip(self.values, self.gained[row], strict=True) if n})

    def breakpoints(self, lo: float, hi: float) -> np.ndarray:
        """Scales in (lo, hi] where a radius ``scale * factor`` crosses a distance level.

        The same values as the painter's own listing on its full distance maps (``hi`` <=
        pad_mm / 2): a level above ``min(hi * factor, cap)`` is never crossed below ``hi``.
        """
        out = [np.zeros(0)]
        for lv, u, cap in zip(self.levels, self.factor, self.cap, strict=True):
            top = min(hi * u, cap)
            scales = np.unique(lv[(lv > 0) & (lv <= top)]).astype(np.float64) / u
            out.append(scales[scales > lo])
        return np.concatenate(out)

    def layer_at(self, edge: float) -> tuple[int, float] | None:
        """(structure, distance level) whose crossing happens at scale ``edge``, if any."""
        for j, lv, u, cap in zip(self.index, self.levels, self.factor, self.cap, strict=True):
            levels = np.unique(lv[(lv > 0) & (lv <= min(edge * u * 1.001, cap))])
            hit = levels[levels.astype(np.float64) / u == edge]
            if hit.size:
                return j, float(hit[0])
        return None


def _threshold(scale: np.ndarray, u: float, cap: float) -> np.ndarray:
    """The painter's comparison value: float32(min(scale * u, cap)) (numpy casts a Python float
    compared with a float32 array to float32)."""
    return np.minimum(scale * u, cap).astype(np.float32)


def crossing_scales(levels: np.ndarray, u: float, cap: float) -> np.ndarray:
    """Per float32 distance level (> 0, <= float32(cap)), the smallest float64 scale ``s`` with
    ``level <= float32(min(s * u, cap))``: where the painter's mask flips for that level.

    Bisection on the bit patterns of non-negative float64 values (ordered like the values).
    """
    levels = np.asarray(levels, dtype=np.float32)
    if levels.size == 0:
        return np.zeros(0)
    # false at 0 (levels > 0); true at 2 * level / u, or where min(.., cap) = cap >= level
    lo = np.zeros(levels.size, dtype=np.int64)
    hi = (2.0 * levels.astype(np.float64) / u).view(np.int64)
    if not np.all(levels <= _threshold(hi.view(np.float64), u, cap)):
        raise ValueError("crossing_scales: a level above float32(cap) never flips")
    while np.any(hi - lo > 1):
        mid = lo + (hi - lo) // 2
        ok = levels <= _threshold(mid.view(np.float64), u, cap)
        hi = np.where(ok, mid, hi)
        lo = np.where(ok, lo, mid)
    return hi.view(np.float64)


def case_steps(ref_crop: np.ndarray, structures: Sequence[PreparedStructure],
               groups: Sequence[Sequence[int]], parents: Sequence[int | None],
               dilate: np.ndarray, factors: np.ndarray, pad_mm: float) -> CaseSteps:
    """Tabulate the label changes of one prepared case over the radius scale (module docstring).

    ``ref_crop``: the case's reference labels on its padded crop; ``structures``: its prepared
    structures in painting order (boxes are slices of the crop); ``groups[j]``, ``parents[j]``,
    ``dilate[j]``, ``factors[j]``: label values, enclosing group, direction and radius factor of
    structure ``j``; ``pad_mm``: the padding the case was prepared for. The result gives, for
    every scale in [0, pad_mm / 2], the lost and gained label counts of painting at that scale.
    """
    shape = ref_crop.shape
    per_struct: list[tuple[np.ndarray, np.ndarray]] = []  # (crop linear index, flip scale)
    index, factor, cap, levels = [], [], [], []
    for st in structures:
        u = float(factors[st.index])
        if u <= 0.0:  # radius 0 at every scale: the mask never flips
            per_struct.append((np.zeros(0, np.int64), np.zeros(0)))
            continue
        band = (st.dist > 0) & (st.dist <= min(pad_mm * u, st.cap))
        local = np.nonzero(band)
        lv, inverse = np.unique(st.dist[local], return_inverse=True)
        index.append(st.index)
        factor.append(u)
        cap.append(st.cap)
        levels.append(lv)
        coords = tuple(c + b.start for c, b in zip(local, st.box, strict=True))
        per_struct.append((np.ravel_multi_index(coords, shape),
                           crossing_scales(lv, u, st.cap)[inverse.ravel()]))
    active = np.unique(np.concatenate([lin for lin, _ in per_struct] + [np.zeros(0, np.int64)]))
    n, n_s = active.size, len(structures)
    flips = np.full((n, n_s), np.inf)
    for j, (lin, c) in enumerate(per_struct):
        flips[np.searchsorted(active, lin), j] = c
    pos = np.unravel_index(active, shape)
    ref = ref_crop[pos]

    # per active voxel and structure: inside its box, its distance, nearest/replacement label
    inside = np.zeros((n, n_s), dtype=bool)
    dist = np.zeros((n, n_s), dtype=np.float32)
    near = np.zeros((n, n_s), dtype=np.int64)
    repl = np.zeros((n, n_s), dtype=np.int64)
    missing = np.zeros((2, n_s), dtype=bool)  # no nearest / replacement labels (None)
    for j, st in enumerate(structures):
        ok = np.ones(n, dtype=bool)
        for p, b in zip(pos, st.box, strict=True):
            ok &= (p >= b.start) & (p < b.stop)
        inside[:, j] = ok
        loc = tuple(p[ok] - b.start for p, b in zip(pos, st.box, strict=True))
        dist[ok, j] = st.dist[loc]
        for w, (table, src) in enumerate(((near, st.near), (repl, st.repl))):
            if src is None:
                missing[w, j] = True
            elif isinstance(src, (int, np.integer)):
                table[ok, j] = int(src)
            else:
                table[ok, j] = src[loc]
    values = np.unique(np.concatenate([ref.astype(np.int64).ravel(), near[inside], repl[inside],
                                       np.zeros(0, np.int64)]))
    ref_i = np.searchsorted(values, ref)
    near_i, repl_i = np.searchsorted(values, near), np.searchsorted(values, repl)
    member = [np.isin(values, list(g)) for g in groups]

    def paint(t: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Noisy label indices of the voxels ``rows`` at scales ``t`` (one per voxel)."""
        lab = ref_i[rows].copy()
        for j, st in enumerate(structures):
            flipped = flips[rows, j] <= t
            d = dist[rows, j]
            m = ((d == 0) | flipped) if dilate[st.index] else ((d > 0) & ~flipped)
            m &= inside[rows, j]
            parent = parents[st.index]
            if parent is not None:
                m &= member[parent][lab]
            cur = member[st.index][lab] & inside[rows, j]
            add, rem = m & ~cur, cur & ~m
            if (missing[0, j] and add.any()) or (missing[1, j] and rem.any()):
                raise AssertionError("boundary noise: missing replacement labels")
            lab[add] = near_i[rows[add], j]
            lab[rem] = repl_i[rows[rem], j]
        return lab

    # a voxel's label is constant between its sorted flip scales: paint at each of them
    events_t, events_v, events_d = [], [], []  # scale, label index into lost/gained, +-1
    prev = ref_i.copy()
    order = np.sort(flips, axis=1)
    for k in range(n_s):
        rows = np.flatnonzero(np.isfinite(order[:, k]))
        t = order[rows, k]
        lab = paint(t, rows)
        ch = lab != prev[rows]
        rows, t, old, new = rows[ch], t[ch], prev[rows][ch], lab[ch]
        r = ref_i[rows]
        for sel, sign, cls_lost, cls_gain in ((old != r, -1, r, old), (new != r, 1, r, new)):
            events_t.append(np.repeat(t[sel], 2))
            events_v.append(np.stack([cls_lost[sel], cls_gain[sel] + values.size], 1).ravel())
            events_d.append(np.full(2 * int(sel.sum()), sign, dtype=np.int64))
        prev[rows] = new
    t_all = np.concatenate(events_t + [np.zeros(0)])
    times, row = np.unique(t_all, return_inverse=True)
    width = 2 * values.size
    flat = row.ravel() * width + np.concatenate(events_v + [np.zeros(0, np.int64)])
    sign = np.concatenate(events_d + [np.zeros(0, np.int64)])
    table = (np.bincount(flat[sign > 0], minlength=times.size * width)
             - np.bincount(flat[sign < 0], minlength=times.size * width))
    table = np.cumsum(table.reshape(times.size, width), axis=0)
    if table.size and table.min() < 0:
        raise AssertionError("boundary noise: negative label counts in the step table")
    return CaseSteps(pad_mm=float(pad_mm), values=values, times=times,
                     lost=table[:, :values.size], gained=table[:, values.size:],
                     index=tuple(index), factor=tuple(factor), cap=tuple(cap),
                     levels=tuple(levels))
