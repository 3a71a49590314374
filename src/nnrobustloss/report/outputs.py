"""The report's output names: the stems of its tables and figures and their file formats.

Imports nothing: the Snakefile (``workflow/rules/common.smk``) reads it to list the report
stage's files without loading numpy, pandas, scipy or matplotlib.
"""

from __future__ import annotations

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
