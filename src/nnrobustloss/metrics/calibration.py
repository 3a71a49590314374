"""Calibration (:func:`ece`, :func:`mce`, :func:`brier`, :func:`nll`, per case
:func:`calibration_statistics`): one-vs-rest per region against the reference labels, i.e.
confidence = the softmax probability of the region (sum over its labels), correct = the voxel
belongs to the region in the reference; within a band of ``band_mm`` mm around the reference and
the predicted region (:func:`calibration_band`), and over all voxels (metric names ``*_all``).
The predict stage stores a case's sufficient statistics (per-bin counts and sums, Brier and NLL
sums; :class:`CalibrationStats`, a few kB), the evaluate stage turns them into metric rows and
the fold's reliability bins (:func:`calibration_folder`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.ndimage import distance_transform_edt

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path
from nnrobustloss.metrics.regions import bbox, check_inputs, region_mask
from nnrobustloss.metrics.registry import (
    CALIBRATION_METRIC_NAMES,
    METRICS_CSV_COLUMNS,
    VOXEL_SETS,
    calibration_name,
)

DEFAULT_BINS = 15
"""Equal-width confidence bins of ECE, MCE and the reliability diagrams."""

DEFAULT_BAND_MM = 5.0
"""Half-width (mm) of the band around the reference and predicted region."""

NLL_EPS = 1e-7
"""Probabilities are clipped to [eps, 1 - eps] in the NLL (float32's resolution near 1)."""

CALIBRATION_SUFFIX = "_calibration.npz"
"""File name ending of a case's calibration statistics next to its prediction."""

RELIABILITY_COLUMNS: tuple[str, ...] = (
    "task", "method", "fold", "region", "voxels", "band_mm", "bin", "lower", "upper", "count",
    "confidence_sum", "correct_sum")
"""Columns of ``metrics/<Task>/<Method>/fold<k>_reliability.csv``: per region, voxel set
(``band``/``all``) and confidence bin [lower, upper), the voxel count, the sum of confidences and
the number of voxels of the region in the reference, summed over the fold's cases."""

_CHUNK = 1 << 22  # voxels per accumulation step (bounds the float64 temporaries)


def calibration_metric_names() -> list[str]:
    """Metric names of the calibration rows, in CSV order: band first, then ``<name>_all``."""
    return list(CALIBRATION_METRIC_NAMES)


def _check_calibration_inputs(confidence: np.ndarray, correct: np.ndarray, n_bins: int
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Flattened confidence and correctness; InputDataError when their shapes differ,
    ConfigError for a bin count that is not a positive integer."""
    c, y = np.asarray(confidence), np.asarray(correct)
    if c.shape != y.shape:
        raise InputDataError(f"confidence shape {c.shape} differs from correctness shape "
                             f"{y.shape}; give one value of each per voxel.")
    if int(n_bins) != n_bins or n_bins < 1:
        raise ConfigError(f"calibration bins: {n_bins} must be a positive integer.")
    return c.reshape(-1), y.reshape(-1)


def _calibration_sums(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS,
                      eps: float = NLL_EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float,
                                                     float]:
    """Sufficient statistics of ECE, MCE, Brier and NLL over the given voxels.

    Returns (counts[n_bins] int64, confidence_sum[n_bins], correct_sum[n_bins], squared-error
    sum, NLL sum), bin b = min(floor(c * n_bins), n_bins - 1), i.e. [b/B, (b+1)/B) with the last
    bin closed. Works in chunks of float64 so that a whole CT volume fits in memory.
    """
    c_all, y_all = _check_calibration_inputs(confidence, correct, n_bins)
    counts = np.zeros(n_bins, dtype=np.int64)
    conf_sum = np.zeros(n_bins)
    corr_sum = np.zeros(n_bins)
    sq, nll_total = 0.0, 0.0
    for start in range(0, c_all.size, _CHUNK):
        c = c_all[start:start + _CHUNK].astype(np.float64)
        y = y_all[start:start + _CHUNK]
        if y.dtype != bool:
            if not np.all((y == 0) | (y == 1)):
                raise InputDataError("correctness values must be 0 or 1 (or booleans).")
            y = y.astype(bool)
        lo, hi = c.min(), c.max()
        if not (lo >= -1e-5 and hi <= 1 + 1e-5):  # also catches NaN
            bad = c[~((c >= -1e-5) & (c <= 1 + 1e-5))][0]
            raise InputDataError(f"confidence value {bad} is not a probability in [0, 1].")
        if lo < 0 or hi > 1:
            np.clip(c, 0.0, 1.0, out=c)
        b = (c * n_bins).astype(np.intp)
        np.minimum(b, n_bins - 1, out=b)
        counts += np.bincount(b, minlength=n_bins)
        conf_sum += np.bincount(b, weights=c, minlength=n_bins)
        corr_sum += np.bincount(b[y], minlength=n_bins)
        c_true = c[y]
        # sum (c - y)^2 = sum c^2 - 2 sum_{y=1} c + #{y=1}
        sq += float(np.dot(c, c)) - 2.0 * float(c_true.sum()) + c_true.size
        # NLL = -sum_{y=0} log(1 - c) - sum_{y=1} log(c), probabilities clipped to [eps, 1-eps]
        log_rest = np.log(np.clip(np.subtract(1.0, c, out=c), eps, 1.0 - eps, out=c), out=c)
        nll_total -= (float(log_rest.sum()) - float(log_rest[y].sum())
                      + float(np.log(np.clip(c_true, eps, 1.0 - eps)).sum()))
    return counts, conf_sum, corr_sum, max(sq, 0.0), nll_total  # sq: rounding below 0


def ece_from_histogram(counts: np.ndarray, confidence_sum: np.ndarray,
                       correct_sum: np.ndarray) -> float:
    """ECE from per-bin voxel counts n_b, confidence sums S_b and correct counts A_b.

    ECE = sum_b (n_b / N) |A_b / n_b - S_b / n_b| = (1 / N) sum_b |A_b - S_b|, N = sum_b n_b;
    in [0, 1]; NaN when N = 0.
    """
    n = float(np.sum(counts))
    if n == 0:
        return float("nan")
    return float(np.abs(np.asarray(correct_sum) - np.asarray(confidence_sum)).sum() / n)


def mce_from_histogram(counts: np.ndarray, confidence_sum: np.ndarray,
                       correct_sum: np.ndarray) -> float:
    """MCE = max over non-empty bins of |A_b / n_b - S_b / n_b| (see :func:`ece_from_histogram`);
    in [0, 1]; NaN when every bin is empty."""
    counts = np.asarray(counts)
    full = counts > 0
    if not full.any():
        return float("nan")
    gap = np.abs(np.asarray(correct_sum)[full] - np.asarray(confidence_sum)[full]) / counts[full]
    return float(gap.max())


def ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins.

    confidence: probabilities c_i in [0, 1] (any shape); correct: the outcomes y_i in {0, 1} of
    the same shape. Voxel i falls in bin b = min(floor(c_i B), B - 1), i.e. [b/B, (b+1)/B) with
    the last bin [1 - 1/B, 1]. ECE = sum_b (n_b / N) |acc_b - conf_b| with acc_b the mean of y
    and conf_b the mean of c in bin b. NaN for no voxels.
    """
    return ece_from_histogram(*_calibration_sums(confidence, correct, n_bins)[:3])


def mce(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Maximum calibration error: max over non-empty bins b of |acc_b - conf_b| (bins as in
    :func:`ece`). NaN for no voxels."""
    return mce_from_histogram(*_calibration_sums(confidence, correct, n_bins)[:3])


def brier(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Brier score (1 / N) sum_i (c_i - y_i)^2 of probabilities c_i for outcomes y_i in {0, 1};
    in [0, 1]; NaN for no voxels."""
    counts, _, _, squared_error, _ = _calibration_sums(confidence, correct, 1)
    return squared_error / int(counts.sum()) if counts.sum() else float("nan")


def nll(confidence: np.ndarray, correct: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood (nats) -(1 / N) sum_i [y_i log c_i + (1 - y_i) log(1 - c_i)],
    with c clipped to [eps, 1 - eps] (so at most -log(eps) = 16.1 per voxel for eps = 1e-7);
    NaN for no voxels."""
    counts, _, _, _, total = _calibration_sums(confidence, correct, 1, eps)
    return total / int(counts.sum()) if counts.sum() else float("nan")


def calibration_band(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                     band_mm: float = DEFAULT_BAND_MM) -> np.ndarray:
    """The voxels within ``band_mm`` (Euclidean, in mm with ``spacing``) of the reference or the
    predicted mask, the masks included: a bool array of the masks' shape (z, y, x); all False
    when both masks are empty. The distance transform runs on the union's bounding box grown
    by floor(band_mm / spacing) + 1 voxels per axis (no voxel outside it can be that close).
    """
    out = np.zeros(ref_mask.shape, dtype=bool)
    box, band = _band_in_box(ref_mask, pred_mask, spacing, band_mm)
    if box is not None:
        out[box] = band
    return out


def _band_in_box(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing: Sequence[float],
                 band_mm: float) -> tuple[tuple[slice, ...] | None, np.ndarray]:
    """:func:`calibration_band` as (box, band inside the box); (None, empty) for no band."""
    if ref_mask.shape != pred_mask.shape:
        raise InputDataError(f"reference mask shape {ref_mask.shape} differs from prediction "
                             f"mask shape {pred_mask.shape}.")
    if not band_mm > 0:
        raise ConfigError(f"calibration band: {band_mm} mm must be > 0.")
    union = ref_mask.astype(bool, copy=False) | pred_mask.astype(bool, copy=False)
    box = bbox([union])
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=bool)
    grown = tuple(slice(max(0, s.start - m), min(n, s.stop + m)) for s, m, n in zip(
        box, (int(band_mm // sp) + 1 for sp in spacing), union.shape, strict=True))
    dist = distance_transform_edt(~union[grown], sampling=tuple(float(s) for s in spacing))
    return grown, dist <= band_mm


class CalibrationStats:
    """Per-case calibration statistics of every region, the content of ``<case>_calibration.npz``.

    Arrays (R regions, S = 2 voxel sets :data:`VOXEL_SETS`, B bins): ``counts`` [R, S, B] int64
    voxels per bin, ``confidence_sum`` [R, S, B] sum of the confidences, ``correct_sum`` [R, S, B]
    number of voxels of the region in the reference, ``squared_error_sum`` [R, S] and
    ``nll_sum`` [R, S] (sums over voxels, see :func:`brier` and :func:`nll`). ``regions``,
    ``n_bins`` and ``band_mm`` say how they were computed.
    """

    def __init__(self, regions: Sequence[str], n_bins: int, band_mm: float, counts: np.ndarray,
                 confidence_sum: np.ndarray, correct_sum: np.ndarray,
                 squared_error_sum: np.ndarray, nll_sum: np.ndarray) -> None:
        self.regions = [str(r) for r in regions]
        self.n_bins, self.band_mm = int(n_bins), float(band_mm)
        self.counts = np.asarray(counts, dtype=np.int64)
        self.confidence_sum = np.asarray(confidence_sum, dtype=np.float64)
        self.correct_sum = np.asarray(correct_sum, dtype=np.float64)
        self.squared_error_sum = np.asarray(squared_error_sum, dtype=np.float64)
        self.nll_sum = np.asarray(nll_sum, dtype=np.float64)
        shape = (len(self.regions), len(VOXEL_SETS), self.n_bins)
        for name in ("counts", "confidence_sum", "correct_sum"):
            if getattr(self, name).shape != shape:
                raise InputDataError(f"calibration statistics: {name} has shape "
                                     f"{getattr(self, name).shape}, expected {shape}.")
        for name in ("squared_error_sum", "nll_sum"):
            if getattr(self, name).shape != shape[:2]:
                raise InputDataError(f"calibration statistics: {name} has shape "
                                     f"{getattr(self, name).shape}, expected {shape[:2]}.")

    def metrics(self) -> dict[str, dict[str, float]]:
        """``{region: {metric: value}}`` with the names of :func:`calibration_metric_names`:
        ECE, MCE, Brier (in [0, 1]) and NLL (nats per voxel) within the band, then over all
        voxels; NaN where the voxel set is empty (the band of a region absent from both the
        reference and the prediction)."""
        out: dict[str, dict[str, float]] = {}
        for r, region in enumerate(self.regions):
            values: dict[str, float] = {}
            for s, vs in enumerate(VOXEL_SETS):
                hist = (self.counts[r, s], self.confidence_sum[r, s], self.correct_sum[r, s])
                n = int(self.counts[r, s].sum())
                values[calibration_name("ece", vs)] = ece_from_histogram(*hist)
                values[calibration_name("mce", vs)] = mce_from_histogram(*hist)
                values[calibration_name("brier", vs)] = (
                    float(self.squared_error_sum[r, s]) / n if n else float("nan"))
                values[calibration_name("nll", vs)] = (float(self.nll_sum[r, s]) / n if n
                                                       else float("nan"))
            out[region] = values
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics atomically as a compressed ``.npz`` (a few kB)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, regions=np.asarray(self.regions, dtype=str),
                                n_bins=self.n_bins, band_mm=self.band_mm, counts=self.counts,
                                confidence_sum=self.confidence_sum, correct_sum=self.correct_sum,
                                squared_error_sum=self.squared_error_sum, nll_sum=self.nll_sum)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationStats:
        """Read statistics written by :meth:`save`; InputDataError naming the file otherwise."""
        p = Path(path)
        if not p.is_file():
            raise InputDataError(f"{p}: calibration statistics not found. Rerun the predict "
                                 "stage with evaluation.calibration: true.")
        try:
            with np.load(p, allow_pickle=False) as z:
                return cls(z["regions"].tolist(), int(z["n_bins"]), float(z["band_mm"]),
                           z["counts"], z["confidence_sum"], z["correct_sum"],
                           z["squared_error_sum"], z["nll_sum"])
        except InputDataError as e:
            raise InputDataError(f"{p}: {e}. Delete it and rerun the predict stage.") from e
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise InputDataError(f"{p}: not readable calibration statistics ({e}). Delete it "
                                 "and rerun the predict stage.") from e


def calibration_statistics(probabilities: np.ndarray, ref: np.ndarray, pred: np.ndarray,
                           spacing: Sequence[float], regions: Mapping[str, Sequence[int]],
                           n_bins: int = DEFAULT_BINS,
                           band_mm: float = DEFAULT_BAND_MM) -> CalibrationStats:
    """Calibration statistics of one case against its reference labels, per region.

    probabilities: softmax output [K, z, y, x] (channel k = label value k, each voxel summing
    to 1); ref, pred: integer label arrays (z, y, x) (pred: the segmentation made from these
    probabilities); spacing: voxel size in mm (z, y, x); regions: ``{name: [label values]}``.

    One-vs-rest per region r with label set L: confidence c_i = sum_{k in L} p_ik, correctness
    y_i = [ref_i in L]. Voxel sets: the band, i.e. the voxels within ``band_mm`` mm of the
    reference or the predicted region (:func:`calibration_band`), and all voxels of the image.
    Returns :class:`CalibrationStats`, from which :meth:`CalibrationStats.metrics` gives ECE,
    MCE (``n_bins`` equal-width bins), Brier score and NLL.
    """
    sp = check_inputs(pred, ref, spacing)
    probs = np.asarray(probabilities)
    if probs.ndim != 4 or probs.shape[1:] != ref.shape:
        raise InputDataError(f"probabilities of shape {probs.shape} do not match the label "
                             f"shape {ref.shape}; expected [classes, *{ref.shape}].")
    names = list(regions)
    shape = (len(names), len(VOXEL_SETS), int(n_bins))
    counts = np.zeros(shape, dtype=np.int64)
    conf_sum, corr_sum = np.zeros(shape), np.zeros(shape)
    sq, nll_sum = np.zeros(shape[:2]), np.zeros(shape[:2])
    for r, name in enumerate(names):
        values = np.unique(np.asarray(list(regions[name]), dtype=np.int64))
        if values.size == 0 or values.min() < 0 or values.max() >= probs.shape[0]:
            raise InputDataError(f"region {name}: label values {values.tolist()} are not all "
                                 f"channels of the {probs.shape[0]}-class probabilities.")
        confidence = probs[values[0]]
        if values.size > 1:  # sum channel by channel (no copy of the selected channels)
            confidence = confidence.astype(np.float32, copy=True)
            for v in values[1:]:
                confidence += probs[v]
        correct = region_mask(ref, values)
        box, band = _band_in_box(correct, region_mask(pred, values), sp, band_mm)
        empty = np.zeros(0)
        for s, (c, y) in enumerate(((confidence[box][band], correct[box][band])
                                    if box is not None else (empty, empty.astype(bool)),
                                    (confidence, correct))):
            counts[r, s], conf_sum[r, s], corr_sum[r, s], sq[r, s], nll_sum[r, s] = \
                _calibration_sums(c, y, n_bins)
    return CalibrationStats(names, n_bins, band_mm, counts, conf_sum, corr_sum, sq, nll_sum)


def calibration_folder(pred_dir: str | os.PathLike[str], case_ids: Iterable[str], task: str,
                       method: str, fold: int, regions: Sequence[str], n_bins: int,
                       band_mm: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calibration rows of a fold from the cases' ``<pred_dir>/<case>_calibration.npz``.

    Returns (metrics, reliability): ``metrics`` in the first seven tidy columns of
    :data:`METRICS_CSV_COLUMNS` (per case and region the metrics of :func:`calibration_metric_names`, NaN
    where the band is empty);
    ``reliability`` in :data:`RELIABILITY_COLUMNS`, per region, voxel set and bin the counts and
    sums over the fold's cases (the bins of a reliability diagram). Statistics computed for other
    regions, bins or band than asked raise InputDataError naming the file.
    """
    pred_dir = Path(pred_dir)
    rows = []
    total: CalibrationStats | None = None
    for case in (str(c) for c in case_ids):
        path = pred_dir / f"{case}{CALIBRATION_SUFFIX}"
        stats = CalibrationStats.load(path)
        if (stats.regions != list(regions) or stats.n_bins != int(n_bins)
                or not math.isclose(stats.band_mm, float(band_mm))):
            raise InputDataError(
                f"{path}: computed for regions {stats.regions}, {stats.n_bins} bins, band "
                f"{stats.band_mm} mm, but the evaluation asks for {list(regions)}, {n_bins} bins, "
                f"{band_mm} mm. Rerun the predict stage.")
        for region, values in stats.metrics().items():
            rows += [(task, method, int(fold), case, region, m, values[m])
                     for m in calibration_metric_names()]
        if total is None:
            total = stats
        else:
            for name in ("counts", "confidence_sum", "correct_sum"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
    metrics = pd.DataFrame(rows, columns=list(METRICS_CSV_COLUMNS[:7]))
    metrics["value"] = metrics["value"].astype(np.float64)
    rel = []
    if total is not None:
        edges = np.linspace(0.0, 1.0, total.n_bins + 1)
        for r, region in enumerate(total.regions):
            for s, vs in enumerate(VOXEL_SETS):
                rel += [(task, method, int(fold), region, vs, total.band_mm, b, edges[b],
                         edges[b + 1],
                         int(total.counts[r, s, b]), float(total.confidence_sum[r, s, b]),
                         float(total.correct_sum[r, s, b])) for b in range(total.n_bins)]
    return metrics, pd.DataFrame(rel, columns=list(RELIABILITY_COLUMNS))
