"""Calibration metrics (ECE, MCE, Brier, NLL), the band, per-case statistics, and the predict ->
evaluate round trip on the phantom with real nnU-Net inference."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import distance_transform_edt

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.metrics import (
    CALIBRATION_SUFFIX,
    NLL_EPS,
    RELIABILITY_COLUMNS,
    CalibrationStats,
    brier,
    calibration_band,
    calibration_folder,
    calibration_metric_names,
    calibration_statistics,
    ece,
    mce,
    nll,
)

# five voxels: confidences and outcomes used by the hand-computed tests below
C5 = np.array([0.1, 0.3, 0.35, 0.9, 0.95])
Y5 = np.array([0, 1, 0, 1, 1])


# --------------------------------------------------------------------------- hand-computed


def test_ece_mce_two_bins_hand_computed() -> None:
    # bins [0, 0.5) and [0.5, 1]: bin 0 holds 0.1, 0.3, 0.35 (sum 0.75, one correct),
    # bin 1 holds 0.9, 0.95 (sum 1.85, two correct)
    assert ece(C5, Y5, n_bins=2) == pytest.approx((abs(1 - 0.75) + abs(2 - 1.85)) / 5)  # 0.08
    assert mce(C5, Y5, n_bins=2) == pytest.approx(max(0.25 / 3, 0.15 / 2))  # 1/12


def test_ece_mce_default_fifteen_bins_hand_computed() -> None:
    # width 1/15: 0.1 -> bin 1, 0.3 -> 4, 0.35 -> 5, 0.9 -> 13, 0.95 -> 14; one voxel per bin,
    # so ECE = mean |y - c| and MCE = max |y - c|
    assert ece(C5, Y5) == pytest.approx((0.1 + 0.7 + 0.35 + 0.1 + 0.05) / 5)  # 0.26
    assert mce(C5, Y5) == pytest.approx(0.7)


def test_brier_and_nll_hand_computed() -> None:
    assert brier(C5, Y5) == pytest.approx((0.01 + 0.49 + 0.1225 + 0.01 + 0.0025) / 5)  # 0.127
    expected = -(math.log(0.9) + math.log(0.3) + math.log(0.65) + math.log(0.9)
                 + math.log(0.95)) / 5
    assert nll(C5, Y5) == pytest.approx(expected)


def test_bin_edges_are_left_closed_and_the_last_bin_holds_one() -> None:
    # 0.5 belongs to [0.5, 1]; 1.0 to the last bin; 0.0 to the first
    c = np.array([0.0, 0.5, 1.0])
    y = np.array([0, 1, 1])
    # bin 0: {0.0} gap 0; bin 1: {0.5, 1.0} sum 1.5, two correct -> gap 0.5 over 2 voxels
    assert ece(c, y, n_bins=2) == pytest.approx(0.5 / 3)
    assert mce(c, y, n_bins=2) == pytest.approx(0.25)
    # with 4 bins 0.5 sits alone in [0.5, 0.75): gap 0.5
    assert mce(c, y, n_bins=4) == pytest.approx(0.5)


# --------------------------------------------------------------------------- invariants


def test_perfectly_calibrated_has_zero_ece_and_mce() -> None:
    # ten voxels at 0.3 with three correct, ten at 0.8 with eight correct
    c = np.r_[np.full(10, 0.3), np.full(10, 0.8)]
    y = np.r_[np.ones(3), np.zeros(7), np.ones(8), np.zeros(2)].astype(bool)
    assert ece(c, y) == pytest.approx(0.0, abs=1e-12)
    assert mce(c, y) == pytest.approx(0.0, abs=1e-12)
    # Brier of a calibrated forecast = its refinement: mean p(1-p) = (0.21 + 0.16) / 2
    assert brier(c, y) == pytest.approx(0.185)


def test_certain_and_right_or_wrong() -> None:
    y = np.array([1, 0, 1, 0], dtype=bool)
    right = y.astype(np.float32)
    assert ece(right, y) == 0.0 and mce(right, y) == 0.0 and brier(right, y) == 0.0
    assert nll(right, y) == pytest.approx(-math.log(1 - NLL_EPS))
    wrong = 1.0 - right
    assert ece(wrong, y) == 1.0 and mce(wrong, y) == 1.0 and brier(wrong, y) == 1.0
    assert nll(wrong, y) == pytest.approx(-math.log(NLL_EPS))  # 16.1, finite


def test_metrics_are_bounded_and_shape_free() -> None:
    rng = np.random.default_rng(0)
    c = rng.uniform(size=(4, 5, 6))
    y = rng.uniform(size=(4, 5, 6)) < c
    assert ece(c, y) == pytest.approx(ece(c.ravel(), y.ravel()))
    for value in (ece(c, y), mce(c, y), brier(c, y)):
        assert 0.0 <= value <= 1.0
    assert ece(c, y) <= mce(c, y)
    assert nll(c, y) > 0


def test_no_voxels_gives_nan() -> None:
    empty = np.zeros(0)
    for fn in (ece, mce, brier, nll):
        assert math.isnan(fn(empty, empty.astype(bool)))


def test_bad_inputs_are_one_line_errors() -> None:
    with pytest.raises(InputDataError, match="shape"):
        ece(np.zeros(3), np.zeros(4))
    with pytest.raises(InputDataError, match="not a probability"):
        brier(np.array([0.2, 1.5]), np.array([0, 1]))
    with pytest.raises(InputDataError, match="not a probability"):
        nll(np.array([np.nan]), np.array([1]))
    with pytest.raises(InputDataError, match="0 or 1"):
        ece(np.array([0.2, 0.4]), np.array([0, 2]))
    with pytest.raises(ConfigError, match="positive integer"):
        ece(C5, Y5, n_bins=0)


# --------------------------------------------------------------------------- the band


def test_band_is_a_radius_in_mm_along_the_spacing() -> None:
    ref = np.zeros((1, 1, 11), dtype=bool)
    ref[0, 0, 5] = True
    pred = np.zeros_like(ref)
    # 2 mm voxels along x: 4 mm reaches two voxels to each side (distances 4, 2, 0, 2, 4)
    band = calibration_band(ref, pred, (1.0, 1.0, 2.0), band_mm=4.0)
    assert np.flatnonzero(band[0, 0]).tolist() == [3, 4, 5, 6, 7]
    band = calibration_band(ref, pred, (1.0, 1.0, 1.0), band_mm=4.0)
    assert np.flatnonzero(band[0, 0]).tolist() == list(range(1, 10))
    # the band grows around the prediction too
    pred[0, 0, 10] = True
    band = calibration_band(ref, pred, (1.0, 1.0, 2.0), band_mm=2.0)
    assert np.flatnonzero(band[0, 0]).tolist() == [4, 5, 6, 9, 10]
    assert not calibration_band(np.zeros_like(ref), np.zeros_like(ref), (1, 1, 1)).any()


def test_band_on_the_crop_equals_the_whole_volume_distance_transform() -> None:
    rng = np.random.default_rng(3)
    ref = np.zeros((12, 30, 25), dtype=bool)
    ref[4:7, 10:15, 8:12] = True
    pred = np.zeros_like(ref)
    pred[5:9, 12:18, 9:14] = rng.uniform(size=(4, 6, 5)) < 0.7
    spacing = (2.5, 0.8, 1.1)
    for band_mm in (0.5, 3.0, 7.3):
        whole = distance_transform_edt(~(ref | pred), sampling=spacing) <= band_mm
        assert np.array_equal(calibration_band(ref, pred, spacing, band_mm), whole)
    with pytest.raises(ConfigError, match="must be > 0"):
        calibration_band(ref, pred, spacing, 0.0)


# --------------------------------------------------------------------------- per-case statistics


def _softmax_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 voxels along x (1 mm), 3 classes; reference lesion at x=2..3, organ at x=4."""
    p1 = np.array([0.0, 0.1, 0.6, 0.2, 0.1, 0.05, 0.0, 0.0, 0.0, 0.0])
    p2 = np.array([0.0, 0.0, 0.3, 0.7, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0])
    probs = np.stack([1 - p1 - p2, p1, p2]).reshape(3, 1, 1, 10).astype(np.float32)
    ref = np.array([0, 0, 2, 2, 1, 0, 0, 0, 0, 0], dtype=np.uint8).reshape(1, 1, 10)
    pred = np.argmax(probs, axis=0).astype(np.uint8)
    return probs, ref, pred


