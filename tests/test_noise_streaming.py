"""Tests of the streamed boundary-noise calibration: the per-case step tables
(nnrobustloss.noise.steps), BoundaryNoise, and the converter that streams the KiTS23 cases.

The regression values below are the noisy labels of the algorithm before streaming (all cases
in memory, distance maps cached), computed on crops of real KiTS23 label maps: sha256 (first 16
hex digits) of each noisy array's bytes, with the calibrated scale and partial layer.
"""

from __future__ import annotations

import gc
import hashlib
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss.datasets.convert import convert_task
from nnrobustloss.noise import BoundaryNoise, corrupt_dataset_with_calibration
from nnrobustloss.noise.dice import dice_from_counts, value_counts
from nnrobustloss.noise.inputs import check_structures
from nnrobustloss.noise.paint import CaseNoise
from nnrobustloss.noise.steps import case_steps, crossing_scales

KITS_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kits23_labels"
CASES = ("case_00021", "case_00239", "case_00289", "case_00402")  # sorted, as the converter

# (target Dice, seed) -> (noisy label hashes per case, scale_mm, evaluations, partial layer),
# from the algorithm before streaming. (0.96, 0) and (0.9, 1) resolve a partial layer; (0.7, 2)
# needs radii beyond the first padding (4 mm), so every case's table is rebuilt.
OLD = {
    (0.96, 0): (("190671b71a058178", "c3a8cbca07275b9a", "445dae0c6a7accc5", "a25b56ef01c16746"),
                0.6430798994739614, 21, (0, 0, 0.822265625, 5009, 9402)),
    (0.9, 1): (("4b57ee250accbfdc", "6b39d0f715ec129b", "6141fc3bdb0f0c55", "4b9d29f672c1c77b"),
               1.2973774868521968, 18, (0, 1, 2.466796875, 207, 396)),
    (0.7, 2): (("ae067b512ce515fd", "b5b755257b4bad47", "dfd0d8dd01ac5ea6", "d37ab48c6a244906"),
               4.48877415253256, 12, None),
}

needs_kits = pytest.mark.skipif(not KITS_DIR.is_dir(),
                                reason=f"{KITS_DIR} not found (shared KiTS23 labels)")


def crop(case: str, margin: int = 6) -> tuple[np.ndarray, tuple[float, ...]]:
    """A real KiTS23 label map cropped to its foreground plus ``margin`` voxels, and spacing."""
    img = sitk.ReadImage(str(KITS_DIR / case / "segmentation.nii.gz"))
    a = sitk.GetArrayFromImage(img)
    nz = np.nonzero(a)
    sl = tuple(slice(max(int(c.min()) - margin, 0), int(c.max()) + margin + 1) for c in nz)
    return np.ascontiguousarray(a[sl]), tuple(float(s) for s in img.GetSpacing()[::-1])


@pytest.fixture(scope="module")
def kits_crops() -> list[tuple[np.ndarray, tuple[float, ...]]]:
    if not KITS_DIR.is_dir():
        pytest.skip(f"{KITS_DIR} not found (shared KiTS23 labels)")
    return [crop(c) for c in CASES]


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------ crossing scales


def test_crossing_scales_are_where_the_painters_comparison_flips() -> None:
    """For each level, the painter's own comparison (float32 array <= Python float) is false
    one float64 step below the crossing scale and true at it."""
    rng = np.random.default_rng(0)
    levels = np.unique(rng.uniform(0.01, 8.0, 400).astype(np.float32))
    for u, cap in ((0.37, math.inf), (1.93, math.inf), (1.1, 3.0)):
        lv = levels[levels <= min(8.0, cap)]  # as case_steps: levels up to float32(cap)
        c = crossing_scales(lv, u, cap)
        for level, s in zip(lv, c, strict=True):
            below = np.nextafter(s, 0.0)
            arr = np.array([level], dtype=np.float32)
            assert bool((arr <= min(float(s * u), cap))[0])
            assert not bool((arr <= min(float(below * u), cap))[0])
    with pytest.raises(ValueError, match="never flips"):
        crossing_scales(np.array([3.5], np.float32), 1.0, 3.0)


# ----------------------------------------------------------------------------- step tables


@needs_kits
@pytest.mark.parametrize("dilate", [(True, False, True), (False, True, False)])
def test_step_table_counts_equal_painting(kits_crops, dilate) -> None:
    """At many scales, including exactly at and just below the table's change points, the
    table's lost/gained counts equal those of painting the case."""
    lab, sp = kits_crops[1]
    groups, parents, roots = check_structures(None)
    factors = np.array([1.3, 0.6, 1.8])
    case = CaseNoise(lab, sp, groups, parents, roots, np.array(dilate))
    pad = 4.0
    case.prepare(pad)
    steps = case_steps(case.ref_crop, case.structures, case.valid, case.parents, case.dilate,
                       factors, pad)
    inner = steps.times[(steps.times > 0) & (steps.times <= pad / 2)]
    assert inner.size >= 5  # the case changes in several steps (5 mm slices: few levels)
    picks = np.random.default_rng(1).choice(inner, min(inner.size, 8), replace=False)
    scales = [0.0, 0.2, 0.77, 1.5, pad / 2, *picks, *np.nextafter(picks, 0.0)]
    for s in scales:
        crop = case.paint(float(s) * factors)
        diff = crop != case.ref_crop
        lost, gained = steps.counts(float(s))
        assert lost == value_counts(case.ref_crop[diff]), s
        assert gained == value_counts(crop[diff]), s
        assert dice_from_counts(case.ref_counts, lost, gained) == case.dice(crop)
    # the table is tiny next to the volume it stands for
    assert steps.lost.nbytes + steps.gained.nbytes + steps.times.nbytes < lab.nbytes / 10
    with pytest.raises(ValueError, match="beyond the table's padding"):
        steps.counts(pad)


