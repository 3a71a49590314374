"""Synthetic CT images for real label maps (KiTS23 references come without their CT images).

The image has the label map's geometry (size, spacing, origin, direction) and HU-like
intensities: air outside an elliptic body cylinder, soft tissue inside it, a mean per label
(contrast-enhanced kidney brighter than tumour, cyst near water) and Gaussian noise. It is not
anatomy; it gives nnU-Net's CT normalisation, planning, training and inference real volume
sizes and a learnable contrast. Deterministic per seed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import read_image, write_image

AIR_HU = -1000.0
#: mean HU per label value (KiTS23: 0 background soft tissue, 1 kidney, 2 tumour, 3 cyst)
KITS23_HU: dict[int, float] = {0: 40.0, 1: 180.0, 2: 90.0, 3: 10.0}
NOISE_HU = 25.0


def _in_plane_axes(spacing_zyx: tuple[float, ...]) -> tuple[int, int]:
    """The two array axes whose spacings are closest to each other (a CT's slice plane)."""
    pairs = [(0, 1), (0, 2), (1, 2)]
    return min(pairs, key=lambda p: (abs(spacing_zyx[p[0]] - spacing_zyx[p[1]]), -p[0]))


def synthetic_ct_for_labels(label: sitk.Image, seed: int = 0,
                            hu: Mapping[int, float] = KITS23_HU,
                            noise_hu: float = NOISE_HU) -> sitk.Image:
    """An int16 CT-like image with ``label``'s geometry.

    Voxels of label value ``v`` get ``hu[v]`` plus N(0, ``noise_hu``) noise; voxels outside an
    elliptic cylinder (axis along the slice direction, 95 % of the slice plane, labels always
    inside) are air (-1000 HU) plus noise. The same ``label`` and ``seed`` give the same image.
    Raises InputDataError when ``label`` holds a value that ``hu`` does not list.
    """
    arr = sitk.GetArrayViewFromImage(label)
    values = np.unique(arr)
    unknown = sorted(int(v) for v in values if int(v) not in hu)
    if unknown:
        raise InputDataError(f"label values {unknown} have no intensity in the synthetic CT's "
                             f"table (values {sorted(hu)}); pass hu= for them.")
    lut = np.full(int(values.max()) + 1, AIR_HU, dtype=np.float32)
    for v, mean in hu.items():
        if 0 <= v < lut.size:
            lut[v] = mean
    image = lut[arr]
    spacing_zyx = tuple(reversed(label.GetSpacing()))
    a, b = _in_plane_axes(spacing_zyx)
    ya = (np.arange(arr.shape[a]) - (arr.shape[a] - 1) / 2) / (0.475 * arr.shape[a])
    yb = (np.arange(arr.shape[b]) - (arr.shape[b] - 1) / 2) / (0.475 * arr.shape[b])
    outside = (ya[:, None] ** 2 + yb[None, :] ** 2) > 1.0
    shape = [1, 1, 1]
    shape[a], shape[b] = arr.shape[a], arr.shape[b]
    air = np.broadcast_to(outside.reshape(shape), arr.shape) & (arr == 0)
    image[air] = AIR_HU
    rng = np.random.default_rng(seed)
    image += rng.standard_normal(arr.shape, dtype=np.float32) * np.float32(noise_hu)
    out = sitk.GetImageFromArray(np.clip(np.rint(image), -1024, 3071).astype(np.int16))
    out.CopyInformation(label)
    return out


def write_synthetic_kits23(labels_root: str | os.PathLike[str], dest: str | os.PathLike[str],
                           cases: Iterable[str], seed: int = 0) -> list[Path]:
    """A KiTS23 source folder ``dest/case_XXXXX/{imaging,segmentation}.nii.gz`` for ``cases``.

    ``segmentation.nii.gz`` is a symbolic link to ``labels_root/<case>/segmentation.nii.gz``
    (the real reference, never copied); ``imaging.nii.gz`` is :func:`synthetic_ct_for_labels`
    of it, seeded ``seed + i`` for the i-th case and written atomically. A case whose image
    already exists is kept (rerunning costs nothing). Returns the case folders.
    """
    root, out_root = Path(labels_root), Path(dest)
    folders = []
    for i, case in enumerate(cases):
        seg = (root / case / "segmentation.nii.gz").resolve()
        if not seg.is_file():
            raise InputDataError(f"{seg}: KiTS23 segmentation not found; cases are folder names "
                                 f"of {root} (e.g. case_00021).")
        folder = out_root / case
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / "segmentation.nii.gz"
        if not link.is_symlink() or link.resolve() != seg:
            link.unlink(missing_ok=True)
            link.symlink_to(seg)
        if not (folder / "imaging.nii.gz").is_file():
            write_image(synthetic_ct_for_labels(read_image(seg), seed=seed + i),
                        folder / "imaging.nii.gz")
        folders.append(folder)
    return folders
