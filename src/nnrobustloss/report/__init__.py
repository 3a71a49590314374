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

from nnrobustloss.lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "outputs": (
        "FIGURE_FORMATS", "REPORT_FIGURES", "REPORT_TABLES", "SWEEP_OUTPUT", "TABLE_FORMATS",
        "report_stems",
    ),
    "inputs": (
        "PROGRESS_CLASS_PREFIXES", "PROGRESS_NUMERIC", "RELIABILITY_NUMERIC", "read_csvs",
        "read_metrics", "read_noise", "read_progress", "read_reliability", "read_trials",
    ),
    "lost": (
        "BASELINE_LEARNT_DICE", "FOLD_KEY", "LOST_DICE", "fold_means", "lost_classes",
        "lost_counts", "lost_note", "with_defaults",
    ),
    "stats": (
        "ALPHA", "BASELINE", "NOISE_TABLE_METRICS", "N_BOOTSTRAP", "TABLE3_METRICS", "bootstrap_ci",
        "case_means", "display_name", "holm", "reliability_curves", "summarise",
        "summarise_calibration", "summarise_noise", "summarise_regions", "summarise_sweep",
        "table2_methods", "task_table_metrics", "wilcoxon_p", "zero_kept_classes",
    ),
    "format": (
        "CAPTION_MEANS", "DAGGER", "MISSING", "SMOKE_PREFIX", "fmt", "fmt_pm", "latex_float",
        "latex_table", "markdown", "markdown_table_html", "md_table", "methods_table",
        "plain_tables", "smoke_note", "tex_escape", "tex_group_header", "tex_line", "with_note",
        "write_csv",
    ),
    "tables": (
        "folds_table", "noise_table", "sweep_table", "table1", "table2", "table3",
    ),
    "figures": (
        "METHOD_PALETTE", "figure1", "method_colours", "reliability_figure", "save_figure",
        "sweep_figure", "training_curves_figure",
    ),
    "build": (
        "build_report",
    ),
}
"""The public names of each submodule, re-exported by this package."""

__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
