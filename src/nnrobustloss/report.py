"""The paper's tables and figure, from the stage CSVs alone.

Inputs (DESIGN.md section 2): tidy metric CSVs ``metrics/<Task>/<Method>/fold<k>.csv``
(task, method, fold, case, region, metric, value), noise CSVs ``noise/<Task>.csv`` (task, case,
region, metric, value; metrics dice and asd) and tuning ``trials.csv`` files (task, method, fold,
number, value, state). Outputs: ``table1``, ``table2`` and ``noise_levels`` as CSV, Markdown and
LaTeX (booktabs), and ``figure1`` as PNG and PDF, all written atomically.

Aggregation: per case the mean over classes (or regions), then the mean over the cases of a
fold, then over folds. ASD is NaN when exactly one mask is empty; such values are left out of
every ASD mean and counted. Beyond the paper, each method is compared with the Baseline by a
paired Wilcoxon signed-rank test over cases (per-case value: mean over regions, averaged over
folds), Holm-corrected across the methods of a task and metric, and the CSV carries seeded
bootstrap 95% confidence intervals of the mean over cases.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, write_text
from nnrobustloss.methods import METHODS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METHOD_DISPLAY_NAMES: dict[str, str] = {m.id: m.display_name for m in METHODS.values()}
"""Method identifier (paths, config) -> name printed in the paper's tables and figure."""

BASELINE = "Baseline"
TABLE2_METHODS: tuple[str, ...] = ("SVLS", "HRL")
METRIC_LABELS: dict[str, str] = {"dice": "Dice (%)", "asd": "ASD (mm)",
                                 "surface_dice": "Surface Dice (%)"}
METRIC_SCALE: dict[str, float] = {"dice": 100.0, "asd": 1.0, "surface_dice": 100.0,
                                  # calibration (Table 3): natural units
                                  "ece": 1.0, "brier": 1.0, "nll": 1.0,
                                  "ece_all": 1.0, "brier_all": 1.0, "nll_all": 1.0}
ALPHA = 0.05
N_BOOTSTRAP = 1000
MISSING = "--"

METRICS_COLUMNS = ("task", "method", "fold", "case", "region", "metric", "value")
NOISE_COLUMNS = ("task", "case", "region", "metric", "value")
TRIALS_COLUMNS = ("task", "method", "fold", "number", "value", "state")

CAPTION_MEANS = ("mean over classes (regions for KiTS23) per case, then over the cases of a "
                 "fold, then over folds")


def display_name(method: str) -> str:
    """The paper's name of a method identifier (the identifier itself when unknown)."""
    return METHOD_DISPLAY_NAMES.get(method, method)


# --------------------------------------------------------------------------------------------
# reading


def _read_csvs(paths: Sequence[str | os.PathLike[str]], columns: Sequence[str],
               numeric: Sequence[str], what: str) -> pd.DataFrame:
    """Concatenate CSVs, checking required columns and numeric values; name the bad file."""
    frames = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputDataError(f"{path}: {what} file not found. Run the stage that writes it "
                                 "or leave it out of the report inputs.")
        try:
            df = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise InputDataError(f"{path}: not a readable CSV ({e}). Delete it and rerun the "
                                 "stage that writes it.") from e
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise InputDataError(f"{path}: missing column '{missing[0]}' (a {what} CSV needs "
                                 f"{', '.join(columns)}). Rerun the stage that writes it.")
        df = df[list(columns)].copy()
        for col in numeric:
            values = pd.to_numeric(df[col], errors="coerce")
            bad = values.isna() & df[col].notna() & (df[col].astype(str).str.lower() != "nan")
            if bad.any():
                raise InputDataError(f"{path}: column '{col}' holds a non-numeric value "
                                     f"'{df[col][bad].iloc[0]}'. Rerun the stage that writes it.")
            df[col] = values.astype(np.float64)
        for col in columns:
            if col not in numeric:
                df[col] = df[col].astype(str)
        df["_file"] = str(path)
        frames.append(df)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=np.float64 if c in numeric else object)
                             for c in (*columns, "_file")})
    return pd.concat(frames, ignore_index=True)


