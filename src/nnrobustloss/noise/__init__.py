"""Synthetic boundary noise: random dilation or erosion per structure, calibrated to a mean Dice.

The KiTS23 task of the study has a single reference annotation, so its noisy training labels
are made here (paper section 4.1): for every case and every structure, a coin flip chooses a
morphological dilation or erosion whose radius in mm is ``scale * U(0, 2)``. The draws are made
once from ``numpy.random.default_rng(seed)``; only the common ``scale`` is then calibrated so
that the mean over cases of :func:`dice_per_case` (noisy vs reference) equals the target
(by default :data:`DEFAULT_TARGET_DICE`; within :data:`DICE_TOLERANCE`).

This package's ``__init__`` is the public API (it re-exports the names below); the work is
done by modules with one job each:

- :mod:`nnrobustloss.noise.engine`: :func:`corrupt_dataset` and
  :func:`corrupt_dataset_with_calibration` (the entry points, built on the calibration);
- :mod:`nnrobustloss.noise.inputs`: the defaults (target Dice, KiTS23 structures) and the
  validation of the arguments;
- :mod:`nnrobustloss.noise.dice`: :func:`dice_per_case` and its label counting;
- :mod:`nnrobustloss.noise.paint`: the per-case engine (distance maps, dilation/erosion of nested
  structures, :func:`corrupt_case`); its docstring says how a case is painted;
- :mod:`nnrobustloss.noise.steps`: a case's label changes as an exact step table over the scale;
- :mod:`nnrobustloss.noise.calibration`: the search for the scale (:class:`BoundaryNoise`,
  streamed, memory bounded by one case), :class:`NoiseCalibration`,
  :class:`NoiseCalibrationError`;
- :mod:`nnrobustloss.noise.report`: the noise report of a converted dataset (file I/O).

Imports run one way: ``inputs``, ``dice`` and ``steps`` import none of the others; ``paint``
imports the first two, ``calibration`` all four, ``engine`` the calibration, dice, inputs and
paint modules, this ``__init__`` those it re-exports; ``report`` imports none of them (it reads
label files and measures them with :mod:`nnrobustloss.metrics`) and is not re-exported.
"""
from nnrobustloss.noise.calibration import (
    DICE_TOLERANCE,
    BoundaryNoise,
    Loader,
    NoiseCalibration,
    NoiseCalibrationError,
)
from nnrobustloss.noise.dice import dice_per_case
from nnrobustloss.noise.engine import corrupt_dataset, corrupt_dataset_with_calibration
from nnrobustloss.noise.inputs import DEFAULT_TARGET_DICE, KITS23_STRUCTURES
from nnrobustloss.noise.paint import corrupt_case

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
