"""The study's metrics, by concern:

- :mod:`~nnrobustloss.metrics.registry`: metric names, labels, units, directions and the columns
  of the stage CSVs (imports nothing heavy: noise, tuning, pipeline and report read it);
- :mod:`~nnrobustloss.metrics.regions`: evaluation regions, tolerances and the label-map
  helpers shared by the segmentation and calibration metrics (numpy only);
- :mod:`~nnrobustloss.metrics.surface`: the surface-distance engine (surfels, nearest-surfel
  search, ASD and surface Dice of two masks);
- :mod:`~nnrobustloss.metrics.evaluation`: per-case and per-folder evaluation
  (:func:`evaluate_case`, :func:`evaluate_folder`), the evaluate stage;
- :mod:`~nnrobustloss.metrics.calibration`: ECE, MCE, Brier, NLL and the per-case calibration
  statistics.

Imports run one way: registry and regions import no other metrics module, surface none,
evaluation imports registry, regions and surface, calibration registry and regions.

This ``__init__`` re-exports the public names of the submodules (``from nnrobustloss.metrics
import evaluate_case`` keeps working) but imports a submodule only when one of its names is
first asked for, so that importing :mod:`nnrobustloss.metrics.registry` or
:mod:`~nnrobustloss.metrics.regions` (the config validation, the Snakefile) loads neither scipy
nor SimpleITK. Code of this package imports from the defining submodule.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE: dict[str, str] = {
    "CALIBRATION_METRICS": "registry",
    "CALIBRATION_METRIC_NAMES": "registry",
    "METRICS": "registry",
    "METRICS_CSV_COLUMNS": "registry",
    "METRICS_CSV_DEFAULTS": "registry",
    "MetricSpec": "registry",
    "NOISE_CSV_COLUMNS": "registry",
    "ONE_EMPTY_RULE": "registry",
    "SEGMENTATION_METRICS": "registry",
    "TRIALS_CSV_COLUMNS": "registry",
    "TRIALS_KEY_COLUMNS": "registry",
    "VOXEL_SETS": "registry",
    "calibration_name": "registry",
    "KITS23_REGIONS": "regions",
    "KITS23_TOLERANCES_MM": "regions",
    "bbox": "regions",
    "bbox_and_empty": "regions",
    "build_regions": "regions",
    "check_inputs": "regions",
    "label_counts": "regions",
    "padded": "regions",
    "region_mask": "regions",
    "tolerance_for": "regions",
    "KD_NS_PER_TARGET": "surface",
    "LATTICE_FIRST": "surface",
    "LATTICE_OFFSETS": "surface",
    "SLICE_MAX_PIXELS": "surface",
    "SLICE_NS_PER_PIXEL": "surface",
    "SLICE_NS_PER_POINT": "surface",
    "SLICE_NS_PER_SLICE": "surface",
    "asd_and_surface_dice": "surface",
    "offsets_within": "surface",
    "surface_distances": "surface",
    "surfel_area_table": "surface",
    "CSV_COLUMNS": "evaluation",
    "GEOMETRY_ATOL": "evaluation",
    "METRIC_NAMES": "evaluation",
    "check_geometry": "evaluation",
    "evaluate_case": "evaluation",
    "evaluate_case_flagged": "evaluation",
    "evaluate_folder": "evaluation",
    "worst_case_asd": "evaluation",
    "CALIBRATION_SUFFIX": "calibration",
    "CalibrationStats": "calibration",
    "DEFAULT_BAND_MM": "calibration",
    "DEFAULT_BINS": "calibration",
    "NLL_EPS": "calibration",
    "RELIABILITY_COLUMNS": "calibration",
    "brier": "calibration",
    "calibration_band": "calibration",
    "calibration_folder": "calibration",
    "calibration_metric_names": "calibration",
    "calibration_statistics": "calibration",
    "ece": "calibration",
    "ece_from_histogram": "calibration",
    "mce": "calibration",
    "mce_from_histogram": "calibration",
    "nll": "calibration",
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