# --------------------------------------------------------------- identical to the old algorithm


@needs_kits
@pytest.mark.parametrize("target,seed", [(0.9, 1), (0.7, 2)])
def test_noisy_labels_equal_the_algorithm_before_streaming(kits_crops, target, seed) -> None:
    hashes, scale, evaluations, partial = OLD[(target, seed)]
    noisy, info = corrupt_dataset_with_calibration([a for a, _ in kits_crops],
                                                   [s for _, s in kits_crops], target, seed)
    assert tuple(digest(n) for n in noisy) == hashes
    assert (info.scale_mm, info.evaluations, info.partial_layer) == (scale, evaluations, partial)


@needs_kits
def test_convert_streams_the_cases_with_identical_noisy_labels(kits_crops, tmp_path) -> None:
    """The converter (cases read back from its own files, a partial layer on case 0) writes
    the noisy labels of the algorithm before streaming."""
    hashes, *_ = OLD[(0.96, 0)]
    src = tmp_path / "kits"
    for case, (lab, sp) in zip(CASES, kits_crops, strict=True):
        (src / case).mkdir(parents=True)
        seg = sitk.GetImageFromArray(lab)
        seg.SetSpacing(sp[::-1])
        img = sitk.GetImageFromArray(lab.astype(np.int16) * 40 - 1000)
        img.CopyInformation(seg)
        sitk.WriteImage(seg, str(src / case / "segmentation.nii.gz"), useCompression=True)
        sitk.WriteImage(img, str(src / case / "imaging.nii.gz"), useCompression=True)
    labels = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}
    cfg = {"dataset_id": 641, "reference_dataset_id": 642, "labels": labels, "channel": "CT",
           "noise": {"type": "boundary", "target_dice": 0.96},
           "sources": [{"type": "kits23", "path": str(src)}]}
    raw = convert_task("KiTS23", cfg, tmp_path / "results", seed=0)
    got = tuple(digest(sitk.GetArrayFromImage(sitk.ReadImage(
        str(raw.noisy / "labelsTr" / f"{case}.nii.gz")))) for case in CASES)
    assert got == hashes


# ------------------------------------------------------------------------------- BoundaryNoise


def ball_case(n: int = 24, r: float = 7.0) -> np.ndarray:
    z, y, x = np.ogrid[:n, :n, :n]
    c = (n - 1) / 2
    lab = ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2 <= r * r).astype(np.uint8)
    lab[(z - c) ** 2 + (y - c) ** 2 + (x - c - 2) ** 2 <= 9] = 2
    return lab


def test_boundary_noise_keeps_no_volume() -> None:
    """After add_case the label arrays can be freed: only summaries are kept."""
    noise = BoundaryNoise(3, 0.9, seed=0)
    refs = []
    for k in range(3):
        lab = ball_case(24 + 2 * k)
        refs.append(weakref.ref(lab))
        noise.add_case(k, lab, (1.0, 1.0, 1.0))
        del lab
    gc.collect()
    assert all(r() is None for r in refs)
    info = noise.calibrate(lambda k: (ball_case(24 + 2 * k), (1.0, 1.0, 1.0)))
    assert abs(info.mean_dice - 0.9) <= 0.005
    noisy = [noise.paint(k, ball_case(24 + 2 * k), (1.0, 1.0, 1.0)) for k in range(3)]
    ref, _ = corrupt_dataset_with_calibration([ball_case(24 + 2 * k) for k in range(3)],
                                              [(1.0, 1.0, 1.0)] * 3, 0.9, seed=0)
    for a, b in zip(noisy, ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_boundary_noise_misuse_is_named() -> None:
    noise = BoundaryNoise(2, 0.9, seed=0)
    with pytest.raises(ValueError, match="paint: call calibrate first"):
        noise.paint(0, ball_case(), (1, 1, 1))
    noise.add_case(0, ball_case(), (1, 1, 1))
    with pytest.raises(ValueError, match=r"case\(s\) \[1\] not added"):
        noise.calibrate(lambda k: (ball_case(), (1, 1, 1)))
    with pytest.raises(ValueError, match=r"case index 2 must be an integer in \[0, 2\)"):
        noise.add_case(2, ball_case(), (1, 1, 1))
    with pytest.raises(ValueError, match=r"labels\[1\]: expected an integer dtype"):
        noise.add_case(1, ball_case().astype(float), (1, 1, 1))
    with pytest.raises(ValueError, match=r"spacings\[1\]"):
        noise.add_case(1, ball_case(), (1, 0, 1))
    with pytest.raises(ValueError, match="n_cases"):
        BoundaryNoise(0)
    noise.add_case(1, ball_case(26), (1, 1, 1))
    # a loader that returns another case than the one added is caught (a rebuild at 0.3 needs
    # radii beyond the first padding)
    low = BoundaryNoise(1, 0.3, seed=0, structures=[(1, 2)])
    low.add_case(0, ball_case(), (1, 1, 1))
    with pytest.raises(ValueError, match=r"labels\[0\]: differs from the label map added"):
        low.calibrate(lambda k: (ball_case(26), (1, 1, 1)))
