"""The arguments of the boundary noise: their defaults and their validation.

:data:`DEFAULT_TARGET_DICE` and :data:`KITS23_STRUCTURES` are the one source of the noise's
defaults (a test checks the config schema's ``target_dice`` default against the former). The
``check_*`` functions validate what callers pass to :mod:`nnrobustloss.noise` and return it
normalised; each raises ValueError naming the bad argument (``labels[k]``, ``spacings[k]``, ...).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

DEFAULT_TARGET_DICE = 0.96
"""Default mean Dice of the noisy labels against the reference (paper section 4.1)."""

KITS23_STRUCTURES: tuple[tuple[int, ...], ...] = ((1, 2, 3), (2, 3), (2,))
"""Default structures, outer to inner: KiTS23 kidney+tumor+cyst, tumor+cyst (masses), tumor."""


def check_structures(structures: Sequence[Sequence[int]] | None,
                     ) -> tuple[tuple[tuple[int, ...], ...], list[int | None], list[int | None]]:
    """Validate the structure groups; return them with each one's parent and root index.

    The parent of a group is the innermost earlier group that strictly contains it, the root
    the outermost one (None for a top-level group).
    """
    if structures is None:
        structures = KITS23_STRUCTURES
    if isinstance(structures, (str, bytes)) or not isinstance(structures, Sequence):
        raise ValueError("structures: expected a list of label-value groups such as "
                         f"[(1, 2, 3), (2, 3), (2,)], got {structures!r}")
    groups: list[tuple[int, ...]] = []
    for g in structures:
        if isinstance(g, (int, np.integer)):
            g = (g,)
        try:
            vals = tuple(int(v) for v in g)
        except (TypeError, ValueError):
            raise ValueError(f"structures: group {g!r} is not a list of integer labels") from None
        if not vals or any(v != orig for v, orig in zip(vals, g, strict=True)):
            raise ValueError(f"structures: group {g!r} must be a non-empty list of integers")
        if 0 in vals:
            raise ValueError(f"structures: group {g!r} contains 0, the background")
        groups.append(tuple(sorted(set(vals))))
    if not groups:
        raise ValueError("structures: empty; give at least one label-value group")
    parents: list[int | None] = []
    roots: list[int | None] = []
    for i, g in enumerate(groups):
        parent = None
        for j in range(i):
            a, b = set(groups[j]), set(g)
            if a == b:
                raise ValueError(f"structures: group {g} is listed twice")
            if b > a:
                raise ValueError(f"structures: group {g} contains the earlier group "
                                 f"{groups[j]}; list groups from outer to inner")
            if a & b and not a > b:
                raise ValueError(f"structures: groups {groups[j]} and {g} overlap without "
                                 "nesting; groups must be nested or disjoint")
            if a > b:
                parent = j  # later supersets are inner, so the last one is the innermost
        parents.append(parent)
        root = parent
        while root is not None and parents[root] is not None:
            root = parents[root]
        roots.append(root)
    return tuple(groups), parents, roots


def check_label(lab: np.ndarray, k: int) -> np.ndarray:
    """``lab`` (case ``k``) if it is a 3-D integer numpy array (z, y, x), else ValueError."""
    if not isinstance(lab, np.ndarray):
        raise ValueError(f"labels[{k}]: expected a numpy array, got {type(lab).__name__}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels[{k}]: expected an integer dtype, got {lab.dtype}")
    if lab.ndim != 3:
        raise ValueError(f"labels[{k}]: expected a 3-D (z, y, x) array, got shape {lab.shape}")
    return lab


def check_labels(labels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The cases of ``labels`` as a list, each checked with :func:`check_label` (at least one)."""
    if isinstance(labels, np.ndarray) or not isinstance(labels, Sequence):
        raise ValueError("labels: expected a list of 3-D integer arrays, one per case")
    if len(labels) == 0:
        raise ValueError("labels: the list is empty; give at least one case")
    return [check_label(lab, k) for k, lab in enumerate(labels)]


def check_spacing(sp: Sequence[float], k: int) -> tuple[float, ...]:
    """Case ``k``'s spacing as three positive finite floats (z, y, x) in mm."""
    try:
        vals = tuple(float(v) for v in sp)
    except (TypeError, ValueError):
        raise ValueError(f"spacings[{k}]: {sp!r} is not three numbers") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"spacings[{k}]: {sp!r} must be three positive finite numbers "
                         "(z, y, x) in mm")
    return vals


def check_spacings(spacings: Sequence[Sequence[float]], n: int) -> list[tuple[float, ...]]:
    """One :func:`check_spacing` per case; ``n`` is the number of label arrays."""
    if isinstance(spacings, (str, bytes)) or not isinstance(spacings, Sequence | np.ndarray):
        raise ValueError("spacings: expected a list of (z, y, x) spacings in mm, one per case")
    if len(spacings) != n:
        raise ValueError(f"spacings: {len(spacings)} spacings for {n} label arrays; give one "
                         "(z, y, x) spacing per case")
    return [check_spacing(sp, k) for k, sp in enumerate(spacings)]


def check_target(target_dice: float) -> float:
    """The target mean Dice as a float in (0, 1]."""
    try:
        t = float(target_dice)
    except (TypeError, ValueError):
        raise ValueError(f"target_dice: {target_dice!r} is not a number") from None
    if isinstance(target_dice, bool) or not (0.0 < t <= 1.0):
        raise ValueError(f"target_dice: {target_dice!r} must lie in (0, 1]")
    return t


def check_seed(seed: int) -> int:
    """The seed as a non-negative Python int (booleans refused)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: {seed!r} must be a non-negative integer")
    return int(seed)