def read_metrics(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read tidy metric CSVs; a repeated (task, method, fold, case, region, metric) is an error."""
    df = _read_csvs(paths, METRICS_COLUMNS, ("fold", "value"), "metrics")
    key = ["task", "method", "fold", "case", "region", "metric"]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        files = sorted(set(df[dup & (df[key] == first[key]).all(axis=1)]["_file"]))
        raise InputDataError(
            f"{', '.join(files)}: duplicate row for task {first.task}, method {first.method}, "
            f"fold {int(first.fold)}, case {first.case}, region {first.region}, metric "
            f"{first.metric}. Each case may appear once per fold; remove the stale file.")
    df["fold"] = df["fold"].astype(int)
    return df


def read_noise(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read tidy noise CSVs (task, case, region, metric, value)."""
    return _read_csvs(paths, NOISE_COLUMNS, ("value",), "noise")


def read_trials(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read trials CSVs and keep the COMPLETE trials with a finite objective value."""
    df = _read_csvs(paths, TRIALS_COLUMNS, ("fold", "number", "value"), "trials")
    df = df[(df["state"].str.upper() == "COMPLETE") & np.isfinite(df["value"])].copy()
    df["fold"] = df["fold"].astype(int)
    return df


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


def _case_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, fold, case, metric): mean over regions of the non-NaN values."""
    ok = df.dropna(subset=["value"])
    return (ok.groupby(["task", "method", "fold", "case", "metric"], sort=False)["value"]
            .mean().reset_index())


def summarise(metrics: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
              methods: Sequence[str]) -> pd.DataFrame:
    """Table 1 numbers, one row per (task, method, metric) in the given orders.

    Columns: task, method, method_name, metric, unit, mean (display units: % or mm; mean over
    regions, then cases, then folds), ci_low, ci_high (bootstrap 95% CI of the mean over cases),
    n_folds, n_cases, n_nan (values left out: ASD with exactly one empty mask), p_value
    (Wilcoxon vs Baseline), p_holm, significant (p_holm < 0.05).
    """
    case_level = _case_means(metrics)
    rows = []
    for task, spec in tasks.items():
        table_metrics = _table_metrics(task, spec)
        for metric in table_metrics:
            scale = METRIC_SCALE[metric]
            sel = case_level[(case_level.task == task) & (case_level.metric == metric)]
            raw = metrics[(metrics.task == task) & (metrics.metric == metric)]
            # per-case values averaged over folds, for the test and the bootstrap
            per_case = {m: g.groupby("case")["value"].mean()
                        for m, g in sel.groupby("method", sort=False)}
            base = per_case.get(BASELINE)
            block = []
            for method in methods:
                g = sel[sel.method == method]
                fold_means = g.groupby("fold")["value"].mean()
                mean = float(fold_means.mean()) * scale if len(fold_means) else float("nan")
                cases = per_case.get(method)
                ci = (bootstrap_ci(cases.to_numpy() * scale, f"{task}|{method}|{metric}")
                      if cases is not None else (float("nan"), float("nan")))
                p = float("nan")
                if method != BASELINE and base is not None and cases is not None:
                    common = cases.index.intersection(base.index)
                    p = wilcoxon_p(cases[common].to_numpy(), base[common].to_numpy())
                n_nan = int(raw[raw.method == method]["value"].isna().sum())
                block.append({
                    "task": task, "method": method, "method_name": display_name(method),
                    "metric": metric, "unit": "mm" if metric == "asd" else "%",
                    "mean": mean, "ci_low": ci[0], "ci_high": ci[1],
                    "n_folds": int(len(fold_means)),
                    "n_cases": int(len(cases)) if cases is not None else 0,
                    "n_nan": n_nan, "p_value": p,
                })
            adjusted = holm([r["p_value"] for r in block])
            for r, p_adj in zip(block, adjusted, strict=True):
                r["p_holm"] = float(p_adj)
                r["significant"] = bool(p_adj < ALPHA) if not math.isnan(p_adj) else False
            rows.extend(block)
    cols = ["task", "method", "method_name", "metric", "unit", "mean", "ci_low", "ci_high",
            "n_folds", "n_cases", "n_nan", "p_value", "p_holm", "significant"]
    return pd.DataFrame(rows, columns=cols)


def _table_metrics(task: str, spec: Mapping[str, object]) -> list[str]:
    metrics = list(spec.get("table_metrics", ["dice", "asd"]))  # type: ignore[call-overload]
    for m in metrics:
        if m not in METRIC_SCALE:
            raise ConfigError(f"tasks.{task}.table_metrics: unknown metric '{m}'. Use dice, asd "
                              "or surface_dice.")
    return metrics


# --------------------------------------------------------------------------------------------
# formatting


def _fmt(value: float, star: bool = False, tex: bool = False, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:.{digits}f}"
    if star:
        text += "$^{*}$" if tex else "*"
    return text


def _tex_escape(text: str) -> str:
    out = []
    for ch in str(text):
        if ch in "&%$#_{}":
            out.append("\\" + ch)
        elif ch == "~":
            out.append(r"\textasciitilde{}")
        elif ch == "^":
            out.append(r"\textasciicircum{}")
        elif ch == "\\":
            out.append(r"\textbackslash{}")
        else:
            out.append(ch)
    return "".join(out)


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _tex_rows_and_end(rows: list[list[str]], footnote: str = "") -> list[str]:
    r"""LaTeX body rows, the closing rules, an optional small footnote and ``\end{table}``."""
    tex = [" & ".join(r) + r" \\" for r in rows]
    tex += [r"\bottomrule", r"\end{tabular}"]
    if footnote:
        tex += [r"\par\smallskip\footnotesize " + _tex_escape(footnote)]
    return tex + [r"\end{table}"]


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")


def _nan_footnote(summary: pd.DataFrame) -> str:
    nan_rows = summary[(summary.metric == "asd") & (summary.n_nan > 0)]
    if nan_rows.empty:
        return ("ASD: no value was left out (no case with exactly one empty mask)."
                if (summary.metric == "asd").any() else "")
    parts = [f"{r.task} {r.method_name}: {r.n_nan}" for r in nan_rows.itertuples()]
    return ("ASD: region-case values with exactly one empty mask (ASD undefined) were left out "
            "of the means: " + "; ".join(parts) + ".")


def table1(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str]) -> tuple[str, str]:
    """Markdown and LaTeX of Table 1 (methods as rows, per task two metric columns)."""
    caption = ("Table 1: segmentation quality per task and method; "
               f"{CAPTION_MEANS}. Dice and Surface Dice in %, ASD in mm. "
               f"* p < {ALPHA} vs Baseline (paired Wilcoxon signed-rank test over cases, "
               "Holm-corrected per task and metric); -- no results.")
    header = ["Method"]
    task_metrics = [(t, _table_metrics(t, spec)) for t, spec in tasks.items()]
    for task, tm in task_metrics:
        header += [f"{task} {METRIC_LABELS[m]}" for m in tm]
    md_rows, tex_rows = [], []
    lookup = {(r.task, r.method, r.metric): r for r in summary.itertuples()}
    for method in methods:
        md_row, tex_row = [display_name(method)], [_tex_escape(display_name(method))]
        for task, tm in task_metrics:
            for m in tm:
                r = lookup.get((task, method, m))
                mean = r.mean if r is not None else float("nan")
                star = bool(r.significant) if r is not None else False
                md_row.append(_fmt(mean, star))
                tex_row.append(_fmt(mean, star, tex=True))
        md_rows.append(md_row)
        tex_rows.append(tex_row)
    footnote = _nan_footnote(summary)
    md = [caption, ""] + _md_table(header, md_rows, ["l"] + ["r"] * (len(header) - 1))
    if footnote:
        md += ["", footnote]

    ncols = len(header) - 1
    tex = [r"\begin{table}[t]", r"\centering",
           r"\caption{" + _tex_escape(caption.removeprefix("Table 1: "))
           .replace(f"* p < {ALPHA}", f"$^{{*}}$ $p<{ALPHA}$") + "}",
           r"\label{tab:results}", r"\begin{tabular}{l" + "r" * ncols + "}", r"\toprule"]
    top, rules, col = ["Method"], [], 2
    for task, tm in task_metrics:
        top.append(rf"\multicolumn{{{len(tm)}}}{{c}}{{{_tex_escape(task)}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(tm) - 1}}}")
        col += len(tm)
    tex.append(" & ".join([""] + top[1:]) + r" \\")
    tex.append(" ".join(rules))
    sub = ["Method"] + [_tex_escape(METRIC_LABELS[m]) for _, tm in task_metrics for m in tm]
    tex += [" & ".join(sub) + r" \\", r"\midrule"]
    tex += _tex_rows_and_end(tex_rows, footnote)
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def summarise_regions(metrics: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
                      methods: Sequence[str]) -> pd.DataFrame:
    """Table 2 numbers: per task, region, method (SVLS/HRL present in ``methods``) and metric.

    Columns: task, region, method, method_name, metric, unit, mean (over cases, then folds; in %
    or mm), n_cases, n_nan. Regions keep their order of first appearance in the metric CSVs.
    """
    t2_methods = [m for m in methods if m in TABLE2_METHODS]
    rows = []
    for task, spec in tasks.items():
        sub = metrics[metrics.task == task]
        regions = list(dict.fromkeys(sub["region"]))
        for region in regions:
            for method in t2_methods:
                for metric in _table_metrics(task, spec):
                    g = sub[(sub.region == region) & (sub.method == method)
                            & (sub.metric == metric)]
                    ok = g.dropna(subset=["value"])
                    fold_means = ok.groupby("fold")["value"].mean()
                    mean = (float(fold_means.mean()) * METRIC_SCALE[metric]
                            if len(fold_means) else float("nan"))
                    rows.append({"task": task, "region": region, "method": method,
                                 "method_name": display_name(method), "metric": metric,
                                 "unit": "mm" if metric == "asd" else "%", "mean": mean,
                                 "n_cases": int(ok["case"].nunique()),
                                 "n_nan": int(g["value"].isna().sum())})
    cols = ["task", "region", "method", "method_name", "metric", "unit", "mean", "n_cases",
            "n_nan"]
    return pd.DataFrame(rows, columns=cols)


def table2(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str]) -> tuple[str, str]:
    """Markdown and LaTeX of Table 2: per class/region, SVLS and HRL side by side."""
    t2_methods = [m for m in methods if m in TABLE2_METHODS]
    caption = ("Table 2: per class (region for KiTS23) results of "
               + (" and ".join(display_name(m) for m in t2_methods) or "SVLS and HRL")
               + "; mean over cases, then over folds. Dice and Surface Dice in %, ASD in mm; "
               "-- no results.")
    md = [caption, ""]
    if not t2_methods:
        md.append("Neither SVLS nor HRL is among the study's methods.")
        tex = [r"\begin{table}[t]", r"\centering", r"\caption{" + _tex_escape(caption) + "}",
               r"Neither SVLS nor HRL is among the study's methods.", r"\end{table}"]
        return "\n".join(md) + "\n", "\n".join(tex) + "\n"
    lookup = {(r.task, r.region, r.method, r.metric): r.mean for r in summary.itertuples()}
    max_m = max(len(_table_metrics(t, s)) for t, s in tasks.items()) if tasks else 2
    ncols = 1 + len(t2_methods) * max_m
    tex = [r"\begin{table}[t]", r"\centering",
           r"\caption{" + _tex_escape(caption.removeprefix("Table 2: ")) + "}",
           r"\label{tab:regions}", r"\begin{tabular}{l" + "r" * (ncols - 1) + "}", r"\toprule"]
    top = [""] + [rf"\multicolumn{{{max_m}}}{{c}}{{{_tex_escape(display_name(m))}}}"
                  for m in t2_methods]
    tex.append(" & ".join(top) + r" \\")
    tex.append(" ".join(rf"\cmidrule(lr){{{2 + i * max_m}-{1 + (i + 1) * max_m}}}"
                        for i in range(len(t2_methods))))
    for task, spec in tasks.items():
        tm = _table_metrics(task, spec)
        regions = list(dict.fromkeys(summary[summary.task == task]["region"]))
        header = ["Class/region"] + [f"{display_name(m)} {METRIC_LABELS[k]}"
                                     for m in t2_methods for k in tm]
        rows = []
        tex += [rf"\midrule \multicolumn{{{ncols}}}{{l}}{{\textit{{{_tex_escape(task)}}}}} \\",
                " & ".join(["Class/region"] + [_tex_escape(METRIC_LABELS[k])
                                               for _ in t2_methods for k in tm]
                           + [""] * (len(t2_methods) * (max_m - len(tm)))) + r" \\",
                r"\midrule"]
        for region in regions:
            vals = [_fmt(lookup.get((task, region, m, k), float("nan")))
                    for m in t2_methods for k in tm]
            rows.append([region] + vals)
            tex.append(" & ".join([_tex_escape(region)] + vals
                                  + [""] * (len(t2_methods) * (max_m - len(tm)))) + r" \\")
        if not regions:
            tex.append(rf"\multicolumn{{{ncols}}}{{l}}{{{MISSING}}} \\")
        md += [f"**{task}**", ""]
        md += (_md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)) if rows
               else [f"{MISSING} (no metric rows)"])
        md.append("")
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(md).rstrip("\n") + "\n", "\n".join(tex) + "\n"


