"""The metric registry: one list of metric names, labels, units, scales and directions shared by
the config schema, nnrobustloss.metrics and the report; the stage CSV columns shared by their
writers and the report's readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnrobustloss import metrics, report
from nnrobustloss.config import config_schema
from nnrobustloss.errors import ConfigError
from nnrobustloss.metrics.registry import (
    CALIBRATION_METRIC_NAMES,
    METRICS,
    METRICS_CSV_COLUMNS,
    NOISE_CSV_COLUMNS,
    SEGMENTATION_METRICS,
    calibration_name,
)


def test_schema_table_metrics_are_the_registry_segmentation_metrics() -> None:
    schema = config_schema()
    assert schema["properties"]["tasks"]["additionalProperties"] == {"$ref": "#/$defs/task"}
    task = schema["$defs"]["task"]
    assert task["properties"]["table_metrics"]["items"]["enum"] == list(SEGMENTATION_METRICS)


def test_metrics_module_uses_the_registry() -> None:
    assert metrics.METRIC_NAMES == ("dice", "asd", "surface_dice") == SEGMENTATION_METRICS
    assert metrics.calibration_metric_names() == [
        "ece", "mce", "brier", "nll", "ece_all", "mce_all", "brier_all", "nll_all"]
    assert tuple(metrics.calibration_metric_names()) == CALIBRATION_METRIC_NAMES
    assert metrics.CSV_COLUMNS is METRICS_CSV_COLUMNS
    # every metric name that the evaluate stage writes has an entry, and nothing else does
    assert list(METRICS) == [*SEGMENTATION_METRICS, *CALIBRATION_METRIC_NAMES]
    assert all(name == spec.name for name, spec in METRICS.items())


def test_labels_units_scales_and_directions() -> None:
    assert [METRICS[m].heading for m in SEGMENTATION_METRICS] == [
        "Dice (%)", "ASD (mm)", "Surface Dice (%)"]
    assert [METRICS[m].scale for m in SEGMENTATION_METRICS] == [100.0, 1.0, 100.0]
    assert [METRICS[m].higher_is_better for m in SEGMENTATION_METRICS] == [True, False, True]
    assert [(METRICS[m].label, METRICS[m].unit) for m in ("ece", "mce", "brier", "nll")] == [
        ("ECE", ""), ("MCE", ""), ("Brier", ""), ("NLL", "nats")]
    assert METRICS["ece"].heading == "ECE" and METRICS["nll"].heading == "NLL (nats)"
    assert METRICS["brier_all"].label == "Brier (all voxels)"
    for name in CALIBRATION_METRIC_NAMES:  # natural units, lower is better
        assert METRICS[name].scale == 1.0 and not METRICS[name].higher_is_better
    assert calibration_name("nll", "band") == "nll" and calibration_name("nll", "all") == "nll_all"


def test_report_rejects_a_table_metric_outside_the_segmentation_metrics(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown metric 'hd95'. Use dice, asd or surface_dice"):
        report.table1(pd.DataFrame(columns=["task", "method", "metric"]),
                      {"T": {"table_metrics": ["dice", "hd95"]}}, ["Baseline"])
    # a calibration metric is no table_metrics entry either (Table 3 shows them)
    with pytest.raises(ConfigError, match="tasks.T.table_metrics: unknown metric 'ece'"):
        report.build_report([], [], [], tmp_path, tmp_path,
                            tasks={"T": {"table_metrics": ["dice", "ece"]}}, methods=["HRL"])
    assert not list(tmp_path.iterdir())


def _write(path: Path, labels: np.ndarray) -> None:
    img = sitk.GetImageFromArray(labels.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 2.0))
    sitk.WriteImage(img, str(path))


def test_noise_csv_written_and_read_with_the_same_columns(tmp_path: Path) -> None:
    from nnrobustloss.noise.report import measure_noise_levels

    ref = np.zeros((4, 6, 6), dtype=np.uint8)
    ref[1:3, 2:4, 2:4] = 1  # 8 voxels
    noisy = ref.copy()
    noisy[1:3, 2:4, 4] = 1  # 4 more: Dice = 2 * 8 / (12 + 8) = 0.8
    (tmp_path / "noisy").mkdir()
    (tmp_path / "ref").mkdir()
    _write(tmp_path / "noisy" / "c0.nii.gz", noisy)
    _write(tmp_path / "ref" / "c0.nii.gz", ref)
    df = measure_noise_levels(tmp_path / "noisy", tmp_path / "ref", {"organ": [1]}, 1.0, task="T")
    assert tuple(df.columns) == NOISE_CSV_COLUMNS
    assert df["metric"].tolist() == list(SEGMENTATION_METRICS)
    df.to_csv(tmp_path / "T.csv", index=False)
    back = report.read_noise([tmp_path / "T.csv"])
    assert back[back.metric == "dice"]["value"].item() == pytest.approx(0.8)
    summary = report.summarise_noise(back, ["T"])
    assert summary.loc[summary.region == "organ", "dice_mean"].item() == pytest.approx(80.0)
