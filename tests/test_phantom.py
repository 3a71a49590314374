"""Tests of the bundled phantom generator (nnrobustloss.datasets.phantom)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnrobustloss.datasets.phantom import (
    LESION,
    ORGAN,
    generate_phantom_case,
    novice_case_indices,
    phantom_source,
)

SMALL = (12, 24, 24)
SPACING = (2.0, 1.0, 1.0)
FACE = ndimage.generate_binary_structure(3, 1)


def _arrays(case_data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (sitk.GetArrayFromImage(case_data.image), sitk.GetArrayFromImage(case_data.reference),
            sitk.GetArrayFromImage(case_data.noisy))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _fraction_between(values: np.ndarray, lo: float, hi: float) -> float:
    return float(((values > lo) & (values < hi)).mean())


# --- determinism ---------------------------------------------------------------------------

def test_same_seed_gives_bit_identical_cases() -> None:
    a = phantom_source(n_cases=4, n_noisy_cases=2, shape=SMALL, spacing=SPACING, seed=3)
    b = phantom_source(n_cases=4, n_noisy_cases=2, shape=SMALL, spacing=SPACING, seed=3)
    assert [c.case_id for c in a] == [c.case_id for c in b]
    for ca, cb in zip(a, b):
        da, db = ca.load(), cb.load()
        for x, y in zip(_arrays(da), _arrays(db)):
            assert x.dtype == y.dtype
            assert x.tobytes() == y.tobytes()
        assert da.image.GetSpacing() == db.image.GetSpacing()
        assert da.image.GetOrigin() == db.image.GetOrigin()


def test_loading_twice_gives_the_same_case() -> None:
    case = phantom_source(n_cases=2, n_noisy_cases=1, shape=SMALL, seed=0)[1]
    first, second = _arrays(case.load()), _arrays(case.load())
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x, y)


def test_generate_phantom_case_deterministic_per_seed() -> None:
    a = generate_phantom_case(5, SMALL, SPACING, novice=True)
    b = generate_phantom_case(5, SMALL, SPACING, novice=True)
    c = generate_phantom_case(6, SMALL, SPACING, novice=True)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.reference.tobytes() == b.reference.tobytes()
    assert a.noisy.tobytes() == b.noisy.tobytes()
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.reference, c.reference)


def test_different_seed_gives_different_cases() -> None:
    a = phantom_source(n_cases=3, n_noisy_cases=1, shape=SMALL, seed=0)
    b = phantom_source(n_cases=3, n_noisy_cases=1, shape=SMALL, seed=1)
    for ca, cb in zip(a, b):
        ia, ra, _ = _arrays(ca.load())
        ib, rb, _ = _arrays(cb.load())
        assert not np.array_equal(ia, ib)
        assert not np.array_equal(ra, rb)


def test_adding_cases_keeps_existing_ones() -> None:
    few = phantom_source(n_cases=3, n_noisy_cases=0, shape=SMALL, seed=2)
    many = phantom_source(n_cases=6, n_noisy_cases=0, shape=SMALL, seed=2)
    assert [c.case_id for c in many[:3]] == [c.case_id for c in few]
    for cf, cm in zip(few, many):
        for x, y in zip(_arrays(cf.load()), _arrays(cm.load())):
            np.testing.assert_array_equal(x, y)


def test_adding_cases_keeps_images_reference_and_novice_labels() -> None:
    # Which cases are novice-labelled may change with n_cases (14 -> 15 moves three of four), but
    # a case's image, reference labels and novice labels do not.
    few_novices, many_novices = novice_case_indices(14, 4, 0), novice_case_indices(15, 4, 0)
    both = sorted(set(few_novices) & set(many_novices))
    assert both and few_novices != many_novices
    few = phantom_source(n_cases=14, n_noisy_cases=4, shape=SMALL, seed=0)
    many = phantom_source(n_cases=15, n_noisy_cases=4, shape=SMALL, seed=0)
    for i, (cf, cm) in enumerate(zip(few, many)):
        (i1, r1, n1), (i2, r2, n2) = _arrays(cf.load()), _arrays(cm.load())
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(r1, r2)
        if i in both or (i not in few_novices and i not in many_novices):
            np.testing.assert_array_equal(n1, n2)


# --- content -------------------------------------------------------------------------------

def test_case_ids_and_origins() -> None:
    cases = phantom_source(n_cases=12, n_noisy_cases=0, shape=SMALL, seed=4)
    assert [c.case_id for c in cases] == [f"phantom_{i:03d}" for i in range(12)]
    assert all("seed 4" in c.origin for c in cases)


@pytest.mark.parametrize("seed", [0, 1])
def test_label_set_lesion_inside_organ_and_finite_image(seed: int) -> None:
    for case in phantom_source(n_cases=4, n_noisy_cases=2, shape=(16, 32, 32), seed=seed):
        image, ref, noisy = _arrays(case.load())
        assert set(np.unique(ref).tolist()) == {0, ORGAN, LESION}
        assert set(np.unique(noisy).tolist()) <= {0, ORGAN, LESION}
        assert ref.dtype == np.uint8 and noisy.dtype == np.uint8
        assert image.dtype == np.float32
        assert np.isfinite(image).all()
        assert image.min() >= 0  # Rician magnitude
        # The lesion never touches the background (face neighbours), in the reference labels.
        lesion_grown = ndimage.binary_dilation(ref == LESION, FACE)
        assert not (lesion_grown & (ref == 0)).any()
        # Novice lesion voxels stay inside the novice organ by construction (label 2 implies it).
        organ_fraction = (ref >= ORGAN).mean()
        assert 0.05 < organ_fraction < 0.6


def test_novice_share_equals_n_noisy_cases() -> None:
    n_cases, n_noisy = 10, 3
    cases = phantom_source(n_cases=n_cases, n_noisy_cases=n_noisy, shape=SMALL, seed=7)
    differing = []
    for i, case in enumerate(cases):
        _, ref, noisy = _arrays(case.load())
        if not np.array_equal(ref, noisy):
            differing.append(i)
    assert differing == novice_case_indices(n_cases, n_noisy, 7)
    assert len(differing) == n_noisy


def test_novice_case_indices() -> None:
    idx = novice_case_indices(20, 6, 0)
    assert idx == sorted(idx) and len(set(idx)) == 6 and all(0 <= i < 20 for i in idx)
    assert novice_case_indices(20, 6, 0) == idx
    assert novice_case_indices(20, 0, 0) == []
    assert novice_case_indices(5, 5, 1) == [0, 1, 2, 3, 4]
    assert any(novice_case_indices(20, 6, s) != idx for s in range(1, 5))
    with pytest.raises(ValueError, match="n_noisy_cases"):
        novice_case_indices(4, 5, 0)
    with pytest.raises(ValueError, match="n_noisy_cases"):
        novice_case_indices(4, -1, 0)


def test_expert_labels_identical_to_reference() -> None:
    case = generate_phantom_case(11, SMALL, SPACING, novice=False)
    assert case.annotator == "expert"
    np.testing.assert_array_equal(case.noisy, case.reference)
    assert case.noisy is not case.reference  # a copy, not an alias


def test_novice_lesion_dice_in_plausible_band() -> None:
    # Default phantom geometry of config/config.yaml; 8 novice cases.
    dices, organ_dices = [], []
    for i in range(8):
        case = generate_phantom_case(np.random.SeedSequence([0, i]), (20, 40, 40), SPACING,
                                     novice=True)
        assert case.annotator == "novice"
        dices.append(_dice(case.noisy == LESION, case.reference == LESION))
        organ_dices.append(_dice(case.noisy >= ORGAN, case.reference >= ORGAN))
    assert 0.5 <= np.mean(dices) <= 0.75, dices
    assert all(0.3 < d < 0.95 for d in dices), dices
    # The organ is only mildly jittered: much closer to the reference than the lesion.
    assert np.mean(organ_dices) > 0.85 and np.mean(organ_dices) > np.mean(dices) + 0.1


def test_partial_volume_at_organ_boundary() -> None:
    # With partial volume, voxels in the one-voxel band around the organ boundary mix organ and
    # background intensities; deep inside either class they rarely reach the middle third.
    for seed in range(3):
        case = generate_phantom_case(seed, (20, 40, 40), SPACING)
        organ = case.reference >= ORGAN
        deep_organ = ndimage.binary_erosion(organ, FACE, iterations=2) & (case.reference == ORGAN)
        far_bg = ~ndimage.binary_dilation(organ, FACE, iterations=2)
        band = ndimage.binary_dilation(organ, FACE) & ~ndimage.binary_erosion(organ, FACE)
        lo, hi = np.median(case.image[far_bg]), np.median(case.image[deep_organ])
        assert hi > lo + 200  # MR-like contrast between organ and background
        a, b = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
        middle = {name: _fraction_between(case.image[m], a, b)
                  for name, m in (("band", band), ("bg", far_bg), ("organ", deep_organ))}
        assert middle["band"] > 0.1
        assert middle["band"] > 3 * max(middle["bg"], middle["organ"])
        assert lo < np.median(case.image[band]) < hi


def test_spacing_and_shape_as_requested() -> None:
    shape, spacing = (10, 18, 26), (3.0, 0.8, 1.2)
    data = phantom_source(n_cases=2, n_noisy_cases=1, shape=shape, spacing=spacing)[0].load()
    for img in (data.image, data.reference, data.noisy):
        assert img.GetSize() == shape[::-1]  # SimpleITK sizes are (x, y, z)
        np.testing.assert_allclose(img.GetSpacing(), spacing[::-1])
        assert sitk.GetArrayViewFromImage(img).shape == shape
    case = generate_phantom_case(0, shape, spacing)
    assert case.image.shape == case.reference.shape == case.noisy.shape == shape
    assert case.spacing == spacing


@pytest.mark.parametrize("shape", [(7, 16, 16), (16, 16), (16, 16, 16, 16), (16, 0, 16)])
def test_bad_shape_raises(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="shape"):
        generate_phantom_case(0, shape, (1.0,) * 3)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0), (1.0, 1.0)])
def test_bad_spacing_raises(spacing: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="spacing"):
        generate_phantom_case(0, SMALL, spacing)


def test_bad_case_counts_raise() -> None:
    with pytest.raises(ValueError, match="n_cases"):
        phantom_source(n_cases=0, n_noisy_cases=0)
    with pytest.raises(ValueError, match="n_noisy_cases"):
        phantom_source(n_cases=3, n_noisy_cases=4)


def _boundary_share(lesion: np.ndarray) -> float:
    """Share of lesion voxels with a 6-neighbour outside the lesion."""
    touch = lesion & ndimage.binary_dilation(~lesion, ndimage.generate_binary_structure(3, 1))
    return float(touch.sum() / lesion.sum())


def test_compact_lesion_keeps_volume_organ_and_is_less_thin() -> None:
    """lesion_shape compact: about the diffuse lesion's volume (the same number of
    high-resolution voxels; majority downsampling moves it by at most a few %), inside the
    organ, fewer boundary voxels, deterministic; the default is the diffuse lesion."""
    shares = {"diffuse": [], "compact": []}
    for i in range(6):
        ss = np.random.SeedSequence([0, i])
        diffuse = generate_phantom_case(ss, lesion_shape="diffuse")
        default = generate_phantom_case(np.random.SeedSequence([0, i]))
        compact = generate_phantom_case(np.random.SeedSequence([0, i]), lesion_shape="compact")
        assert np.array_equal(default.reference, diffuse.reference)
        assert np.array_equal(default.image, diffuse.image)
        again = generate_phantom_case(np.random.SeedSequence([0, i]), lesion_shape="compact")
        assert np.array_equal(again.reference, compact.reference)
        v_d, v_c = (int((c.reference == 2).sum()) for c in (diffuse, compact))
        assert abs(v_c - v_d) <= 0.05 * v_d, (i, v_d, v_c)
        # the organ (organ + lesion) is the same scene
        assert np.array_equal(diffuse.reference >= 1, compact.reference >= 1)
        assert ndimage.label(compact.reference == 2)[1] == 1  # one blob
        for name, c in (("diffuse", diffuse), ("compact", compact)):
            shares[name].append(_boundary_share(c.reference == 2))
    assert np.median(shares["compact"]) < np.median(shares["diffuse"]) - 0.1
    with pytest.raises(ValueError, match="lesion_shape"):
        generate_phantom_case(0, lesion_shape="round")


def test_compact_lesion_through_the_config() -> None:
    from nnrobustloss.datasets.convert import source_cases

    cases = source_cases("T", [{"type": "phantom", "n_cases": 2, "n_noisy_cases": 0,
                               "lesion_shape": "compact"}],
                         seed=0)
    ref = sitk.GetArrayFromImage(cases[0].load().reference)
    expected = generate_phantom_case(np.random.SeedSequence([0, 0]), lesion_shape="compact")
    assert np.array_equal(ref, expected.reference)
