"""The bundled synthetic phantom task, modelled on the paper's neonatal HIE setting.

Each case is a small 3D MR-like volume with two foreground classes: an organ (a deformed
ellipsoid, label 1) and an irregular, diffuse lesion inside it (label 2). Intensities carry
partial volume at boundaries (the scene is rendered at twice the resolution and averaged),
a smooth multiplicative bias field and Rician noise. Reference labels are exact (majority
class of each voxel's sub-voxels). A share of the cases is labelled by a simulated
less-experienced annotator: systematic over- or under-segmentation, boundary jitter and missed
small lesion parts, so that their lesion Dice against the reference is about 0.55 to 0.7.

``lesion_shape`` (a ``phantom`` source's key) asks whether the Bounded losses' collapse on the
lesion is about its thinness: ``diffuse`` (the default) is the thin, irregular lesion above;
``compact`` replaces it, in the same scene, by a blob of the same number of (high-resolution)
voxels: the organ-interior voxels nearest (in mm) to the diffuse lesion's voxel closest to its
centroid. Every random draw is the same for both shapes, so the organ, the seeds of the image
noise and the novice's draws stay the same; only the lesion (and hence its intensities) moves.

Everything is drawn from ``numpy.random.Generator`` streams spawned from one seed, so the same
seed gives bit-identical cases on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnrobustloss.datasets.base import CaseData, SourceCase

LESION_SHAPES: tuple[str, ...] = ("diffuse", "compact")
"""Values of a phantom source's ``lesion_shape`` (the first is the default)."""

PHANTOM_DEFAULTS: dict[str, Any] = {"n_cases": 14, "n_noisy_cases": 4, "shape": (20, 40, 40),
                                    "spacing": (2.0, 1.0, 1.0), "lesion_shape": LESION_SHAPES[0]}
"""The phantom source's settings when a config leaves them out (a ``phantom`` source's keys)."""

ORGAN, LESION = 1, 2


@dataclass(frozen=True)
class PhantomCase:
    """Arrays of one phantom case, all (z, y, x); spacing in mm (z, y, x)."""

    image: np.ndarray  # float32
    reference: np.ndarray  # uint8 in {0, 1, 2}
    noisy: np.ndarray  # uint8 in {0, 1, 2}
    spacing: tuple[float, float, float]
    annotator: str  # "expert" or "novice"


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise normalised to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="reflect")
    return (field - field.mean()) / (field.std() + 1e-12)


