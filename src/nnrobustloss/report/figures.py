"""The report's figures (Figure 1, the reliability diagrams, the training curves and the noise
sweep) as PNG and PDF. matplotlib is imported inside the functions (it is slow to import).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nnrobustloss.fileio import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from nnrobustloss.report.stats import display_name, reliability_curves, zero_kept_classes

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
        message_figure("No completed tuning trials found", png, pdf)
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
    save_figure(fig, png, pdf)


def message_figure(text: str, png: Path, pdf: Path) -> None:
    """A 7 x 2 in figure holding only ``text``, written as :func:`save_figure` does: what a
    figure shows when its inputs hold nothing to plot."""
    from matplotlib.figure import Figure  # noqa: F811 (runtime import: matplotlib is slow)

    fig = Figure(figsize=(7.0, 2.0), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, transform=ax.transAxes)
    save_figure(fig, png, pdf)


def save_figure(fig: Figure, png: Path, pdf: Path) -> None:
    """Write the figure atomically as a 200-dpi PNG and a vector PDF."""
    for path, kw in ((png, {"dpi": 200}), (pdf, {})):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), **kw)


METHOD_PALETTE: tuple[str, ...] = ("#1b6ca8", "#555555", "#e07b39", "#3a9e5c", "#b23a48",
                                   "#7b5ea7", "#8c6d31", "#d4a017", "#17becf", "#e377c2")
"""Colours of the methods, in the order of the config's ``methods``: one per method in every
figure (training curves, reliability diagrams, noise sweep)."""


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """``{method: colour}``: :data:`METHOD_PALETTE` in the order of ``methods``."""
    return {m: METHOD_PALETTE[i % len(METHOD_PALETTE)] for i, m in enumerate(methods)}


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
        message_figure("No training progress found", png, pdf)
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
    save_figure(fig, png, pdf)


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
    save_figure(fig, png, pdf)


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
        message_figure("Calibration not measured (evaluation.calibration: false)", png, pdf)
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
    save_figure(fig, png, pdf)
