"""Per-fold means of the metric CSVs and the classes a method lost (the report's flags).

A method's mean over folds hides a failure: a method that never segments the lesion in one fold
looks merely worse. The report therefore keeps the per-fold numbers (``tables/folds.csv``) and
flags a *lost* class: method x fold x replicate x class (or KiTS23 region) whose held-out mean
Dice is below :data:`LOST_DICE` while the Baseline's mean Dice of that class in the same fold
(mean over the Baseline's replicates) is at least :data:`BASELINE_LEARNT_DICE`. The Baseline
itself is never flagged (it defines what was learnable), and without a Baseline in the study
nothing is flagged.

This module is pandas only (no plotting, no statistics): :mod:`nnrobustloss.report` formats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from nnrobustloss.metrics.registry import METRICS_CSV_DEFAULTS

LOST_DICE = 0.05
"""A class is lost in a fold when the method's held-out mean Dice is below this ..."""
BASELINE_LEARNT_DICE = 0.5
"""... while the Baseline's mean Dice of the class in that fold is at least this."""

FOLD_KEY: tuple[str, ...] = ("task", "method", "fold", "replicate", "region", "metric")
"""Columns of ``tables/folds.csv`` before ``value``."""


def with_defaults(frame: pd.DataFrame,
                  defaults: Mapping[str, object] = METRICS_CSV_DEFAULTS) -> pd.DataFrame:
    """``frame`` with the columns of ``defaults`` that it lacks added with their default value
    (a tidy table made by hand, or by an older stage, may lack ``replicate`` and
    ``worst_case``); the frame itself when it has them all."""
    missing = {c: v for c, v in defaults.items() if c not in frame.columns}
    return frame.assign(**missing) if missing else frame


def fold_means(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method, fold, replicate, region, metric) the mean over the fold's held-out
    cases of the tidy metric rows (columns :data:`FOLD_KEY` + ``value``, in the order of first
    appearance). Every row counts: the metric CSVs hold no NaN for Dice, ASD and surface Dice
    (worst case where one mask is empty); a NaN (a calibration metric of an empty band) is left
    out, as pandas' mean does."""
    metrics = with_defaults(metrics)
    if metrics.empty:
        return pd.DataFrame(columns=[*FOLD_KEY, "value"])
    out = (metrics.groupby(list(FOLD_KEY), sort=False)["value"].mean().reset_index())
    out["fold"] = out["fold"].astype(int)
    out["replicate"] = out["replicate"].astype(int)
    return out


def lost_classes(folds: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Every fold x replicate x class of every method with its held-out mean Dice (``dice``), the
    Baseline's Dice of that task, fold and class (``baseline_dice``, mean over its replicates)
    and ``lost`` (see the module docstring). ``folds``: :func:`fold_means`. Rows of the Baseline
    and of methods in tasks without a Baseline have ``baseline_dice`` NaN and ``lost`` False."""
    dice = folds[folds["metric"] == "dice"].rename(columns={"value": "dice"})
    dice = dice.drop(columns="metric")
    base = (dice[dice["method"] == baseline].groupby(["task", "fold", "region"])["dice"].mean()
            .rename("baseline_dice").reset_index())
    out = dice.merge(base, on=["task", "fold", "region"], how="left")
    out.loc[out["method"] == baseline, "baseline_dice"] = float("nan")
    out["lost"] = ((out["dice"] < LOST_DICE) & (out["baseline_dice"] >= BASELINE_LEARNT_DICE))
    return out.reset_index(drop=True)


def lost_counts(lost: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method): ``lost_count`` = fold x replicate pairs in which the method lost at
    least one class, ``lost_total`` = its fold x replicate pairs (the "k/N" of the tables)."""
    if lost.empty:
        return pd.DataFrame(columns=["task", "method", "lost_count", "lost_total"])
    per_run = lost.groupby(["task", "method", "fold", "replicate"], sort=False)["lost"].any()
    out = per_run.groupby(["task", "method"], sort=False).agg(["sum", "size"]).reset_index()
    return out.rename(columns={"sum": "lost_count", "size": "lost_total"}).astype(
        {"lost_count": int, "lost_total": int})


def lost_note(lost: pd.DataFrame, name: Callable[[str], str], methods: list[str] | None = None,
              baseline_present: bool = True) -> str:
    """The caption sentence of the lost classes: per task and method the classes and the folds
    (with replicates when there are several) in which they were lost; ``name`` maps a method id
    to its display name; ``methods`` restricts (and orders) the methods named. A sentence saying
    that nothing was lost, or that nothing could be assessed without a Baseline."""
    rule = (f"† lost a class: held-out mean Dice < {LOST_DICE * 100:g} % in a fold where the "
            f"Baseline reached ≥ {BASELINE_LEARNT_DICE * 100:g} %")
    if not baseline_present:
        return "Lost classes were not assessed: the study has no Baseline."
    hit = lost[lost["lost"]]
    if methods is not None:
        hit = hit[hit["method"].isin(methods)]
    if hit.empty:
        return f"No method lost a class ({rule[2:]})."
    several = lost["replicate"].nunique() > 1
    parts = []
    order = methods if methods is not None else list(dict.fromkeys(lost["method"]))
    for (task, method), g in sorted(hit.groupby(["task", "method"], sort=False),
                                    key=lambda kv: order.index(kv[0][1])
                                    if kv[0][1] in order else len(order)):
        regions = []
        for region, r in g.groupby("region", sort=False):
            if several:
                where = ", ".join(f"fold {f} (replicate{'s' if len(rr) > 1 else ''} "
                                  f"{', '.join(str(x) for x in sorted(rr['replicate']))})"
                                  for f, rr in r.groupby("fold"))
            else:
                folds = sorted(r["fold"])
                where = f"fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}"
            regions.append(f"{region} in {where}")
        parts.append(f"{name(method)} ({task}): {'; '.join(regions)}")
    return f"{rule}: " + ". ".join(parts) + "."


__all__ = ["BASELINE_LEARNT_DICE", "FOLD_KEY", "LOST_DICE", "fold_means", "lost_classes",
           "lost_counts", "lost_note", "with_defaults"]
