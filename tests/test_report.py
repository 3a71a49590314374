"""Tests of nnrobustloss.report on synthetic metric, noise and trials CSVs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnrobustloss.errors import InputDataError
from nnrobustloss.report import (
    bootstrap_ci,
    build_report,
    holm,
)

METHODS = ["Baseline", "BaselineRef", "CoTPlus", "SVLS", "HRL"]
TASKS = {"Heart": {"table_metrics": ["dice", "asd"]},
         "KiTS23": {"table_metrics": ["dice", "surface_dice"]}}
N_CASES = 8  # 2 folds x 4 cases


def _metric_rows(task: str, method: str, fold: int, cases: list[str],
                 values: dict[str, dict[str, list[float]]],
                 worst: set[tuple[str, str, str]] = frozenset(),
                 replicate: int | None = None) -> pd.DataFrame:
    """values[region][metric] = one value per case; ``worst``: (case, region, metric) rows that
    are the worst case of one empty mask (a ``worst_case`` column is written only when given,
    as ``replicate``: hand-made tables may lack both)."""
    rows = [(task, method, fold, c, region, metric, v[i])
            for region, per_metric in values.items()
            for metric, v in per_metric.items()
            for i, c in enumerate(cases)]
    df = pd.DataFrame(rows, columns=["task", "method", "fold", "case", "region", "metric",
                                     "value"])
    if worst:
        df["worst_case"] = [int((c, r, m) in worst) for c, r, m in
                            zip(df["case"], df["region"], df["metric"], strict=True)]
    if replicate is not None:
        df["replicate"] = replicate
    return df


@pytest.fixture()
def study(tmp_path: Path) -> dict[str, object]:
    """Heart: 2 regions, methods with designed effects; KiTS23: Baseline and HRL only."""
    base_dice = np.array([0.70, 0.72, 0.68, 0.75, 0.71, 0.69, 0.73, 0.74])
    effects = {"Baseline": np.zeros(N_CASES),
               # HRL better on every case by distinct amounts -> exact Wilcoxon p = 2/2^8
               "HRL": np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08]),
               # SVLS: mixed signs -> not significant
               "SVLS": np.array([0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08]),
               "BaselineRef": np.array([0.005, -0.001, 0.002, 0.0, 0.01, -0.02, 0.0, 0.003])}
    metrics_csvs = []
    for method, eff in effects.items():
        for fold in (0, 1):
            sl = slice(4 * fold, 4 * fold + 4)
            cases = [f"case_{i}" for i in range(4 * fold, 4 * fold + 4)]
            d = base_dice[sl] + eff[sl]
            asd_lv = list(3.0 - 10 * eff[sl])
            worst = set()
            if method == "Baseline" and fold == 1:
                asd_lv[0] = 50.0  # exactly one empty mask: the worst case
                worst = {("case_4", "LV", "asd")}
            vals = {"LV": {"dice": list(d), "asd": asd_lv, "surface_dice": list(d - 0.1)},
                    "RV": {"dice": list(d - 0.1), "asd": list(4.0 - 10 * eff[sl]),
                           "surface_dice": list(d - 0.2)}}
            path = tmp_path / "metrics" / "Heart" / method / f"fold{fold}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            _metric_rows("Heart", method, fold, cases, vals, worst).to_csv(path, index=False)
            metrics_csvs.append(path)
    for method, dice in (("Baseline", 0.8), ("HRL", 0.9)):
        path = tmp_path / "metrics" / "KiTS23" / method / "fold0.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        vals = {"Kidney+Tumor+Cyst": {"dice": [dice] * 3, "asd": [1.0] * 3,
                                      "surface_dice": [dice - 0.1] * 3}}
        _metric_rows("KiTS23", method, 0, ["a", "b", "c"], vals).to_csv(path, index=False)
        metrics_csvs.append(path)

    noise = tmp_path / "noise" / "Heart.csv"
    noise.parent.mkdir(parents=True)
    pd.DataFrame([("Heart", c, r, m, v) for c, (d1, d2) in
                  {"c0": (0.96, 0.94), "c1": (0.98, 0.92)}.items()
                  for r, dv in (("LV", d1), ("RV", d2))
                  for m, v in (("dice", dv), ("asd", 0.5))],
                 columns=["task", "case", "region", "metric", "value"]).to_csv(noise, index=False)

    trials_csvs = []
    rng = np.random.default_rng(0)
    for method in ("CoTPlus", "SVLS", "HRL"):
        for fold in (0, 1):
            path = tmp_path / "tuning" / "Heart" / method / f"fold{fold}" / "trials.csv"
            path.parent.mkdir(parents=True)
            pd.DataFrame({"task": "Heart", "method": method, "fold": fold,
                          "number": range(12), "value": rng.uniform(0.6, 0.9, 12),
                          "state": ["COMPLETE"] * 10 + ["FAIL", "RUNNING"],
                          "params_sigma": rng.uniform(0.2, 2, 12)}).to_csv(path, index=False)
            trials_csvs.append(path)
    return {"metrics": metrics_csvs, "noise": [noise], "trials": trials_csvs,
            "tables": tmp_path / "tables", "figures": tmp_path / "figures",
            "base_dice": base_dice, "effects": effects}


def _build(study: dict[str, object], **kw: object) -> dict[str, Path]:
    args = {"metrics_csvs": study["metrics"], "noise_csvs": study["noise"],
            "trials_csvs": study["trials"], "tables_dir": study["tables"],
            "figures_dir": study["figures"], "tasks": TASKS, "methods": METHODS}
    args.update(kw)
    return build_report(**args)  # type: ignore[arg-type]


def test_all_outputs_written(study) -> None:
    out = _build(study)
    expected = {f"{t}.{e}" for t in ("table1", "table2", "folds", "noise_levels")
                for e in ("csv", "md", "tex", "html")} | {"figure1.png", "figure1.pdf"}
    assert set(out) == expected
    for path in out.values():
        assert path.is_file() and path.stat().st_size > 0
    assert not list(Path(study["tables"]).glob(".tmp-*"))
    png = mpimg.imread(out["figure1.png"])
    assert png.shape[1] >= 7 * 150  # 7 in at >= 150 dpi
    assert out["figure1.pdf"].read_bytes().startswith(b"%PDF")
    tex = out["table1.tex"].read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex


def test_table1_values_order_names_and_marks(study) -> None:
    out = _build(study)
    t1 = pd.read_csv(out["table1.csv"])
    heart = t1[t1.task == "Heart"]
    assert list(heart[heart.metric == "dice"]["method"]) == METHODS
    assert list(heart[heart.metric == "dice"]["method_name"]) == [
        "Baseline", "Baseline (ref.)", "CoT+", "SVLS", "HRL"]
    base, eff = study["base_dice"], study["effects"]
    # mean over regions (LV d, RV d - 0.1), then cases, then folds; in %
    hrl = base + eff["HRL"]
    expected = np.mean([np.mean(hrl[:4] - 0.05), np.mean(hrl[4:] - 0.05)]) * 100
    got = heart[(heart.method == "HRL") & (heart.metric == "dice")]["mean"].item()
    assert got == pytest.approx(expected, rel=1e-12)
    # Baseline ASD: the worst-case value of case_4's LV (50 mm) counts like any other
    b_lv = np.full(8, 3.0)
    b_lv[4] = 50.0
    per_case = np.mean(np.stack([b_lv, np.full(8, 4.0)]), axis=0)
    exp_asd = np.mean([per_case[:4].mean(), per_case[4:].mean()])
    row = heart[(heart.method == "Baseline") & (heart.metric == "asd")]
    assert row["mean"].item() == pytest.approx(exp_asd, rel=1e-12)
    assert (row["n_worst"].item(), row["n_values"].item(), row["n_nan"].item()) == (1, 16, 0)
    # Wilcoxon: HRL better on all 8 cases -> exact two-sided p = 2 / 2^8; Holm over 3 tests
    hrl_row = heart[(heart.method == "HRL") & (heart.metric == "dice")]
    assert hrl_row["p_value"].item() == pytest.approx(2 / 2**8)
    svls_row = heart[(heart.method == "SVLS") & (heart.metric == "dice")]
    ref_row = heart[(heart.method == "BaselineRef") & (heart.metric == "dice")]
    per_case_b = base - 0.05
    exp_p = {m: stats.wilcoxon(base + eff[m] - 0.05, per_case_b).pvalue
             for m in ("SVLS", "BaselineRef")}
    assert svls_row["p_value"].item() == pytest.approx(exp_p["SVLS"])
    assert ref_row["p_value"].item() == pytest.approx(exp_p["BaselineRef"])
    assert hrl_row["p_holm"].item() == pytest.approx(min(1, 3 * 2 / 2**8))
    assert bool(hrl_row["significant"].item()) and not bool(svls_row["significant"].item())
    assert math.isnan(heart[(heart.method == "CoTPlus")]["mean"].iloc[0])  # no metric rows
    # CIs: bracket the case-level mean
    assert hrl_row["ci_low"].item() < (hrl - 0.05).mean() * 100 < hrl_row["ci_high"].item()

    md = out["table1.md"].read_text().splitlines()
    assert md[0].startswith("Table 1") and "then over the cases" in md[0] \
        and "then over folds" in md[0]
    rows = [line for line in md if line.startswith("| ") and not line.startswith("| Method")
            and not line.startswith("| ---")]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [
        "Baseline", "Baseline (ref.)", "CoT+", "SVLS", "HRL"]
    cells = {r.split(" | ")[0].lstrip("| "): r.strip("| ").split(" | ")[1:] for r in rows}
    assert cells["HRL"][0] == f"{expected:.1f}*"
    assert "*" not in cells["SVLS"][0] and "*" not in cells["Baseline"][0]
    # per task: its metrics, then "Lost" (k of N fold x replicate trainings)
    assert cells["CoT+"] == ["--"] * 6
    assert cells["SVLS"][2] == "0/2" and cells["SVLS"][3:] == ["--"] * 3  # no KiTS23 rows
    assert cells["HRL"][3] == "90.0" and cells["HRL"][4] == "80.0"  # KiTS: Dice, Surface Dice
    assert cells["HRL"][5] == "0/1"
    text = "\n".join(md)
    assert "Heart Baseline: 1 of 16" in text and "left out" not in text  # worst-case footnote
    assert "No method lost a class" in text and "†" not in text.split("No method")[0]
    header = next(line for line in md if line.startswith("| Method"))
    assert "Heart ASD (mm)" in header and "KiTS23 Surface Dice (%)" in header
    assert "Heart Lost" in header
    tex = out["table1.tex"].read_text()
    assert "Baseline (ref.)" in tex and "CoT+" in tex and "$^{*}$" in tex


def test_table2_only_svls_and_hrl(study) -> None:
    out = _build(study)
    t2 = pd.read_csv(out["table2.csv"])
    assert set(t2["method"]) == {"SVLS", "HRL"}
    assert list(t2[(t2.task == "Heart") & (t2.method == "HRL") & (t2.metric == "dice")]
                ["region"]) == ["LV", "RV"]
    base, eff = study["base_dice"], study["effects"]
    lv = base + eff["SVLS"]
    row = t2[(t2.task == "Heart") & (t2.region == "LV") & (t2.method == "SVLS")
             & (t2.metric == "dice")]
    assert row["mean"].item() == pytest.approx(np.mean([lv[:4].mean(), lv[4:].mean()]) * 100)
    md = out["table2.md"].read_text()
    assert md.splitlines()[0].startswith("Table 2")
    assert "SVLS Dice (%)" in md and "HRL ASD (mm)" in md and "CoT+" not in md
    out2 = _build(study, methods=["Baseline", "HRL"])
    md2 = out2["table2.md"].read_text()
    assert "HRL Dice (%)" in md2 and "SVLS" not in md2


def test_noise_table(study) -> None:
    out = _build(study)
    nz = pd.read_csv(out["noise_levels.csv"])
    heart_all = nz[(nz.task == "Heart") & (nz.region == "all classes")]
    per_case = np.array([(0.96 + 0.94) / 2, (0.98 + 0.92) / 2]) * 100
    assert heart_all["dice_mean"].item() == pytest.approx(per_case.mean())
    assert heart_all["dice_sd"].item() == pytest.approx(per_case.std(ddof=1), abs=1e-9)
    assert heart_all["n_cases"].item() == 2
    lv = nz[(nz.task == "Heart") & (nz.region == "LV")]
    assert lv["dice_mean"].item() == pytest.approx(97.0)
    kits = nz[nz.task == "KiTS23"]
    assert len(kits) == 1 and math.isnan(kits["dice_mean"].item())  # no noise CSV -> "--"
    md = out["noise_levels.md"].read_text()
    assert "| KiTS23 | all classes | 0 | -- | -- |" in md
    assert "97.0 ± 1.4" in md


def test_figure_without_trials_and_missing_metrics(study, tmp_path: Path) -> None:
    out = _build(study, metrics_csvs=[], trials_csvs=[])
    assert out["figure1.png"].is_file() and out["figure1.pdf"].is_file()
    md = out["table1.md"].read_text()
    assert "| HRL | -- | -- | -- | -- |" in md


def test_malformed_csv_names_file_and_column(study, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"task": ["Heart"], "method": ["HRL"], "fold": [0], "case": ["c"],
                  "metric": ["dice"], "value": [0.5]}).to_csv(bad, index=False)
    with pytest.raises(InputDataError, match="region") as err:
        _build(study, metrics_csvs=[*study["metrics"], bad])
    assert str(bad) in str(err.value)
    trials_bad = tmp_path / "trials.csv"
    pd.DataFrame({"task": ["Heart"], "method": ["HRL"], "fold": [0], "number": [0],
                  "value": [0.5]}).to_csv(trials_bad, index=False)
    with pytest.raises(InputDataError, match="'state'"):
        _build(study, trials_csvs=[trials_bad])
    with pytest.raises(InputDataError, match="not found"):
        _build(study, noise_csvs=[tmp_path / "nope.csv"])
    dup = tmp_path / "dup.csv"
    pd.read_csv(study["metrics"][0]).to_csv(dup, index=False)
    with pytest.raises(InputDataError, match="duplicate"):
        _build(study, metrics_csvs=[*study["metrics"], dup])


def test_holm_hand_values() -> None:
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    adj = holm([0.2, float("nan"), 0.01])
    assert adj[0] == pytest.approx(0.2) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7])[1] == 1.0


def test_bootstrap_ci_seeded() -> None:
    v = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    a, b = bootstrap_ci(v, "k"), bootstrap_ci(v, "k")
    assert a == b and a[0] < v.mean() < a[1]
    assert a[0] >= v.min() and a[1] <= v.max()
    assert math.isnan(bootstrap_ci(np.array([1.0]), "k")[0])


def test_display_names() -> None:
    from nnrobustloss.report import display_name, table2_methods

    assert display_name("BaselineRef") == "Baseline (ref.)"
    assert display_name("CoTPlus") == "CoT+"
    assert table2_methods(["HRL", "Baseline", "SVLS", "MyLoss"]) == ["HRL", "SVLS"]
    assert display_name("MyLoss") == "MyLoss"  # a method the registry does not know


# --- smoke runs, HTML tables, training curves, the noise sweep ------------------------------

def _table_rows(md: str) -> dict[str, list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ")
            and not line.startswith("| Method") and not line.startswith("| ---")]
    return {r.split(" | ")[0].lstrip("| "): r.strip("| ").split(" | ")[1:] for r in rows}


def test_smoke_run_says_so_and_marks_nothing(study) -> None:
    out = _build(study, training_iterations=2, min_training_iterations=200,
                 training_budget="1 epochs x 2 iterations")
    md = out["table1.md"].read_text()
    assert md.startswith("**SMOKE RUN: final trainings of 1 epochs x 2 iterations (2 "
                         "iterations, fewer than the 200")
    assert not any("*" in c for cells in _table_rows(md).values() for c in cells)
    t1 = pd.read_csv(out["table1.csv"])
    assert not t1["significant"].any()
    assert t1["p_value"].notna().any()  # the tests are still computed and kept in the CSV
    for stem in ("table2", "noise_levels"):
        assert out[f"{stem}.md"].read_text().startswith("**SMOKE RUN")
    assert r"\caption{\textbf{SMOKE RUN" in out["table1.tex"].read_text()
    assert "<b>SMOKE RUN" in out["table1.html"].read_text()
    # the same study with a real budget: no note, HRL's designed effect is marked
    real = _build(study, training_iterations=300, min_training_iterations=200)
    md = real["table1.md"].read_text()
    assert "SMOKE RUN" not in md and _table_rows(md)["HRL"][0].endswith("*")


def test_html_table_holds_the_markdown_cells(study) -> None:
    out = _build(study)
    html = out["table1.html"].read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == 1
    md_cells = _table_rows(out["table1.md"].read_text())
    for name, cells in md_cells.items():
        assert f"<td style=\"text-align:left\">{name}</td>" in html
        for c in cells:
            assert f">{c}</td>" in html
    assert html.count("<tr>") == len(md_cells) + 1  # header row + one row per method
    t2 = out["table2.html"].read_text()
    assert t2.count("<table>") == 2  # one table per task


def _progress(root: Path, task: str, method: str, fold: int, ema: list[float]) -> Path:
    path = root / "training" / task / method / f"fold{fold}" / "progress.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": range(len(ema)), "train_loss": [-e for e in ema],
                  "train_pseudo_dice_ema": ema, "lr": 0.01}).to_csv(path, index=False)
    return path


def test_training_curves_from_progress(study, tmp_path: Path) -> None:
    from nnrobustloss.report import read_progress

    paths = [_progress(tmp_path, "Heart", m, f, list(np.linspace(0.1, 0.8 + 0.05 * f, 6)))
             for m in ("Baseline", "HRL") for f in (0, 1)]
    df = read_progress(paths)
    assert set(zip(df.task, df.method, df.fold)) == {("Heart", m, f) for m in ("Baseline", "HRL")
                                                      for f in (0, 1)}
    assert len(df) == 4 * 6
    out = _build(study, progress_csvs=paths)
    png = mpimg.imread(out["training_curves.png"])
    assert png.shape[1] >= 7 * 150
    assert out["training_curves.pdf"].read_bytes().startswith(b"%PDF")
    bad = tmp_path / "elsewhere" / "progress.csv"
    bad.parent.mkdir()
    bad.write_text(paths[0].read_text())
    with pytest.raises(InputDataError, match="elsewhere/progress.csv: no task, method and fold "
                                             "columns, and not a training"):
        read_progress([bad])
    # a file that names its run (as the trainers write it) may live anywhere
    named = pd.read_csv(paths[0])
    named.insert(0, "replicate", 2)
    for i, (k, v) in enumerate((("task", "Lung"), ("method", "APL1"), ("fold", 4))):
        named.insert(i, k, v)
    named.to_csv(bad, index=False)
    df = read_progress([bad])
    assert set(zip(df.task, df.method, df.fold, df.replicate)) == {("Lung", "APL1", 4, 2)}


def _sweep_inputs(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Two levels; per level and method 2 folds x 2 cases; designed Dice values."""
    metrics, noise = [], []
    for level, (n_noisy, drop) in {"PNoisy00": (0, 0.0), "PNoisy08": (8, 0.2)}.items():
        for method, bonus in (("Baseline", 0.0), ("HRL", 0.1)):
            for fold in (0, 1):
                cases = [f"c{2 * fold}", f"c{2 * fold + 1}"]
                d = 0.8 - drop + bonus + 0.02 * fold
                vals = {"organ": {"dice": [d, d], "asd": [1.0, 1.0]},
                        "lesion": {"dice": [d - 0.2, d - 0.2], "asd": [2.0, 2.0]}}
                path = tmp_path / "metrics" / level / method / f"fold{fold}.csv"
                path.parent.mkdir(parents=True, exist_ok=True)
                _metric_rows(level, method, fold, cases, vals).to_csv(path, index=False)
                metrics.append(path)
        path = tmp_path / "noise" / f"{level}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        nd = 1.0 - 0.05 * n_noisy / 4
        pd.DataFrame([(level, c, r, "dice", nd if r == "organ" else nd - 0.1)
                      for c in ("c0", "c1", "c2", "c3") for r in ("organ", "lesion")],
                     columns=["task", "case", "region", "metric", "value"]).to_csv(path,
                                                                                    index=False)
        noise.append(path)
    return metrics, noise


