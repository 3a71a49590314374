"""The study's metrics and the columns of the stage CSVs, in one place.

Per metric name (as written in the ``metric`` column of the tidy CSVs) a :class:`MetricSpec`:
display label, unit, display scale and direction. The segmentation metrics are those of
:func:`nnrobustloss.metrics.evaluation.evaluate_case` and of the config's ``tasks.<T>.table_metrics``; the
calibration metrics are ECE, MCE, Brier and NLL within the band around the region (plain names)
and over all voxels (suffix ``_all``). This module imports nothing heavy: metrics, noise, tuning
and report all read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is shown: ``label`` (without unit), ``unit`` ("" when it has none),
    ``scale`` (displayed value = stored value x scale: 100 for the [0, 1] Dice-like metrics,
    shown in %) and ``higher_is_better``."""

    name: str
    label: str
    unit: str
    scale: float
    higher_is_better: bool

    @property
    def heading(self) -> str:
        """Table column heading: the label with the unit in parentheses (``"Dice (%)"``), the
        label alone when the metric has no unit."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


SEGMENTATION_METRICS: tuple[str, ...] = ("dice", "asd", "surface_dice")
"""Metrics computed per region by ``evaluate_case``, in the order of the tidy CSV."""

CALIBRATION_METRICS: tuple[str, ...] = ("ece", "mce", "brier", "nll")
"""Calibration metrics per case and region; within the band under these names, over all voxels
with the suffix ``_all`` (``ece_all``, ...)."""

VOXEL_SETS: tuple[str, ...] = ("band", "all")
"""The two voxel sets of the calibration metrics: the band around the region, the whole image."""


def calibration_name(metric: str, voxels: str) -> str:
    """Metric name of a calibration metric over a voxel set: ``ece`` (band), ``ece_all`` (all)."""
    return metric if voxels == VOXEL_SETS[0] else f"{metric}_{voxels}"


CALIBRATION_METRIC_NAMES: tuple[str, ...] = tuple(
    calibration_name(m, s) for s in VOXEL_SETS for m in CALIBRATION_METRICS)
"""Metric names of the calibration rows, in CSV order: band first, then ``<name>_all``."""

_SEGMENTATION_SPECS = (MetricSpec("dice", "Dice", "%", 100.0, True),
                       MetricSpec("asd", "ASD", "mm", 1.0, False),
                       MetricSpec("surface_dice", "Surface Dice", "%", 100.0, True))
# calibration: natural units (ECE, MCE and Brier in [0, 1], NLL in nats per voxel), lower is better
_CALIBRATION_LABELS = {"ece": ("ECE", ""), "mce": ("MCE", ""), "brier": ("Brier", ""),
                       "nll": ("NLL", "nats")}

METRICS: dict[str, MetricSpec] = {
    **{s.name: s for s in _SEGMENTATION_SPECS},
    **{calibration_name(m, v): MetricSpec(calibration_name(m, v),
                                          _CALIBRATION_LABELS[m][0]
                                          + ("" if v == VOXEL_SETS[0] else " (all voxels)"),
                                          _CALIBRATION_LABELS[m][1], 1.0, False)
       for v in VOXEL_SETS for m in CALIBRATION_METRICS},
}
"""Every metric name of the tidy metric CSVs -> its :class:`MetricSpec` (segmentation metrics,
then the calibration names of :data:`CALIBRATION_METRIC_NAMES`)."""

# --- columns of the stage CSVs (the writer and the report's reader both use these) ------------

METRICS_CSV_COLUMNS: tuple[str, ...] = ("task", "method", "fold", "case", "region", "metric",
                                        "value", "replicate", "worst_case")
"""Columns of the tidy metrics CSV ``metrics/<Task>/<Method>/fold<k>[_rep<r>].csv``:
``replicate`` is the final training's replicate (0 for the first), ``worst_case`` is 1 where
the value is the worst case of :data:`ONE_EMPTY_RULE` (exactly one of prediction and reference
empty), else 0."""

METRICS_CSV_DEFAULTS: dict[str, int] = {"replicate": 0, "worst_case": 0}
"""Columns a reader may find missing (a hand-made table) and the value it assumes for them."""

ONE_EMPTY_RULE = "dice0_sdice0_asd_image_diagonal"
"""The rule for a region that is empty in exactly one of prediction and reference: Dice 0,
surface Dice 0 and ASD = the diagonal of the image's field of view in mm (the largest distance
two points of the image can have, so no surface distance can exceed it). Both empty: Dice 1,
surface Dice 1, ASD 0 (the KiTS23 rule). No value is NaN, so none is left out of a mean
(docs/metrics.md, "Empty masks"). Named in the evaluate stage's settings, so that a change of
the rule reruns the evaluation."""

NOISE_CSV_COLUMNS: tuple[str, ...] = ("task", "case", "region", "metric", "value", "worst_case")
"""Columns of the noise report ``noise/<Task>.csv`` (metrics of :data:`SEGMENTATION_METRICS`;
``worst_case`` as in :data:`METRICS_CSV_COLUMNS`)."""

TRIALS_KEY_COLUMNS: tuple[str, ...] = ("task", "method", "fold")
"""The study's key, the first columns of every ``trials.csv``."""

TRIALS_CSV_COLUMNS: tuple[str, ...] = (*TRIALS_KEY_COLUMNS, "number", "value", "state")
"""Leading columns of ``tuning/<Task>/<Method>/fold<k>/trials.csv``: the study's key, then
Optuna's trial number, objective value and state (the trial's parameters, worker and timing
follow)."""
