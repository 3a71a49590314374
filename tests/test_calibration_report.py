"""Table 3 (calibration) and Figure 2 (reliability diagrams) on synthetic stage CSVs."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from nnrobustloss.metrics import CSV_COLUMNS, RELIABILITY_COLUMNS
from nnrobustloss.report import build_report, reliability_curves, wilcoxon_p

METHODS = ["Baseline", "SVLS", "HRL"]
TASKS = {"Phantom": {"table_metrics": ["dice", "asd"]},
         "Heart": {"table_metrics": ["dice", "asd"]}}
BASE_ECE = np.array([0.10, 0.12, 0.08, 0.15, 0.11, 0.09, 0.13, 0.14])  # 2 folds x 4 cases
EFFECT = {"Baseline": np.zeros(8),
          "SVLS": np.array([0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08]),
          # lower on every case by distinct amounts: exact two-sided Wilcoxon p = 2 / 2^8
          "HRL": -np.array([0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008])}


def _case_values(method: str, fold: int) -> dict[str, dict[str, np.ndarray]]:
    """Per region and metric the fold's four case values (organ = base, lesion = base + 0.1)."""
    sl = slice(4 * fold, 4 * fold + 4)
    e = BASE_ECE[sl] + EFFECT[method][sl]
    out = {}
    for region, shift in (("organ", 0.0), ("lesion", 0.1)):
        out[region] = {"dice": 0.8 - e, "asd": 1.0 + e, "ece": e + shift, "mce": 2 * e + shift,
                       "brier": e / 2 + shift, "nll": 3 * e + shift, "ece_all": e / 10,
                       "mce_all": e / 5, "brier_all": e / 20, "nll_all": e / 4}
    return out


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, list[Path]]:
    metrics, reliability = [], []
    for method in METHODS:
        for fold in (0, 1):
            cases = [f"case_{i}" for i in range(4 * fold, 4 * fold + 4)]
            values = _case_values(method, fold)
            if method == "Baseline" and fold == 1:
                values["lesion"]["ece"][0] = np.nan  # an empty band: left out and counted
            rows = [("Phantom", method, fold, c, region, metric, float(v[i]))
                    for region, per_metric in values.items()
                    for metric, v in per_metric.items() for i, c in enumerate(cases)]
            path = tmp_path / "metrics" / "Phantom" / method / f"fold{fold}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows, columns=list(CSV_COLUMNS[:7])).to_csv(path, index=False)
            metrics.append(path)
            # reliability: 3 bins of 1/3; HRL calibrated, the others over-confident at the top
            acc_top = 0.95 if method == "HRL" else 0.6
            rel = []
            for region in ("organ", "lesion"):
                for voxels in ("band", "all"):
                    for b, (n, conf, acc) in enumerate(((100, 0.1, 0.1), (50, 0.5, 0.45),
                                                        (200, 0.95, acc_top))):
                        rel.append(("Phantom", method, fold, region, voxels, 5.0, b, b / 3,
                                    (b + 1) / 3, n, n * conf, n * acc))
            rpath = path.with_name(f"fold{fold}_reliability.csv")
            pd.DataFrame(rel, columns=list(RELIABILITY_COLUMNS)).to_csv(rpath, index=False)
            reliability.append(rpath)
    # Heart: segmentation rows only and a header-only reliability file (calibration off)
    path = tmp_path / "metrics" / "Heart" / "Baseline" / "fold0.csv"
    path.parent.mkdir(parents=True)
    pd.DataFrame([("Heart", "Baseline", 0, "h0", "LV", "dice", 0.9)],
                 columns=list(CSV_COLUMNS[:7])).to_csv(path, index=False)
    metrics.append(path)
    rpath = path.with_name("fold0_reliability.csv")
    pd.DataFrame(columns=list(RELIABILITY_COLUMNS)).to_csv(rpath, index=False)
    reliability.append(rpath)
    return {"metrics": metrics, "reliability": reliability, "root": [tmp_path]}


def _build(study: dict[str, list[Path]], reliability: list[Path] | None) -> dict[str, Path]:
    root = study["root"][0]
    return build_report(study["metrics"], [], [], root / "tables", root / "figures", tasks=TASKS,
                        methods=METHODS, reliability_csvs=reliability)


