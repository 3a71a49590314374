"""Calibration of the boundary noise: the radius scale that gives a target mean Dice.

For every case ``i`` and structure ``j``, :class:`BoundaryNoise` draws once (from
``numpy.random.default_rng(seed)``) a direction ``dilate[i, j]`` and a radius factor in [0, 2);
the radius is ``scale * factor`` mm, and only the common ``scale`` is calibrated so that the mean
over cases of :func:`~nnrobustloss.noise.dice.dice_per_case` (noisy vs reference) equals the
target. Holding the draws fixed (common random numbers) makes the mean Dice a non-increasing
step function of the scale: it changes only where a radius crosses one of the voxel-centre
distances of a structure's distance map. The search (:func:`_bracket_steps`) brackets the
target, lists these change points and bisects over them (about ten evaluations), finding the
two neighbouring steps around it; the closer one is taken.

A structure's boundary moves by whole voxel layers, so one step moves the mean Dice by up to
(class Dice change) / (classes x cases). At the target 0.96 the closer step is 0.0006 off on the
12 real KiTS23 cases of the benchmark, but up to 0.012 on a few cases: on random subsets of 2 to
6 of them it was more than 0.001 off in 19 of 32 and more than :data:`DICE_TOLERANCE` off in 3
(the 4 cropped cases of tests/test_noise_streaming.py: steps at 0.9658 and 0.9547; the 3 cases
of config/kits23_stages.yaml: 0.0018 off). So when the closer step is more than 0.001 off,
:func:`_refine` resolves the step to single voxels: only the first n voxels (in a seeded order
fixed by their positions, :class:`~nnrobustloss.noise.paint.PartialLayer`) of the one distance
layer that the step adds or removes are moved, with n bisected. That single partial layer is
the only departure from plain dilation/erosion, and it is reported in :class:`NoiseCalibration`.
When it cannot be used (several structures cross at the same scale, or the layer does not
bracket the target) the closer whole-layer step stands. If the result (whole step, or the best
count of the partial layer: a structure of a few voxels) is more than :data:`DICE_TOLERANCE`
off, :class:`NoiseCalibrationError` is raised with both steps' mean Dice.

Memory is bounded by one case: each case is reduced, as it is added, to its label counts and
the exact step table of its label changes over the scale (:mod:`nnrobustloss.noise.steps`, a
few kB), on which the search evaluates the mean Dice; the distance maps are computed again when
the case is painted (:mod:`nnrobustloss.noise.paint`). Cases are loaded again only for a partial
layer (that one case) and when the scale passes half the tables' padding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from nnrobustloss.errors import NNRobustLossError
from nnrobustloss.noise.dice import dice_from_counts
from nnrobustloss.noise.inputs import (
    DEFAULT_TARGET_DICE,
    check_label,
    check_seed,
    check_spacing,
    check_structures,
    check_target,
)
from nnrobustloss.noise.paint import CaseNoise, PartialLayer
from nnrobustloss.noise.steps import CaseSteps, case_steps

DICE_TOLERANCE = 0.005
"""Largest accepted distance between the achieved mean Dice and the target."""

_FINE_TOLERANCE = 0.001  # beyond this, the last whole-layer step is resolved to single voxels
_INITIAL_SCALE_MM = 1.0  # docs/noise.md: about 0.7 mm gives mean Dice 0.96 on real KiTS23 cases


class NoiseCalibrationError(NNRobustLossError, ValueError):
    """The target Dice cannot be reached on this dataset (e.g. no case has any structure)."""


@dataclass(frozen=True)
class NoiseCalibration:
    """What :func:`~nnrobustloss.noise.corrupt_dataset_with_calibration` (or
    :meth:`BoundaryNoise.calibrate`, without ``paint_seconds``) did, for logs and benchmarks.

    ``scale_mm`` is the calibrated scale: structure ``j`` of case ``i`` was dilated
    (``dilate[i, j]``) or eroded by ``scale_mm * radius_factors[i, j]`` mm, factors in [0, 2).
    ``case_dice`` are the per-case :func:`~nnrobustloss.noise.dice.dice_per_case` values,
    ``mean_dice`` their mean; ``evaluations`` counts the calibration's evaluations of the mean
    Dice (a look-up in every case's step table, or a repaint of one case for a partial layer).
    ``partial_layer`` is None, or
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
    :func:`~nnrobustloss.noise.corrupt_dataset`; ``add_case(k, label, spacing)`` for every case
    ``k`` in ``range(n_cases)`` keeps only a summary (label counts and the step table of
    :mod:`nnrobustloss.noise.steps`, a few kB); ``calibrate(load)`` finds the scale;
    ``paint(k, label, spacing)`` then returns case ``k``'s noisy labels. ``load(k)`` must give
    the case again as added: the calibration calls it only for the one case of a partial layer,
    and for every case when the scale passes half the step tables' padding (4 mm at first, so
    only for strong noise, mean Dice below about 0.8 on KiTS23). The noisy labels are exactly
    those of :func:`~nnrobustloss.noise.corrupt_dataset` on all cases at once (it is built on
    this class).
    ``log``, when given, receives a progress line per case loaded again.
    Bad arguments raise ValueError naming them; an unreachable target NoiseCalibrationError.
    """

    def __init__(self, n_cases: int, target_dice: float = DEFAULT_TARGET_DICE, seed: int = 0,
                 structures: Sequence[Sequence[int]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if isinstance(n_cases, bool) or not isinstance(n_cases, (int, np.integer)) \
                or n_cases < 1:
            raise ValueError(f"n_cases: {n_cases!r} must be a positive integer")
        self.n_cases = int(n_cases)
        self.target = check_target(target_dice)
        self.seed = check_seed(seed)
        self.groups, self.parents, self.roots = check_structures(structures)
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

    def _case(self, k: int, label: np.ndarray, spacing: Sequence[float]) -> CaseNoise:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) \
                or not 0 <= k < self.n_cases:
            raise ValueError(f"case index {k!r} must be an integer in [0, {self.n_cases})")
        lab, sp = check_label(label, int(k)), check_spacing(spacing, int(k))
        return CaseNoise(lab, sp, self.groups, self.parents, self.roots, self.dilate[k])

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
            return dice_from_counts(s.ref_counts, {}, {})
        return dice_from_counts(s.ref_counts, *s.steps.counts(scale))

    def prepared_case(self, k: int, load: Loader) -> CaseNoise:
        """Case ``k`` loaded again and prepared for the current padding."""
        c = self._case(k, *load(k))
        c.prepare(self.pad_mm)
        return c

    def calibrate(self, load: Loader) -> NoiseCalibration:
        """Find the radius scale (see :func:`~nnrobustloss.noise.corrupt_dataset`) from the
        cases' summaries.

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



