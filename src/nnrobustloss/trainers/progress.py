"""Training-set pseudo Dice, its moving average and the ``progress.csv`` file.

:class:`ProgressRecorder` is what a trainer uses: it accumulates the pseudo-Dice counts of an
epoch's steps, and at the end of the epoch builds the epoch's row (nnU-Net's logged values, the
training pseudo Dice and its EMA, extras such as the co-teaching kept fractions), keeps the
history (restored from a checkpoint on resumption) and writes ``progress.csv``.

The tuning objective (docs/tuning.md) is computed from the training patches of each epoch:
per step, the full-resolution network output (argmax over classes) is compared with the
full-resolution training target (the noisy labels the network is trained on); true positives,
false positives and false negatives of every foreground class are summed over the epoch. At the
end of the epoch the pseudo Dice is the mean over foreground classes of 2tp / (2tp + fp + fn).

Empty classes: a class with tp + fp + fn = 0 (absent from every target patch of the epoch and
never predicted) has no defined Dice; it is skipped in the mean. When every class is skipped the
epoch's value is 1.0 (nothing to find and nothing predicted is a perfect result, the
both-empty convention of the evaluation, docs/metrics.md), so the value is never NaN.

The moving average uses lambda = 0.9: first epoch ema = value, then
ema = 0.9 * ema + 0.1 * value (the same rule as nnU-Net's validation EMA).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnrobustloss.fileio import write_text

EMA_LAMBDA = 0.9


def confusion_counts(logits: torch.Tensor, target: torch.Tensor,
                     ignore_label: int | None = None) -> np.ndarray:
    """Per-foreground-class (tp, fp, fn) of argmax(logits) against ``target``.

    ``logits`` float ``[B, K, *spatial]``; ``target`` integer labels ``[B, 1, *spatial]`` (or
    ``[B, *spatial]``) in [0, K) or equal to ``ignore_label`` (such voxels are not counted).
    Returns an int64 array of shape ``[3, K - 1]``: rows tp, fp, fn; column k-1 is class k.
    """
    k = logits.shape[1]
    pred = logits.detach().argmax(1).reshape(-1).long()
    tgt = target.detach().reshape(-1).long()
    if tgt.numel() != pred.numel():
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    if ignore_label is not None:
        keep = tgt != ignore_label
        pred, tgt = pred[keep], tgt[keep]
    # confusion matrix [target, prediction] in one bincount
    cm = torch.bincount(tgt * k + pred, minlength=k * k).reshape(k, k).cpu().numpy()
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    return np.stack([tp, fp, fn])[:, 1:].astype(np.int64)


def pseudo_dice(counts: np.ndarray) -> tuple[float, list[float]]:
    """Mean foreground Dice from summed ``[3, C]`` (tp, fp, fn) counts, and the per-class list.

    Per class 2tp / (2tp + fp + fn); NaN for a class with tp + fp + fn = 0, which the mean skips;
    the mean is 1.0 when every class is empty (see module doc). Values in [0, 1].
    """
    tp, fp, fn = (np.asarray(c, dtype=np.float64) for c in counts)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)
    valid = per_class[~np.isnan(per_class)]
    mean = float(valid.mean()) if valid.size else 1.0
    return mean, [float(v) for v in per_class]


def ema_update(previous: float | None, value: float, lam: float = EMA_LAMBDA) -> float:
    """EMA step: ``value`` when ``previous`` is None (or NaN), else lam*prev + (1-lam)*value."""
    if previous is None or (isinstance(previous, float) and math.isnan(previous)):
        return float(value)
    return float(lam * previous + (1.0 - lam) * value)


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def write_progress_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Atomically write one row per epoch; columns are the union of the rows' keys, in order.

    Floats are written with full precision (``repr``) so that two runs can be compared exactly.
    """
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({c: _fmt(row[c]) if c in row else "" for c in columns})
    write_text(path, buf.getvalue())


def read_progress_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Read ``progress.csv`` back as a list of ``{column: text}`` rows."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def mean_or_nan(values: Iterable[float]) -> float:
    """Arithmetic mean as a float; NaN for no values."""
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else float("nan")


class ProgressRecorder:
    """The per-epoch progress of one training: pseudo-Dice counts, extras, history rows.

    Per epoch: :meth:`start_epoch`, :meth:`add_step` per training step, :meth:`finish_epoch`
    after the last step (adds ``train_pseudo_dice`` and ``train_dice_class<k>`` to
    :attr:`extras`; trainers may add their own extras), then :meth:`record` with nnU-Net's
    logged values, which appends the row (replacing rows of that epoch or later: a resumed run
    repeats nothing) and writes ``progress.csv``. :attr:`keys` (the run's task, method, fold and
    replicate, as known) lead every written row, so that the file says which run it is; the
    history and the rows passed on hold the epoch's values only.
    """

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.extras: dict[str, Any] = {}
        self._counts: np.ndarray | None = None

    def start_epoch(self) -> None:
        """Forget the previous epoch's counts and extras."""
        self._counts = None
        self.extras = {}

    def add_step(self, logits: torch.Tensor, target: torch.Tensor,
                 ignore_label: int | None = None) -> None:
        """Add one step's full-resolution (tp, fp, fn) (:func:`confusion_counts`)."""
        counts = confusion_counts(logits, target, ignore_label)
        self._counts = counts if self._counts is None else self._counts + counts

    def finish_epoch(self, foreground_labels: Sequence[int]) -> None:
        """The epoch's training pseudo Dice (1.0 when no step ran: nothing found, nothing
        predicted) and per-class Dice into :attr:`extras`."""
        counts = self._counts if self._counts is not None \
            else np.zeros((3, len(foreground_labels)), dtype=np.int64)
        value, per_class = pseudo_dice(counts)
        self.extras["train_pseudo_dice"] = value
        for label, d in zip(foreground_labels, per_class, strict=False):
            self.extras[f"train_dice_class{label}"] = d

    def record(self, epoch: int, logged: Mapping[str, float],
               csv_path: str | os.PathLike[str]) -> dict[str, Any]:
        """Append epoch ``epoch``'s row and write ``csv_path``; return the row.

        ``logged``: nnU-Net's values of the epoch (``train_loss``, ``val_loss``,
        ``val_pseudo_dice``, ``val_pseudo_dice_ema``, ``lr``, ``epoch_seconds``). The row's
        columns: epoch, those values in that order with ``train_pseudo_dice`` and its EMA after
        the validation values, then the extras.
        """
        previous = self.history[-1]["train_pseudo_dice_ema"] if self.history else None
        value = self.extras.get("train_pseudo_dice", float("nan"))
        row: dict[str, Any] = {"epoch": epoch}
        for key in ("train_loss", "val_loss", "val_pseudo_dice", "val_pseudo_dice_ema"):
            row[key] = float(logged[key])
        row["train_pseudo_dice"] = value
        row["train_pseudo_dice_ema"] = ema_update(previous, value)
        row["lr"] = float(logged["lr"])
        row["epoch_seconds"] = float(logged["epoch_seconds"])
        row.update({k: v for k, v in self.extras.items() if k != "train_pseudo_dice"})
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        self.write(csv_path)
        return row

    def write(self, csv_path: str | os.PathLike[str]) -> None:
        """Write the history to ``csv_path``, each row led by the run's :attr:`keys`."""
        write_progress_csv(csv_path, [{**self.keys, **r} for r in self.history])
