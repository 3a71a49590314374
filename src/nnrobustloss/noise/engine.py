"""The entry points of the boundary noise: :func:`corrupt_dataset` and
:func:`corrupt_dataset_with_calibration` (see the package docstring of :mod:`nnrobustloss.noise`
for the model and the modules that do the work: the calibration finds the scale, the painter
paints each case with it)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from nnrobustloss.noise.calibration import (
    BoundaryNoise,
    NoiseCalibration,
)
from nnrobustloss.noise.inputs import (
    DEFAULT_TARGET_DICE,
    check_labels,
    check_spacings,
)


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
    See :mod:`nnrobustloss.noise.paint` for how nested structures are painted and
    :mod:`nnrobustloss.noise.calibration` for how ``scale`` is found.

    Returns new arrays with the inputs' shapes and dtypes; every value in a noisy case is a
    label of its reference case. The inputs are not modified; the result is a deterministic
    function of the arguments. Raises ValueError naming the bad argument, and
    NoiseCalibrationError (a ValueError) when the target cannot be reached.
    """
    noisy, _ = corrupt_dataset_with_calibration(labels, spacings, target_dice, seed, structures)
    return noisy
