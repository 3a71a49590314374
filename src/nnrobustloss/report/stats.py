"""The report's numbers: per-case means, fold and replicate aggregation, the paired Wilcoxon
test against the Baseline with Holm's correction, seeded bootstrap confidence intervals, and the
summaries behind each table and figure.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import METHODS
from nnrobustloss.metrics.registry import (
    METRICS,
    SEGMENTATION_METRICS,
    VOXEL_SETS,
    calibration_name,
)
from nnrobustloss.report.lost import with_defaults

BASELINE = "Baseline"
NOISE_TABLE_METRICS: tuple[str, ...] = ("dice", "asd")
"""Metrics of the noise-level table (mean and SD over cases, with the registry's scale)."""
ALPHA = 0.05
N_BOOTSTRAP = 1000


def table2_methods(methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` that Table 2 shows: registered with ``table2=True``
    (:class:`nnrobustloss.methods.MethodSpec`; the paper's SVLS and HRL), in the given order."""
    return [m for m in methods if m in METHODS and METHODS[m].table2]


def display_name(method: str) -> str:
    """The paper's name of a method identifier (the registry's ``display_name``; the identifier
    itself for a method the registry does not know)."""
    spec = METHODS.get(method)
    return spec.display_name if spec is not None else method


# --------------------------------------------------------------------------------------------
# statistics


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN entries stay NaN and do not count as tests)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value; 1 when all differences are 0, NaN if n < 2."""
    if len(x) < 2:
        return float("nan")
    if np.all(x - y == 0):
        return 1.0
    return float(stats.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided").pvalue)


def bootstrap_ci(values: np.ndarray, seed_key: str, n_resamples: int = N_BOOTSTRAP,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampling cases), seeded by a key."""
    if len(values) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(zlib.crc32(seed_key.encode("utf-8")))
    idx = rng.integers(0, len(values), size=(n_resamples, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def case_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, fold, replicate, case, metric): mean over regions of the non-NaN
    values (only calibration metrics can be NaN: an empty band)."""
    ok = with_defaults(df).dropna(subset=["value"])
    return (ok.groupby(["task", "method", "fold", "replicate", "case", "metric"],
                       sort=False)["value"].mean().reset_index())


def summarise(metrics: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
              methods: Sequence[str]) -> pd.DataFrame:
    """Table 1 numbers, one row per (task, method, metric) in the given orders.

    Columns: task, method, method_name, metric, unit, mean (display units: % or mm; mean over
    regions, then cases, then folds per replicate, then over replicates), sd (SD over
    replicates; NaN with one), ci_low, ci_high (bootstrap 95% CI of the mean over cases of the
    per-case means over replicates), n_folds, n_replicates, n_cases, n_values (region-case
    values), n_worst (of them the worst case of one empty mask), n_nan (values left out: NaN,
    only calibration metrics of an empty band), p_value (Wilcoxon vs Baseline over the per-case
    means), p_holm, significant (p_holm < 0.05).
    """
    metrics = with_defaults(metrics)
    case_level = case_means(metrics)
    rows = []
    for task, spec in tasks.items():
        table_metrics = task_table_metrics(task, spec, allowed=tuple(METRICS))
        for metric in table_metrics:
            scale = METRICS[metric].scale
            sel = case_level[(case_level.task == task) & (case_level.metric == metric)]
            raw = metrics[(metrics.task == task) & (metrics.metric == metric)]
            # per-case values averaged over replicates (a case is held out in one fold), for the
            # paired test and the bootstrap
            per_case = {m: g.groupby("case")["value"].mean()
                        for m, g in sel.groupby("method", sort=False)}
            base = per_case.get(BASELINE)
            block = []
            for method in methods:
                g = sel[sel.method == method]
                per_rep = (g.groupby(["replicate", "fold"])["value"].mean()
                           .groupby(level="replicate").mean())
                mean = float(per_rep.mean()) * scale if len(per_rep) else float("nan")
                sd = float(per_rep.std(ddof=1)) * scale if len(per_rep) > 1 else float("nan")
                cases = per_case.get(method)
                ci = (bootstrap_ci(cases.to_numpy() * scale, f"{task}|{method}|{metric}")
                      if cases is not None else (float("nan"), float("nan")))
                p = float("nan")
                if method != BASELINE and base is not None and cases is not None:
                    common = cases.index.intersection(base.index)
                    p = wilcoxon_p(cases[common].to_numpy(), base[common].to_numpy())
                values = raw[raw.method == method]
                block.append({
                    "task": task, "method": method, "method_name": display_name(method),
                    "metric": metric, "unit": METRICS[metric].unit,
                    "mean": mean, "sd": sd, "ci_low": ci[0], "ci_high": ci[1],
                    "n_folds": int(g["fold"].nunique()), "n_replicates": int(len(per_rep)),
                    "n_cases": int(len(cases)) if cases is not None else 0,
                    "n_values": int(len(values)), "n_worst": int(values["worst_case"].sum()),
                    "n_nan": int(values["value"].isna().sum()), "p_value": p,
                })
            adjusted = holm([r["p_value"] for r in block])
            for r, p_adj in zip(block, adjusted, strict=True):
                r["p_holm"] = float(p_adj)
                r["significant"] = bool(p_adj < ALPHA) if not math.isnan(p_adj) else False
            rows.extend(block)
    cols = ["task", "method", "method_name", "metric", "unit", "mean", "sd", "ci_low", "ci_high",
            "n_folds", "n_replicates", "n_cases", "n_values", "n_worst", "n_nan", "p_value",
            "p_holm", "significant"]
    return pd.DataFrame(rows, columns=cols)


def task_table_metrics(task: str, spec: Mapping[str, object],
                   allowed: Sequence[str] = SEGMENTATION_METRICS) -> list[str]:
    """The task's ``table_metrics`` (default dice, asd); ConfigError for a name not in ``allowed``."""
    metrics = list(spec.get("table_metrics", ["dice", "asd"]))  # type: ignore[call-overload]
    for m in metrics:
        if m not in allowed:
            raise ConfigError(f"tasks.{task}.table_metrics: unknown metric '{m}'. Use "
                              f"{', '.join(allowed[:-1])} or {allowed[-1]}.")
    return metrics


def summarise_regions(metrics: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
                      methods: Sequence[str]) -> pd.DataFrame:
    """Table 2 numbers: per task, region, method (SVLS/HRL present in ``methods``) and metric.

    Columns: task, region, method, method_name, metric, unit, mean (over cases, then folds per
    replicate, then over replicates; in % or mm), sd (over replicates), n_cases, n_worst
    (worst-case values of one empty mask), n_nan. Regions keep their order of first appearance
    in the metric CSVs.
    """
    t2_methods = table2_methods(methods)
    metrics = with_defaults(metrics)
    rows = []
    for task, spec in tasks.items():
        sub = metrics[metrics.task == task]
        regions = list(dict.fromkeys(sub["region"]))
        for region in regions:
            for method in t2_methods:
                for metric in task_table_metrics(task, spec):
                    g = sub[(sub.region == region) & (sub.method == method)
                            & (sub.metric == metric)]
                    ok = g.dropna(subset=["value"])
                    per_rep = (ok.groupby(["replicate", "fold"])["value"].mean()
                               .groupby(level="replicate").mean()) * METRICS[metric].scale
                    rows.append({"task": task, "region": region, "method": method,
                                 "method_name": display_name(method), "metric": metric,
                                 "unit": METRICS[metric].unit,
                                 "mean": float(per_rep.mean()) if len(per_rep) else float("nan"),
                                 "sd": float(per_rep.std(ddof=1)) if len(per_rep) > 1
                                 else float("nan"),
                                 "n_cases": int(ok["case"].nunique()),
                                 "n_worst": int(g["worst_case"].sum()),
                                 "n_nan": int(g["value"].isna().sum())})
    cols = ["task", "region", "method", "method_name", "metric", "unit", "mean", "sd", "n_cases",
            "n_worst", "n_nan"]
    return pd.DataFrame(rows, columns=cols)


def summarise_noise(noise: pd.DataFrame, tasks: Mapping[str, object]) -> pd.DataFrame:
    """Noise levels per task: rows "all classes" (mean over regions per case) then per region.

    Columns: task, region, n_cases, dice_mean, dice_sd (%), asd_mean, asd_sd (mm; over cases),
    asd_n_worst (worst-case values: exactly one mask empty). A task without noise rows gets one
    row of NaN.
    """
    noise = with_defaults(noise, {"worst_case": 0})
    rows = []
    for task in tasks:
        sub = noise[noise.task == task]
        if sub.empty:
            rows.append({"task": task, "region": "all classes", "n_cases": 0})
            continue
        groups = [("all classes", sub)] + [(r, sub[sub.region == r])
                                           for r in dict.fromkeys(sub["region"])]
        for region, g in groups:
            row: dict[str, object] = {"task": task, "region": region,
                                      "n_cases": int(g["case"].nunique())}
            for metric in NOISE_TABLE_METRICS:
                gm = g[g.metric == metric]
                per_case = gm.dropna(subset=["value"]).groupby("case")["value"].mean()
                scale = METRICS[metric].scale
                row[f"{metric}_mean"] = float(per_case.mean()) * scale if len(per_case) else np.nan
                row[f"{metric}_sd"] = (float(per_case.std(ddof=1)) * scale
                                       if len(per_case) > 1 else np.nan)
                if metric == "asd":
                    row["asd_n_worst"] = int(gm["worst_case"].sum())
            rows.append(row)
    cols = ["task", "region", "n_cases", "dice_mean", "dice_sd", "asd_mean", "asd_sd",
            "asd_n_worst"]
    return pd.DataFrame(rows).reindex(columns=cols)


def zero_kept_classes(progress: pd.DataFrame,
                      labels: Mapping[str, Mapping[int, str]] | None = None) -> list[str]:
    """"<method> <class> (<task>, folds ...)" for each two-peer method x class whose kept
    fraction (``kept_fraction_class<k>_peer_a``) reached 0 in some epoch of a final training:
    the selection dropped every voxel of that class (named in the figure's caption)."""
    out = []
    for col in (c for c in progress.columns if c.startswith("kept_fraction_class")):
        label = int(re.sub(r"\D", "", col.split("_peer")[0]))
        hit = progress[progress[col] <= 0.0]
        for (task, method), g in hit.groupby(["task", "method"], sort=False):
            name = (labels or {}).get(task, {}).get(label, f"class {label}")
            folds = ", ".join(str(f) for f in sorted(g["fold"].unique()))
            out.append(f"{display_name(method)} {name} ({task}, fold{'s' if ',' in folds else ''}"
                       f" {folds})")
    return out


def summarise_sweep(metrics: pd.DataFrame, noise: pd.DataFrame, sweep: Mapping[str, int],
                    methods: Sequence[str]) -> pd.DataFrame:
    """Noise-sweep numbers, one row per (level task, method).

    Columns: task, n_noisy_cases, noise_dice (noisy-vs-reference Dice in %, mean over classes
    per case, then over cases: the noise report), method, method_name, dice_mean and dice_sd
    (Dice on the reference labels in %: per fold the mean over classes and cases, then mean and
    SD over folds), n_folds.
    """
    noise_summary = summarise_noise(noise, list(sweep))
    noise_dice = {r.task: r.dice_mean for r in noise_summary.itertuples()
                  if r.region == "all classes"}
    case_level = case_means(metrics[metrics.metric == "dice"])
    rows = []
    for task, n_noisy in sweep.items():
        for method in methods:
            g = case_level[(case_level.task == task) & (case_level.method == method)]
            per_fold = g.groupby("fold")["value"].mean() * METRICS["dice"].scale
            rows.append({"task": task, "n_noisy_cases": int(n_noisy),
                         "noise_dice": noise_dice.get(task, float("nan")), "method": method,
                         "method_name": display_name(method),
                         "dice_mean": float(per_fold.mean()) if len(per_fold) else float("nan"),
                         "dice_sd": float(per_fold.std(ddof=1)) if len(per_fold) > 1
                         else float("nan"),
                         "n_folds": int(len(per_fold))})
    return pd.DataFrame(rows, columns=["task", "n_noisy_cases", "noise_dice", "method",
                                       "method_name", "dice_mean", "dice_sd", "n_folds"])


# --------------------------------------------------------------------------------------------
# calibration: Table 3 and Figure 2 (reliability diagrams)

TABLE3_METRICS: tuple[str, ...] = ("ece", "brier", "nll")
"""Table 3's columns per task (within the band); the CSV adds the all-voxel ``<name>_all``."""


def summarise_calibration(metrics: pd.DataFrame, tasks: Mapping[str, object],
                          methods: Sequence[str]) -> pd.DataFrame:
    """Table 3 numbers: :func:`summarise` of ECE, Brier and NLL within the band, then the same
    over all voxels (``ece_all``, ...), per task and method; natural units (ECE and Brier in
    [0, 1], NLL in nats per voxel), same means, bootstrap CIs and paired test vs the Baseline
    as Table 1. ``n_nan`` counts region-case values left out (an empty band: the class is in
    neither the reference nor the prediction)."""
    names = [calibration_name(m, v) for v in VOXEL_SETS for m in TABLE3_METRICS]
    return summarise(metrics, {t: {"table_metrics": names} for t in tasks}, methods)


def reliability_curves(reliability: pd.DataFrame, voxels: str = "band") -> pd.DataFrame:
    """Reliability-diagram points per (task, method, bin): the voxel-pooled mean confidence
    (``confidence``) and fraction correct (``accuracy``) of the bin, summed over classes, cases
    and folds, and the bin's voxel count; empty bins are left out."""
    sub = reliability[reliability["voxels"] == voxels]
    g = (sub.groupby(["task", "method", "bin"], sort=False)[["count", "confidence_sum",
                                                              "correct_sum"]].sum()
         .reset_index())
    g = g[g["count"] > 0].copy()
    g["confidence"] = g["confidence_sum"] / g["count"]
    g["accuracy"] = g["correct_sum"] / g["count"]
    return g[["task", "method", "bin", "count", "confidence", "accuracy"]]