def test_noise_sweep_table_and_figure(tmp_path: Path) -> None:
    metrics, noise = _sweep_inputs(tmp_path)
    tasks = {"PNoisy00": {"table_metrics": ["dice", "asd"]},
             "PNoisy08": {"table_metrics": ["dice", "asd"]}}
    out = build_report(metrics, noise, [], tmp_path / "tables", tmp_path / "figures",
                       tasks=tasks, methods=["Baseline", "HRL"],
                       sweep={"PNoisy00": 0, "PNoisy08": 8})
    df = pd.read_csv(out["noise_sweep.csv"])
    row = df[(df.task == "PNoisy08") & (df.method == "HRL")].iloc[0]
    # per fold: mean over classes (d, d - 0.2) and cases; fold 0: 0.6, fold 1: 0.62 -> -0.1
    fold_means = np.array([0.8 - 0.2 + 0.1 - 0.1, 0.8 - 0.2 + 0.1 + 0.02 - 0.1]) * 100
    assert row.dice_mean == pytest.approx(fold_means.mean())
    assert row.dice_sd == pytest.approx(fold_means.std(ddof=1))
    assert row.n_noisy_cases == 8 and row.n_folds == 2
    assert row.noise_dice == pytest.approx((0.9 - 0.05) * 100)  # mean of organ 0.9, lesion 0.8
    clean = df[(df.task == "PNoisy00") & (df.method == "Baseline")].iloc[0]
    assert clean.noise_dice == pytest.approx(95.0)
    md = out["noise_sweep.md"].read_text()
    assert f"| PNoisy08 | 8 | 85.0 | {fold_means.mean() - 10:.1f} ± " in md
    assert out["noise_sweep.png"].stat().st_size > 10_000
    assert out["noise_sweep.pdf"].read_bytes().startswith(b"%PDF")
    # without a sweep nothing of it is written
    plain = build_report(metrics, noise, [], tmp_path / "t2", tmp_path / "f2", tasks=tasks,
                         methods=["Baseline", "HRL"])
    assert not any(k.startswith("noise_sweep") for k in plain)