class _MeanDice:
    """The calibration objective: mean dice_per_case at a radius scale, memoised."""

    def __init__(self, noise: BoundaryNoise, load: Loader) -> None:
        self.noise, self.load, self.factors = noise, load, noise.factors
        self.memo: dict[float, tuple[float, list[float]]] = {}
        self.partial_memo: dict[tuple[float, int], tuple[float, list[float]]] = {}
        self._case: tuple[int, CaseNoise] | None = None  # the one case of a partial layer

    def __call__(self, scale: float) -> float:
        if scale not in self.memo:
            if 2.0 * scale > self.noise.pad_mm:  # the largest radius is scale * 2
                self.noise.resummarise(4.0 * scale, self.load)  # headroom: the bracket may
                self._case = None                               # double once more
            per_case = [self.noise.case_dice(k, scale) for k in range(self.noise.n_cases)]
            self.memo[scale] = (float(np.mean(per_case)), per_case)
        return self.memo[scale][0]

    def case(self, k: int) -> CaseNoise:
        """Case ``k`` with its distance maps (loaded again; only the last one is kept)."""
        if self._case is None or self._case[0] != k:
            self._case = None
            if self.noise.log:
                self.noise.log(f"boundary noise: case {k + 1}/{self.noise.n_cases} again, for "
                               "a partial layer")
            self._case = (k, self.noise.prepared_case(k, self.load))
        return self._case[1]

    def partial_mean(self, scale: float, partial: PartialLayer) -> float:
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
            seed: int) -> PartialLayer | None:
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
