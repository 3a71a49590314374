"""The Dice of a noisy label map against its reference, from label counts.

:func:`dice_per_case` is the measure that the boundary noise (:mod:`nnrobustloss.noise`) is
calibrated to. The painter and the calibration compute it without comparing whole volumes:
:func:`value_counts` counts the labels of the reference and of the changed voxels, and
:func:`dice_from_counts` turns those counts into the mean foreground Dice.
"""

from __future__ import annotations

import numpy as np

_CHUNK = 1 << 23  # voxels per chunk when counting labels (bounds the int64 temporary)
_BINCOUNT_RANGE = 1 << 16


def value_counts(a: np.ndarray) -> dict[int, int]:
    """Count each value of an integer array (any shape), in chunks so that huge volumes need
    little memory. Returns {value: count} for the values present (counts > 0); {} when empty."""
    flat = np.ravel(a)
    if flat.size == 0:
        return {}
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo < _BINCOUNT_RANGE and hi <= np.iinfo(np.int64).max:
        counts = np.zeros(hi - lo + 1, dtype=np.int64)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start:start + _CHUNK].astype(np.int64)
            if lo:
                chunk -= lo
            counts += np.bincount(chunk, minlength=counts.size)
        return {int(i) + lo: int(counts[i]) for i in np.flatnonzero(counts)}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def dice_from_counts(ref_counts: dict[int, int], lost: dict[int, int],
                     gained: dict[int, int]) -> float:
    """Mean foreground Dice in [0, 1] from reference counts and the changed voxels' old and new
    labels (label 0 is background; 1.0 when no class is present in either map).

    With ``b`` reference voxels of class c, of which ``lost`` changed away, and ``gained``
    voxels changed to c: intersection = b - lost, noisy volume = b - lost + gained.
    """
    classes = {v for v, c in ref_counts.items() if v != 0 and c > 0}
    classes |= {v for v, c in gained.items() if v != 0 and c > 0}
    if not classes:
        return 1.0
    total = 0.0
    for c in classes:
        b = ref_counts.get(c, 0)
        inter = b - lost.get(c, 0)
        total += 2.0 * inter / (b + inter + gained.get(c, 0))
    return total / len(classes)


def dice_per_case(noisy: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice of ``noisy`` vs ``reference`` over the foreground classes present in either.

    Both are integer label arrays of one shape (any number of dimensions); label 0 is
    background and every other value is a class. A class present in only one array scores 0.
    When neither array has any foreground the result is 1.0 (nothing to get wrong, as the
    KiTS23 evaluation scores two empty masks). The result lies in [0, 1].
    """
    noisy = np.asarray(noisy)
    reference = np.asarray(reference)
    for name, arr in (("noisy", noisy), ("reference", reference)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name}: expected an integer label array, got dtype {arr.dtype}")
    if noisy.shape != reference.shape:
        raise ValueError(f"noisy: shape {noisy.shape} differs from reference shape "
                         f"{reference.shape}")
    diff = noisy != reference
    return dice_from_counts(value_counts(reference), value_counts(reference[diff]),
                            value_counts(noisy[diff]))
