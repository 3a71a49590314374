"""Tables that cannot mislead (issue 18 items 1 to 3): lost classes flagged, the per-fold table
equal to the per-fold means of the metric CSVs, replicates averaged with their spread, and the
replicates' layout, seeds and DAG.

Metric CSVs are written by hand with designed values, so every expected number is computed here
from those values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nnrobustloss import layout
from nnrobustloss.report import build_report
from nnrobustloss.report.lost import fold_means, lost_classes, lost_counts, lost_note

TASKS = {"Phantom": {"table_metrics": ["dice", "asd"]}}
METHODS = ["Baseline", "APL1", "HRL", "SVLS"]
CASES = {0: ["c0", "c1"], 1: ["c2", "c3"], 2: ["c4", "c5"]}
REGIONS = ("organ", "lesion")


def _dice(method: str, fold: int, replicate: int, case: str, region: str) -> float:
    """The designed Dice: APL1 loses the lesion in fold 1 of replicate 0 (0.01 and 0.03, mean
    0.02 < 0.05), HRL in every fold of both replicates; in fold 2 the Baseline's lesion is 0.4
    (< 0.5: not learnt), so HRL's lesion there is not 'lost'. SVLS: 0.049 / 0.051 in fold 0
    (mean 0.05: not below 0.05)."""
    i = int(case[1:])
    if region == "organ":
        return 0.85 + 0.01 * i + 0.005 * replicate
    if method == "Baseline":
        return 0.4 if fold == 2 else 0.6 + 0.01 * i
    if method == "APL1" and fold == 1 and replicate == 0:
        return 0.01 if i == 2 else 0.03
    if method == "HRL":
        return 0.0
    if method == "SVLS" and fold == 0:
        return 0.049 if i == 0 else 0.051
    return 0.55 + 0.01 * i + 0.02 * replicate


def _write(root: Path, replicates: int) -> list[Path]:
    paths = []
    for method in METHODS:
        for fold, cases in CASES.items():
            for rep in range(replicates):
                rows = []
                for case in cases:
                    for region in REGIONS:
                        d = _dice(method, fold, rep, case, region)
                        empty = d == 0.0  # HRL's lesion: an empty prediction
                        rows += [("Phantom", method, fold, case, region, "dice", d, rep, int(empty)),
                                 ("Phantom", method, fold, case, region, "asd",
                                  69.3 if empty else 1.0 + (1 - d), rep, int(empty)),
                                 ("Phantom", method, fold, case, region, "surface_dice",
                                  0.0 if empty else d, rep, int(empty))]
                path = layout.metrics_csv(root, "Phantom", method, fold, rep)
                path.parent.mkdir(parents=True, exist_ok=True)
                pd.DataFrame(rows, columns=["task", "method", "fold", "case", "region", "metric",
                                            "value", "replicate", "worst_case"]).to_csv(
                    path, index=False)
                paths.append(path)
    return paths


def _report(tmp_path: Path, replicates: int) -> dict[str, Path]:
    return build_report(_write(tmp_path, replicates), [], [], tmp_path / "tables",
                        tmp_path / "figures", tasks=TASKS, methods=METHODS)


def test_lost_rule_hand_checked() -> None:
    assert fold_means(pd.DataFrame(columns=["task", "method", "fold", "case", "region",
                                            "metric", "value"])).empty
    rows = []
    for method in METHODS:
        for fold, cases in CASES.items():
            for case in cases:
                for region in REGIONS:
                    rows.append(("T", method, fold, case, region, "dice",
                                 _dice(method, fold, 0, case, region), 0, 0))
    metrics = pd.DataFrame(rows, columns=["task", "method", "fold", "case", "region", "metric",
                                          "value", "replicate", "worst_case"])
    lost = lost_classes(fold_means(metrics), "Baseline")
    hit = {(r.method, r.fold, r.region) for r in lost[lost["lost"]].itertuples()}
    assert hit == {("APL1", 1, "lesion"), ("HRL", 0, "lesion"), ("HRL", 1, "lesion")}
    assert not lost.loc[lost["method"] == "Baseline", "lost"].any()
    svls = lost[(lost.method == "SVLS") & (lost.fold == 0) & (lost.region == "lesion")]
    assert svls["dice"].item() == pytest.approx(0.05) and not svls["lost"].item()
    counts = lost_counts(lost).set_index("method")
    assert counts.loc["APL1", "lost_count"] == 1 and counts.loc["HRL", "lost_count"] == 2
    assert (counts["lost_total"] == 3).all()
    note = lost_note(lost, str, METHODS)
    assert "APL1 (T): lesion in fold 1." in note and "HRL (T): lesion in folds 0, 1." in note
    assert lost_note(lost[lost.method != "Baseline"].assign(lost=False), str, METHODS,
                     baseline_present=False).startswith("Lost classes were not assessed")


def test_table1_daggers_exactly_the_lost_methods_and_folds_csv_is_the_fold_means(
        tmp_path: Path) -> None:
    out = _report(tmp_path, replicates=1)
    md = out["table1.md"].read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.strip("| ").split(" | ")[1:]
            for line in md.splitlines() if line.startswith("| ") and "---" not in line}
    assert set(rows) == {"Method", "Baseline", "APL1†", "HRL†", "SVLS"}
    assert rows["APL1†"][2] == "1/3" and rows["HRL†"][2] == "2/3" and rows["SVLS"][2] == "0/3"
    assert "APL1 (Phantom): lesion in fold 1. HRL (Phantom): lesion in folds 0, 1." in md
    # ASD: HRL's empty lesion predictions are worst-case values, counted, none left out
    assert "HRL: 6 of 12" in md and "NaN" not in md
    t1 = pd.read_csv(out["table1.csv"]).set_index(["method", "metric"])
    # per case: mean of the organ's ASD, 1 + (1 - Dice), and the lesion's worst case 69.3 mm
    hrl_asd = np.mean([np.mean([(1.0 + (1 - (0.85 + 0.01 * i)) + 69.3) / 2
                                for i in (2 * f, 2 * f + 1)]) for f in range(3)])
    assert t1.loc[("HRL", "asd"), "mean"] == pytest.approx(hrl_asd)
    assert t1.loc[("HRL", "asd"), "n_worst"] == 6 and t1.loc[("HRL", "asd"), "n_nan"] == 0
    # folds.csv: the per-fold means of the metric CSVs, computed here independently
    folds = pd.read_csv(out["folds.csv"])
    assert list(folds.columns) == ["task", "method", "fold", "region", "metric", "value"]
    for r in folds.itertuples():
        values = [v for case in CASES[r.fold] for v in [_value(r.method, r.fold, 0, case,
                                                               r.region, r.metric)]]
        assert r.value == pytest.approx(np.mean(values)), r
    assert len(folds) == len(METHODS) * 3 * 2 * 3
    fmd = out["folds.md"].read_text()
    assert "| APL1 | " in fmd and "2.0†" in fmd  # APL1's lesion in fold 1: 2.0 % and lost
    assert out["folds.html"].is_file() and "tab:folds" in out["folds.tex"].read_text()


def _value(method: str, fold: int, rep: int, case: str, region: str, metric: str) -> float:
    d = _dice(method, fold, rep, case, region)
    if metric == "dice":
        return d
    if metric == "asd":
        return 69.3 if d == 0.0 else 1.0 + (1 - d)
    return 0.0 if d == 0.0 else d


def test_replicates_mean_sd_lost_counts_and_paired_test(tmp_path: Path) -> None:
    out = _report(tmp_path, replicates=2)
    t1 = pd.read_csv(out["table1.csv"]).set_index(["method", "metric"])
    # SVLS Dice per replicate: mean over folds of the fold means of the per-case region means
    per_rep = []
    for rep in (0, 1):
        per_rep.append(np.mean([np.mean([np.mean([_dice("SVLS", f, rep, c, r) for r in REGIONS])
                                         for c in cases]) for f, cases in CASES.items()]))
    row = t1.loc[("SVLS", "dice")]
    assert row["mean"] == pytest.approx(np.mean(per_rep) * 100)
    assert row["sd"] == pytest.approx(np.std(per_rep, ddof=1) * 100)
    assert row["n_replicates"] == 2
    # the paired test pairs per-case means over replicates
    cases = [c for cs in CASES.values() for c in cs]
    fold_of = {c: f for f, cs in CASES.items() for c in cs}

    def per_case(method: str) -> np.ndarray:
        return np.array([np.mean([np.mean([_dice(method, fold_of[c], rep, c, r) for r in REGIONS])
                                  for rep in (0, 1)]) for c in cases])

    assert row["p_value"] == pytest.approx(
        stats.wilcoxon(per_case("SVLS"), per_case("Baseline")).pvalue)
    md = out["table1.md"].read_text()
    svls = next(line for line in md.splitlines() if line.startswith("| SVLS"))
    assert f"{np.mean(per_rep) * 100:.1f} ± {np.std(per_rep, ddof=1) * 100:.1f}" in svls
    assert "| 0/6 |" in svls
    assert "| 1/6 |" in next(line for line in md.splitlines() if line.startswith("| APL1†"))
    assert "2 training replicates" in md
    assert "fold 1 (replicate 0)" in md
    folds = pd.read_csv(out["folds.csv"])
    assert list(folds.columns) == ["task", "method", "fold", "replicate", "region", "metric",
                                   "value"]
    assert sorted(folds["replicate"].unique()) == [0, 1]


def test_replicate_layout_and_seeds() -> None:
    from nnrobustloss.errors import ConfigError
    from nnrobustloss.pipeline import replicate_seed, train_params

    assert layout.fold_name(2) == "fold2" and layout.fold_name(2, 3) == "fold2_rep3"
    assert layout.parse_fold_name("fold2_rep3") == (2, 3)
    assert layout.parse_fold_name("fold0") == (0, 0)
    assert layout.parse_fold_name("fold0_rep0") is None and layout.parse_fold_name("x") is None
    assert layout.replicate_of("") == 0 and layout.replicate_of("_rep12") == 12
    assert layout.metrics_csv("R", "T", "M", 1, 2) == Path("R/metrics/T/M/fold1_rep2.csv")
    assert layout.training_dir("R", "T", "M", "{fold}", "{replicate}") == Path(
        "R/training/T/M/fold{fold}{replicate}")
    seeds = [replicate_seed(7, r) for r in range(20)]
    assert seeds[0] == 7 and len(set(seeds)) == 20 and all(0 <= s < 2**31 for s in seeds)
    assert replicate_seed(7, 1) == replicate_seed(7, 1) != replicate_seed(8, 1)
    from nnrobustloss.config import load_config

    cfg = load_config("config/config.yaml")
    cfg["training"]["replicates"] = 2
    assert train_params(cfg, "Phantom", "APL2", 0, 1)["seed"] == replicate_seed(0, 1)
    assert train_params(cfg, "Phantom", "APL2", 0)["seed"] == 0
    with pytest.raises(ConfigError, match="training.replicates is 2"):
        train_params(cfg, "Phantom", "APL2", 0, 2)