def summarise_noise(noise: pd.DataFrame, tasks: Mapping[str, object]) -> pd.DataFrame:
    """Noise levels per task: rows "all classes" (mean over regions per case) then per region.

    Columns: task, region, n_cases, dice_mean, dice_sd (%), asd_mean, asd_sd (mm; over cases),
    asd_n_nan (values left out). A task without noise rows gets one row of NaN.
    """
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
            for metric in ("dice", "asd"):
                gm = g[g.metric == metric]
                per_case = gm.dropna(subset=["value"]).groupby("case")["value"].mean()
                scale = METRIC_SCALE[metric]
                row[f"{metric}_mean"] = float(per_case.mean()) * scale if len(per_case) else np.nan
                row[f"{metric}_sd"] = (float(per_case.std(ddof=1)) * scale
                                       if len(per_case) > 1 else np.nan)
                if metric == "asd":
                    row["asd_n_nan"] = int(gm["value"].isna().sum())
            rows.append(row)
    cols = ["task", "region", "n_cases", "dice_mean", "dice_sd", "asd_mean", "asd_sd",
            "asd_n_nan"]
    return pd.DataFrame(rows).reindex(columns=cols)


def noise_table(summary: pd.DataFrame) -> tuple[str, str]:
    """Markdown and LaTeX of the noise-level table (mean +- SD over cases)."""
    caption = ("Noise levels: agreement of the noisy training labels with the reference labels; "
               "per case the mean over classes, then mean +- SD over cases. Dice in %, ASD in "
               "mm; -- no noise report.")

    def pm(mean: object, sd: object) -> str:
        if mean is None or pd.isna(mean):
            return MISSING
        return f"{mean:.1f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.1f}")

    header = ["Task", "Class/region", "Cases", "Dice (%)", "ASD (mm)"]
    rows = []
    for r in summary.itertuples():
        rows.append([str(r.task), str(r.region), str(int(r.n_cases)),
                     pm(r.dice_mean, r.dice_sd), pm(r.asd_mean, r.asd_sd)])
    md = [caption, ""] + _md_table(header, rows, ["l", "l", "r", "r", "r"])
    tex = [r"\begin{table}[t]", r"\centering", r"\caption{" + _tex_escape(caption) + "}",
           r"\label{tab:noise}", r"\begin{tabular}{llrrr}", r"\toprule",
           r"Task & Class/region & Cases & Dice (\%) & ASD (mm) \\", r"\midrule"]
    for row in rows:
        tex.append(" & ".join(_tex_escape(c).replace("±", r"$\pm$") for c in row) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


# --------------------------------------------------------------------------------------------
# figure


def figure1(trials: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str],
            png: Path, pdf: Path, seed: int = 0) -> None:
    """Figure 1: per task a panel, per tuned method a box plot plus jittered trial points.

    Points are all COMPLETE trials of all folds (colour = fold). Methods without trials are
    left out; with no trials at all the figure holds a message panel. 7 in wide, 200 dpi PNG.
    """
    from matplotlib.figure import Figure  # noqa: F811 (runtime import: matplotlib is slow)

    present = [t for t in tasks if not trials[trials.task == t].empty]
    if not present:  # one message panel instead of empty axes
        fig = Figure(figsize=(7.0, 2.0), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No completed tuning trials found", ha="center", va="center",
                fontsize=11, transform=ax.transAxes)
        _save_figure(fig, png, pdf)
        return
    n = len(tasks)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(7.0, 2.6 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    rng = np.random.default_rng(seed)
    folds = sorted(trials["fold"].unique()) if not trials.empty else []
    cmap = ["#1b6ca8", "#e07b39", "#3a9e5c", "#b23a48", "#7b5ea7", "#8c6d31"]
    fold_colour = {f: cmap[i % len(cmap)] for i, f in enumerate(folds)}
    for ax, task in zip(axes, tasks, strict=False):
        sub = trials[trials.task == task]
        tuned = [m for m in methods if not sub[sub.method == m].empty]
        ax.set_title(task, fontsize=10)
        if not tuned:
            ax.text(0.5, 0.5, "no tuning trials", ha="center", va="center", fontsize=9,
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        data = [sub[sub.method == m]["value"].to_numpy() for m in tuned]
        ax.boxplot(data, positions=np.arange(len(tuned)), widths=0.55, showfliers=False,
                   medianprops={"color": "black", "linewidth": 1.4, "zorder": 4},
                   boxprops={"linewidth": 0.8}, whiskerprops={"linewidth": 0.8},
                   capprops={"linewidth": 0.8})
        for i, m in enumerate(tuned):
            g = sub[sub.method == m]
            x = i + rng.uniform(-0.18, 0.18, size=len(g))
            ax.scatter(x, g["value"], s=9, alpha=0.75, linewidths=0,
                       c=[fold_colour[f] for f in g["fold"]], zorder=3)
        ax.set_xticks(np.arange(len(tuned)))
        ax.set_xticklabels([display_name(m) for m in tuned], rotation=35, ha="right",
                           fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", linewidth=0.4, alpha=0.5)
        ax.set_xlim(-0.6, len(tuned) - 0.4)
    for ax in axes[len(tasks):]:
        ax.set_axis_off()
    for ax in axes[::ncols]:
        ax.set_ylabel("Tuning objective\n(EMA pseudo Dice)", fontsize=8)
    if len(folds) > 1:
        handles = [axes[0].scatter([], [], s=12, c=fold_colour[f], label=f"fold {f}")
                   for f in folds]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(folds),
                   fontsize=8, frameon=False)
    _save_figure(fig, png, pdf)


def _save_figure(fig: Figure, png: Path, pdf: Path) -> None:
    """Write the figure atomically as a 200-dpi PNG and a vector PDF."""
    for path, kw in ((png, {"dpi": 200}), (pdf, {})):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), **kw)


