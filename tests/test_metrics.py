"""Tests of nnrobustloss.metrics: hand-computed Dice/ASD/surface Dice, equality with the
surface-distance package, empty-mask rules, regions and the evaluate stage."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import surface_distance as sdist
from scipy import ndimage

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import array_to_image, write_image
from nnrobustloss.metrics import (
    KITS23_REGIONS,
    KITS23_TOLERANCES_MM,
    build_regions,
    evaluate_case,
    evaluate_folder,
    tolerance_for,
)

# surface-distance 0.1 imports scipy.ndimage.filters/morphology (deprecated namespaces)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:surface_distance")

KITS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kits23_labels"

# Marching-cubes surfel areas (surface-distance's table) for spacing (3, 1, 1):
# a corner touching one voxel cuts off a corner triangle of normal 1/8 (s1 s2, s0 s2, s0 s1);
# a corner on an edge running along z is a chamfer of length s0 and width sqrt((s1/2)^2+(s2/2)^2).
S = (3.0, 1.0, 1.0)
A_CORNER = 0.125 * math.sqrt((S[1] * S[2]) ** 2 + (S[0] * S[2]) ** 2 + (S[0] * S[1]) ** 2)
A_EDGE_Z = S[0] * math.sqrt((S[1] / 2) ** 2 + (S[2] / 2) ** 2)


def one(pred: np.ndarray, ref: np.ndarray, spacing=S, tol: float = 1.0) -> dict[str, float]:
    return evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), spacing, {"fg": [1]},
                         tol)["fg"]


def reference_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tol: float) -> dict[str, float]:
    """surface-distance (with the KiTS23 empty-mask rules applied first, as NumPy 2 needs)."""
    if not pred.any() and not ref.any():
        return {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
    if not pred.any() or not ref.any():
        return {"dice": 0.0, "asd": float("nan"), "surface_dice": 0.0}
    d = sdist.compute_surface_distances(ref, pred, spacing)
    a_gt, a_pr = d["surfel_areas_gt"], d["surfel_areas_pred"]
    # ASD from the two directed averages of compute_average_surface_distance, area-weighted
    gt_to_pred, pred_to_gt = sdist.compute_average_surface_distance(d)
    asd = (gt_to_pred * a_gt.sum() + pred_to_gt * a_pr.sum()) / (a_gt.sum() + a_pr.sum())
    return {"dice": 2 * np.count_nonzero(pred & ref) / (pred.sum() + ref.sum()), "asd": asd,
            "surface_dice": sdist.compute_surface_dice_at_tolerance(d, tol)}


def assert_close(ours: dict[str, float], ref: dict[str, float], rel: float = 1e-9) -> None:
    for k in ("dice", "asd", "surface_dice"):
        if math.isnan(ref[k]):
            assert math.isnan(ours[k]), k
        else:
            assert ours[k] == pytest.approx(ref[k], rel=rel, abs=1e-12), k


# ------------------------------------------------------------------ hand-computed values


def test_single_voxel_shifted_along_z_anisotropic() -> None:
    # Corners z in {0,1} vs {1,2}: four gt corners coincide with pred corners, four are 3 mm
    # away; all eight corner surfels have the same area -> ASD = (4*3 + 4*3) / 16 = 1.5 mm.
    ref = np.zeros((5, 4, 4), bool)
    pred = np.zeros_like(ref)
    ref[1, 1, 1] = True
    pred[2, 1, 1] = True
    r = one(pred, ref, tol=3.0)
    assert r["dice"] == 0.0
    assert r["asd"] == pytest.approx(1.5, rel=1e-12)
    assert r["surface_dice"] == pytest.approx(1.0)
    assert one(pred, ref, tol=2.9)["surface_dice"] == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize("n", [2, 4, 7])
def test_bar_shifted_one_voxel_along_thick_axis(n: int) -> None:
    # A 1x1xn bar along z shifted by one voxel (3 mm): only the 4 end corners at the far end
    # of each bar are off the other surface, at 3 mm; 8 corner surfels + 4(n-1) edge surfels.
    ref = np.zeros((n + 3, 3, 3), bool)
    ref[1:1 + n, 1, 1] = True
    pred = np.roll(ref, 1, axis=0)
    total = 8 * A_CORNER + 4 * (n - 1) * A_EDGE_Z
    r = one(pred, ref, tol=2.0)
    assert r["dice"] == pytest.approx(2 * (n - 1) / (2 * n))
    assert r["asd"] == pytest.approx(4 * A_CORNER * 3.0 / total, rel=1e-12)
    assert r["surface_dice"] == pytest.approx(1 - 4 * A_CORNER / total, rel=1e-12)
    assert one(pred, ref, tol=3.0)["surface_dice"] == pytest.approx(1.0)


def test_box_shifted_along_fine_axis_half_the_surfels_move_by_one_spacing() -> None:
    # 1-voxel-thick slab in x shifted by one voxel along x (1 mm): the corner lattice planes
    # x=0 and x=1 carry mirror-image surfels of equal total area; x=1 lies on the pred
    # surface, x=0 is 1 mm away -> ASD = 0.5 mm, surface Dice 0.5 below 1 mm and 1 at 1 mm.
    ref = np.zeros((6, 6, 5), bool)
    ref[1:4, 1:5, 1] = True
    pred = np.roll(ref, 1, axis=2)
    r = one(pred, ref, tol=0.99)
    assert r["dice"] == 0.0
    assert r["asd"] == pytest.approx(0.5, rel=1e-12)
    assert r["surface_dice"] == pytest.approx(0.5, rel=1e-12)
    assert one(pred, ref, tol=1.0)["surface_dice"] == pytest.approx(1.0)


def test_far_apart_voxels_use_exact_distance() -> None:
    # Single voxels 30 voxels apart along x (0.7 mm): corners at x in {0,1} and {30,31}:
    # mean distance (29 + 30) / 2 voxels. Far beyond the lattice search radius (KD-tree path).
    sp = (2.0, 1.5, 0.7)
    ref = np.zeros((3, 3, 40), np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 2] = 1
    pred[1, 1, 32] = 1
    r = one(pred, ref, spacing=sp)
    assert r["asd"] == pytest.approx(29.5 * 0.7, rel=1e-12)
    assert r["surface_dice"] == 0.0


def test_cube_dice_values() -> None:
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    shifted = np.roll(ref, 1, axis=2)
    inner = np.zeros_like(ref)
    inner[3:5, 3:5, 3:5] = 1
    assert one(shifted, ref)["dice"] == pytest.approx(2 * 48 / 128)
    assert one(inner, ref)["dice"] == pytest.approx(2 * 8 / (8 + 64))
    same = one(ref, ref, tol=0.0)
    assert same == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}


def test_sphere_dice_and_symmetry() -> None:
    z, y, x = np.ogrid[:24, :24, :24]
    big = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 8**2).astype(np.uint8)
    small = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 <= 5**2).astype(np.uint8)
    r = one(small, big, spacing=(1.0, 1.0, 1.0))
    # nested: Dice = 2|small| / (|small| + |big|); ASD and surface Dice symmetric in the roles
    assert r["dice"] == pytest.approx(2 * small.sum() / (small.sum() + big.sum()))
    swapped = one(big, small, spacing=(1.0, 1.0, 1.0))
    assert swapped["asd"] == pytest.approx(r["asd"], rel=1e-12)
    assert swapped["surface_dice"] == pytest.approx(r["surface_dice"], rel=1e-12)
    assert 2.0 < r["asd"] < 4.0  # radii differ by 3 voxels


# ------------------------------------------------------------------ empty masks (KiTS23 rules)


def test_empty_mask_rules() -> None:
    empty = np.zeros((4, 5, 6), np.uint8)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = 1
    assert one(empty, empty) == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
    for pred, ref in ((empty, full), (full, empty)):
        r = one(pred, ref)
        assert r["dice"] == 0.0 and r["surface_dice"] == 0.0
        # the worst case: the field of view's diagonal, by hand: 4 x 5 x 6 voxels of 3 x 1 x 1 mm
        assert r["asd"] == pytest.approx(math.sqrt(12**2 + 5**2 + 6**2))


def test_worst_case_asd_uses_the_spacing_and_flags_the_region() -> None:
    """A 20 x 40 x 40 phantom of 2 x 1 x 1 mm: sqrt(40^2 + 40^2 + 40^2) = 69.28 mm; the flag names
    exactly the region with one empty mask, and no value is NaN."""
    from nnrobustloss.metrics import evaluate_case_flagged, worst_case_asd

    assert worst_case_asd((20, 40, 40), (2.0, 1.0, 1.0)) == pytest.approx(40 * math.sqrt(3))
    ref = np.zeros((20, 40, 40), np.uint8)
    ref[5:15, 10:30, 10:30] = 1
    ref[8:12, 15:20, 15:20] = 2
    pred = np.where(ref == 2, 1, ref).astype(np.uint8)  # the lesion is lost into the organ
    res, worst = evaluate_case_flagged(pred, ref, (2.0, 1.0, 1.0),
                                       {"organ": [1], "lesion": [2]}, 1.0)
    assert worst == {"lesion"}
    assert res["lesion"] == {"dice": 0.0, "asd": pytest.approx(69.282032), "surface_dice": 0.0}
    assert 0 < res["organ"]["asd"] < 69 and res["organ"]["dice"] > 0.9
    assert not any(math.isnan(v) for r in res.values() for v in r.values())


def test_region_absent_in_both_while_other_regions_present() -> None:
    lab = np.zeros((8, 8, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    r = evaluate_case(lab, lab, (1, 1, 1), {"one": [1], "two": [2]}, 1.0)
    assert r["one"] == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
    assert r["two"] == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
    pred = lab.copy()
    pred[6, 6, 6] = 2  # false-positive class 2 only in the prediction
    r = evaluate_case(pred, lab, (1, 1, 1), {"one": [1], "two": [2]}, 1.0)
    assert r["two"]["dice"] == 0.0 and r["two"]["asd"] == pytest.approx(math.sqrt(3 * 8**2))
    assert r["one"]["dice"] == 1.0


def test_empty_prediction_every_kits_region() -> None:
    # All-background prediction: every region present in the reference gets Dice 0, surface Dice
    # 0 and the worst-case ASD (diagonal of 18 x 8 x 8 mm); the cyst region, absent in both,
    # gets 1, 0, 1.
    ref = np.zeros((6, 10, 10), np.uint8)
    ref[1:5, 2:8, 2:8] = 1
    ref[2:4, 3:5, 3:5] = 2
    pred = np.zeros_like(ref)
    regions = {**KITS23_REGIONS, "cyst": [3]}
    r = evaluate_case(pred, ref, (3.0, 0.8, 0.8), regions, 1.0)
    for name in KITS23_REGIONS:
        assert r[name]["dice"] == 0.0 and r[name]["surface_dice"] == 0.0, name
        assert r[name]["asd"] == pytest.approx(math.sqrt(18**2 + 8**2 + 8**2)), name
    assert r["cyst"] == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
    # both empty everywhere
    r = evaluate_case(pred, pred, (3.0, 0.8, 0.8), regions, 1.0)
    assert all(v == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0} for v in r.values())


def test_structure_missing_in_reference() -> None:
    # The reference has no tumour; the prediction adds a 2x2x2 tumour inside the kidney.
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[1:7, 1:7, 1:7] = 1
    pred = ref.copy()
    pred[3:5, 3:5, 3:5] = 2
    r = evaluate_case(pred, ref, (1.0, 1.0, 1.0), KITS23_REGIONS, KITS23_TOLERANCES_MM)
    for name in ("Tumor+Cyst", "Tumor"):
        assert r[name]["dice"] == 0.0 and r[name]["surface_dice"] == 0.0
        assert r[name]["asd"] == pytest.approx(math.sqrt(3 * 8**2))
    # the kidney+masses region is unchanged by the relabelling
    assert r["Kidney+Tumor+Cyst"] == {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint16, bool])
def test_label_dtypes_give_the_same_numbers(dtype) -> None:
    rng = np.random.default_rng(11)
    pred, ref = _blobs(rng, (12, 14, 16)), _blobs(rng, (12, 14, 16))
    if dtype is bool:
        pred, ref = pred > 0, ref > 0
    regions = {"fg": [1]} if dtype is bool else {"a": [1, 2, 3], "b": [2], "c": [3]}
    exp = evaluate_case(pred.astype(np.uint8), ref.astype(np.uint8), (2.0, 1.0, 0.5), regions,
                        1.0)
    got = evaluate_case(pred.astype(dtype), ref.astype(dtype), (2.0, 1.0, 0.5), regions, 1.0)
    for name in regions:
        assert_close(got[name], exp[name], rel=1e-12)


def test_area_table_equals_surface_distance() -> None:
    from nnrobustloss.metrics.surface import surfel_area_table

    for sp in ((1.0, 1.0, 1.0), (5.0, 0.82, 0.82), (0.5, 0.6, 0.7)):
        np.testing.assert_array_equal(
            surfel_area_table(sp), sdist.lookup_tables.create_table_neighbour_code_to_surface_area(sp))


@pytest.mark.parametrize("plan", [-1, 0, 1, 2], ids=["kd_tree", "slices_0", "slices_1", "slices_2"])
def test_far_speckle_kd_tree_and_distance_transform_paths(monkeypatch, plan) -> None:
    # Speckle far from a compact reference (as an under-trained network makes it): most pred
    # surfels lie beyond the lattice search, so the fallback decides the numbers. The plan
    # forces the KD-tree (-1) or the slice-by-slice feature transform along an axis; each
    # must equal surface-distance.
    from nnrobustloss.metrics import evaluation, surface

    monkeypatch.setattr(surface, "_far_plan", lambda points, target_points: plan)
    monkeypatch.setattr(evaluation, "LATTICE_OFFSETS", 20)
    rng = np.random.default_rng(5)
    ref = np.zeros((16, 40, 40), np.uint8)
    ref[6:10, 4:12, 4:12] = 2
    pred = ref.copy()
    pred[7:9, 5:10, 5:10] = 0
    speck = rng.choice(ref.size, size=300, replace=False)
    pred.flat[speck] = 2
    sp = (3.0, 0.8, 0.7)
    ours = evaluate_case(pred, ref, sp, {"t": [2]}, 1.1)["t"]
    assert_close(ours, reference_metrics(pred == 2, ref == 2, sp, 1.1), rel=1e-12)
    assert ours["asd"] > 5.0  # the speckle is far: the test exercises the far path


@pytest.mark.parametrize("plan", [-1, 0, 1, 2], ids=["kd_tree", "slices_0", "slices_1", "slices_2"])
def test_points_on_every_search_path_equal_surface_distance(monkeypatch, plan) -> None:
    # 1 mm voxels: the lattice search covers 4.57 mm (400 offsets), its first 15 offsets
    # 1.41 mm, the blocks are 4 voxels. The prediction is the reference cube with a slab
    # 3 voxels thick on one face (resolved by the remaining offsets, in blocks next to the
    # target), a voxel 6 mm from the cube (next to a target block, beyond the search) and
    # one 20 mm away (no target block near: certainly far).
    from nnrobustloss.metrics import surface as m

    calls: dict[str, list] = {"search": [], "near": [], "far": []}

    def search(lin, flat, off_lin, off_dist, dist, todo, first_chunk=1):
        left = search_orig(lin, flat, off_lin, off_dist, dist, todo, first_chunk)
        calls["search"].append((first_chunk, lin.size, left.size))
        return left

    def near(points, target_points, half, shape):
        out = near_orig(points, target_points, half, shape)
        calls["near"].append(out)
        return out

    def far(points, *args):
        calls["far"].append(len(points))
        return far_orig(points, *args)

    search_orig, near_orig, far_orig = m._lattice_search, m._near_blocks, m._far_distances
    monkeypatch.setattr(m, "_lattice_search", search)
    monkeypatch.setattr(m, "_near_blocks", near)
    monkeypatch.setattr(m, "_far_distances", far)
    monkeypatch.setattr(m, "_far_plan", lambda points, target_points: plan)
    ref = np.zeros((24, 30, 48), np.uint8)
    ref[8:16, 8:16, 8:16] = 1
    pred = ref.copy()
    pred[8:16, 8:16, 16:19] = 1  # slab: surfels up to 3 mm from the cube's face
    pred[12, 12, 22] = 1  # 6 mm beyond the face x = 16
    pred[12, 12, 36] = 1  # 20 mm beyond it
    sp = (1.0, 1.0, 1.0)
    ours = evaluate_case(pred, ref, sp, {"fg": [1]}, 1.0)["fg"]
    assert_close(ours, reference_metrics(pred == 1, ref == 1, sp, 1.0), rel=1e-12)
    first = [c for c in calls["search"] if c[0] == 1]
    assert any(n > left for _, n, left in first)  # resolved by the first 15 offsets
    assert any(c.any() for c in calls["near"]) and any(not c.all() for c in calls["near"])
    # the direction with certainly far points (pred -> gt): near[i] for the points the first
    # offsets left, then one far call
    mixed = [c for c in calls["near"] if not c.all()]
    assert len(mixed) == 1 and mixed[0].sum() > 0 and calls["far"]
    if plan < 0:  # KD-tree: the near points go on with the remaining offsets, which leave
        # the voxel 6 mm away (its 8 corners) to the KD-tree with the certainly far ones
        rest = [c for c in calls["search"] if c[0] == 16]
        assert any(n > left > 0 for _, n, left in rest)
        assert calls["far"][-1] == np.count_nonzero(~mixed[0]) + 8
    else:  # slices: they take every point the first offsets left
        assert calls["far"][-1] == mixed[0].size


def test_regions_with_the_same_labels_share_distances_not_the_tolerance() -> None:
    # No cysts on either side: Tumor+Cyst and Tumor are the same masks, computed once, but
    # their surface Dice is taken at their own tolerances.
    lab = np.zeros((20, 30, 30), np.uint8)
    lab[3:15, 5:25, 5:20] = 1
    lab[5:11, 8:16, 8:16] = 2
    pred = lab.copy()
    pred[5:11, 8:16, 16:18] = 2  # tumour 2 voxels (1.6 mm) too wide
    sp = (2.5, 0.8, 0.8)
    tol = {"Kidney+Tumor+Cyst": 1.0, "Tumor+Cyst": 1.0, "Tumor": 1.7}
    ours = evaluate_case(pred, lab, sp, KITS23_REGIONS, tol)
    for name, labels in KITS23_REGIONS.items():
        exp = reference_metrics(np.isin(pred, labels), np.isin(lab, labels), sp, tol[name])
        assert_close(ours[name], exp, rel=1e-12)
    assert ours["Tumor+Cyst"]["asd"] == ours["Tumor"]["asd"]
    assert ours["Tumor+Cyst"]["surface_dice"] < ours["Tumor"]["surface_dice"]


def test_surfel_areas_equal_surface_distance() -> None:
    # the border code built axis by axis, in flat-index order, is surface-distance's
    from nnrobustloss.metrics.regions import padded
    from nnrobustloss.metrics.surface import _surfels, offsets_within, surfel_area_table

    rng = np.random.default_rng(3)
    mask = ndimage.gaussian_filter(rng.normal(size=(9, 13, 11)), 1.0) > 0.1
    sp = (2.0, 0.7, 0.9)
    half = offsets_within(np.asarray(sp))[2]
    border, lin, areas = _surfels(padded(mask), surfel_area_table(sp), half)
    d = sdist.compute_surface_distances(mask, mask, sp)
    # surface-distance orders its surfels by distance: compare the sorted areas
    np.testing.assert_array_equal(np.sort(areas), np.sort(d["surfel_areas_gt"]))
    assert border.shape == tuple(n + 1 + 2 * h for n, h in zip(mask.shape, half))
    assert np.count_nonzero(border) == lin.size


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64])
def test_region_mask_equals_isin(dtype) -> None:
    from nnrobustloss.metrics.regions import region_mask

    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    labels = rng.integers(max(info.min, -6), 7, size=(5, 6, 7)).astype(dtype)
    labels.flat[:2] = (info.min, info.max)  # wrap-around ends of the unsigned trick
    for values in ([2], [1, 2, 3], [2, 3], [0, 1], [1, 3], [-2, -1, 0], [info.max - 1, info.max]):
        vals = np.unique(np.asarray(values, dtype=np.int64))
        if vals.min() < info.min:
            continue
        np.testing.assert_array_equal(region_mask(labels, vals), np.isin(labels, vals))


def test_label_counts_of_the_asked_values() -> None:
    from nnrobustloss.metrics.regions import label_counts

    labels = np.random.default_rng(6).integers(0, 12, size=(4, 5, 6)).astype(np.uint8)
    for values in (np.array([0, 2, 3]), np.arange(0, 14), np.array([5, 200])):
        exp = {int(v): int(np.count_nonzero(labels == v)) for v in values}
        assert label_counts(labels, values) == exp


# ------------------------------------------------------------------ equality with surface-distance


def _blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    lab = np.zeros(shape, np.uint8)
    lab[field > 0.04] = 1
    lab[field > 0.12] = 2
    lab[field > 0.2] = 3
    return lab


@pytest.mark.parametrize("seed", range(6))
def test_equal_to_surface_distance_on_random_blobs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(6, 28, size=3))
    spacing = tuple(float(s) for s in rng.uniform(0.4, 4.0, size=3))
    pred, ref = _blobs(rng, shape), _blobs(rng, shape)
    if seed == 0:
        pred = ref.copy()
        pred[0] = 1  # touches the volume border
    regions = {"c1": [1], "c2": [2], "all": [1, 2, 3], "masses": [2, 3]}
    tol = {"c1": 1.0, "c2": 0.5, "all": 2.0, "masses": 1.3}
    ours = evaluate_case(pred, ref, spacing, regions, tol)
    assert list(ours) == list(regions)
    for name, labels in regions.items():
        exp = reference_metrics(np.isin(pred, labels), np.isin(ref, labels), spacing, tol[name])
        assert_close(ours[name], exp, rel=1e-9)


def test_kits_regions_on_synthetic_case() -> None:
    lab = np.zeros((20, 30, 30), np.uint8)
    lab[3:15, 5:25, 5:20] = 1
    lab[5:9, 8:14, 8:14] = 2
    lab[10:13, 18:22, 10:14] = 3
    pred = np.roll(lab, 1, axis=1)
    pred[5:9, 8:10, 8:14] = 1  # part of the tumour missed
    sp = (2.5, 0.8, 0.8)
    ours = evaluate_case(pred, lab, sp, KITS23_REGIONS, KITS23_TOLERANCES_MM)
    assert list(ours) == ["Kidney+Tumor+Cyst", "Tumor+Cyst", "Tumor"]
    for name, labels in KITS23_REGIONS.items():
        exp = reference_metrics(np.isin(pred, labels), np.isin(lab, labels), sp,
                                KITS23_TOLERANCES_MM[name])
        assert_close(ours[name], exp)


def test_real_kits23_case_equals_surface_distance() -> None:
    path = KITS_DIR / "case_00021" / "segmentation.nii.gz"
    if not path.is_file():
        pytest.skip(f"real KiTS23 labels not available ({path} missing; ../shared absent)")
    img = sitk.ReadImage(str(path))
    ref = sitk.GetArrayFromImage(img)
    sp = tuple(float(s) for s in img.GetSpacing()[::-1])
    pred = np.roll(ref, 1, axis=1)
    pred[ndimage.binary_dilation(ref == 2, iterations=1) & (pred == 0)] = 2
    ours = evaluate_case(pred, ref, sp, KITS23_REGIONS, KITS23_TOLERANCES_MM)
    for name, labels in KITS23_REGIONS.items():
        exp = reference_metrics(np.isin(pred, labels), np.isin(ref, labels), sp,
                                KITS23_TOLERANCES_MM[name])
        assert_close(ours[name], exp, rel=1e-6)


# ------------------------------------------------------------------ regions, tolerances, errors


def test_kits_constants() -> None:
    assert KITS23_REGIONS == {"Kidney+Tumor+Cyst": [1, 2, 3], "Tumor+Cyst": [2, 3], "Tumor": [2]}
    assert KITS23_TOLERANCES_MM == {"Kidney+Tumor+Cyst": 1.0331, "Tumor+Cyst": 1.1329,
                                    "Tumor": 1.1498}


def test_build_regions_classes_then_extras() -> None:
    regions = build_regions({"background": 0, "kidney": 1, "tumor": 2, "cyst": 3},
                            KITS23_REGIONS)
    assert list(regions) == ["kidney", "tumor", "cyst", "Kidney+Tumor+Cyst", "Tumor+Cyst",
                             "Tumor"]
    assert regions["kidney"] == [1] and regions["Tumor+Cyst"] == [2, 3]
    assert build_regions({"background": 0, "organ": 1}) == {"organ": [1]}
    with pytest.raises(ConfigError, match="regions.organ"):
        build_regions({"background": 0, "organ": 1}, {"organ": [1]})


def test_tolerance_lookup() -> None:
    assert tolerance_for("x", 2) == 2.0
    assert tolerance_for("Tumor", KITS23_TOLERANCES_MM) == 1.1498
    assert tolerance_for("kidney", {"default": 1.5}) == 1.5
    with pytest.raises(ConfigError, match="kidney"):
        tolerance_for("kidney", KITS23_TOLERANCES_MM)


def test_input_errors() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(InputDataError, match="shape"):
        evaluate_case(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1), {"x": [1]}, 1.0)
    with pytest.raises(InputDataError, match="spacing"):
        evaluate_case(a, a, (1, 0, 1), {"x": [1]}, 1.0)
    with pytest.raises(InputDataError, match="integer"):
        evaluate_case(a.astype(float), a, (1, 1, 1), {"x": [1]}, 1.0)


def test_inputs_not_modified() -> None:
    rng = np.random.default_rng(3)
    pred, ref = _blobs(rng, (10, 12, 14)), _blobs(rng, (10, 12, 14))
    p0, r0 = pred.copy(), ref.copy()
    evaluate_case(pred, ref, (1, 2, 3), {"a": [1, 2]}, 1.0)
    assert np.array_equal(pred, p0) and np.array_equal(ref, r0)


# ------------------------------------------------------------------ evaluate stage


def _write_case(folder: Path, case: str, arr: np.ndarray, spacing=(2.0, 1.0, 1.0),
                origin=(0.0, 0.0, 0.0)) -> None:
    img = array_to_image(arr, spacing_zyx=spacing)
    img.SetOrigin(origin)
    write_image(img, folder / f"{case}.nii.gz")


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(7)
    pred_dir, ref_dir = tmp_path / "pred", tmp_path / "ref"
    data = {}
    for i in range(3):
        ref = _blobs(rng, (8, 16, 16))
        pred = np.roll(ref, i, axis=2)
        if i == 2:
            pred[pred == 3] = 0  # class 3 missing in the prediction -> worst-case ASD
            ref[4, 8, 8] = 3
        _write_case(pred_dir, f"case_{i}", pred)
        _write_case(ref_dir, f"case_{i}", ref)
        data[f"case_{i}"] = (pred, ref)
    return pred_dir, ref_dir, data


def test_evaluate_folder_tidy_csv(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, data = folders
    regions = {"one": [1], "three": [3], "all": [1, 2, 3]}
    out = tmp_path / "metrics" / "T" / "M" / "fold0.csv"
    df = evaluate_folder(pred_dir, ref_dir, ["case_0", "case_1", "case_2"], "T", "M", 0,
                         regions, 1.0, out, replicate=2)
    back = pd.read_csv(out)
    assert list(back.columns) == ["task", "method", "fold", "case", "region", "metric", "value",
                                  "replicate", "worst_case"]
    assert (back["replicate"] == 2).all()
    assert len(back) == 3 * 3 * 3
    assert list(back["case"].unique()) == ["case_0", "case_1", "case_2"]
    assert list(back["region"][:9]) == ["one"] * 3 + ["three"] * 3 + ["all"] * 3
    assert list(back["metric"][:3]) == ["dice", "asd", "surface_dice"]
    np.testing.assert_allclose(back["value"].to_numpy(), df["value"].to_numpy(), rtol=1e-12)
    pred, ref = data["case_1"]
    exp = evaluate_case(pred, ref, (2.0, 1.0, 1.0), regions, 1.0)
    row = back[(back.case == "case_1") & (back.region == "all") & (back.metric == "asd")]
    assert row["value"].item() == pytest.approx(exp["all"]["asd"], rel=1e-12)
    worst = back[(back.case == "case_2") & (back.region == "three")]
    # 8 x 16 x 16 voxels of 2 x 1 x 1 mm: diagonal sqrt(16^2 + 16^2 + 16^2)
    assert worst.set_index("metric")["value"].to_dict() == pytest.approx(
        {"dice": 0.0, "asd": 16 * math.sqrt(3), "surface_dice": 0.0})
    assert (worst["worst_case"] == 1).all() and back["worst_case"].sum() == 3
    assert not back["value"].isna().any()
    assert (back.loc[back.metric == "dice", "value"].between(0, 1)).all()


def test_evaluate_folder_parallel_equals_serial(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = folders
    cases = ["case_0", "case_1", "case_2"]
    a = evaluate_folder(pred_dir, ref_dir, cases, "T", "M", 1, {"c": [1, 2]}, 1.0,
                        tmp_path / "a.csv", n_workers=1)
    b = evaluate_folder(pred_dir, ref_dir, cases, "T", "M", 1, {"c": [1, 2]}, 1.0,
                        tmp_path / "b.csv", n_workers=2)
    pd.testing.assert_frame_equal(a, b)


def test_evaluate_folder_missing_prediction(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, _ = folders
    with pytest.raises(InputDataError, match=r"case_9\.nii\.gz"):
        evaluate_folder(pred_dir, ref_dir, ["case_0", "case_9"], "T", "M", 0, {"c": [1]}, 1.0,
                        tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_evaluate_folder_geometry_mismatch_names_both_files(folders, tmp_path: Path) -> None:
    pred_dir, ref_dir, data = folders
    pred, _ = data["case_0"]
    _write_case(pred_dir, "case_0", pred, spacing=(2.0, 1.0, 1.001))
    with pytest.raises(InputDataError, match="spacing") as err:
        evaluate_folder(pred_dir, ref_dir, ["case_0"], "T", "M", 0, {"c": [1]}, 1.0,
                        tmp_path / "x.csv")
    assert str(pred_dir / "case_0.nii.gz") in str(err.value)
    assert str(ref_dir / "case_0.nii.gz") in str(err.value)
    _write_case(pred_dir, "case_0", pred, origin=(0.0, 0.5, 0.0))
    with pytest.raises(InputDataError, match="origin"):
        evaluate_folder(pred_dir, ref_dir, ["case_0"], "T", "M", 0, {"c": [1]}, 1.0,
                        tmp_path / "x.csv")