def test_case_statistics_one_vs_rest_per_region_within_the_band_and_overall() -> None:
    probs, ref, pred = _softmax_case()
    regions = {"organ": [1], "lesion": [2], "both": [1, 2]}
    stats = calibration_statistics(probs, ref, pred, (1.0, 1.0, 1.0), regions, n_bins=5,
                                   band_mm=1.0)
    values = stats.metrics()
    assert list(values) == list(regions)
    # organ: reference x=4, predicted organ x=2 (0.6 > 0.3) -> band x = 1..5
    c, y = probs[1, 0, 0], ref[0, 0] == 1
    band = np.zeros(10, dtype=bool)
    band[1:6] = True
    assert values["organ"]["ece"] == pytest.approx(ece(c[band], y[band], 5))
    assert values["organ"]["mce"] == pytest.approx(mce(c[band], y[band], 5))
    assert values["organ"]["brier"] == pytest.approx(brier(c[band], y[band]))
    assert values["organ"]["nll"] == pytest.approx(nll(c[band], y[band]))
    assert values["organ"]["ece_all"] == pytest.approx(ece(c, y, 5))
    assert values["organ"]["mce_all"] == pytest.approx(mce(c, y, 5))
    assert values["organ"]["brier_all"] == pytest.approx(brier(c, y))
    assert values["organ"]["nll_all"] == pytest.approx(nll(c, y))
    # organ by hand within the band: c = .1 .6 .2 .1 .05, y = 0 0 0 1 0
    assert values["organ"]["brier"] == pytest.approx(
        (0.01 + 0.36 + 0.04 + 0.81 + 0.0025) / 5)
    # a region of two labels: confidence p1 + p2, correct where ref is 1 or 2
    c2, y2 = probs[1, 0, 0] + probs[2, 0, 0], ref[0, 0] > 0
    assert values["both"]["brier_all"] == pytest.approx(brier(c2, y2))
    assert list(next(iter(values.values()))) == calibration_metric_names()


