"""Text formatting of the report's tables: numbers, Markdown, LaTeX (booktabs) and the HTML
page of a Markdown table, the captions' notes.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from nnrobustloss.fileio import atomic_path
from nnrobustloss.report.stats import ALPHA, display_name

MISSING = "--"

CAPTION_MEANS = ("mean over classes (regions for KiTS23) per case, then over the cases of a "
                 "fold, then over folds")


# --------------------------------------------------------------------------------------------
# formatting


def fmt(value: float, star: bool = False, tex: bool = False, digits: int = 1,
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
"""Mark of a method that lost a class in a fold (:mod:`nnrobustloss.report.lost`)."""


def tex_escape(text: str) -> str:
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


def md_table(header: list[str], rows: list[list[str]], align: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def fmt_pm(mean: object, sd: object) -> str:
    """The mean and SD as "mean ± sd" with one decimal; the mean alone when the SD is NaN,
    "--" when the mean is NaN."""
    if mean is None or pd.isna(mean):
        return MISSING
    return f"{mean:.1f}" + ("" if sd is None or pd.isna(sd) else f" ± {sd:.1f}")


def markdown(caption: str, header: list[str], rows: list[list[str]], align: list[str],
              footnote: str = "") -> str:
    """A table's Markdown: the caption, the pipe table and an optional footnote paragraph."""
    md = [caption, ""] + md_table(header, rows, align)
    if footnote:
        md += ["", footnote]
    return "\n".join(md) + "\n"


def tex_line(cells: Sequence[str]) -> str:
    r"""One LaTeX table row: the (LaTeX) cells joined by ``&`` and ended by ``\\``."""
    return " & ".join(cells) + r" \\"


def _tex_text(text: str) -> str:
    r"""Plain text as LaTeX: escaped, with ``±`` as ``$\pm$``."""
    return tex_escape(text).replace("±", r"$\pm$")


def _tex_caption(caption: str) -> str:
    """A Markdown caption as LaTeX: without its "Table N: " (LaTeX numbers the table), escaped,
    the significance mark "* p < ALPHA" in math."""
    return (_tex_text(re.sub(r"^Table \d+: ", "", caption))
            .replace(f"* p < {ALPHA}", f"$^{{*}}$ $p<{ALPHA}$"))


def tex_group_header(groups: Sequence[tuple[str, int]]) -> list[str]:
    r"""Two header lines over column groups after the first column: a row of
    ``\multicolumn``s, one per (LaTeX name, number of columns), and a ``\cmidrule`` under each."""
    top, rules, col = [""], [], 2
    for name, width in groups:
        top.append(rf"\multicolumn{{{width}}}{{c}}{{{name}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    return [tex_line(top), " ".join(rules)]


def latex_float(tex_caption: str, label: str | None, content: Sequence[str]) -> str:
    r"""A ``table`` float: ``\centering``, ``\caption`` (already LaTeX), ``\label`` (when given)
    and the ``content`` lines; ends with a newline."""
    lines = [r"\begin{table}[t]", r"\centering", r"\caption{" + tex_caption + "}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    return "\n".join([*lines, *content, r"\end{table}"]) + "\n"


def latex_table(caption: str, label: str, colspec: str, head: Sequence[str],
                 body: Sequence[str], footnote: str = "", midrule: bool = True) -> str:
    r"""A booktabs table float (:func:`latex_float`) of a Markdown ``caption``
    (:func:`_tex_caption`): ``\toprule``, the ``head`` lines, ``\midrule`` (unless
    ``midrule`` is False: the body brings its own), the ``body`` lines, ``\bottomrule``, then
    the optional ``footnote`` (plain text) in small print."""
    content = [rf"\begin{{tabular}}{{{colspec}}}", r"\toprule", *head,
               *([r"\midrule"] if midrule else []), *body, r"\bottomrule", r"\end{tabular}"]
    if footnote:
        content.append(r"\par\smallskip\footnotesize " + tex_escape(footnote))
    return latex_float(_tex_caption(caption), label, content)


def plain_tables(caption: str, label: str, header: list[str], rows: list[list[str]],
                  align: list[str]) -> tuple[str, str]:
    """Markdown and LaTeX of a table of plain-text cells (escaped for LaTeX, ``±`` in math)
    under one header row; ``align`` holds "l" or "r" per column."""
    tex = latex_table(caption, label, "".join(align), [tex_line([tex_escape(h) for h in header])],
                       [tex_line([_tex_text(c) for c in row]) for row in rows])
    return markdown(caption, header, rows, align), tex


def methods_table(caption: str, label: str, summary: pd.DataFrame, methods: Sequence[str],
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
        md_row, tex_row = [display_name(method) + mark], [tex_escape(display_name(method))
                                                          + (r"$^{\dagger}$" if mark else "")]
        for task, tm in task_metrics:
            for m in tm:
                r = lookup.get((task, method, m))
                mean = r.mean if r is not None else float("nan")
                star = bool(r.significant) if r is not None else False
                sd = r.sd if r is not None and getattr(r, "n_replicates", 1) > 1 else None
                md_row.append(fmt(mean, star, digits=digits, sd=sd))
                tex_row.append(fmt(mean, star, tex=True, digits=digits, sd=sd))
            if lost:
                md_row.append(lost.get((task, method), MISSING))
                tex_row.append(tex_escape(lost.get((task, method), MISSING)))
        md_rows.append(md_row)
        tex_rows.append(tex_line(tex_row))
    extra = ["Lost"] if lost else []
    header = ["Method"] + [f"{task} {h}" for task, tm in task_metrics
                           for h in [heading(m) for m in tm] + extra]
    align = ["l"] + ["r"] * (len(header) - 1)
    head = [*tex_group_header([(tex_escape(task), len(tm) + len(extra))
                                for task, tm in task_metrics]),
            tex_line(["Method"] + [tex_escape(h) for _, tm in task_metrics
                                   for h in [heading(m) for m in tm] + extra])]
    return (markdown(caption, header, md_rows, align, footnote),
            latex_table(caption, label, "".join(align), head, tex_rows, footnote))


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")


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


def with_note(md: str, tex: str, note: str | None) -> tuple[str, str]:
    """Put ``note`` in front of a table's Markdown and into its LaTeX caption."""
    if note is None:
        return md, tex
    md = f"**{note}**\n\n{md}"
    tex = tex.replace(r"\caption{", r"\caption{\textbf{" + tex_escape(note) + "} ", 1)
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
