"""Synthetic boundary noise: random dilation or erosion per structure, calibrated to a mean Dice.

The KiTS23 task of the study has a single reference annotation, so its noisy training labels
are made here (paper section 4.1): for every case and every structure, a coin flip chooses a
morphological dilation or erosion whose radius in mm is ``scale * U(0, 2)``. The draws are made
once from ``numpy.random.default_rng(seed)``; only the common ``scale`` is then calibrated so
that the mean over cases of :func:`dice_per_case` (noisy vs reference) equals the target
(by default :data:`DEFAULT_TARGET_DICE`; within :data:`DICE_TOLERANCE`).

This module is the public API; the work is done by modules with one job each:

- :mod:`nnrobustloss.noise_inputs`: the defaults (target Dice, KiTS23 structures) and the
  validation of the arguments;
- :mod:`nnrobustloss.noise_dice`: :func:`dice_per_case` and its label counting;
- :mod:`nnrobustloss.noise_paint`: the per-case engine (distance maps, dilation/erosion of nested
  structures, :func:`corrupt_case`); its docstring says how a case is painted;
- :mod:`nnrobustloss.noise_steps`: a case's label changes as an exact step table over the scale;
- :mod:`nnrobustloss.noise_calibration`: the search for the scale (:class:`BoundaryNoise`,
  streamed, memory bounded by one case), :class:`NoiseCalibration`,
  :class:`NoiseCalibrationError`;
- :mod:`nnrobustloss.noise_report`: the noise report of a converted dataset (file I/O).

Imports run one way: ``noise_inputs``, ``noise_dice`` and ``noise_steps`` import none of the
others; ``noise_paint`` imports the first two, ``noise_calibration`` all four, this module the
calibration, dice, inputs and paint modules; ``noise_report`` none of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from nnrobustloss.noise_calibration import (
    DICE_TOLERANCE,
    BoundaryNoise,
    Loader,
    NoiseCalibration,
    NoiseCalibrationError,
)
from nnrobustloss.noise_dice import dice_per_case
from nnrobustloss.noise_inputs import (
    DEFAULT_TARGET_DICE,
    KITS23_STRUCTURES,
    check_labels,
    check_spacings,
)
from nnrobustloss.noise_paint import corrupt_case

__all__ = [
    "DEFAULT_TARGET_DICE",
    "DICE_TOLERANCE",
    "KITS23_STRUCTURES",
    "BoundaryNoise",
    "Loader",
    "NoiseCalibration",
    "NoiseCalibrationError",
    "corrupt_case",
    "corrupt_dataset",
    "corrupt_dataset_with_calibration",
    "dice_per_case",
]


def corrupt_dataset_with_calibration(
        labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
        target_dice: float = DEFAULT_TARGET_DICE, seed: int = 0,
        structures: Sequence[Sequence[int]] | None = None,
) -> tuple[list[np.ndarray], NoiseCalibration]:
    """:func:`corrupt_dataset` that also returns what the calibration did."""
    labels = check_labels(labels)
    spacings = check_spacings(spacings, len(labels))
    noise = BoundaryNoise(len(labels), target_dice, seed, structures)
    for k, (lab, sp) in enumerate(zip(labels, spacings, strict=True)):
        noise.add_case(k, lab, sp)
    info = noise.calibrate(lambda k: (labels[k], spacings[k]))
    noisy, paint_seconds = [], []
    for k, (lab, sp) in enumerate(zip(labels, spacings, strict=True)):
        t1 = time.perf_counter()
        noisy.append(noise.paint(k, lab, sp))
        paint_seconds.append(time.perf_counter() - t1)
    return noisy, replace(info, paint_seconds=tuple(paint_seconds))


def corrupt_dataset(labels: Sequence[np.ndarray], spacings: Sequence[Sequence[float]],
                    target_dice: float = DEFAULT_TARGET_DICE, seed: int = 0,
                    structures: Sequence[Sequence[int]] | None = None) -> list[np.ndarray]:
    """Boundary-noise copies of ``labels`` whose mean Dice against them is ``target_dice``.

    ``labels``: integer (z, y, x) label arrays, one per case (0 is background);
    ``spacings``: their (z, y, x) voxel sizes in mm. For every case and structure a coin flip
    chooses a dilation or an erosion by ``scale * U(0, 2)`` mm (draws from
    ``numpy.random.default_rng(seed)``, made before the calibration); ``scale`` is calibrated
    so that the mean over cases of ``dice_per_case(noisy, reference)`` is as close as the
    data allow to ``target_dice`` in (0, 1] (default :data:`DEFAULT_TARGET_DICE`; 0.0006
    off on 12 real KiTS23 cases) and within
    ``DICE_TOLERANCE`` (0.005); 1 gives exact copies. ``structures``: label-value groups
    from outer to inner, nested or disjoint
    (default KiTS23: ``[(1, 2, 3), (2, 3), (2,)]``; a plain label map: ``[(1,), (2,), ...]``);
    labels outside every group are not corrupted themselves but may be covered by a dilation.
    See :mod:`nnrobustloss.noise_paint` for how nested structures are painted and
    :mod:`nnrobustloss.noise_calibration` for how ``scale`` is found.

    Returns new arrays with the inputs' shapes and dtypes; every value in a noisy case is a
    label of its reference case. The inputs are not modified; the result is a deterministic
    function of the arguments. Raises ValueError naming the bad argument, and
    NoiseCalibrationError (a ValueError) when the target cannot be reached.
    """
    noisy, _ = corrupt_dataset_with_calibration(labels, spacings, target_dice, seed, structures)
    return noisy