def test_absent_region_has_an_empty_band_and_nan_band_metrics() -> None:
    probs, ref, pred = _softmax_case()
    probs = np.concatenate([probs, np.zeros((1, 1, 1, 10), np.float32)])  # class 3: never
    stats = calibration_statistics(probs, ref, pred, (1, 1, 1), {"cyst": [3]})
    v = stats.metrics()["cyst"]
    assert all(math.isnan(v[m]) for m in ("ece", "mce", "brier", "nll"))
    assert v["ece_all"] == 0.0 and v["brier_all"] == 0.0


def test_statistics_refuse_mismatched_probabilities() -> None:
    probs, ref, pred = _softmax_case()
    with pytest.raises(InputDataError, match="do not match the label shape"):
        calibration_statistics(probs[:, :, :, :5], ref, pred, (1, 1, 1), {"organ": [1]})
    with pytest.raises(InputDataError, match="not all channels"):
        calibration_statistics(probs, ref, pred, (1, 1, 1), {"cyst": [3]})


def test_statistics_file_round_trip_and_errors(tmp_path: Path) -> None:
    probs, ref, pred = _softmax_case()
    stats = calibration_statistics(probs, ref, pred, (1, 1, 1), {"organ": [1], "lesion": [2]})
    stats.save(tmp_path / f"c1{CALIBRATION_SUFFIX}")
    back = CalibrationStats.load(tmp_path / f"c1{CALIBRATION_SUFFIX}")
    assert back.regions == ["organ", "lesion"] and back.n_bins == 15 and back.band_mm == 5.0
    assert np.array_equal(back.counts, stats.counts)
    assert back.metrics() == stats.metrics()
    assert (tmp_path / f"c1{CALIBRATION_SUFFIX}").stat().st_size < 4096
    with pytest.raises(InputDataError, match="calibration statistics not found"):
        CalibrationStats.load(tmp_path / "nope_calibration.npz")
    (tmp_path / f"bad{CALIBRATION_SUFFIX}").write_bytes(b"not a zip")
    with pytest.raises(InputDataError, match="not readable calibration statistics"):
        CalibrationStats.load(tmp_path / f"bad{CALIBRATION_SUFFIX}")


