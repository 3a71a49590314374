"""Tests of nnrobustloss.noise: Dice per case, boundary-noise corruption and its calibration."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnrobustloss.noise import (
    DEFAULT_TARGET_DICE,
    DICE_TOLERANCE,
    KITS23_STRUCTURES,
    BoundaryNoise,
    NoiseCalibrationError,
    corrupt_case,
    corrupt_dataset,
    corrupt_dataset_with_calibration,
    dice_per_case,
)

KITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits23_labels"


# ------------------------------------------------------------------------------ fixtures


def ellipsoid(shape, spacing, center, radii) -> np.ndarray:
    """Boolean ellipsoid; center and radii in mm, in (z, y, x) order."""
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)],
                       indexing="ij", sparse=True)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii, strict=True)) <= 1.0


def kits_like(n_cases=16, seed=0, shape=(24, 64, 64), spacing=(2.0, 0.75, 0.75),
              dtype=np.uint8):
    """Organ (1) with a tumour (2) and, in two cases of three, a cyst (3) inside it."""
    rng = np.random.default_rng(seed)
    extent = np.array(shape) * np.array(spacing)
    labels = []
    for k in range(n_cases):
        c = extent / 2 + rng.uniform(-2, 2, 3)
        r = rng.uniform(12, 17, 3)
        lab = np.zeros(shape, dtype)
        lab[ellipsoid(shape, spacing, c, r)] = 1
        tumour = ellipsoid(shape, spacing, c + [0, r[1] * 0.45, 0], r * rng.uniform(0.35, 0.5))
        lab[tumour & (lab == 1)] = 2
        if k % 3 != 2:
            cyst = ellipsoid(shape, spacing, c - [0, r[1] * 0.4, 0], r * rng.uniform(0.25, 0.35))
            lab[cyst & (lab == 1)] = 3
        labels.append(lab)
    return labels, [spacing] * n_cases


def two_blobs(n_cases=12, seed=1, shape=(40, 40, 40), spacing=(1.0, 1.0, 1.0)):
    """A generic label map: two separate ellipsoids labelled 1 and 2 (no hierarchy)."""
    rng = np.random.default_rng(seed)
    labels = []
    for _ in range(n_cases):
        lab = np.zeros(shape, np.int16)
        lab[ellipsoid(shape, spacing, [20, 12, 20] + rng.uniform(-2, 2, 3),
                      rng.uniform(6, 10, 3))] = 1
        lab[ellipsoid(shape, spacing, [20, 29, 20] + rng.uniform(-2, 2, 3),
                      rng.uniform(5, 8, 3))] = 2
        labels.append(lab)
    return labels, [spacing] * n_cases


def corrupt_full(mask: np.ndarray, spacing, radius: float, dilate: bool) -> np.ndarray:
    """Reference implementation on the whole volume: EDT threshold with the erosion cap."""
    if dilate:
        return ndimage.distance_transform_edt(~mask, sampling=spacing) <= radius
    depth = ndimage.distance_transform_edt(mask, sampling=spacing).astype(np.float32)
    return depth > min(radius, 0.5 * float(depth.max()))


def region(lab: np.ndarray, group) -> np.ndarray:
    return np.isin(lab, group)


def brute_dice(noisy: np.ndarray, ref: np.ndarray) -> float:
    classes = sorted((set(np.unique(noisy)) | set(np.unique(ref))) - {0})
    if not classes:
        return 1.0
    scores = []
    for c in classes:
        a, b = noisy == c, ref == c
        scores.append(2 * np.sum(a & b) / (a.sum() + b.sum()))
    return float(np.mean(scores))


# ------------------------------------------------------------------------------ dice_per_case


def test_dice_per_case_hand_computed():
    ref = np.zeros((1, 2, 6), np.uint8)
    ref[0, 0, :4] = 1  # class 1: 4 voxels
    ref[0, 1, :2] = 2  # class 2: 2 voxels
    noisy = ref.copy()
    noisy[0, 0, 3] = 0  # class 1 loses one voxel ...
    noisy[0, 1, 2] = 2  # ... class 2 gains one
    # class 1: 2*3/(3+4) = 6/7; class 2: 2*2/(3+2) = 4/5
    assert dice_per_case(noisy, ref) == pytest.approx((6 / 7 + 4 / 5) / 2)
    # a class only in the noisy array scores 0 and counts in the mean
    noisy[0, 1, 5] = 7
    assert dice_per_case(noisy, ref) == pytest.approx((6 / 7 + 4 / 5 + 0) / 3)


def test_dice_per_case_empty_and_identical():
    empty = np.zeros((3, 4, 5), np.int32)
    assert dice_per_case(empty, empty) == 1.0
    one = empty.copy()
    one[1, 1, 1] = 2
    assert dice_per_case(one, one) == 1.0
    assert dice_per_case(empty, one) == 0.0
    assert dice_per_case(one, empty) == 0.0


def test_dice_per_case_matches_brute_force_on_random_labels():
    rng = np.random.default_rng(3)
    for values in ([0, 1, 2, 3], [0, -5, 70000, 9]):  # bincount and unique paths
        ref = rng.choice(values, size=(6, 7, 8)).astype(np.int64)
        noisy = np.where(rng.random(ref.shape) < 0.3, rng.choice(values, size=ref.shape), ref)
        assert dice_per_case(noisy, ref) == pytest.approx(brute_dice(noisy, ref))


def test_dice_per_case_bad_arguments():
    a = np.zeros((2, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        dice_per_case(a, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="noisy.*integer"):
        dice_per_case(a.astype(float), a)
    with pytest.raises(ValueError, match="reference.*integer"):
        dice_per_case(a, a.astype(bool))


# ------------------------------------------------------------------------------ corrupt_case


@pytest.mark.parametrize("dilate, radius, spacing", [
    (True, 2.0, (1.0, 0.5, 0.75)),
    (False, 3.0, (1.0, 0.5, 0.75)),
    (True, 1.5, (0.6, 0.6, 0.6)),
    (False, 2.5, (1.0, 0.7, 0.7)),
    (True, 2.5, (2.0, 0.7, 0.7)),
])
def test_ball_volume_after_dilation_or_erosion_matches_analytic(dilate, radius, spacing):
    """A ball of 10 mm grows or shrinks by r mm, up to the voxel lattice.

    Thresholding centre-to-centre distances moves a boundary by r rounded down to whole
    voxels along each axis, i.e. by between r - spacing and r; voxelising a ball itself costs a
    few percent of volume at these resolutions.
    """
    r0 = 10.0
    shape = tuple(int(math.ceil(36 / s)) for s in spacing)
    center = [n * s / 2 for n, s in zip(shape, spacing, strict=True)]
    ball = ellipsoid(shape, spacing, center, [r0] * 3).astype(np.uint8)
    out = corrupt_case(ball, spacing, [radius], [dilate], structures=[(1,)])

    def volume(r):
        return 4 / 3 * math.pi * r ** 3

    measured = out.sum() * float(np.prod(spacing))
    step = max(spacing)
    if dilate:
        low, high = volume(r0 + radius - step), volume(r0 + radius)
    else:
        low, high = volume(r0 - radius), volume(r0 - radius + step)
    assert 0.97 * low <= measured <= 1.03 * high
    assert ball.sum() * float(np.prod(spacing)) == pytest.approx(volume(r0), rel=0.03)
    if max(spacing) <= 1.0 and radius / max(spacing) == int(radius / max(spacing)):
        # radius on the lattice of every axis: close to the analytic ball
        assert measured == pytest.approx(volume(r0 + (radius if dilate else -radius)),
                                         rel=0.06)


def test_coarse_axis_moves_by_whole_voxels():
    """Distances are between voxel centres: with 2 mm slices, 2.5 mm moves one slice."""
    sp = (2.0, 0.5, 0.5)
    lab = np.zeros((15, 40, 40), np.uint8)
    lab[5:10, 10:30, 10:30] = 1
    grown = corrupt_case(lab, sp, [2.5], [True], structures=[(1,)])
    zs = np.flatnonzero(grown.any(axis=(1, 2)))
    assert (zs.min(), zs.max()) == (4, 10)
    ys = np.flatnonzero(grown.any(axis=(0, 2)))
    assert (ys.min(), ys.max()) == (5, 34)  # 2.5 mm = 5 voxels of 0.5 mm
    shrunk = corrupt_case(lab, sp, [2.5], [False], structures=[(1,)])
    assert shrunk.sum() == 3 * 10 * 10  # slices 6..8 and 10 in-plane voxels per side left


def test_zero_radius_is_identity_and_input_untouched():
    labels, spacings = kits_like(n_cases=2)
    lab = labels[0]
    lab.flags.writeable = False  # any in-place write would raise
    out = corrupt_case(lab, spacings[0], [0.0, 0.0, 0.0], [True, False, True])
    assert out is not lab and np.array_equal(out, lab) and out.dtype == lab.dtype


def test_root_dilation_with_fixed_inner_structures():
    """Dilating kidney+masses only: inner structures keep their extent, the ring is kidney."""
    labels, (sp, *_) = kits_like(n_cases=3)
    for lab in labels:
        out = corrupt_case(lab, sp, [1.6, 0.0, 0.0], [True, True, True])
        grown = corrupt_full(lab > 0, sp, 1.6, True)
        assert np.array_equal(out > 0, grown)
        assert np.array_equal(region(out, (2, 3)), region(lab, (2, 3)))
        assert np.array_equal(out == 2, lab == 2)
        assert set(np.unique(out[(out > 0) & (lab == 0)])) == {1}


def test_tumour_erosion_gives_way_to_nearest_kidney_or_cyst():
    """Removed tumour voxels take the label of a nearest reference voxel of label 1 or 3."""
    sp = (1.5, 1.0, 1.0)
    lab = np.zeros((12, 30, 30), np.uint8)
    lab[1:11, 2:28, 2:28] = 1
    lab[3:9, 8:20, 8:20] = 2
    lab[3:9, 20:24, 8:20] = 3  # a cyst touching the tumour on one side
    out = corrupt_case(lab, sp, [0.0, 0.0, 2.2], [True, True, False])
    removed = np.argwhere((lab == 2) & (out != 2))
    assert len(removed) > 0
    others = np.argwhere(np.isin(lab, (1, 3)))
    for v in removed:
        d = np.sqrt((((others - v) * sp) ** 2).sum(axis=1))
        nearest = set(lab[tuple(others[d <= d.min() + 1e-6].T)])
        assert out[tuple(v)] in nearest
    assert {1, 3} <= set(np.unique(out[(lab == 2) & (out != 2)]))
    # everything outside the tumour is unchanged
    assert np.array_equal(out[lab != 2], lab[lab != 2])


def test_nothing_is_created_from_nothing():
    """A case without cyst never gets one; without masses it stays kidney only."""
    sp = (1.0, 1.0, 1.0)
    lab = np.zeros((20, 30, 30), np.uint8)
    lab[ellipsoid(lab.shape, sp, [10, 15, 15], [7, 11, 11])] = 1
    lab[ellipsoid(lab.shape, sp, [10, 18, 15], [4, 4, 4])] = 2
    for flips in ([True, True, True], [False, False, False], [True, False, True],
                  [False, True, False]):
        out = corrupt_case(lab, sp, [1.8, 1.8, 1.8], flips)
        assert set(np.unique(out)) == {0, 1, 2}
    kidney_only = (lab > 0).astype(np.uint8)
    out = corrupt_case(kidney_only, sp, [1.8, 1.8, 1.8], [False, True, True])
    assert set(np.unique(out)) == {0, 1}
    empty = np.zeros_like(lab)
    assert not corrupt_case(empty, sp, [2, 2, 2], [True, True, True]).any()


def test_erosion_never_erases_a_structure():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[4:7, 4:7, 4:7] = 1  # 3 voxels thick
    out = corrupt_case(lab, (1, 1, 1), [5.0], [False], structures=[(1,)])
    assert out.sum() == 1 and out[5, 5, 5] == 1


def test_corrupt_case_bad_arguments():
    lab = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="radii_mm"):
        corrupt_case(lab, (1, 1, 1), [1.0, 1.0], [True, True, True])
    with pytest.raises(ValueError, match="radii_mm"):
        corrupt_case(lab, (1, 1, 1), [1.0, -1.0, 1.0], [True, True, True])
    with pytest.raises(ValueError, match="dilate"):
        corrupt_case(lab, (1, 1, 1), [1.0, 1.0, 1.0], [True])


# ------------------------------------------------------------------------------ corrupt_dataset


@pytest.mark.parametrize("target", [0.90, 0.96, 0.98])
def test_calibration_hits_target_nested_anisotropic(target):
    labels, spacings = kits_like()
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, target, seed=0)
    achieved = np.mean([dice_per_case(n, r) for n, r in zip(noisy, labels, strict=True)])
    assert abs(achieved - target) <= DICE_TOLERANCE
    assert info.mean_dice == pytest.approx(achieved)
    assert info.case_dice == pytest.approx([dice_per_case(n, r)
                                            for n, r in zip(noisy, labels, strict=True)])
    assert info.scale_mm > 0 and info.evaluations >= 2


@pytest.mark.parametrize("target", [0.85, 0.93])
def test_calibration_hits_target_generic_label_map(target):
    labels, spacings = two_blobs()
    noisy = corrupt_dataset(labels, spacings, target, seed=4, structures=[(1,), (2,)])
    achieved = np.mean([dice_per_case(n, r) for n, r in zip(noisy, labels, strict=True)])
    assert abs(achieved - target) <= DICE_TOLERANCE
    for n, r in zip(noisy, labels, strict=True):
        assert n.dtype == np.int16 and set(np.unique(n)) <= set(np.unique(r))


def test_mean_dice_decreases_with_target():
    labels, spacings = kits_like(n_cases=8)
    scales = [corrupt_dataset_with_calibration(labels, spacings, t, seed=2)[1].scale_mm
              for t in (0.97, 0.93, 0.88)]
    assert scales[0] < scales[1] < scales[2]


def test_deterministic_per_seed_and_different_across_seeds():
    labels, spacings = kits_like(n_cases=8)
    a = corrupt_dataset(labels, spacings, 0.95, seed=7)
    b = corrupt_dataset(labels, spacings, 0.95, seed=7)
    c = corrupt_dataset(labels, spacings, 0.95, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_inputs_untouched_and_shapes_dtypes_labels_preserved():
    labels, spacings = kits_like(n_cases=9)
    labels = [lab.astype(dt) for lab, dt in zip(labels, [np.uint8, np.int16, np.int32] * 3,
                                                strict=True)]
    copies = [lab.copy() for lab in labels]
    for lab in labels:
        lab.flags.writeable = False
    spacings = [np.array(s) for s in spacings]
    noisy = corrupt_dataset(labels, spacings, 0.94, seed=1)
    assert len(noisy) == len(labels)
    for n, lab, cp in zip(noisy, labels, copies, strict=True):
        assert np.array_equal(lab, cp)
        assert n.shape == lab.shape and n.dtype == lab.dtype
        assert set(np.unique(n)) <= set(np.unique(lab))
        assert not np.shares_memory(n, lab)


@pytest.mark.parametrize("n_cases, target, seed", [(9, 0.93, 5), (16, 0.96, 0)])
def test_hierarchy_inner_structures_inside_corrupted_outer(n_cases, target, seed):
    """Check every case against whole-volume dilations/erosions with the recorded radii.

    The second dataset ends with a partial layer; that structure's corruption is then only
    known to lie between its radius and the layer's distance.
    """
    labels, spacings = kits_like(n_cases=n_cases)
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, target, seed=seed)
    assert (info.partial_layer is not None) == (n_cases == 16)
    groups = KITS23_STRUCTURES
    (g0, g1, g2) = groups
    for k, (n, ref, sp) in enumerate(zip(noisy, labels, spacings, strict=True)):
        r = info.scale_mm * info.radius_factors[k]
        d = info.dilate[k]
        low, high = [], []
        for j, g in enumerate(groups):
            m = corrupt_full(region(ref, g), sp, r[j], d[j])
            other = m
            if info.partial_layer is not None and info.partial_layer[:2] == (k, j):
                other = corrupt_full(region(ref, g), sp, info.partial_layer[2], d[j])
                moved = int(np.sum(m != other))
                assert moved == info.partial_layer[4] and 0 < info.partial_layer[3] < moved
            low.append(m & other)
            high.append(m | other)
        # the outer structure is its corruption (masses give way to kidney, not to
        # background) and the innermost one its own clipped to the outer ones'
        assert not np.any(low[0] & ~region(n, g0)) and not np.any(region(n, g0) & ~high[0])
        inner_low, inner_high = low[2] & low[1] & low[0], high[2] & high[1] & high[0]
        assert not np.any(inner_low & ~region(n, g2))
        assert not np.any(region(n, g2) & ~inner_high)
        if info.partial_layer is None or info.partial_layer[0] != k:
            assert np.array_equal(region(n, g0), low[0])
            assert np.array_equal(region(n, g2), inner_low)
        # the masses lie inside their corruption clipped to the outer one; only the tumour
        # step carves them (an eroded tumour gives way to the nearest kidney or cyst)
        assert not np.any(region(n, g1) & ~(high[1] & high[0]))
        assert not np.any((low[1] & low[0]) & ~region(n, g1) & low[2])


def test_partial_layer_resolves_a_coarse_step():
    """One ball: whole-layer steps are far apart, a partial layer hits the target closely."""
    sp = (1.0, 0.8, 0.8)
    ball = ellipsoid((24, 30, 30), sp, [12, 12, 12], [7, 7, 7]).astype(np.uint8)
    noisy, info = corrupt_dataset_with_calibration([ball], [sp], 0.9, seed=3,
                                                   structures=[(1,)])
    assert abs(dice_per_case(noisy[0], ball) - 0.9) <= 0.001
    case, j, level, moved, size = info.partial_layer
    assert (case, j) == (0, 0) and 0 < moved < size
    r = info.scale_mm * info.radius_factors[0, 0]
    dilate = bool(info.dilate[0, 0])
    at_r = corrupt_full(ball > 0, sp, r, dilate)
    at_level = corrupt_full(ball > 0, sp, level, dilate)
    assert int(np.sum(at_r != at_level)) == size  # the whole layer between the two steps
    changed = (noisy[0] > 0) != at_r
    assert changed.sum() == moved and not np.any(changed & (at_r == at_level))
    # both whole-layer steps are off by more than the fine tolerance
    assert abs(dice_per_case(at_r.astype(np.uint8), ball) - 0.9) > 0.001
    assert abs(dice_per_case(at_level.astype(np.uint8), ball) - 0.9) > 0.001


def test_target_one_gives_exact_copies():
    labels, spacings = kits_like(n_cases=3)
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, 1.0)
    assert info.scale_mm == 0.0 and info.mean_dice == 1.0
    assert all(np.array_equal(n, r) and n is not r for n, r in zip(noisy, labels, strict=True))


def test_empty_cases_keep_dice_one_and_count_in_the_mean():
    labels, spacings = kits_like(n_cases=12)
    labels = labels + [np.zeros((8, 8, 8), np.uint8)] * 2
    spacings = spacings + [(1.0, 1.0, 1.0)] * 2
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, 0.95, seed=0)
    assert info.case_dice[-2:] == (1.0, 1.0)
    assert not noisy[-1].any()
    assert abs(np.mean(info.case_dice) - 0.95) <= DICE_TOLERANCE


# ------------------------------------------------------------------------------ errors


def _one():
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:6, 2:6, 2:6] = 1
    return lab


@pytest.mark.parametrize("kwargs, match", [
    (dict(labels=[_one(), _one()], spacings=[(1, 1, 1)]), "spacings: 1 spacings for 2"),
    (dict(spacings=[(1, 1)]), r"spacings\[0\]"),
    (dict(spacings=[(1, 0, 1)]), r"spacings\[0\]"),
    (dict(spacings=[(1, -1, 1)]), r"spacings\[0\]"),
    (dict(spacings=[(1, float("nan"), 1)]), r"spacings\[0\]"),
    (dict(spacings=[(1, float("inf"), 1)]), r"spacings\[0\]"),
    (dict(spacings=[("a", 1, 1)]), r"spacings\[0\]"),
    (dict(labels=[_one().astype(np.float32)]), r"labels\[0\].*integer"),
    (dict(labels=[_one().astype(bool)]), r"labels\[0\].*integer"),
    (dict(labels=[_one()[0]]), r"labels\[0\].*3-D"),
    (dict(labels=[]), "labels"),
    (dict(labels=_one()), "labels"),
    (dict(target_dice=0.0), "target_dice"),
    (dict(target_dice=1.2), "target_dice"),
    (dict(target_dice=float("nan")), "target_dice"),
    (dict(target_dice="high"), "target_dice"),
    (dict(seed=-1), "seed"),
    (dict(seed=1.5), "seed"),
    (dict(structures=[(1, 2), (2, 3)]), "overlap"),
    (dict(structures=[(2,), (1, 2)]), "outer to inner"),
    (dict(structures=[(1,), (1,)]), "twice"),
    (dict(structures=[(0, 1)]), "background"),
    (dict(structures=[]), "structures"),
    (dict(structures=[(1.5,)]), "structures"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    args = dict(labels=[_one()], spacings=[(1, 1, 1)], target_dice=0.9, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        corrupt_dataset(**args)


def test_all_empty_cases_cannot_reach_a_target():
    labels = [np.zeros((5, 5, 5), np.uint8), np.full((5, 5, 5), 7, np.uint8)]
    with pytest.raises(NoiseCalibrationError, match="no case contains"):
        corrupt_dataset(labels, [(1, 1, 1)] * 2, 0.96)
    # target 1 needs no noise and is fine
    assert all(np.array_equal(n, r) for n, r in
               zip(corrupt_dataset(labels, [(1, 1, 1)] * 2, 1.0), labels, strict=True))


def test_unreachable_and_too_coarse_targets_raise():
    # a single structure drawn for erosion (capped at half its depth): the Dice cannot get
    # near 0; the draws do not depend on the target, so a reachable target reveals them
    ball = ellipsoid((20, 20, 20), (1, 1, 1), [10, 10, 10], [6, 6, 6]).astype(np.uint8)
    seed = next(s for s in range(20) if not corrupt_dataset_with_calibration(
        [ball], [(1, 1, 1)], 1.0, seed=s, structures=[(1,)])[1].dilate[0, 0])
    with pytest.raises(NoiseCalibrationError, match="cannot be reached"):
        corrupt_dataset([ball], [(1, 1, 1)], 0.05, seed=seed, structures=[(1,)])
    # a single voxel dilated: one more voxel already gives Dice 2/3, 0.97 lies in that jump
    dot = np.zeros((5, 5, 5), np.uint8)
    dot[2, 2, 2] = 1
    seed = next(s for s in range(20) if corrupt_dataset_with_calibration(
        [dot], [(1, 1, 1)], 1.0, seed=s, structures=[(1,)])[1].dilate[0, 0])
    with pytest.raises(NoiseCalibrationError, match="jumps"):
        corrupt_dataset([dot], [(1, 1, 1)], 0.97, seed=seed, structures=[(1,)])


# ------------------------------------------------------------------------------ real data


def _crop_to_foreground(a: np.ndarray, margin: int = 8) -> np.ndarray:
    nz = np.nonzero(a)
    return a[tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1)
                   for i in nz)].copy()


@pytest.mark.skipif(not KITS_DIR.is_dir(),
                    reason=f"real KiTS23 labels not found at {KITS_DIR} (../shared absent)")
def test_calibration_on_real_kits23_labels():
    """Six real cases (the thick-slice ones), cropped around the kidneys to keep it fast."""
    import SimpleITK as sitk

    names = ["case_00018", "case_00021", "case_00029", "case_00239", "case_00289",
             "case_00402"]
    labels, spacings = [], []
    for name in names:
        img = sitk.ReadImage(str(KITS_DIR / name / "segmentation.nii.gz"))
        labels.append(_crop_to_foreground(sitk.GetArrayFromImage(img)))
        spacings.append(img.GetSpacing()[::-1])
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, 0.96, seed=0)
    achieved = np.mean([dice_per_case(n, r) for n, r in zip(noisy, labels, strict=True)])
    assert abs(achieved - 0.96) <= DICE_TOLERANCE
    for n, r in zip(noisy, labels, strict=True):
        assert n.dtype == r.dtype and set(np.unique(n)) <= set(np.unique(r))
        # inner structures stay inside the noisy kidney+masses region
        assert not np.any(np.isin(n, (2, 3)) & (n == 0))


# ------------------------------------------------------------------------------ defaults


def test_default_target_dice_is_one_value_in_code_schema_and_config():
    """docs/noise.md: corrupt_dataset(labels, spacings, target_dice=0.96, seed=0). The
    value lives in DEFAULT_TARGET_DICE; the signatures, the config schema's default and the
    config a boundary-noise task gets without a target all take it from there (or equal it)."""
    from nnrobustloss.config import config_schema, validate_config

    assert DEFAULT_TARGET_DICE == 0.96
    for fn in (corrupt_dataset, corrupt_dataset_with_calibration, BoundaryNoise):
        assert inspect.signature(fn).parameters["target_dice"].default == DEFAULT_TARGET_DICE
    noise = config_schema()["$defs"]["task"]["properties"]["noise"]["properties"]
    assert noise["target_dice"]["default"] == DEFAULT_TARGET_DICE
    task = {"dataset_id": 11, "reference_dataset_id": 12, "labels": {"background": 0, "a": 1},
            "noise": {"type": "boundary"}, "sources": [{"type": "phantom"}]}
    cfg = validate_config({"tasks": {"T": task}})
    assert cfg["tasks"]["T"]["noise"] == {"type": "boundary", "target_dice": DEFAULT_TARGET_DICE}
