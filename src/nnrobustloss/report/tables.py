"""The report's tables (Table 1-3, per-fold results, noise levels and the noise sweep) as
Markdown and LaTeX, from the summaries of :mod:`nnrobustloss.report.stats`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from nnrobustloss.metrics.registry import (
    METRICS,
)
from nnrobustloss.report.format import (
    CAPTION_MEANS,
    DAGGER,
    MISSING,
    fmt,
    fmt_pm,
    latex_float,
    latex_table,
    md_table,
    methods_table,
    plain_tables,
    tex_escape,
    tex_group_header,
    tex_line,
)
from nnrobustloss.report.lost import lost_counts, lost_note
from nnrobustloss.report.stats import (
    ALPHA,
    BASELINE,
    NOISE_TABLE_METRICS,
    TABLE3_METRICS,
    display_name,
    table2_methods,
    task_table_metrics,
)


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
    """``{(task, method): "k/N"}`` of :func:`nnrobustloss.report.lost.lost_counts`."""
    return {(r.task, r.method): f"{r.lost_count}/{r.lost_total}"
            for r in lost_counts(lost).itertuples()}


def table1(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str], lost: pd.DataFrame | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of Table 1 (methods as rows, per task its metric columns and, with
    ``lost`` (:func:`nnrobustloss.report.lost.lost_classes`), a "Lost" column k/N with † on the rows
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
    return methods_table(caption, "tab:results", summary, methods,
                          [(t, task_table_metrics(t, spec)) for t, spec in tasks.items()],
                          lambda m: METRICS[m].heading, digits=1, footnote=footnote,
                          lost=_lost_cells(lost) if lost is not None else None)


def table2(summary: pd.DataFrame, tasks: Mapping[str, Mapping[str, object]],
           methods: Sequence[str], lost: pd.DataFrame | None = None) -> tuple[str, str]:
    """Markdown and LaTeX of Table 2: per class/region, SVLS and HRL side by side; with ``lost``
    (:func:`nnrobustloss.report.lost.lost_classes`) a method that lost a class in a fold is marked with
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
        return "\n".join([*md, text]) + "\n", latex_float(tex_escape(caption), None, [text])
    lookup = {(r.task, r.region, r.method, r.metric): r for r in summary.itertuples()}
    max_m = max(len(task_table_metrics(t, s)) for t, s in tasks.items()) if tasks else 2
    ncols = 1 + len(t2_methods) * max_m
    head = tex_group_header([(tex_escape(display_name(m))
                               + (r"$^{\dagger}$" if m in lost_methods else ""), max_m)
                              for m in t2_methods])
    body = []
    for task, spec in tasks.items():
        tm = task_table_metrics(task, spec)
        pad = [""] * (len(t2_methods) * (max_m - len(tm)))  # tasks with fewer metrics
        regions = list(dict.fromkeys(summary[summary.task == task]["region"]))
        header = ["Class/region"] + [f"{marked[m]} {METRICS[k].heading}"
                                     for m in t2_methods for k in tm]
        rows = []
        body += [rf"\midrule \multicolumn{{{ncols}}}{{l}}{{\textit{{{tex_escape(task)}}}}} \\",
                 tex_line(["Class/region"] + [tex_escape(METRICS[k].heading)
                                              for _ in t2_methods for k in tm] + pad),
                 r"\midrule"]
        for region in regions:
            cells = [lookup.get((task, region, m, k)) for m in t2_methods for k in tm]
            vals = [fmt(r.mean, sd=r.sd) if r is not None else MISSING for r in cells]
            tex_vals = [fmt(r.mean, tex=True, sd=r.sd) if r is not None else MISSING
                        for r in cells]
            rows.append([region] + vals)
            body.append(tex_line([tex_escape(region)] + tex_vals + pad))
        if not regions:
            body.append(rf"\multicolumn{{{ncols}}}{{l}}{{{MISSING}}} \\")
        md += [f"**{task}**", ""]
        md += (md_table(header, rows, ["l"] + ["r"] * (len(header) - 1)) if rows
               else [f"{MISSING} (no metric rows)"])
        md.append("")
    # each task's block opens with its own \midrule
    tex = latex_table(caption, "tab:regions", "l" + "r" * (ncols - 1), head, body, midrule=False)
    return "\n".join(md).rstrip("\n") + "\n", tex


def folds_table(folds: pd.DataFrame, lost: pd.DataFrame,
                tasks: Mapping[str, Mapping[str, object]],
                methods: Sequence[str]) -> tuple[str, str]:
    """Markdown and LaTeX of the per-fold table: per task and table metric, methods (and
    replicates) as rows, per fold one column per class/region with the held-out mean;
    :data:`DAGGER` on a lost class (:mod:`nnrobustloss.report.lost`). ``folds``:
    :func:`nnrobustloss.report.lost.fold_means`; the CSV holds every metric."""
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
        for metric in task_table_metrics(task, spec):
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
                        cells.append(fmt(v * METRICS[metric].scale) + mark)
                    lead = [display_name(method)] + ([str(rep_)] if several else [])
                    rows.append(lead + cells)
                    tex_rows.append(tex_line([tex_escape(c) for c in lead]
                                             + [tex_escape(c).replace(DAGGER, r"$^{\dagger}$")
                                                for c in cells]))
            title = f"**{task}, {METRICS[metric].heading}**"
            md += [title, ""] + md_table(header, rows, ["l"] * (1 + several)
                                          + ["r"] * len(cols)) + [""]
            n_lead = 1 + several
            body += [rf"\midrule \multicolumn{{{n_lead + len(cols)}}}{{l}}{{\textit{{"
                     f"{tex_escape(task)}, {tex_escape(METRICS[metric].heading)}}}}} \\\\",
                     tex_line([tex_escape(h) for h in header]), r"\midrule", *tex_rows]
    lead_cols = "l" * (2 if several else 1)
    tex = latex_table(caption, "tab:folds", lead_cols + "r" * width, [], body, midrule=False)
    return "\n".join(md).rstrip("\n") + "\n", tex


def noise_table(summary: pd.DataFrame) -> tuple[str, str]:
    """Markdown and LaTeX of the noise-level table (mean +- SD over cases)."""
    worst = int(summary.loc[summary["region"] == "all classes", "asd_n_worst"].fillna(0).sum())
    caption = ("Noise levels: agreement of the noisy training labels with the reference labels; "
               "per case the mean over classes, then mean +- SD over cases. Dice in %, ASD in "
               "mm (where exactly one mask is empty: the diagonal of the image, "
               f"{worst} such value{'' if worst == 1 else 's'}); -- no noise report.")
    header = ["Task", "Class/region", "Cases"] + [METRICS[m].heading for m in NOISE_TABLE_METRICS]
    rows = [[str(r.task), str(r.region), str(int(r.n_cases))]
            + [fmt_pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_sd")) for m in NOISE_TABLE_METRICS]
            for r in summary.itertuples()]
    return plain_tables(caption, "tab:noise", header, rows,
                         ["l", "l"] + ["r"] * (len(header) - 2))


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
        cells = [str(task), str(int(first.n_noisy_cases)), fmt(float(first.noise_dice))]
        for m in present:
            r = by_method.get(m)
            cells.append(fmt_pm(r.dice_mean, r.dice_sd) if r is not None else MISSING)
        rows.append(cells)
    return plain_tables(caption, "tab:noise_sweep", header, rows,
                         ["l"] + ["r"] * (len(header) - 1))


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
    return methods_table(caption, "tab:calibration", summary, methods,
                          [(t, list(TABLE3_METRICS)) for t in tasks],
                          lambda m: METRICS[m].label, digits=3, footnote=note)
