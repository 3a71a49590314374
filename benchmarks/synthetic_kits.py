"""A synthetic KiTS23-like task (CT, kidney / tumour / cyst) and helpers shared by the GPU and
memory benchmarks: case generation, real nnU-Net planning and preprocessing, peak memory.

A case is a CT-like volume (air, a body ellipse at soft-tissue HU, two kidneys, a tumour and a
cyst in one of them, Gaussian noise), drawn from ``numpy.random.default_rng([seed, i])``. Its
labels follow KiTS23 (0 background, 1 kidney, 2 tumor, 3 cyst); the noisy labels equal the
reference (memory and speed do not depend on the noise).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

# the paper's KiTS23 resolution: 512 x 512 in-plane at 0.8 mm, 200 slices at 1 mm (z, y, x)
KITS_SHAPE = (200, 512, 512)
KITS_SPACING = (1.0, 0.8, 0.8)
KITS_LABELS = {"background": 0, "kidney": 1, "tumor": 2, "cyst": 3}


def _ellipsoid(shape: Sequence[int], spacing: Sequence[float], centre_mm: np.ndarray,
               radii_mm: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid on the grid, built from broadcast axes (no full coordinate arrays)."""
    axes = [((np.arange(n, dtype=np.float32) + 0.5) * s - c) / r
            for n, s, c, r in zip(shape, spacing, centre_mm, radii_mm, strict=True)]
    z, y, x = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    return (z * z + y * y + x * x) < 1.0


def kits_like_case(i: int, shape: Sequence[int] = KITS_SHAPE,
                   spacing: Sequence[float] = KITS_SPACING,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 HU, labels uint8) of synthetic case ``i``, both (z, y, x) of ``shape``."""
    rng = np.random.default_rng([seed, i])
    extent = np.asarray(shape, dtype=np.float64) * np.asarray(spacing)
    image = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    body = _ellipsoid(shape, spacing, extent / 2, extent * np.array([0.6, 0.4, 0.45]))
    image[body] = 40.0
    for side in (-1, 1):
        centre = extent / 2 + extent * np.array([rng.uniform(-0.05, 0.05), 0.05, side * 0.18])
        radii = extent * np.array([0.2, 0.08, 0.06]) * rng.uniform(0.9, 1.1, 3)
        kidney = _ellipsoid(shape, spacing, centre, radii)
        image[kidney] = 180.0
        labels[kidney] = KITS_LABELS["kidney"]
        if side == 1:  # tumour and cyst in the right kidney, partly outside it
            for name, hu, off, size in (("tumor", 90.0, 0.8, 0.45), ("cyst", 10.0, -0.7, 0.3)):
                lesion = _ellipsoid(shape, spacing, centre + radii * np.array([off, 0.3, 0.5]),
                                    radii * size)
                image[lesion] = hu
                labels[lesion] = KITS_LABELS[name]
    image += rng.normal(0.0, 20.0, size=shape).astype(np.float32)
    return image, labels


def kits_like_sources(n_cases: int, shape: Sequence[int], spacing: Sequence[float],
                      seed: int = 0) -> list:
    """The synthetic cases as the converter's ``SourceCase`` list (loaded lazily)."""
    import SimpleITK as sitk

    from nnrobustloss.datasets.base import CaseData, SourceCase

    def image(array: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        return img

    def loader(i: int):
        def load() -> CaseData:
            img, lab = kits_like_case(i, shape, spacing, seed)
            return CaseData(image=image(img), reference=image(lab), noisy=image(lab))
        return load

    return [SourceCase(f"kits_like_{i:03d}", f"synthetic KiTS-like case {i}", loader(i))
            for i in range(n_cases)]


def prepare_task(root: Path, shape: Sequence[int], spacing: Sequence[float], planner: str,
                 n_cases: int = 2, cpu_plan: dict | None = None,
                 num_processes: int = 1) -> tuple[Path, Path, Path]:
    """Write the raw twins of task ``KitsLike`` (datasets 991/992) under ``root``, split them in
    two folds and run nnU-Net's fingerprint, ``planner`` and preprocessing (the package's plan
    stage). Returns the preprocessed noisy and reference datasets and the raw noisy dataset."""
    from nnrobustloss.datasets.raw import write_raw_datasets
    from nnrobustloss.planning import plan_and_preprocess
    from nnrobustloss.splits import write_splits

    raw = write_raw_datasets("KitsLike", kits_like_sources(n_cases, shape, spacing), 991, 992,
                             KITS_LABELS, root / "raw", root / "reference", channel="CT")
    splits = root / "splits" / "KitsLike.json"
    write_splits(raw.noisy, splits, n_folds=2, seed=0)
    pre, pre_ref = plan_and_preprocess("KitsLike", 991, 992, root, planner=planner,
                                       cpu_plan=cpu_plan, splits_file=splits,
                                       num_processes=num_processes)
    return pre, pre_ref, raw.noisy


# ---------------------------------------------------------------------------- peak memory

def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """Measure the peak memory of the block in bytes: ``{"peak", "base"}``.

    CUDA: ``torch.cuda.max_memory_allocated`` (peak reset on entry; ``base`` = allocated on
    entry). CPU (Linux): the process's resident-set high-water mark (VmHWM, reset on entry by
    writing 5 to ``/proc/self/clear_refs``; ``base`` = VmRSS on entry). Run the CPU variant with
    ``MALLOC_MMAP_THRESHOLD_`` small (see :func:`cpu_malloc_env`) so that freed tensors leave
    the resident set at once.
    """
    import torch

    out: dict[str, float] = {}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        out["base"] = float(torch.cuda.memory_allocated())
        yield out
        torch.cuda.synchronize()
        out["peak"] = float(torch.cuda.max_memory_allocated())
        out["reserved"] = float(torch.cuda.max_memory_reserved())
    else:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        out["base"] = float(_proc_status_bytes("VmRSS"))
        yield out
        out["peak"] = float(_proc_status_bytes("VmHWM"))


def cpu_malloc_env() -> dict[str, str]:
    """Environment for a child process whose resident set follows its live tensors: glibc serves
    every block over 128 KiB by mmap and returns it on free."""
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def log(msg: str) -> None:
    """Progress line on stderr (stdout holds the table)."""
    print(msg, file=sys.stderr, flush=True)
