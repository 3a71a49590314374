"""The paper's tables and figure, from the stage CSVs alone.

Inputs (docs/layout.md): tidy metric CSVs ``metrics/<Task>/<Method>/fold<k>.csv``
(task, method, fold, case, region, metric, value), noise CSVs ``noise/<Task>.csv`` (task, case,
region, metric, value; metrics dice and asd) and tuning ``trials.csv`` files (task, method, fold,
number, value, state). Outputs: ``table1``, ``table2`` and ``noise_levels`` as CSV, Markdown and
LaTeX (booktabs), and ``figure1`` as PNG and PDF, all written atomically.

Aggregation: per case the mean over classes (or regions), then the mean over the cases of a
fold, then over folds: one value per training replicate; the tables show the mean over
replicates (with the SD over replicates when there are several). No value is left out: where
exactly one mask is empty, ASD is the worst case of
:data:`nnrobustloss.metrics.registry.ONE_EMPTY_RULE` and the captions count such values. A method
that lost a class in a fold (:mod:`nnrobustloss.lost`) is marked with † in Tables 1 and 2, with
the folds and classes in the caption and its lost count k/N (folds x replicates) in Table 1;
``tables/folds.*`` holds the per-fold means. Beyond the paper, each method is compared with the
Baseline by a paired Wilcoxon signed-rank test over cases (per-case value: mean over regions,
averaged over replicates), Holm-corrected across the methods of a task and metric, and the CSV
carries seeded bootstrap 95% confidence intervals of the mean over cases.
"""

from __future__ import annotations