def _compact(lesion: np.ndarray, inside: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """A compact blob of ``lesion.sum()`` voxels of ``inside``: the voxels nearest (Euclidean,
    ``spacing`` in mm) to the lesion voxel closest to the lesion's centroid (ties broken by
    voxel order, so the result is deterministic). Empty for an empty lesion."""
    n = int(lesion.sum())
    if n == 0:
        return np.zeros_like(lesion)
    voxels = np.argwhere(lesion)
    centroid = voxels.mean(axis=0)
    centre = voxels[np.argmin((((voxels - centroid) * spacing) ** 2).sum(axis=1))]
    candidates = np.argwhere(inside)
    d2 = (((candidates - centre) * spacing) ** 2).sum(axis=1)
    chosen = candidates[np.argsort(d2, kind="stable")[:n]]
    blob = np.zeros_like(lesion)
    blob[tuple(chosen.T)] = True
    return blob


def _scene(rng: np.random.Generator, shape_hr: tuple[int, int, int],
           spacing_hr: np.ndarray, lesion_shape: str = LESION_SHAPES[0]) -> np.ndarray:
    """High-resolution label scene: background 0, organ 1, lesion 2 (lesion inside the organ);
    ``lesion_shape`` as in the module docstring."""
    zz, yy, xx = np.meshgrid(*[(np.arange(n) + 0.5) * s for n, s in zip(shape_hr, spacing_hr)],
                             indexing="ij")
    extent = np.array(shape_hr) * spacing_hr
    centre = extent / 2 + rng.uniform(-0.06, 0.06, 3) * extent
    radii = extent * rng.uniform(0.28, 0.38, 3)
    r = np.sqrt(((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                + ((xx - centre[2]) / radii[2]) ** 2)
    # Low-frequency shape deformation of the organ boundary.
    organ = r + 0.12 * _smooth_noise(rng, shape_hr, sigma=6.0) < 1.0
    # Diffuse lesion: thresholded smooth noise, kept well inside the organ; 1-3 seeds bias it.
    inner = ndimage.binary_erosion(organ, iterations=3)
    field = _smooth_noise(rng, shape_hr, sigma=2.5)
    n_seeds = int(rng.integers(1, 4))
    for _ in range(n_seeds):
        c = centre + rng.uniform(-0.5, 0.5, 3) * radii
        d = np.sqrt(((zz - c[0]) / radii[0]) ** 2 + ((yy - c[1]) / radii[1]) ** 2
                    + ((xx - c[2]) / radii[2]) ** 2)
        field = field + 2.5 * np.exp(-(d / 0.45) ** 2)
    lesion = (field > 1.2) & inner
    if lesion_shape == "compact":
        lesion = _compact(lesion, inner, spacing_hr)
    scene = organ.astype(np.uint8)
    scene[lesion] = LESION
    return scene


def _downsample_labels(scene_hr: np.ndarray) -> np.ndarray:
    """Majority label of each 2x2x2 block (ties favour the higher label, the smaller structure)."""
    z, y, x = (n // 2 for n in scene_hr.shape)
    blocks = scene_hr.reshape(z, 2, y, 2, x, 2)
    counts = np.stack([(blocks == k).sum(axis=(1, 3, 5)) for k in range(3)], axis=0)
    # argmax over reversed classes picks the highest label among ties.
    return (2 - np.argmax(counts[::-1], axis=0)).astype(np.uint8)


def _render(rng: np.random.Generator, scene_hr: np.ndarray) -> np.ndarray:
    """MR-like intensities: class means, partial volume, bias field and Rician noise."""
    means = np.array([0.15, 0.55, 0.85])
    intensity_hr = means[scene_hr] + 0.04 * _smooth_noise(rng, scene_hr.shape, sigma=1.5)
    z, y, x = (n // 2 for n in scene_hr.shape)
    image = intensity_hr.reshape(z, 2, y, 2, x, 2).mean(axis=(1, 3, 5))
    bias = np.exp(0.15 * _smooth_noise(rng, image.shape, sigma=8.0))
    image = image * bias
    sd = 0.05
    real = image + sd * rng.standard_normal(image.shape)
    imag = sd * rng.standard_normal(image.shape)
    return (np.sqrt(real**2 + imag**2) * 1000.0).astype(np.float32)


def _novice_annotation(rng: np.random.Generator, reference: np.ndarray) -> np.ndarray:
    """Labels of a simulated less-experienced annotator.

    Systematic over- or under-segmentation of the lesion (one dilation or erosion step), boundary
    jitter (a random smooth field flips voxels within one voxel of a boundary), missed small lesion
    components, and a mild organ boundary shift. Lesion voxels always stay inside the organ.
    """
    organ = reference >= ORGAN
    lesion = reference == LESION
    struct = ndimage.generate_binary_structure(3, 1)
    # Organ: mild jitter of its boundary.
    organ_band = organ ^ ndimage.binary_erosion(organ, struct)
    organ_band |= ndimage.binary_dilation(organ, struct) & ~organ
    flip = organ_band & (_smooth_noise(rng, reference.shape, 1.0) > 0.8)
    organ_n = organ ^ flip
    # Lesion: systematic bias first.
    if rng.random() < 0.5:
        lesion_n = ndimage.binary_dilation(lesion, struct)
    else:
        lesion_n = ndimage.binary_erosion(lesion, struct) | (
            lesion & (_smooth_noise(rng, reference.shape, 1.0) > 0.9))
    # Boundary jitter around the (biased) lesion.
    band = ndimage.binary_dilation(lesion_n, struct) ^ ndimage.binary_erosion(lesion_n, struct)
    lesion_n ^= band & (_smooth_noise(rng, reference.shape, 0.8) > 1.0)
    # Missed small parts: drop tiny components and one random smaller-than-largest component.
    comp, n = ndimage.label(lesion_n)
    if n:
        sizes = ndimage.sum_labels(lesion_n, comp, index=np.arange(1, n + 1))
        drop = sizes < 6
        smaller = np.flatnonzero(sizes < sizes.max())
        if smaller.size:  # the annotator overlooks one of the smaller parts, never the main one
            drop[int(rng.choice(smaller))] = True
        lesion_n &= ~np.isin(comp, np.flatnonzero(drop) + 1)
    out = organ_n.astype(np.uint8)
    out[lesion_n & organ_n] = LESION
    return out


def generate_phantom_case(seed: int | np.random.SeedSequence,
                          shape: Sequence[int] = PHANTOM_DEFAULTS["shape"],
                          spacing: Sequence[float] = PHANTOM_DEFAULTS["spacing"],
                          novice: bool = False,
                          lesion_shape: str = PHANTOM_DEFAULTS["lesion_shape"]) -> PhantomCase:
    """Generate one phantom case deterministically.

    ``shape`` is the output size in voxels (z, y, x), each at least 8; ``spacing`` in mm (z, y, x).
    The scene is rendered at twice the resolution for partial volume. ``novice`` selects the
    simulated less-experienced annotator for the noisy labels; otherwise noisy == reference.
    ``lesion_shape``: one of :data:`LESION_SHAPES` (see the module docstring).
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"phantom shape must be 3 sizes of at least 8 voxels, got {list(shape)}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be 3 positive numbers in mm, got {list(spacing)}")
    if lesion_shape not in LESION_SHAPES:
        raise ValueError(f"phantom lesion_shape must be one of {', '.join(LESION_SHAPES)}, got "
                         f"{lesion_shape!r}")
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    scene_rng, image_rng, label_rng = (np.random.default_rng(s) for s in ss.spawn(3))
    shape_hr = tuple(2 * int(n) for n in shape)
    spacing_hr = np.asarray(spacing, dtype=float) / 2
    scene_hr = _scene(scene_rng, shape_hr, spacing_hr, lesion_shape)  # type: ignore[arg-type]
    reference = _downsample_labels(scene_hr)
    image = _render(image_rng, scene_hr)
    noisy = _novice_annotation(label_rng, reference) if novice else reference.copy()
    return PhantomCase(image=image, reference=reference, noisy=noisy,
                       spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                       annotator="novice" if novice else "expert")


def novice_case_indices(n_cases: int, n_noisy_cases: int, seed: int) -> list[int]:
    """Indices (sorted) of the cases labelled by the novice annotator, drawn from the seed."""
    if not 0 <= n_noisy_cases <= n_cases:
        raise ValueError(f"n_noisy_cases must be in [0, n_cases={n_cases}], got {n_noisy_cases}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    return sorted(int(i) for i in rng.choice(n_cases, size=n_noisy_cases, replace=False))


def _to_image(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    return img


def phantom_source(n_cases: int = PHANTOM_DEFAULTS["n_cases"],
                   n_noisy_cases: int = PHANTOM_DEFAULTS["n_noisy_cases"],
                   shape: Sequence[int] = PHANTOM_DEFAULTS["shape"],
                   spacing: Sequence[float] = PHANTOM_DEFAULTS["spacing"],
                   lesion_shape: str = PHANTOM_DEFAULTS["lesion_shape"],
                   seed: int = 0) -> list[SourceCase]:
    """The phantom task as source cases ``phantom_000``, ``phantom_001``, ...

    Case ``i`` is generated from ``SeedSequence([seed, i])``, so adding cases never changes the
    existing cases' images, reference labels or novice labels. Which cases carry the novice
    labels (:func:`novice_case_indices`) is drawn from ``(n_cases, n_noisy_cases, seed)`` and may
    differ when ``n_cases`` changes. Cases are generated lazily when loaded. ``lesion_shape``:
    see the module docstring.
    """
    if n_cases < 1:
        raise ValueError(f"phantom n_cases must be at least 1, got {n_cases}")
    novices = set(novice_case_indices(n_cases, n_noisy_cases, seed))

    def loader(i: int):
        def load() -> CaseData:
            case = generate_phantom_case(np.random.SeedSequence([seed, i]), shape, spacing,
                                         novice=i in novices, lesion_shape=lesion_shape)
            return CaseData(image=_to_image(case.image, case.spacing),
                            reference=_to_image(case.reference, case.spacing),
                            noisy=_to_image(case.noisy, case.spacing))
        return load

    return [SourceCase(case_id=f"phantom_{i:03d}", origin=f"phantom generator (seed {seed}, case {i})",
                       load=loader(i)) for i in range(n_cases)]