def test_report_without_metrics_is_an_error(tmp_path: Path) -> None:
    from nnrobustloss.pipeline import run_report

    params = {"tasks": TASKS, "methods": METHODS, "sweep": {}}
    with pytest.raises(InputDataError, match="no metrics files"):
        run_report(params, tmp_path, metrics_csvs=[], noise_csvs=[], trials_csvs=[])
    assert not (tmp_path / "tables").exists()


# --- the exact LaTeX of small tables (pins the output across refactorings) ------------------

def _small_inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    """One task, one fold, 2 cases, regions LV and R_V (escaped in LaTeX); Baseline and HRL."""
    rows = []
    for method, d in (("Baseline", 0.8), ("HRL", 0.9)):
        for case, off in (("c0", 0.0), ("c1", 0.02)):
            for region, roff in (("LV", 0.0), ("R_V", -0.1)):
                rows += [("Heart", method, 0, case, region, "dice", d + off + roff),
                         ("Heart", method, 0, case, region, "asd", 2.0 - d + off)]
                rows += [("Heart", method, 0, case, region, m, v * d + off)
                         for m, v in (("ece", 0.1), ("brier", 0.05), ("nll", 0.3))]
    metrics = pd.DataFrame(rows, columns=["task", "method", "fold", "case", "region", "metric",
                                          "value"])
    noise = pd.DataFrame([("Heart", c, reg, m, v) for c in ("c0", "c1") for reg in ("LV", "R_V")
                          for m, v in (("dice", 0.9 if c == "c0" else 0.95), ("asd", 0.5))],
                         columns=["task", "case", "region", "metric", "value"])
    return metrics, noise


