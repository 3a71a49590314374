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
that lost a class in a fold (:mod:`nnrobustloss.report.lost`) is marked with † in Tables 1 and 2, with
the folds and classes in the caption and its lost count k/N (folds x replicates) in Table 1;
``tables/folds.*`` holds the per-fold means. Beyond the paper, each method is compared with the
Baseline by a paired Wilcoxon signed-rank test over cases (per-case value: mean over regions,
averaged over replicates), Holm-corrected across the methods of a task and metric, and the CSV
carries seeded bootstrap 95% confidence intervals of the mean over cases.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from nnrobustloss.fileio import write_text
from nnrobustloss.report.figures import figure1, reliability_figure, sweep_figure, training_curves_figure
from nnrobustloss.report.format import markdown_table_html, smoke_note, with_note, write_csv
from nnrobustloss.report.inputs import read_metrics, read_noise, read_progress, read_reliability, read_trials
from nnrobustloss.report.lost import fold_means, lost_classes, lost_counts
from nnrobustloss.report.outputs import SWEEP_OUTPUT, TABLE_FORMATS
from nnrobustloss.report.stats import (
    BASELINE,
    summarise,
    summarise_calibration,
    summarise_noise,
    summarise_regions,
    summarise_sweep,
    task_table_metrics,
)
from nnrobustloss.report.tables import folds_table, noise_table, sweep_table, table1, table2, table3

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
    (tidy per-fold means of the metric CSVs, :func:`nnrobustloss.report.lost.fold_means`; lost classes
    marked, :mod:`nnrobustloss.report.lost`), ``noise_levels.{csv,md,tex}`` and
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
        task_table_metrics(task, spec)
    metrics = read_metrics(metrics_csvs)
    noise = read_noise(noise_csvs)
    trials = read_trials(trials_csvs)

    out: dict[str, Path] = {}

    note = smoke_note(training_iterations, min_training_iterations, training_budget)

    def emit(stem: str, csv: pd.DataFrame, md: str, tex: str) -> None:
        md, tex = with_note(md, tex, note)
        for ext in TABLE_FORMATS:
            out[f"{stem}.{ext}"] = tables_dir / f"{stem}.{ext}"
        write_csv(csv, out[f"{stem}.csv"])
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
