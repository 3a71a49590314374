"""The paper's tables and figures, from the stage CSVs alone, by concern:

- :mod:`~nnrobustloss.report.outputs`: the names of the report's tables and figures and their
  formats (imports nothing; the Snakefile reads it);
- :mod:`~nnrobustloss.report.inputs`: reading the metric, noise, trials, progress and
  reliability CSVs;
- :mod:`~nnrobustloss.report.lost`: the lost-class rule (a method that lost a class in a fold);
- :mod:`~nnrobustloss.report.stats`: aggregation, Wilcoxon/Holm, bootstrap intervals, the
  summaries behind the tables and figures;
- :mod:`~nnrobustloss.report.format`: numbers, Markdown, LaTeX and HTML of a table;
- :mod:`~nnrobustloss.report.tables` and :mod:`~nnrobustloss.report.figures`: the tables and
  figures;
- :mod:`~nnrobustloss.report.build`: :func:`build_report`, the report stage (its docstring says
  what goes in and what comes out).

Imports run one way: outputs, inputs and lost import no other report module; stats imports lost;
format and figures import stats; tables imports stats, format and lost; build imports all of
them.

This ``__init__`` re-exports the public names of the submodules (``from nnrobustloss.report
import build_report`` keeps working) but imports a submodule only when one of its names is first
asked for, so that the Snakefile's ``from nnrobustloss.report.outputs import ...`` loads neither
pandas, scipy nor matplotlib. Code of this package imports from the defining submodule.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE: dict[str, str] = {
    "FIGURE_FORMATS": "outputs",
    "REPORT_FIGURES": "outputs",
    "REPORT_TABLES": "outputs",
    "SWEEP_OUTPUT": "outputs",
    "TABLE_FORMATS": "outputs",
    "report_stems": "outputs",
    "PROGRESS_CLASS_PREFIXES": "inputs",
    "PROGRESS_NUMERIC": "inputs",
    "RELIABILITY_NUMERIC": "inputs",
    "read_csvs": "inputs",
    "read_metrics": "inputs",
    "read_noise": "inputs",
    "read_progress": "inputs",
    "read_reliability": "inputs",
    "read_trials": "inputs",
    "BASELINE_LEARNT_DICE": "lost",
    "FOLD_KEY": "lost",
    "LOST_DICE": "lost",
    "fold_means": "lost",
    "lost_classes": "lost",
    "lost_counts": "lost",
    "lost_note": "lost",
    "with_defaults": "lost",
    "ALPHA": "stats",
    "BASELINE": "stats",
    "NOISE_TABLE_METRICS": "stats",
    "N_BOOTSTRAP": "stats",
    "TABLE3_METRICS": "stats",
    "bootstrap_ci": "stats",
    "case_means": "stats",
    "display_name": "stats",
    "holm": "stats",
    "reliability_curves": "stats",
    "summarise": "stats",
    "summarise_calibration": "stats",
    "summarise_noise": "stats",
    "summarise_regions": "stats",
    "summarise_sweep": "stats",
    "table2_methods": "stats",
    "task_table_metrics": "stats",
    "wilcoxon_p": "stats",
    "zero_kept_classes": "stats",
    "CAPTION_MEANS": "format",
    "DAGGER": "format",
    "MISSING": "format",
    "SMOKE_PREFIX": "format",
    "fmt": "format",
    "fmt_pm": "format",
    "latex_float": "format",
    "latex_table": "format",
    "markdown": "format",
    "markdown_table_html": "format",
    "md_table": "format",
    "methods_table": "format",
    "plain_tables": "format",
    "smoke_note": "format",
    "tex_escape": "format",
    "tex_group_header": "format",
    "tex_line": "format",
    "with_note": "format",
    "write_csv": "format",
    "folds_table": "tables",
    "noise_table": "tables",
    "sweep_table": "tables",
    "table1": "tables",
    "table2": "tables",
    "table3": "tables",
    "METHOD_PALETTE": "figures",
    "figure1": "figures",
    "method_colours": "figures",
    "reliability_figure": "figures",
    "save_figure": "figures",
    "sweep_figure": "figures",
    "training_curves_figure": "figures",
    "build_report": "build",
}
"""The defining submodule of every name this package re-exports."""

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    """Import a re-exported name from its submodule on first use (PEP 562)."""
    if name not in _SUBMODULE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_SUBMODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SUBMODULE))