# --------------------------------------------------------------------------------------------
# entry point


def build_report(metrics_csvs: Sequence[str | os.PathLike[str]],
                 noise_csvs: Sequence[str | os.PathLike[str]],
                 trials_csvs: Sequence[str | os.PathLike[str]],
                 tables_dir: str | os.PathLike[str], figures_dir: str | os.PathLike[str],
                 tasks: Mapping[str, Mapping[str, object]],
                 methods: Sequence[str],
                 reliability_csvs: Sequence[str | os.PathLike[str]] | None = None
                 ) -> dict[str, Path]:
    """Write Table 1, Table 2, the noise table and Figure 1 from the stage CSVs.

    tasks: ordered ``{task: {"table_metrics": ["dice", "asd"] | ["dice", "surface_dice"]}}``;
    methods: ordered method ids (rows of Table 1, shown with :data:`METHOD_DISPLAY_NAMES`).
    Writes ``<tables_dir>/table1.{csv,md,tex}``, ``table2.{csv,md,tex}``,
    ``noise_levels.{csv,md,tex}`` and ``<figures_dir>/figure1.{png,pdf}`` atomically and returns
    ``{file name: path}``. Missing rows show as "--"; a missing file or column raises
    InputDataError naming it. With ``reliability_csvs`` (the evaluate stage's
    ``fold<k>_reliability.csv``; may be header-only) also ``table3.{csv,md,tex}`` (calibration
    metrics from the metric CSVs) and ``<figures_dir>/figure2_reliability.{png,pdf}``.
    """
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    methods = list(methods)
    for task, spec in tasks.items():
        _table_metrics(task, spec)
    metrics = read_metrics(metrics_csvs)
    noise = read_noise(noise_csvs)
    trials = read_trials(trials_csvs)

    out: dict[str, Path] = {}

    def emit(stem: str, csv: pd.DataFrame, md: str, tex: str) -> None:
        for ext in ("csv", "md", "tex"):
            out[f"{stem}.{ext}"] = tables_dir / f"{stem}.{ext}"
        _write_csv(csv, out[f"{stem}.csv"])
        write_text(out[f"{stem}.md"], md)
        write_text(out[f"{stem}.tex"], tex)

    s1 = summarise(metrics, tasks, methods)
    emit("table1", s1, *table1(s1, tasks, methods))
    s2 = summarise_regions(metrics, tasks, methods)
    emit("table2", s2, *table2(s2, tasks, methods))
    sn = summarise_noise(noise, tasks)
    emit("noise_levels", sn, *noise_table(sn))
    out["figure1.png"] = figures_dir / "figure1.png"
    out["figure1.pdf"] = figures_dir / "figure1.pdf"
    figure1(trials, list(tasks), methods, out["figure1.png"], out["figure1.pdf"])
    # --- calibration (Table 3, Figure 2): only when the reliability CSVs are given
    if reliability_csvs is not None:
        reliability = read_reliability(reliability_csvs)
        s3 = summarise_calibration(metrics, tasks, methods)
        emit("table3", s3, *table3(s3, list(tasks), methods, reliability))
        out["figure2_reliability.png"] = figures_dir / "figure2_reliability.png"
        out["figure2_reliability.pdf"] = figures_dir / "figure2_reliability.pdf"
        reliability_figure(reliability, list(tasks), methods, out["figure2_reliability.png"],
                           out["figure2_reliability.pdf"])
    return out


