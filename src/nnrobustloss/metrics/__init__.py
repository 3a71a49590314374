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

from nnrobustloss.lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "registry": (
        "CALIBRATION_METRICS", "CALIBRATION_METRIC_NAMES", "METRICS", "METRICS_CSV_COLUMNS",
        "METRICS_CSV_DEFAULTS", "MetricSpec", "NOISE_CSV_COLUMNS", "ONE_EMPTY_RULE",
        "SEGMENTATION_METRICS", "TRIALS_CSV_COLUMNS", "TRIALS_KEY_COLUMNS", "VOXEL_SETS",
        "calibration_name",
    ),
    "regions": (
        "KITS23_REGIONS", "KITS23_TOLERANCES_MM", "bbox", "bbox_and_empty", "build_regions",
        "check_inputs", "label_counts", "padded", "region_mask", "tolerance_for",
    ),
    "surface": (
        "KD_NS_PER_TARGET", "LATTICE_FIRST", "LATTICE_OFFSETS", "SLICE_MAX_PIXELS",
        "SLICE_NS_PER_PIXEL", "SLICE_NS_PER_POINT", "SLICE_NS_PER_SLICE", "asd_and_surface_dice",
        "offsets_within", "surface_distances", "surfel_area_table",
    ),
    "evaluation": (
        "CSV_COLUMNS", "GEOMETRY_ATOL", "METRIC_NAMES", "check_geometry", "evaluate_case",
        "evaluate_case_flagged", "evaluate_folder", "worst_case_asd",
    ),
    "calibration": (
        "CALIBRATION_SUFFIX", "CalibrationStats", "DEFAULT_BAND_MM", "DEFAULT_BINS", "NLL_EPS",
        "RELIABILITY_COLUMNS", "brier", "calibration_band", "calibration_folder",
        "calibration_metric_names", "calibration_statistics", "ece", "ece_from_histogram", "mce",
        "mce_from_histogram", "nll",
    ),
}
"""The public names of each submodule, re-exported by this package."""

__all__ = sorted(name for names in _EXPORTS.values() for name in names)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