def test_table3_means_and_paired_test_against_the_baseline(study) -> None:
    out = _build(study, study["reliability"])
    for name in ("table3.csv", "table3.md", "table3.tex", "figure2_reliability.png",
                 "figure2_reliability.pdf"):
        assert out[name].is_file() and out[name].stat().st_size > 0
    t3 = pd.read_csv(out["table3.csv"]).set_index(["task", "method", "metric"])
    # mean over regions per case, then over the 4 cases of a fold, then over the 2 folds
    for method in METHODS:
        e = BASE_ECE + EFFECT[method]
        expected = {"ece": e + 0.05, "brier": e / 2 + 0.05, "nll": 3 * e + 0.05,
                    "ece_all": e / 10, "brier_all": e / 20, "nll_all": e / 4}
        if method == "Baseline":  # case_4's lesion ECE is NaN: that case is the organ alone
            expected["ece"] = expected["ece"].copy()
            expected["ece"][4] = e[4]
        for metric, per_case in expected.items():
            row = t3.loc[("Phantom", method, metric)]
            assert row["mean"] == pytest.approx((per_case[:4].mean() + per_case[4:].mean()) / 2)
            assert row["n_cases"] == 8
        assert t3.loc[("Phantom", method, "nll"), "unit"] == "nats"
    assert t3.loc[("Phantom", "Baseline", "ece"), "n_nan"] == 1
    hrl = t3.loc[("Phantom", "HRL", "brier")]
    assert hrl["p_value"] == pytest.approx(2 / 2**8)
    assert hrl["p_value"] == pytest.approx(wilcoxon_p(BASE_ECE / 2 + EFFECT["HRL"] / 2,
                                                      BASE_ECE / 2))
    assert hrl["p_holm"] == pytest.approx(min(1.0, 2 * 2 / 2**8)) and bool(hrl["significant"])
    assert not bool(t3.loc[("Phantom", "SVLS", "brier"), "significant"])
    assert np.isnan(t3.loc[("Phantom", "Baseline", "ece"), "p_value"])
    # Heart was not measured: its cells are "--"
    assert t3.loc[("Heart", "Baseline", "ece"), "n_cases"] == 0

    md = out["table3.md"].read_text()
    assert md.startswith("Table 3: calibration") and "5 mm" in md and "3 equal-width bins" in md
    assert "| Method | Phantom ECE | Phantom Brier | Phantom NLL | Heart ECE |" in md
    hrl_line = next(line for line in md.splitlines() if line.startswith("| HRL |"))
    cells = [c.strip() for c in hrl_line.strip("|").split("|")]
    assert cells[2] == f"{t3.loc[('Phantom', 'HRL', 'brier'), 'mean']:.3f}*"
    # ECE: the Baseline's case_4 is its organ alone (lesion NaN), so HRL is not lower on every
    # case and gets no mark
    assert cells[1] == f"{t3.loc[('Phantom', 'HRL', 'ece'), 'mean']:.3f}"
    assert cells[4:] == ["--", "--", "--"]
    tex = out["table3.tex"].read_text()
    assert r"\label{tab:calibration}" in tex and "$^{*}$" in tex


def test_reliability_curves_pool_classes_cases_and_folds(study) -> None:
    from nnrobustloss.report import read_reliability

    curves = reliability_curves(read_reliability(study["reliability"]))
    top = curves[(curves.method == "Baseline") & (curves.bin == 2)].iloc[0]
    assert top["count"] == 200 * 2 * 2  # two regions, two folds, band voxels only
    assert top["confidence"] == pytest.approx(0.95) and top["accuracy"] == pytest.approx(0.6)
    assert set(curves.task) == {"Phantom"}


def test_figure2_is_a_readable_image(study) -> None:
    out = _build(study, study["reliability"])
    img = mpimg.imread(out["figure2_reliability.png"])
    assert img.shape[1] == 1400  # 7 in at 200 dpi
    assert img.shape[0] > 500
    assert out["figure2_reliability.pdf"].read_bytes().startswith(b"%PDF")


def test_without_reliability_files_nothing_new_is_written(study) -> None:
    out = _build(study, None)
    assert "table3.csv" not in out
    assert not (study["root"][0] / "tables" / "table3.csv").exists()
    assert (study["root"][0] / "tables" / "table1.csv").is_file()


def test_calibration_off_says_so(study, tmp_path: Path) -> None:
    seg_only = []
    for path in study["metrics"]:
        df = pd.read_csv(path)
        df = df[df.metric.isin(["dice", "asd"])]
        new = tmp_path / "off" / path.relative_to(study["root"][0])
        new.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(new, index=False)
        seg_only.append(new)
    header_only = tmp_path / "off" / "rel.csv"
    pd.DataFrame(columns=list(RELIABILITY_COLUMNS)).to_csv(header_only, index=False)
    out = build_report(seg_only, [], [], tmp_path / "off" / "tables", tmp_path / "off" / "fig",
                       tasks=TASKS, methods=METHODS, reliability_csvs=[header_only])
    assert "Calibration was not measured" in out["table3.md"].read_text()
    assert out["figure2_reliability.png"].is_file()
