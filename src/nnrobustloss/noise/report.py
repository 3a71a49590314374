"""The noise report: how far a dataset's noisy labels are from its reference labels.

:func:`measure_noise_levels` reads the two label folders of a task (NIfTI files of the same
names) and evaluates every case with :func:`nnrobustloss.metrics.evaluation.evaluate_case`: Dice, ASD and
surface Dice per region. It measures any noisy labels, whether made by
:mod:`nnrobustloss.noise` or given by the source; the pipeline's noise stage writes its frame to
``noise/<Task>.csv``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import SimpleITK as sitk

from nnrobustloss.fileio import read_image
from nnrobustloss.metrics.evaluation import evaluate_case_flagged
from nnrobustloss.metrics.registry import NOISE_CSV_COLUMNS


def measure_noise_levels(noisy_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str],
                         regions: Mapping[str, Sequence[int]],
                         tolerance_mm: float | Mapping[str, float], task: str = "") -> pd.DataFrame:
    """Label noise of a dataset: each ``noisy_dir/<case>.nii.gz`` against
    ``reference_dir/<case>.nii.gz``, per region, with :func:`nnrobustloss.metrics.evaluation.evaluate_case`
    (Dice, ASD in mm with the image spacing, surface Dice at the tolerance).

    Returns a tidy frame with columns ``task, case, region, metric, value, worst_case`` (cases
    sorted, regions in the given order; ``worst_case`` 1 where exactly one mask is empty). A
    missing reference file raises InputDataError naming it.
    """
    rows = []
    files = sorted(Path(noisy_dir).glob("*.nii.gz"))
    for i, f in enumerate(files, 1):
        case = f.name[: -len(".nii.gz")]
        noisy_img, ref_img = read_image(f), read_image(Path(reference_dir) / f.name)
        res, worst = evaluate_case_flagged(sitk.GetArrayFromImage(noisy_img),
                                           sitk.GetArrayFromImage(ref_img),
                                           ref_img.GetSpacing()[::-1], regions, tolerance_mm)
        for region, metrics in res.items():
            for metric, value in metrics.items():
                rows.append({"task": task, "case": case, "region": region, "metric": metric,
                             "value": value, "worst_case": int(region in worst)})
        print(f"[noise {task}] {i}/{len(files)} {case}", file=sys.stderr, flush=True)
    return pd.DataFrame(rows, columns=list(NOISE_CSV_COLUMNS))