def test_calibration_folder_rows_and_reliability_sums(tmp_path: Path) -> None:
    probs, ref, pred = _softmax_case()
    regions = {"organ": [1], "lesion": [2]}
    a = calibration_statistics(probs, ref, pred, (1, 1, 1), regions, n_bins=4)
    b = calibration_statistics(probs[::-1].copy(), ref, pred, (1, 1, 1), regions, n_bins=4)
    a.save(tmp_path / f"a{CALIBRATION_SUFFIX}")
    b.save(tmp_path / f"b{CALIBRATION_SUFFIX}")
    rows, rel = calibration_folder(tmp_path, ["a", "b"], "T", "M", 1, list(regions), 4, 5.0)
    assert len(rows) == 2 * 2 * 8
    assert rows[rows.case == "a"].set_index(["region", "metric"])["value"].to_dict() == {
        (r, m): v for r, vals in a.metrics().items() for m, v in vals.items()}
    assert list(rel.columns) == list(RELIABILITY_COLUMNS) and len(rel) == 2 * 2 * 4
    organ_all = rel[(rel.region == "organ") & (rel.voxels == "all")]
    assert organ_all["count"].tolist() == (a.counts[0, 1] + b.counts[0, 1]).tolist()
    assert organ_all["count"].sum() == 20
    assert organ_all["lower"].tolist() == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(InputDataError, match="Rerun the predict stage"):
        calibration_folder(tmp_path, ["a"], "T", "M", 1, list(regions), 15, 5.0)
    with pytest.raises(InputDataError, match="calibration statistics not found"):
        calibration_folder(tmp_path, ["a", "c"], "T", "M", 1, list(regions), 4, 5.0)