import html
import math
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, write_text
from nnrobustloss.lost import fold_means, lost_classes, lost_counts, lost_note, with_defaults
from nnrobustloss.methods import METHODS
from nnrobustloss.metrics.registry import (
    METRICS,
    METRICS_CSV_COLUMNS,
    METRICS_CSV_DEFAULTS,
    NOISE_CSV_COLUMNS,
    SEGMENTATION_METRICS,
    TRIALS_CSV_COLUMNS,
    VOXEL_SETS,
    calibration_name,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BASELINE = "Baseline"
NOISE_TABLE_METRICS: tuple[str, ...] = ("dice", "asd")
"""Metrics of the noise-level table (mean and SD over cases, with the registry's scale)."""
ALPHA = 0.05
N_BOOTSTRAP = 1000
MISSING = "--"

CAPTION_MEANS = ("mean over classes (regions for KiTS23) per case, then over the cases of a "
                 "fold, then over folds")


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
# reading


def _read_csvs(paths: Sequence[str | os.PathLike[str]], columns: Sequence[str],
               numeric: Sequence[str], what: str,
               optional: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Concatenate CSVs, checking required ``columns`` and numeric values; name the bad file.
    ``optional``: further columns kept when present, else filled with the given value."""
    optional = dict(optional or {})
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
        for col, default in optional.items():
            if col not in df.columns:
                df[col] = default
        df = df[[*columns, *optional]].copy()
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
                             for c in (*columns, *optional, "_file")})
    return pd.concat(frames, ignore_index=True)


def read_metrics(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read tidy metric CSVs (``replicate`` and ``worst_case`` default to 0 where a file lacks
    them); a repeated (task, method, fold, replicate, case, region, metric) is an error, and so
    is a NaN Dice, ASD or surface Dice (written before the worst-case rule: rerun evaluate)."""
    required = [c for c in METRICS_CSV_COLUMNS if c not in METRICS_CSV_DEFAULTS]
    df = _read_csvs(paths, required, ("fold", "value", *METRICS_CSV_DEFAULTS), "metrics",
                    optional=METRICS_CSV_DEFAULTS)
    stale = df["metric"].isin(SEGMENTATION_METRICS) & df["value"].isna()
    if stale.any():
        first = df[stale].iloc[0]
        raise InputDataError(
            f"{first['_file']}: {first.metric} is NaN for case {first.case}, region "
            f"{first.region}: the file was written before empty masks got a worst-case value. "
            "Rerun its evaluate job (snakemake --forcerun evaluate).")
    key = [c for c in METRICS_CSV_COLUMNS if c not in ("value", "worst_case")]
    dup = df.duplicated(key, keep=False)
    if dup.any():
        first = df[dup].iloc[0]
        files = sorted(set(df[dup & (df[key] == first[key]).all(axis=1)]["_file"]))
        raise InputDataError(
            f"{', '.join(files)}: duplicate row for task {first.task}, method {first.method}, "
            f"fold {int(first.fold)}, replicate {int(first.replicate)}, case {first.case}, region "
            f"{first.region}, metric {first.metric}. Each case may appear once per fold and "
            "replicate; remove the stale file.")
    for col in ("fold", *METRICS_CSV_DEFAULTS):
        df[col] = df[col].astype(int)
    return df


def read_noise(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read tidy noise CSVs (task, case, region, metric, value; ``worst_case`` 0 where absent)."""
    required = [c for c in NOISE_CSV_COLUMNS if c != "worst_case"]
    return _read_csvs(paths, required, ("value", "worst_case"), "noise",
                      optional={"worst_case": 0})


def read_trials(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read trials CSVs and keep the COMPLETE trials with a finite objective value."""
    df = _read_csvs(paths, TRIALS_CSV_COLUMNS, ("fold", "number", "value"), "trials")
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
    case_level = _case_means(metrics)
    rows = []
    for task, spec in tasks.items():
        table_metrics = _table_metrics(task, spec, allowed=tuple(METRICS))
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


def _table_metrics(task: str, spec: Mapping[str, object],
                   allowed: Sequence[str] = SEGMENTATION_METRICS) -> list[str]:
    """The task's ``table_metrics`` (default dice, asd); ConfigError for a name not in ``allowed``."""
    metrics = list(spec.get("table_metrics", ["dice", "asd"]))  # type: ignore[call-overload]
    for m in metrics:
        if m not in allowed:
            raise ConfigError(f"tasks.{task}.table_metrics: unknown metric '{m}'. Use "
                              f"{', '.join(allowed[:-1])} or {allowed[-1]}.")
    return metrics


# --------------------------------------------------------------------------------------------
# formatting


def _fmt(value: float, star: bool = False, tex: bool = False, digits: int = 1,
         sd: float | None = None) -> str:
    """A table cell: the value with ``digits`` decimals, "± sd" when ``sd`` is a number (the
    spread over replicates), the significance mark; "--" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:.{digits}f}"
    if sd is not None and not math.isnan(sd):
        text += (r" $\pm$ " if tex else " ± ") + f"{sd:.{digits}f}"
    if star:
        text += "$^{*}$" if tex else "*"
    return text


DAGGER = "†"
"""Mark of a method that lost a class in a fold (:mod:`nnrobustloss.lost`)."""


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
        elif ch == DAGGER:
            out.append(r"\textdagger{}")
        elif ch == "≥":
            out.append(r"$\geq$")
        else:
            out.append(ch)
    return "".join(out)


def _md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _fmt_pm(mean: object, sd: object) -> str:
    """The mean and SD as "mean ± sd" with one decimal; the mean alone when the SD is NaN,
    "--" when the mean is NaN."""
    if mean is None or pd.isna(mean):
        return MISSING
    return f"{mean:.1f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.1f}")


def _markdown(caption: str, header: list[str], rows: list[list[str]], align: list[str],
              footnote: str = "") -> str:
    """A table's Markdown: the caption, the pipe table and an optional footnote paragraph."""
    md = [caption, ""] + _md_table(header, rows, align)
    if footnote:
        md += ["", footnote]
    return "\n".join(md) + "\n"


def _tex_row(cells: Sequence[str]) -> str:
    r"""One LaTeX table row: the (LaTeX) cells joined by ``&`` and ended by ``\\``."""
    return " & ".join(cells) + r" \\"


def _tex_text(text: str) -> str:
    r"""Plain text as LaTeX: escaped, with ``±`` as ``$\pm$``."""
    return _tex_escape(text).replace("±", r"$\pm$")


def _tex_caption(caption: str) -> str:
    """A Markdown caption as LaTeX: without its "Table N: " (LaTeX numbers the table), escaped,
    the significance mark "* p < ALPHA" in math."""
    return (_tex_text(re.sub(r"^Table \d+: ", "", caption))
            .replace(f"* p < {ALPHA}", f"$^{{*}}$ $p<{ALPHA}$"))


def _tex_group_header(groups: Sequence[tuple[str, int]]) -> list[str]:
    r"""Two header lines over column groups after the first column: a row of
    ``\multicolumn``s, one per (LaTeX name, number of columns), and a ``\cmidrule`` under each."""
    top, rules, col = [""], [], 2
    for name, width in groups:
        top.append(rf"\multicolumn{{{width}}}{{c}}{{{name}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    return [_tex_row(top), " ".join(rules)]


def _latex_float(tex_caption: str, label: str | None, content: Sequence[str]) -> str:
    r"""A ``table`` float: ``\centering``, ``\caption`` (already LaTeX), ``\label`` (when given)
    and the ``content`` lines; ends with a newline."""
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + tex_caption + "}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    return "\n".join([*lines, *content, r"\end{table}"]) + "\n"


def _latex_table(caption: str, label: str, colspec: str, head: Sequence[str],
                 body: Sequence[str], footnote: str = "", midrule: bool = True) -> str:
    r"""A booktabs table float (:func:`_latex_float`) of a Markdown ``caption``
    (:func:`_tex_caption`): ``\toprule``, the ``head`` lines, ``\midrule`` (unless
    ``midrule`` is False: the body brings its own), the ``body`` lines, ``\bottomrule``, then
    the optional ``footnote`` (plain text) in small print."""
    content = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *head,
               *([r"\midrule"] if midrule else []), *body, r"\bottomrule", r"\end{tabular}"]
    if footnote:
        content.append(r"\par\smallskip\footnotesize " + _tex_escape(footnote))
    return _latex_float(_tex_caption(caption), label, content)


def _plain_tables(caption: str, label: str, header: list[str], rows: list[list[str]],
                  align: list[str]) -> tuple[str, str]:
    """Markdown and LaTeX of a table of plain-text cells (escaped for LaTeX, ``±`` in math)
    under one header row; ``align`` holds "l" or "r" per column."""
    tex = _latex_table(caption, label, "".join(align), [_tex_row([_tex_escape(h) for h in header])],
                       [_tex_row([_tex_text(c) for c in row]) for row in rows])
    return _markdown(caption, header, rows, align), tex


def _methods_table(caption: str, label: str, summary: pd.DataFrame, methods: Sequence[str],
                   task_metrics: Sequence[tuple[str, list[str]]], heading: Callable[[str], str],
                   digits: int, footnote: str = "",
                   lost: Mapping[tuple[str, str], str] | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of a methods-as-rows table (Tables 1 and 3): per task a group of
    metric columns (``heading(metric)``: "<task> <heading>" in Markdown, the task over its group
    in LaTeX), per cell the summary's mean with ``digits`` decimals ("± SD" over replicates when
    there are several) and the significance mark, "--" where the summary (:func:`summarise`)
    has no row. ``lost``: ``{(task, method): "k/N"}`` adds a "Lost" column to each task's group
    and marks with :data:`DAGGER` the rows of methods with k > 0."""
    lost = dict(lost or {})
    lookup = {(r.task, r.method, r.metric): r for r in summary.itertuples()}
    md_rows, tex_rows = [], []
    for method in methods:
        mark = DAGGER if any(not v.startswith("0/") for (t, m), v in lost.items()
                             if m == method) else ""
        md_row, tex_row = [display_name(method) + mark], [_tex_escape(display_name(method))
                                                          + (r"$^{\dagger}$" if mark else "")]
        for task, tm in task_metrics:
            for m in tm:
                r = lookup.get((task, method, m))
                mean = r.mean if r is not None else float("nan")
                star = bool(r.significant) if r is not None else False
                sd = r.sd if r is not None and getattr(r, "n_replicates", 1) > 1 else None
                md_row.append(_fmt(mean, star, digits=digits, sd=sd))
                tex_row.append(_fmt(mean, star, tex=True, digits=digits, sd=sd))
            if lost:
                md_row.append(lost.get((task, method), MISSING))
                tex_row.append(_tex_escape(lost.get((task, method), MISSING)))
        md_rows.append(md_row)
        tex_rows.append(_tex_row(tex_row))
    extra = ["Lost"] if lost else []
    header = ["Method"] + [f"{task} {h}" for task, tm in task_metrics
                           for h in [heading(m) for m in tm] + extra]
    align = ["l"] + ["r"] * (len(header) - 1)
    head = [*_tex_group_header([(_tex_escape(task), len(tm) + len(extra))
                                for task, tm in task_metrics]),
            _tex_row(["Method"] + [_tex_escape(h) for _, tm in task_metrics
                                   for h in [heading(m) for m in tm] + extra])]
    return (_markdown(caption, header, md_rows, align, footnote),
            _latex_table(caption, label, "".join(align), head, tex_rows, footnote))


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")


def _worst_case_note(summary: pd.DataFrame) -> str:
    """The caption sentence counting the worst-case values of the surface metrics (exactly one
    empty mask; :data:`nnrobustloss.metrics.registry.ONE_EMPTY_RULE`); no value is left out."""
    surface = summary[summary.metric.isin(("asd", "surface_dice"))]
    if surface.empty:
        return ""
    rule = ("where exactly one of prediction and reference is empty, ASD is the worst case "
            "(the diagonal of the image in mm) and Surface Dice 0, and every value enters the "
            "means")
    hit = surface[surface.n_worst > 0].drop_duplicates(["task", "method"])
    if hit.empty:
        return f"Surface metrics: {rule}; no value is such a worst case."
    parts = [f"{r.task} {r.method_name}: {r.n_worst} of {r.n_values}" for r in hit.itertuples()]
    return (f"Surface metrics: {rule}. Worst-case region-case values: " + "; ".join(parts)
            + ".")


def _replicates_note(summary: pd.DataFrame) -> str:
    """The caption words on replicates: with several, mean ± SD over them."""
    n = int(summary["n_replicates"].max()) if len(summary) else 1
    return (f" Per method {n} training replicates (seeds) per fold: mean ± SD over replicates."
            if n > 1 else "")


def _lost_cells(lost: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``{(task, method): "k/N"}`` of :func:`nnrobustloss.lost.lost_counts`."""
    return {(r.task, r.method): f"{r.lost_count}/{r.lost_total}"
            for r in lost_counts(lost).itertuples()}


def table1(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str], lost: pd.DataFrame | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of Table 1 (methods as rows, per task its metric columns and, with
    ``lost`` (:func:`nnrobustloss.lost.lost_classes`), a "Lost" column k/N with † on the rows
    of methods that lost a class in a fold, named in the caption)."""
    caption = ("Table 1: segmentation quality per task and method; "
               f"{CAPTION_MEANS}.{_replicates_note(summary)} Dice and Surface Dice in %, ASD in "
               f"mm. * p < {ALPHA} vs Baseline (paired Wilcoxon signed-rank test over cases, "
               "Holm-corrected per task and metric); "
               + ("Lost: fold x replicate trainings that lost a class (k/N); "
                  if lost is not None else "") + "-- no results.")
    notes = [] if lost is None else [lost_note(lost, display_name, list(methods),
                                               BASELINE in set(lost["method"]))]
    footnote = " ".join(x for x in (*notes, _worst_case_note(summary)) if x)
    return _methods_table(caption, "tab:results", summary, methods,
                          [(t, _table_metrics(t, spec)) for t, spec in tasks.items()],
                          lambda m: METRICS[m].heading, digits=1, footnote=footnote,
                          lost=_lost_cells(lost) if lost is not None else None)


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
                for metric in _table_metrics(task, spec):
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


def table2(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str], lost: pd.DataFrame | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of Table 2: per class/region, SVLS and HRL side by side; with ``lost``
    (:func:`nnrobustloss.lost.lost_classes`) a method that lost a class in a fold is marked with
    † and named in the caption."""
    t2_methods = table2_methods(methods)
    lost_methods = (set(lost.loc[lost["lost"], "method"]) if lost is not None else set())
    marked = {m: display_name(m) + (DAGGER if m in lost_methods else "") for m in t2_methods}
    several = "sd" in summary and summary["sd"].notna().any()
    caption = ("Table 2: per class (region for KiTS23) results of "
               + (" and ".join(display_name(m) for m in t2_methods) or "SVLS and HRL")
               + "; mean over cases, then over folds"
               + (" (mean ± SD over training replicates)" if several else "")
               + ". Dice and Surface Dice in %, ASD in mm; -- no results.")
    if lost is not None and t2_methods:
        caption += " " + lost_note(lost, display_name, t2_methods,
                                   BASELINE in set(lost["method"]))
    md = [caption, ""]
    if not t2_methods:
        text = "Neither SVLS nor HRL is among the study's methods."
        # no tabular and no label; this caption has always kept its "Table 2: " prefix
        return "\n".join([*md, text]) + "\n", _latex_float(_tex_escape(caption), None, [text])
    lookup = {(r.task, r.region, r.method, r.metric): r for r in summary.itertuples()}
    max_m = max(len(_table_metrics(t, s)) for t, s in tasks.items()) if tasks else 2
    ncols = 1 + len(t2_methods) * max_m
    head = _tex_group_header([(_tex_escape(display_name(m))
                               + (r"$^{\dagger}$" if m in lost_methods else ""), max_m)
                              for m in t2_methods])
    body = []
    for task, spec in tasks.items():
        tm = _table_metrics(task, spec)
        pad = [""] * (len(t2_methods) * (max_m - len(tm)))  # tasks with fewer metrics
        regions = list(dict.fromkeys(summary[summary.task == task]["region"]))
        header = ["Class/region"] + [f"{marked[m]} {METRICS[k].heading}"
                                     for m in t2_methods for k in tm]
        rows = []
        body += [rf"\midrule \multicolumn{{{ncols}}}{{l}}{{\textit{{{_tex_escape(task)}}}}} \\",
                 _tex_row(["Class/region"] + [_tex_escape(METRICS[k].heading)
                                              for _ in t2_methods for k in tm] + pad),
                 r"\midrule"]
        for region in regions:
            cells = [lookup.get((task, region, m, k)) for m in t2_methods for k in tm]
            vals = [_fmt(r.mean, sd=r.sd) if r is not None else MISSING for r in cells]
            tex_vals = [_fmt(r.mean, tex=True, sd=r.sd) if r is not None else MISSING
                        for r in cells]
            rows.append([region] + vals)
            body.append(_tex_row([_tex_escape(region)] + tex_vals + pad))
        if not regions:
            body.append(rf"\multicolumn{{{ncols}}}{{l}}{{{MISSING}}} \\")
        md += [f"**{task}**", ""]
        md += (_md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)) if rows
               else [f"{MISSING} (no metric rows)"])
        md.append("")
    # each task's block opens with its own \midrule
    tex = _latex_table(caption, "tab:regions", "l" + "r" * (ncols - 1), head, body, midrule=False)
    return "\n".join(md).rstrip("\n") + "\n", tex


def folds_table(folds: pd.DataFrame, lost: pd.DataFrame,
                tasks: Mapping[str, Mapping[str, object]],
                methods: Sequence[str]) -> tuple[str, str]:
    """Markdown and LaTeX of the per-fold table: per task and table metric, methods (and
    replicates) as rows, per fold one column per class/region with the held-out mean;
    :data:`DAGGER` on a lost class (:mod:`nnrobustloss.lost`). ``folds``:
    :func:`nnrobustloss.lost.fold_means`; the CSV holds every metric."""
    several = folds["replicate"].nunique() > 1 if len(folds) else False
    caption = ("Per-fold results: held-out mean over the fold's cases per class (region for "
               "KiTS23), fold and method" + (" and training replicate" if several else "")
               + "; Dice and Surface Dice in %, ASD in mm; " + DAGGER + " a lost class "
               "(held-out Dice < 5 % where the Baseline reached ≥ 50 % in that fold); -- no "
               "results. Every metric, calibration included: folds.csv.")
    lost_keys = {(r.task, r.method, r.fold, r.replicate, r.region)
                 for r in lost[lost["lost"]].itertuples()}
    md: list[str] = [caption, ""]
    body: list[str] = []
    width = 0
    for task, spec in tasks.items():
        sub = folds[folds["task"] == task]
        fold_ids = sorted(sub["fold"].unique())
        regions = list(dict.fromkeys(sub["region"]))
        for metric in _table_metrics(task, spec):
            cols = [(f, r) for f in fold_ids for r in regions]
            width = max(width, len(cols))
            lookup = {(x.method, x.replicate, x.fold, x.region): x.value
                      for x in sub[sub["metric"] == metric].itertuples()}
            header = ["Method"] + (["Rep."] if several else []) + [f"fold {f} {r}"
                                                                   for f, r in cols]
            rows, tex_rows = [], []
            for method in methods:
                reps = sorted(sub.loc[sub["method"] == method, "replicate"].unique()) or [0]
                for rep_ in reps:
                    cells = []
                    for f, r in cols:
                        v = lookup.get((method, rep_, f, r), float("nan"))
                        mark = DAGGER if (task, method, f, rep_, r) in lost_keys else ""
                        cells.append(_fmt(v * METRICS[metric].scale) + mark)
                    lead = [display_name(method)] + ([str(rep_)] if several else [])
                    rows.append(lead + cells)
                    tex_rows.append(_tex_row([_tex_escape(c) for c in lead]
                                             + [_tex_escape(c).replace(DAGGER, r"$^{\dagger}$")
                                                for c in cells]))
            title = f"**{task}, {METRICS[metric].heading}**"
            md += [title, ""] + _md_table(header, rows, ["l"] * (1 + several)
                                          + ["r"] * len(cols)) + [""]
            n_lead = 1 + several
            body += [rf"\midrule \multicolumn{{{n_lead + len(cols)}}}{{l}}{{\textit{{"
                     f"{_tex_escape(task)}, {_tex_escape(METRICS[metric].heading)}}}}} \\\\",
                     _tex_row([_tex_escape(h) for h in header]), r"\midrule", *tex_rows]
    lead_cols = "l" * (2 if several else 1)
    tex = _latex_table(caption, "tab:folds", lead_cols + "r" * width, [], body, midrule=False)
    return "\n".join(md).rstrip("\n") + "\n", tex


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


def noise_table(summary: pd.DataFrame) -> tuple[str, str]:
    """Markdown and LaTeX of the noise-level table (mean +- SD over cases)."""
    worst = int(summary.loc[summary["region"] == "all classes", "asd_n_worst"].fillna(0).sum())
    caption = ("Noise levels: agreement of the noisy training labels with the reference labels; "
               "per case the mean over classes, then mean +- SD over cases. Dice in %, ASD in "
               "mm (where exactly one mask is empty: the diagonal of the image, "
               f"{worst} such value{'' if worst == 1 else 's'}); -- no noise report.")
    header = ["Task", "Class/region", "Cases"] + [METRICS[m].heading for m in NOISE_TABLE_METRICS]
    rows = [[str(r.task), str(r.region), str(int(r.n_cases))]
            + [_fmt_pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_sd")) for m in NOISE_TABLE_METRICS]
            for r in summary.itertuples()]
    return _plain_tables(caption, "tab:noise", header, rows,
                         ["l", "l"] + ["r"] * (len(header) - 2))


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
# smoke runs, HTML tables, training curves and the noise sweep

SMOKE_PREFIX = "SMOKE RUN"


def smoke_note(training_iterations: int | None, min_training_iterations: int,
               budget: str = "") -> str | None:
    """The caption note of a run too short to mean anything, or None for a real run.

    ``training_iterations`` = epochs x iterations per epoch of the final trainings (None:
    unknown, treated as a real run); below ``min_training_iterations`` the run is a smoke run.
    """
    if training_iterations is None or training_iterations >= min_training_iterations:
        return None
    return (f"{SMOKE_PREFIX}: final trainings of {budget or training_iterations} "
            f"({training_iterations} iterations, fewer than the {min_training_iterations} of "
            "report.min_training_iterations); the numbers show that the pipeline runs, not how "
            "the methods compare, and no significance marks are printed.")


def _with_note(md: str, tex: str, note: str | None) -> tuple[str, str]:
    """Put ``note`` in front of a table's Markdown and into its LaTeX caption."""
    if note is None:
        return md, tex
    md = f"**{note}**\n\n{md}"
    tex = tex.replace(r"\caption{", r"\caption{\textbf{" + _tex_escape(note) + "} ", 1)
    return md, tex


def _inline_html(text: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(text))


def markdown_table_html(md: str, title: str) -> str:
    """A standalone HTML page of one of this module's Markdown tables (for ``snakemake
    --report``, which shows HTML but not Markdown): pipe-table blocks become ``<table>``s,
    other non-empty lines paragraphs; ``**bold**`` is kept."""
    body: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block]
        align = ["right" if c.endswith(":") else "left" for c in rows[1]] if len(rows) > 1 else []
        out = ["<table>", "<thead><tr>" + "".join(f"<th>{_inline_html(c)}</th>" for c in rows[0])
               + "</tr></thead>", "<tbody>"]
        for r in rows[2:]:
            out.append("<tr>" + "".join(
                f'<td style="text-align:{align[i] if i < len(align) else "left"}">'
                f"{_inline_html(c)}</td>" for i, c in enumerate(r)) + "</tr>")
        out += ["</tbody>", "</table>"]
        body.extend(out)
        block.clear()

    for line in md.splitlines():
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        flush()
        if line.strip():
            body.append(f"<p>{_inline_html(line)}</p>")
    flush()
    style = ("body{font-family:sans-serif;font-size:14px;margin:1em}"
             "table{border-collapse:collapse;margin:0.5em 0}"
             "th,td{border-bottom:1px solid #ccc;padding:3px 8px}th{background:#f2f2f2}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>"
            f"{html.escape(title)}</title><style>{style}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


PROGRESS_NUMERIC = ("epoch", "train_loss", "train_pseudo_dice_ema")
PROGRESS_CLASS_PREFIXES = ("train_dice_class", "kept_fraction_class")
"""Per-class columns of progress.csv the training-curves figure reads (``<prefix><label>``, the
kept fraction with the suffix ``_peer_a``: two-peer methods only)."""


def read_progress(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read final trainings' ``training/<Task>/<Method>/fold<k>[_rep<r>]/progress.csv`` files.

    Returns columns epoch, train_loss, train_pseudo_dice_ema, the per-class columns of
    :data:`PROGRESS_CLASS_PREFIXES` that the files have (NaN where a file lacks them), plus
    task, method, fold, replicate taken from the path (InputDataError for a path that does not
    follow that layout)."""
    from nnrobustloss.layout import parse_fold_name

    df = _read_csvs(paths, PROGRESS_NUMERIC, PROGRESS_NUMERIC, "progress")
    for f, index in df.groupby("_file", sort=False).groups.items():
        table = pd.read_csv(f)
        for c in (c for c in table.columns if c.startswith(PROGRESS_CLASS_PREFIXES)):
            df.loc[index, c] = pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
    keys = []
    for f in df["_file"]:
        parts = Path(f).parts
        parsed = parse_fold_name(parts[-2]) if len(parts) >= 4 else None
        if parsed is None:
            raise InputDataError(f"{f}: not a training/<Task>/<Method>/fold<k>[_rep<r>]/"
                                 "progress.csv path; pass the train stage's progress files.")
        keys.append((parts[-4], parts[-3], *parsed))
    df["task"] = [k[0] for k in keys]
    df["method"] = [k[1] for k in keys]
    df["fold"] = [k[2] for k in keys]
    df["replicate"] = [k[3] for k in keys]
    return df


METHOD_PALETTE: tuple[str, ...] = ("#1b6ca8", "#555555", "#e07b39", "#3a9e5c", "#b23a48",
                                   "#7b5ea7", "#8c6d31", "#d4a017", "#17becf", "#e377c2")
"""Colours of the methods, in the order of the config's ``methods``: one per method in every
figure (training curves, reliability diagrams, noise sweep)."""


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """``{method: colour}``: :data:`METHOD_PALETTE` in the order of ``methods``."""
    return {m: METHOD_PALETTE[i % len(METHOD_PALETTE)] for i, m in enumerate(methods)}


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


def training_curves_figure(progress: pd.DataFrame, tasks: Sequence[str], methods: Sequence[str],
                           png: Path, pdf: Path,
                           labels: Mapping[str, Mapping[int, str]] | None = None) -> None:
    """Per task a column of panels, one line per method (mean over folds and replicates, band:
    min to max over them): the training pseudo-Dice EMA (the tuning objective's quantity), the
    training loss (the axis leaves out epoch 0, whose APL losses would flatten the other
    curves), the training pseudo Dice of each foreground class (``train_dice_class<k>``) and,
    when two-peer methods ran, the share of each class's voxels that peer A's selection kept
    (``kept_fraction_class<k>_peer_a``). ``labels``: ``{task: {label value: class name}}`` for
    the panel titles. The caption line under the panels names every class whose kept fraction
    reached 0 (:func:`zero_kept_classes`). A message panel when there is no progress."""
    from matplotlib.figure import Figure  # noqa: F811 (runtime import: matplotlib is slow)

    present = [t for t in tasks if not progress[progress.task == t].empty]
    if not present:
        fig = Figure(figsize=(7.0, 2.0), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No training progress found", ha="center", va="center", fontsize=11,
                transform=ax.transAxes)
        _save_figure(fig, png, pdf)
        return
    colours = method_colours(methods)

    def class_columns(prefix: str, suffix: str = "") -> list[tuple[str, int]]:
        cols = [c for c in progress.columns if c.startswith(prefix) and c.endswith(suffix)
                and progress[c].notna().any()]
        return sorted(((c, int(re.sub(r"\D", "", c[len(prefix):len(c) - len(suffix)])))
                       for c in cols), key=lambda x: x[1])

    def class_name(task: str, label: int) -> str:
        return (labels or {}).get(task, {}).get(label, f"class {label}")

    quantities: list[tuple[str, str | None, int | None]] = [
        ("train_pseudo_dice_ema", "training pseudo Dice\n(EMA, λ = 0.9)", None),
        ("train_loss", "training loss\n(method's own scale)", None)]
    quantities += [(c, None, k) for c, k in class_columns("train_dice_class")]
    quantities += [(c, None, -k) for c, k in class_columns("kept_fraction_class", "_peer_a")]
    ncols = len(present)
    nrows = len(quantities)
    zero = zero_kept_classes(progress, labels)
    fig = Figure(figsize=(max(7.0, 3.0 * ncols), 2.2 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for j, task in enumerate(present):
        sub = progress[progress.task == task]
        for i, (col, label, k) in enumerate(quantities):
            ax = axes[i, j]
            if label is None and k is not None and k > 0:
                label = f"training pseudo Dice\n{class_name(task, k)}"
            elif label is None and k is not None:
                label = f"kept fraction (peer A)\n{class_name(task, -k)}"
            for m in methods:
                g = sub[(sub.method == m) & sub[col].notna()]
                if g.empty:
                    continue
                stats_ = g.groupby("epoch")[col].agg(["mean", "min", "max"])
                ax.plot(stats_.index, stats_["mean"], color=colours[m], linewidth=1.2,
                        label=display_name(m))
                ax.fill_between(stats_.index, stats_["min"], stats_["max"], color=colours[m],
                                alpha=0.12, linewidth=0)
            later = sub[(sub.epoch >= 1) & sub[col].notna()][col]
            if col == "train_loss" and len(later):
                # the first epoch's loss of some losses (APL) would flatten every other curve
                lo, hi = float(later.min()), float(later.max())
                pad = 0.05 * (hi - lo) if hi > lo else 0.1
                ax.set_ylim(lo - pad, hi + pad)
            elif col != "train_loss":
                ax.set_ylim(-0.03, 1.03)
            ax.grid(linewidth=0.4, alpha=0.5)
            ax.tick_params(labelsize=8)
            if i == 0:
                ax.set_title(task, fontsize=10)
            if i == nrows - 1:
                ax.set_xlabel("epoch", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    legend: dict[str, object] = {}
    for ax in axes.ravel():
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(name, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncols=min(len(legend), 5), fontsize=8, frameon=False)
    if any(c.startswith("kept_fraction_class") for c, _, _ in quantities):
        fig.suptitle("Kept fraction reached 0: " + "; ".join(zero) if zero
                     else "No class's kept fraction reached 0.", fontsize=8)
    _save_figure(fig, png, pdf)


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
    case_level = _case_means(metrics[metrics.metric == "dice"])
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


def sweep_table(summary: pd.DataFrame, methods: Sequence[str]) -> tuple[str, str]:
    """Markdown and LaTeX of the noise-sweep table: levels as rows, methods as columns."""
    caption = ("Noise sweep: Dice (%) on the reference labels per noise level and method, mean "
               "± SD over folds (per fold the mean over classes and held-out cases); noise level "
               "= Dice (%) of the noisy training labels against the reference (noise report), "
               "novice = cases labelled by the simulated less-experienced annotator; -- no "
               "results.")
    present = [m for m in methods if m in set(summary["method"])]
    header = ["Level", "Novice cases", "Noise Dice (%)"] + [display_name(m) for m in present]
    rows = []
    for task, g in summary.groupby("task", sort=False):
        by_method = {r.method: r for r in g.itertuples()}
        first = g.iloc[0]
        cells = [str(task), str(int(first.n_noisy_cases)), _fmt(float(first.noise_dice))]
        for m in present:
            r = by_method.get(m)
            cells.append(_fmt_pm(r.dice_mean, r.dice_sd) if r is not None else MISSING)
        rows.append(cells)
    return _plain_tables(caption, "tab:noise_sweep", header, rows,
                         ["l"] + ["r"] * (len(header) - 1))


def sweep_figure(summary: pd.DataFrame, methods: Sequence[str], png: Path, pdf: Path) -> None:
    """Dice on the reference labels (%) against the measured noise level (noisy-vs-reference
    Dice, %, decreasing to the right = more noise), one line per method with error bars of
    +- 1 SD over folds."""
    from matplotlib.figure import Figure  # noqa: F811 (runtime import: matplotlib is slow)

    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.subplots()
    colours = method_colours(methods)
    plotted = False
    for m in methods:
        g = summary[(summary.method == m) & summary.dice_mean.notna()].sort_values("noise_dice")
        if g.empty:
            continue
        plotted = True
        ax.errorbar(g["noise_dice"], g["dice_mean"], yerr=g["dice_sd"].fillna(0), marker="o",
                    markersize=4, capsize=3, linewidth=1.2, color=colours[m],
                    label=display_name(m))
    if not plotted:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "No noise-sweep results found", ha="center", va="center",
                fontsize=11, transform=ax.transAxes)
    else:
        ax.invert_xaxis()
        ax.set_xlabel("noise level: Dice of the noisy training labels vs reference (%)",
                      fontsize=9)
        ax.set_ylabel("Dice on the reference labels (%)", fontsize=9)
        ax.grid(linewidth=0.4, alpha=0.5)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=8, frameon=False)
    _save_figure(fig, png, pdf)


REPORT_TABLES: tuple[str, ...] = ("table1", "table2", "table3", "folds", "noise_levels")
"""Tables of every report (each as ``.csv``, ``.md``, ``.tex`` and ``.html``)."""
REPORT_FIGURES: tuple[str, ...] = ("figure1", "figure2_reliability", "training_curves")
"""Figures of every report (each as ``.png`` and ``.pdf``)."""
SWEEP_OUTPUT = "noise_sweep"
"""Table and figure stem added when the config has a noise sweep."""
TABLE_FORMATS: tuple[str, ...] = ("csv", "md", "tex", "html")
FIGURE_FORMATS: tuple[str, ...] = ("png", "pdf")


def report_stems(sweep: bool) -> tuple[list[str], list[str]]:
    """(table stems, figure stems) that :func:`build_report` writes."""
    extra = [SWEEP_OUTPUT] if sweep else []
    return list(REPORT_TABLES) + extra, list(REPORT_FIGURES) + extra


# --------------------------------------------------------------------------------------------
# entry point


def build_report(metrics_csvs: Sequence[str | os.PathLike[str]],
                 noise_csvs: Sequence[str | os.PathLike[str]],
                 trials_csvs: Sequence[str | os.PathLike[str]],
                 tables_dir: str | os.PathLike[str], figures_dir: str | os.PathLike[str],
                 tasks: Mapping[str, Mapping[str, object]],
                 methods: Sequence[str],
                 reliability_csvs: Sequence[str | os.PathLike[str]] | None = None,
                 progress_csvs: Sequence[str | os.PathLike[str]] | None = None,
                 sweep: Mapping[str, int] | None = None,
                 training_iterations: int | None = None, min_training_iterations: int = 0,
                 training_budget: str = "",
                 labels: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, Path]:
    """Write Table 1, Table 2, the per-fold table, the noise table and Figure 1 from the stage
    CSVs.

    tasks: ordered ``{task: {"table_metrics": ["dice", "asd"] | ["dice", "surface_dice"]}}``;
    methods: ordered method ids (rows of Table 1, shown with :func:`display_name`).
    Writes ``<tables_dir>/table1.{csv,md,tex}``, ``table2.{csv,md,tex}``, ``folds.{csv,md,tex}``
    (tidy per-fold means of the metric CSVs, :func:`nnrobustloss.lost.fold_means`; lost classes
    marked, :mod:`nnrobustloss.lost`), ``noise_levels.{csv,md,tex}`` and
    ``<figures_dir>/figure1.{png,pdf}`` atomically and returns
    ``{file name: path}``. Missing rows show as "--"; a missing file or column raises
    InputDataError naming it. With ``reliability_csvs`` (the evaluate stage's
    ``fold<k>_reliability.csv``; may be header-only) also ``table3.{csv,md,tex}`` (calibration
    metrics from the metric CSVs) and ``<figures_dir>/figure2_reliability.{png,pdf}``.
    With ``progress_csvs`` (final trainings' progress.csv) also ``training_curves.{png,pdf}``;
    ``labels`` (``{task: {label value: class name}}``) names the classes of its per-class
    panels; with ``sweep`` (``{level task: n_noisy_cases}``,
    :func:`nnrobustloss.config.noise_sweep_tasks`)
    also ``noise_sweep.{csv,md,tex,html}`` and ``noise_sweep.{png,pdf}``. Every table is also
    written as a standalone ``.html`` page. When ``training_iterations`` (epochs x iterations
    of the final trainings) is below ``min_training_iterations``, every table's caption says it
    is a smoke run (:func:`smoke_note`) and no significance is marked (``significant`` False).
    """
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    methods = list(methods)
    for task, spec in tasks.items():
        _table_metrics(task, spec)
    metrics = read_metrics(metrics_csvs)
    noise = read_noise(noise_csvs)
    trials = read_trials(trials_csvs)

    out: dict[str, Path] = {}

    note = smoke_note(training_iterations, min_training_iterations, training_budget)

    def emit(stem: str, csv: pd.DataFrame, md: str, tex: str) -> None:
        md, tex = _with_note(md, tex, note)
        for ext in TABLE_FORMATS:
            out[f"{stem}.{ext}"] = tables_dir / f"{stem}.{ext}"
        _write_csv(csv, out[f"{stem}.csv"])
        write_text(out[f"{stem}.md"], md)
        write_text(out[f"{stem}.tex"], tex)
        write_text(out[f"{stem}.html"], markdown_table_html(md, stem))

    def unmarked(summary: pd.DataFrame) -> pd.DataFrame:
        """A smoke run's summary marks nothing as significant."""
        if note is not None and "significant" in summary:
            summary = summary.assign(significant=False)
        return summary

    folds = fold_means(metrics)
    lost = lost_classes(folds, BASELINE)
    s1 = unmarked(summarise(metrics, tasks, methods))
    counts = lost_counts(lost)
    s1 = s1.merge(counts, on=["task", "method"], how="left")
    emit("table1", s1, *table1(s1, tasks, methods, lost))
    s2 = summarise_regions(metrics, tasks, methods)
    emit("table2", s2, *table2(s2, tasks, methods, lost))
    several = folds["replicate"].nunique() > 1 if len(folds) else False
    folds_csv = folds if several else folds.drop(columns="replicate")
    emit("folds", folds_csv, *folds_table(folds, lost, tasks, methods))
    sn = summarise_noise(noise, tasks)
    emit("noise_levels", sn, *noise_table(sn))
    out["figure1.png"] = figures_dir / "figure1.png"
    out["figure1.pdf"] = figures_dir / "figure1.pdf"
    figure1(trials, list(tasks), methods, out["figure1.png"], out["figure1.pdf"])
    if progress_csvs is not None:
        out["training_curves.png"] = figures_dir / "training_curves.png"
        out["training_curves.pdf"] = figures_dir / "training_curves.pdf"
        training_curves_figure(read_progress(progress_csvs), list(tasks), methods,
                               out["training_curves.png"], out["training_curves.pdf"],
                               labels=labels)
    if sweep:
        ss = summarise_sweep(metrics, noise, sweep, methods)
        emit(SWEEP_OUTPUT, ss, *sweep_table(ss, methods))
        out[f"{SWEEP_OUTPUT}.png"] = figures_dir / f"{SWEEP_OUTPUT}.png"
        out[f"{SWEEP_OUTPUT}.pdf"] = figures_dir / f"{SWEEP_OUTPUT}.pdf"
        sweep_figure(ss, methods, out[f"{SWEEP_OUTPUT}.png"], out[f"{SWEEP_OUTPUT}.pdf"])
    # --- calibration (Table 3, Figure 2): only when the reliability CSVs are given
    if reliability_csvs is not None:
        reliability = read_reliability(reliability_csvs)
        s3 = unmarked(summarise_calibration(metrics, tasks, methods))
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
RELIABILITY_NUMERIC = ("fold", "band_mm", "bin", "lower", "upper", "count", "confidence_sum",
                       "correct_sum")


def read_reliability(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read the evaluate stage's ``fold<k>_reliability.csv`` files (header-only ones when
    calibration was off), columns :data:`nnrobustloss.metrics.calibration.RELIABILITY_COLUMNS`."""
    from nnrobustloss.metrics.calibration import RELIABILITY_COLUMNS

    return _read_csvs(paths, RELIABILITY_COLUMNS, RELIABILITY_NUMERIC, "reliability")


def summarise_calibration(metrics: pd.DataFrame, tasks: Mapping[str, object],
                          methods: Sequence[str]) -> pd.DataFrame:
    """Table 3 numbers: :func:`summarise` of ECE, Brier and NLL within the band, then the same
    over all voxels (``ece_all``, ...), per task and method; natural units (ECE and Brier in
    [0, 1], NLL in nats per voxel), same means, bootstrap CIs and paired test vs the Baseline
    as Table 1. ``n_nan`` counts region-case values left out (an empty band: the class is in
    neither the reference nor the prediction)."""
    names = [calibration_name(m, v) for v in VOXEL_SETS for m in TABLE3_METRICS]
    return summarise(metrics, {t: {"table_metrics": names} for t in tasks}, methods)


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
    note = ("" if measured else "Calibration was not measured (evaluation.calibration: false, "
            "or no calibration rows in the metric CSVs).")
    return _methods_table(caption, "tab:calibration", summary, methods,
                          [(t, list(TABLE3_METRICS)) for t in tasks],
                          lambda m: METRICS[m].label, digits=3, footnote=note)


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
    perfect calibration. With no reliability bins at all a message panel. 7 in wide (4.2 in for
    one task), 200 dpi PNG.
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
    width = 7.0 if ncols > 1 else 4.2  # one task: one panel of a readable size
    fig = Figure(figsize=(width, width / ncols * nrows + 0.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    colours = method_colours(methods)
    styles = {m: (colours[m], "os^vD<>ph"[i % 9]) for i, m in enumerate(methods)}
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
                   ncols=min(len(legend), 5 if ncols > 1 else 3), fontsize=8, frameon=False)
    _save_figure(fig, png, pdf)