SMALL_TASKS = {"Heart": {"table_metrics": ["dice", "asd"]}}
SMALL_METHODS = ["Baseline", "HRL"]


def test_table1_and_table2_latex_exact() -> None:
    from nnrobustloss.report import summarise, summarise_regions, table1, table2

    metrics, _ = _small_inputs()
    # per case mean over LV (d + off) and R_V (d + off - 0.1): Baseline 0.75, 0.77 -> 76.0 %
    _, tex1 = table1(summarise(metrics, SMALL_TASKS, SMALL_METHODS), SMALL_TASKS, SMALL_METHODS)
    assert tex1 == (
        "\\begin{table}[t]\n\\centering\n"
        "\\caption{segmentation quality per task and method; mean over classes (regions for "
        "KiTS23) per case, then over the cases of a fold, then over folds. Dice and Surface Dice "
        "in \\%, ASD in mm. $^{*}$ $p<0.05$ vs Baseline (paired Wilcoxon signed-rank test over "
        "cases, Holm-corrected per task and metric); -- no results.}\n"
        "\\label{tab:results}\n\\begin{tabular}{lrr}\n\\toprule\n"
        " & \\multicolumn{2}{c}{Heart} \\\\\n\\cmidrule(lr){2-3}\n"
        "Method & Dice (\\%) & ASD (mm) \\\\\n\\midrule\n"
        "Baseline & 76.0 & 1.2 \\\\\nHRL & 86.0 & 1.1 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n"
        "\\par\\smallskip\\footnotesize Surface metrics: where exactly one of prediction and "
        "reference is empty, ASD is the worst case (the diagonal of the image in mm) and Surface "
        "Dice 0, and every value enters the means; no value is such a worst case.\n"
        "\\end{table}\n")
    s2 = summarise_regions(metrics, SMALL_TASKS, SMALL_METHODS)
    _, tex2 = table2(s2, SMALL_TASKS, SMALL_METHODS)
    assert tex2 == (
        "\\begin{table}[t]\n\\centering\n"
        "\\caption{per class (region for KiTS23) results of HRL; mean over cases, then over "
        "folds. Dice and Surface Dice in \\%, ASD in mm; -- no results.}\n"
        "\\label{tab:regions}\n\\begin{tabular}{lrr}\n\\toprule\n"
        " & \\multicolumn{2}{c}{HRL} \\\\\n\\cmidrule(lr){2-3}\n"
        "\\midrule \\multicolumn{3}{l}{\\textit{Heart}} \\\\\n"
        "Class/region & Dice (\\%) & ASD (mm) \\\\\n\\midrule\n"
        "LV & 91.0 & 1.1 \\\\\nR\\_V & 81.0 & 1.1 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    _, tex2_none = table2(s2, SMALL_TASKS, ["Baseline"])
    assert tex2_none == (
        "\\begin{table}[t]\n\\centering\n"
        "\\caption{Table 2: per class (region for KiTS23) results of SVLS and HRL; mean over "
        "cases, then over folds. Dice and Surface Dice in \\%, ASD in mm; -- no results.}\n"
        "Neither SVLS nor HRL is among the study's methods.\n\\end{table}\n")


def test_noise_and_sweep_latex_exact() -> None:
    from nnrobustloss.report import noise_table, summarise_noise, summarise_sweep, sweep_table

    metrics, noise = _small_inputs()
    _, tex = noise_table(summarise_noise(noise, ["Heart", "KiTS23"]))
    assert tex == (
        "\\begin{table}[t]\n\\centering\n"
        "\\caption{Noise levels: agreement of the noisy training labels with the reference "
        "labels; per case the mean over classes, then mean +- SD over cases. Dice in \\%, ASD in "
        "mm (where exactly one mask is empty: the diagonal of the image, 0 such values); -- no "
        "noise report.}\n"
        "\\label{tab:noise}\n\\begin{tabular}{llrrr}\n\\toprule\n"
        "Task & Class/region & Cases & Dice (\\%) & ASD (mm) \\\\\n\\midrule\n"
        "Heart & all classes & 2 & 92.5 $\\pm$ 3.5 & 0.5 $\\pm$ 0.0 \\\\\n"
        "Heart & LV & 2 & 92.5 $\\pm$ 3.5 & 0.5 $\\pm$ 0.0 \\\\\n"
        "Heart & R\\_V & 2 & 92.5 $\\pm$ 3.5 & 0.5 $\\pm$ 0.0 \\\\\n"
        "KiTS23 & all classes & 0 & -- & -- \\\\\n"
        "\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    _, tex = sweep_table(summarise_sweep(metrics, noise, {"Heart": 4}, SMALL_METHODS),
                         SMALL_METHODS)
    assert tex == (
        "\\begin{table}[t]\n\\centering\n"
        "\\caption{Noise sweep: Dice (\\%) on the reference labels per noise level and method, "
        "mean $\\pm$ SD over folds (per fold the mean over classes and held-out cases); noise "
        "level = Dice (\\%) of the noisy training labels against the reference (noise report), "
        "novice = cases labelled by the simulated less-experienced annotator; -- no results.}\n"
        "\\label{tab:noise_sweep}\n\\begin{tabular}{lrrrr}\n\\toprule\n"
        "Level & Novice cases & Noise Dice (\\%) & Baseline & HRL \\\\\n\\midrule\n"
        "Heart & 4 & 92.5 & 76.0 & 86.0 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n\\end{table}\n")


def test_table3_latex_exact() -> None:
    from nnrobustloss.report import summarise_calibration, table3

    metrics, _ = _small_inputs()
    s3 = summarise_calibration(metrics, ["Heart"], SMALL_METHODS)
    reliability = pd.DataFrame(
        [("Heart", "HRL", 0, "LV", "band", 5.0, b, b / 3, (b + 1) / 3, 1, 0.5, 0.5)
         for b in range(3)],
        columns=["task", "method", "fold", "region", "voxels", "band_mm", "bin", "lower",
                 "upper", "count", "confidence_sum", "correct_sum"])
    caption_tail = (
        " of the reference or predicted class (one-vs-rest per class: confidence p\\_k, correct "
        "where the reference is k; ECE with {bins} equal-width bins); mean over classes (regions "
        "for KiTS23) per case, then over the cases of a fold, then over folds. ECE and Brier in "
        "[0, 1], NLL in nats per voxel; lower is better. $^{{*}}$ $p<0.05$ vs Baseline (paired "
        "Wilcoxon signed-rank test over cases, Holm-corrected per task and metric); -- no "
        "results. Values over all voxels: table3.csv (metrics *\\_all).}}\n")
    body = ("\\label{tab:calibration}\n\\begin{tabular}{lrrr}\n\\toprule\n"
            " & \\multicolumn{3}{c}{Heart} \\\\\n\\cmidrule(lr){2-4}\n"
            "Method & ECE & Brier & NLL \\\\\n\\midrule\n"
            "Baseline & 0.090 & 0.050 & 0.250 \\\\\nHRL & 0.100 & 0.055 & 0.280 \\\\\n"
            "\\bottomrule\n\\end{tabular}\n")
    head = ("\\begin{table}[t]\n\\centering\n\\caption{calibration per task and method against "
            "the reference labels, within ")
    _, tex = table3(s3, ["Heart"], SMALL_METHODS, reliability)
    assert tex == head + "5 mm" + caption_tail.format(bins=3) + body + "\\end{table}\n"
    # not measured: no reliability bins, no cases -> default caption and the footnote
    _, tex = table3(s3.assign(n_cases=0), ["Heart"], SMALL_METHODS, reliability.iloc[:0])
    assert tex == (head + "a band" + caption_tail.format(bins=15) + body
                   + "\\par\\smallskip\\footnotesize Calibration was not measured "
                   "(evaluation.calibration: false, or no calibration rows in the metric CSVs).\n"
                   "\\end{table}\n")