# --------------------------------------------------------------------------- nnU-Net round trip


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """A results folder that links the phantom fixture's raw data, reference labels and splits,
    with a 1-epoch Baseline and CoT training of fold 0 in it."""

    from nnrobustloss import layout
    from nnrobustloss.training import train

    info = request.getfixturevalue("preprocessed_phantom")
    root = tmp_path_factory.mktemp("calibration_results")
    for name in ("raw", "reference", "splits"):
        (root / name).symlink_to(Path(info["results_dir"]) / name)
    from conftest import deterministic_cpu_training

    with deterministic_cpu_training():
        for method in ("Baseline", "CoT"):
            train(info["preprocessed_dir"], method, 0,
                  layout.training_dir(root, "PhantomTest", method, 0), epochs=1,
                  iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu")
        yield root


def _params(method: str, calibration: bool, **prediction) -> tuple[dict, dict]:
    from conftest import PHANTOM_TEST_TASK

    from nnrobustloss import pipeline as P
    from nnrobustloss.config import validate_config

    cfg = validate_config({
        "tasks": {"PhantomTest": PHANTOM_TEST_TASK}, "methods": [method], "device": "cpu",
        "prediction": {"mirroring": False, **prediction},
        "evaluation": {"calibration": calibration}})
    return (P.predict_params(cfg, "PhantomTest", method, 0),
            P.evaluate_params(cfg, "PhantomTest", method, 0))


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_predict_and_evaluate_with_calibration(trained: Path, tmp_path: Path) -> None:
    from nnrobustloss import pipeline as P
    from nnrobustloss.splits import fold_cases

    splits = trained / "splits" / "PhantomTest.json"
    cases = fold_cases(splits, 0, "val")
    kw = dict(results_dir=trained, splits_json=splits, device="cpu")
    plain_p, plain_e = _params("Baseline", calibration=False)
    cal_p, cal_e = _params("Baseline", calibration=True, save_probabilities=True)
    P.run_predict(plain_p, out_dir=tmp_path / "plain", **kw)
    P.run_predict(cal_p, out_dir=tmp_path / "cal", **kw)
    assert sorted(p.name for p in (tmp_path / "plain").iterdir()) == sorted(
        f"{c}.nii.gz" for c in cases)
    for case in cases:
        # the softmax path gives nnU-Net's segmentation of the logits path
        seg = _read(tmp_path / "cal" / f"{case}.nii.gz")
        assert np.array_equal(seg, _read(tmp_path / "plain" / f"{case}.nii.gz"))
        probs = np.load(tmp_path / "cal" / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *seg.shape)
        assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
        assert np.array_equal(np.argmax(probs, axis=0), seg)
        # the stored statistics are those of the stored softmax against the reference
        ref = _read(trained / "reference" / "PhantomTest" / f"{case}.nii.gz")
        again = calibration_statistics(probs, ref, seg, (2.0, 1.0, 1.0),
                                       {"organ": [1], "lesion": [2]})
        stored = CalibrationStats.load(tmp_path / "cal" / f"{case}{CALIBRATION_SUFFIX}")
        assert np.array_equal(stored.counts, again.counts)
        for region, values in stored.metrics().items():
            assert values == pytest.approx(again.metrics()[region], nan_ok=True)
        assert stored.counts[:, 1].sum(axis=1).tolist() == [seg.size, seg.size]

    P.run_evaluate(plain_e, pred_dir=tmp_path / "plain", out_csv=tmp_path / "plain.csv",
                   reliability_csv=tmp_path / "plain_rel.csv", **{k: kw[k] for k in kw
                                                                  if k != "device"})
    P.run_evaluate(cal_e, pred_dir=tmp_path / "cal", out_csv=tmp_path / "cal.csv",
                   reliability_csv=tmp_path / "cal_rel.csv", **{k: kw[k] for k in kw
                                                              if k != "device"})
    plain, cal = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(tmp_path / "cal.csv")
    assert set(plain.metric) == {"dice", "asd", "surface_dice"}
    # the segmentation rows are unchanged; calibration rows follow, 8 per case and region
    assert cal.iloc[:len(plain)].equals(plain)
    extra = cal.iloc[len(plain):]
    assert len(extra) == len(cases) * 2 * 8
    assert list(dict.fromkeys(extra.metric)) == calibration_metric_names()
    finite = extra.dropna(subset=["value"])
    assert ((finite.value >= 0) & ((finite.value <= 1) | finite.metric.str.startswith("nll"))).all()
    assert pd.read_csv(tmp_path / "plain_rel.csv").empty
    rel = pd.read_csv(tmp_path / "cal_rel.csv")
    assert len(rel) == 2 * 2 * 15
    n_voxels = sum(_read(tmp_path / "cal" / f"{c}.nii.gz").size for c in cases)
    assert (rel[rel.voxels == "all"].groupby("region")["count"].sum() == n_voxels).all()

    # a missing statistics file is a one-line error naming it, before any metric is written
    (tmp_path / "cal" / f"{cases[0]}{CALIBRATION_SUFFIX}").unlink()
    with pytest.raises(InputDataError, match=f"{cases[0]}_calibration.npz: calibration statistics "
                                             "not found"):
        P.run_evaluate(cal_e, pred_dir=tmp_path / "cal", out_csv=tmp_path / "again.csv",
                       results_dir=trained, splits_json=splits)
    assert not (tmp_path / "again.csv").exists()


@pytest.mark.slow
def test_peer_averaged_probabilities_are_the_mean_of_both_peers(trained: Path,
                                                                tmp_path: Path) -> None:
    from nnrobustloss import layout
    from nnrobustloss.prediction import CalibrationSpec, _predict_case, predict_cases
    from nnrobustloss.splits import fold_cases
    from nnrobustloss.trainers.inference import build_predictor

    case = fold_cases(trained / "splits" / "PhantomTest.json", 0, "val")[0]
    images = layout.raw_dir(trained, "PhantomTest", 981) / "imagesTr"
    ckpt = layout.training_dir(trained, "PhantomTest", "CoT", 0)
    spec = CalibrationSpec(trained / "reference" / "PhantomTest", {"organ": [1], "lesion": [2]})
    kw = dict(mirroring=False, save_probabilities=True, device="cpu")
    predict_cases(ckpt, images, [case], tmp_path / "avg", average_peers=True, calibration=spec,
                  **kw)
    predict_cases(ckpt, images, [case], tmp_path / "a", **kw)
    (tmp_path / "b").mkdir()
    peer_b = build_predictor(ckpt, peers="B", device="cpu", use_mirroring=False, verbose=False)
    _predict_case([peer_b], [str(images / f"{case}_0000.nii.gz")], tmp_path / "b" / case,
                  True, None)
    avg = np.load(tmp_path / "avg" / f"{case}.npz")["probabilities"]
    pa = np.load(tmp_path / "a" / f"{case}.npz")["probabilities"]
    pb = np.load(tmp_path / "b" / f"{case}.npz")["probabilities"]
    assert not np.allclose(pa, pb)  # the peers differ
    assert np.allclose(avg, (pa + pb) / 2, atol=1e-6)
    seg = _read(tmp_path / "avg" / f"{case}.nii.gz")
    assert np.array_equal(seg, np.argmax(avg, axis=0))
    assert (tmp_path / "avg" / f"{case}{CALIBRATION_SUFFIX}").is_file()
    assert not (tmp_path / "a" / f"{case}{CALIBRATION_SUFFIX}").exists()
    with pytest.raises(InputDataError, match=f"reference label of case {case} not found"):
        predict_cases(ckpt, images, [case], tmp_path / "x",
                      calibration=CalibrationSpec(tmp_path / "none", {"organ": [1]}), **kw)
    assert not (tmp_path / "x").exists()
