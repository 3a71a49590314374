"""Reading the stage CSVs that the report is built from: metrics, noise levels, tuning trials,
training progress and reliability bins (columns checked, missing defaults filled in).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nnrobustloss.errors import InputDataError
from nnrobustloss.metrics.registry import (
    METRICS_CSV_COLUMNS,
    METRICS_CSV_DEFAULTS,
    NOISE_CSV_COLUMNS,
    SEGMENTATION_METRICS,
    TRIALS_CSV_COLUMNS,
)

# --------------------------------------------------------------------------------------------
# reading


def read_csvs(paths: Sequence[str | os.PathLike[str]], columns: Sequence[str],
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
    df = read_csvs(paths, required, ("fold", "value", *METRICS_CSV_DEFAULTS), "metrics",
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
    return read_csvs(paths, required, ("value", "worst_case"), "noise",
                      optional={"worst_case": 0})


def read_trials(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read trials CSVs and keep the COMPLETE trials with a finite objective value."""
    df = read_csvs(paths, TRIALS_CSV_COLUMNS, ("fold", "number", "value"), "trials")
    df = df[(df["state"].str.upper() == "COMPLETE") & np.isfinite(df["value"])].copy()
    df["fold"] = df["fold"].astype(int)
    return df


PROGRESS_NUMERIC = ("epoch", "train_loss", "train_pseudo_dice_ema")
PROGRESS_CLASS_PREFIXES = ("train_dice_class", "kept_fraction_class")
"""Per-class columns of progress.csv the training-curves figure reads (``<prefix><label>``, the
kept fraction with the suffix ``_peer_a``: two-peer methods only)."""


PROGRESS_KEYS = ("task", "method", "fold", "replicate")
"""The columns that name the run, leading every row of progress.csv (``replicate`` only in
final trainings' files)."""


def read_progress(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read final trainings' ``progress.csv`` files.

    Returns columns epoch, train_loss, train_pseudo_dice_ema, the per-class columns of
    :data:`PROGRESS_CLASS_PREFIXES` that the files have (NaN where a file lacks them), and
    :data:`PROGRESS_KEYS` from the file's own columns (replicate 0 where absent). A file written
    before progress.csv had those columns is named by its path
    (``training/<Task>/<Method>/fold<k>[_rep<r>]/progress.csv``; InputDataError otherwise)."""
    from nnrobustloss.layout import parse_fold_name

    df = read_csvs(paths, PROGRESS_NUMERIC, PROGRESS_NUMERIC, "progress")
    for f, index in df.groupby("_file", sort=False).groups.items():
        table = pd.read_csv(f)
        for c in (c for c in table.columns if c.startswith(PROGRESS_CLASS_PREFIXES)):
            df.loc[index, c] = pd.to_numeric(table[c], errors="coerce").to_numpy(np.float64)
        if {"task", "method", "fold"} <= set(table.columns) and table["task"].notna().all():
            keys = [table[k].to_numpy() if k in table.columns else np.zeros(len(table), int)
                    for k in PROGRESS_KEYS]
        else:
            parts = Path(f).parts
            parsed = parse_fold_name(parts[-2]) if len(parts) >= 4 else None
            if parsed is None:
                raise InputDataError(f"{f}: no task, method and fold columns, and not a "
                                     "training/<Task>/<Method>/fold<k>[_rep<r>]/progress.csv "
                                     "path; pass the train stage's progress files.")
            keys = [[v] * len(index) for v in (parts[-4], parts[-3], *parsed)]
        for k, values in zip(PROGRESS_KEYS, keys, strict=True):
            df.loc[index, k] = list(values)
    df["fold"] = df["fold"].astype(int)
    df["replicate"] = df["replicate"].astype(int)
    df["task"] = df["task"].astype(str)
    df["method"] = df["method"].astype(str)
    return df
RELIABILITY_NUMERIC = ("fold", "band_mm", "bin", "lower", "upper", "count", "confidence_sum",
                       "correct_sum")


def read_reliability(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """Read the evaluate stage's ``fold<k>_reliability.csv`` files (header-only ones when
    calibration was off), columns :data:`nnrobustloss.metrics.calibration.RELIABILITY_COLUMNS`."""
    from nnrobustloss.metrics.calibration import RELIABILITY_COLUMNS

    return read_csvs(paths, RELIABILITY_COLUMNS, RELIABILITY_NUMERIC, "reliability")