# --------------------------------------------------------------------------------------------
# calibration: Table 3 and Figure 2 (reliability diagrams)

TABLE3_METRICS: tuple[str, ...] = ("ece", "brier", "nll")
"""Table 3's columns per task (within the band); the CSV adds the all-voxel ``<name>_all``."""
CALIBRATION_LABELS: dict[str, str] = {"ece": "ECE", "brier": "Brier", "nll": "NLL"}
CALIBRATION_UNITS: dict[str, str] = {"ece": "", "brier": "", "nll": "nats"}
RELIABILITY_NUMERIC = ("fold", "band_mm", "bin", "lower", "upper", "count", "confidence_sum",
                       "correct_sum")


def read_reliability(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read the evaluate stage's ``fold<k>_reliability.csv`` files (header-only ones when
    calibration was off), columns :data:`nnrobustloss.metrics.RELIABILITY_COLUMNS`."""
    from nnrobustloss.metrics import RELIABILITY_COLUMNS

    return _read_csvs(paths, RELIABILITY_COLUMNS, RELIABILITY_NUMERIC, "reliability")


def summarise_calibration(metrics: pd.DataFrame, tasks: Mapping[str, object],
                          methods: Sequence[str]) -> pd.DataFrame:
    """Table 3 numbers: :func:`summarise` of ECE, Brier and NLL within the band, then the same
    over all voxels (``ece_all``, ...), per task and method; natural units (ECE and Brier in
    [0, 1], NLL in nats per voxel), same means, bootstrap CIs and paired test vs the Baseline
    as Table 1. ``n_nan`` counts region-case values left out (an empty band: the class is in
    neither the reference nor the prediction)."""
    names = [*TABLE3_METRICS, *(f"{m}_all" for m in TABLE3_METRICS)]
    summary = summarise(metrics, {t: {"table_metrics": names} for t in tasks}, methods)
    summary["unit"] = summary["metric"].map(lambda m: CALIBRATION_UNITS[m.removesuffix("_all")])
    return summary


def table3(summary: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str],
           reliability: pd.DataFrame) -> tuple[str, str]:
    """Markdown and LaTeX of Table 3: per task ECE, Brier and NLL (band), methods as rows.

    ``reliability`` (:func:`read_reliability`) gives the band and bin count for the caption.
    """
    measured = summary["n_cases"].sum() > 0 if len(summary) else False
    band = (f"{reliability['band_mm'].iloc[0]:g} mm" if len(reliability) else "a band")
    bins = int(reliability["bin"].max()) + 1 if len(reliability) else 15
    caption = (f"Table 3: calibration per task and method against the reference labels, "
               f"within {band} of the reference or predicted class (one-vs-rest per class: "
               f"confidence p_k, correct where the reference is k; ECE with {bins} equal-width "
               f"bins); {CAPTION_MEANS}. ECE and Brier in [0, 1], NLL in nats per voxel; lower "
               f"is better. * p < {ALPHA} vs Baseline (paired Wilcoxon signed-rank test over "
               "cases, Holm-corrected per task and metric); -- no results. Values over all "
               "voxels: table3.csv (metrics *_all).")
    header = ["Method"] + [f"{t} {CALIBRATION_LABELS[m]}" for t in tasks for m in TABLE3_METRICS]
    lookup = {(r.task, r.method, r.metric): r for r in summary.itertuples()}
    md_rows, tex_rows = [], []
    for method in methods:
        md_row, tex_row = [display_name(method)], [_tex_escape(display_name(method))]
        for task in tasks:
            for m in TABLE3_METRICS:
                r = lookup.get((task, method, m))
                mean = r.mean if r is not None else float("nan")
                star = bool(r.significant) if r is not None else False
                md_row.append(_fmt(mean, star, digits=3))
                tex_row.append(_fmt(mean, star, tex=True, digits=3))
        md_rows.append(md_row)
        tex_rows.append(tex_row)
    note = ("" if measured else "Calibration was not measured (evaluation.calibration: false, "
            "or no calibration rows in the metric CSVs).")
    md = [caption, ""] + _md_table(header, md_rows, ["l"] + ["r"] * (len(header) - 1))
    if note:
        md += ["", note]
    k = len(TABLE3_METRICS)
    tex = [r"\begin{table}[t]", r"\centering",
           r"\caption{" + _tex_escape(caption.removeprefix("Table 3: "))
           .replace(f"* p < {ALPHA}", f"$^{{*}}$ $p<{ALPHA}$") + "}",
           r"\label{tab:calibration}", r"\begin{tabular}{l" + "r" * (k * len(tasks)) + "}",
           r"\toprule",
           " & ".join([""] + [rf"\multicolumn{{{k}}}{{c}}{{{_tex_escape(t)}}}" for t in tasks])
           + r" \\",
           " ".join(rf"\cmidrule(lr){{{2 + i * k}-{1 + (i + 1) * k}}}" for i in range(len(tasks))),
           " & ".join(["Method"] + [CALIBRATION_LABELS[m] for _ in tasks for m in TABLE3_METRICS])
           + r" \\", r"\midrule"]
    tex += _tex_rows_and_end(tex_rows, note)
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


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


def reliability_figure(reliability: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str],
                       png: Path, pdf: Path) -> None:
    """Figure 2: reliability diagrams, one panel per task, one line per method.

    Per confidence bin the fraction of voxels that belong to the class (accuracy) against their
    mean confidence, pooled over classes, cases and folds within the band; the diagonal is
    perfect calibration. With no reliability bins at all a message panel. 7 in wide, 200 dpi PNG.
    """
    from matplotlib.figure import Figure  # noqa: F811 (runtime import: matplotlib is slow)

    curves = reliability_curves(reliability)
    if curves.empty:
        fig = Figure(figsize=(7.0, 2.0), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "Calibration not measured (evaluation.calibration: false)",
                ha="center", va="center", fontsize=11, transform=ax.transAxes)
        _save_figure(fig, png, pdf)
        return
    n = len(tasks)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    width = 7.0
    fig = Figure(figsize=(width, width / ncols * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colours = ["#1b6ca8", "#7f7f7f", "#e07b39", "#b23a48", "#3a9e5c", "#7b5ea7", "#17becf",
               "#8c6d31", "#d62790"]
    styles = {m: (colours[i % len(colours)], "os^vD<>ph"[i % 9]) for i, m in enumerate(methods)}
    band = (f"{reliability['band_mm'].iloc[0]:g} mm band" if "band_mm" in reliability
            and len(reliability) else "band")
    for ax, task in zip(axes, tasks, strict=False):
        ax.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle="--", zorder=1)
        sub = curves[curves.task == task]
        for method in methods:
            g = sub[sub.method == method].sort_values("bin")
            if g.empty:
                continue
            colour, marker = styles[method]
            ax.plot(g["confidence"], g["accuracy"], color=colour, marker=marker, markersize=3.5,
                    linewidth=1.1, alpha=0.9, label=display_name(method), zorder=2)
        if sub.empty:
            ax.text(0.5, 0.5, "no calibration data", ha="center", va="center", fontsize=9,
                    transform=ax.transAxes)
        ax.set_title(f"{task} ({band})", fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("Confidence", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(linewidth=0.4, alpha=0.5)
    for ax in axes[len(tasks):]:
        ax.set_axis_off()
    for ax in axes[::ncols]:
        ax.set_ylabel("Accuracy (fraction of the class)", fontsize=8)
    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside lower center",
                   ncols=min(len(legend), 5), fontsize=8, frameon=False)
    _save_figure(fig, png, pdf)
