"""Benchmark: nnrobustloss.metrics.evaluate_case vs the official-style surface-distance evaluation.

For each KiTS-sized case (the real KiTS23 labels in ../shared/data/kits23_labels when present,
else synthetic 512 x 512 x 300 volumes with two kidney-sized ellipsoids) a realistic prediction
is made from the reference: the kidney+masses boundary dilated or eroded by 1-2 voxels, the
tumour eroded by one voxel, a small ball removed from the kidney and a small false-positive ball
added. Both implementations compute Dice, ASD and surface Dice of the three KiTS23 regions in
the same run:

- ours: ``evaluate_case(pred, ref, spacing, KITS23_REGIONS, KITS23_TOLERANCES_MM)``;
- reference: as the official KiTS23 evaluation does it: full-volume boolean region masks, Dice,
  then ``surface_distance.compute_surface_distances`` per region, surface Dice at the region's
  tolerance and ASD from the same distances and surfel areas.

Times are the best of ``--repeats`` runs (single process, single thread). Run:
``python benchmarks/metrics.py [--repeats 2] [--out benchmarks/results/metrics.txt]``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import surface_distance as sdist
from scipy import ndimage

from nnrobustloss.fileio import write_text
from nnrobustloss.metrics import KITS23_REGIONS, KITS23_TOLERANCES_MM, evaluate_case

KITS_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kits23_labels"


def official_style(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]
                   ) -> dict[str, dict[str, float]]:
    """The KiTS23 evaluation's way: full-volume region masks, then surface-distance per region."""
    out: dict[str, dict[str, float]] = {}
    for name, labels in KITS23_REGIONS.items():
        m_pred = pred == labels[0]
        m_ref = ref == labels[0]
        for lab in labels[1:]:
            m_pred |= pred == lab
            m_ref |= ref == lab
        e_pred, e_ref = not m_pred.any(), not m_ref.any()
        if e_pred and e_ref:
            out[name] = {"dice": 1.0, "asd": 0.0, "surface_dice": 1.0}
            continue
        if e_pred or e_ref:
            out[name] = {"dice": 0.0, "asd": float("nan"), "surface_dice": 0.0}
            continue
        inter = np.count_nonzero(m_pred & m_ref)
        dice = 2 * inter / (np.count_nonzero(m_pred) + np.count_nonzero(m_ref))
        d = sdist.compute_surface_distances(m_ref, m_pred, spacing)
        a_gt, a_pr = d["surfel_areas_gt"], d["surfel_areas_pred"]
        asd = ((np.sum(d["distances_gt_to_pred"] * a_gt) + np.sum(d["distances_pred_to_gt"] * a_pr))
               / (a_gt.sum() + a_pr.sum()))
        sdice = sdist.compute_surface_dice_at_tolerance(d, KITS23_TOLERANCES_MM[name])
        out[name] = {"dice": float(dice), "asd": float(asd), "surface_dice": float(sdice)}
    return out


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius**2


def make_prediction(ref: np.ndarray, seed: int) -> np.ndarray:
    """A realistic prediction error, made on the foreground box (not part of the timing)."""
    rng = np.random.default_rng(seed)
    pred = ref.copy()
    fg_idx = np.nonzero(ref)
    lo = np.maximum(np.min(fg_idx, axis=1) - 8, 0)
    hi = np.minimum(np.max(fg_idx, axis=1) + 9, ref.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub, sub_ref = pred[box], ref[box]
    fg = sub_ref > 0
    iters = 1 + seed % 2
    if seed % 2 == 0:  # over-segmentation: new boundary voxels become kidney
        grown = ndimage.binary_dilation(fg, iterations=iters)
        sub[grown & ~fg] = 1
    else:  # under-segmentation
        sub[fg & ~ndimage.binary_erosion(fg, iterations=iters)] = 0
    tumour = sub_ref == 2
    if tumour.any():
        sub[tumour & ~ndimage.binary_erosion(tumour) & (sub == 2)] = 1
    ball = _ball(4)
    for value, where in ((0, np.argwhere(sub_ref == 1)), (2, np.argwhere(sub_ref == 0))):
        c = where[rng.integers(len(where))]
        sl = tuple(slice(max(int(ci) - 4, 0), int(ci) + 5) for ci in c)
        region = sub[sl]
        b = ball[tuple(slice(0, s) for s in region.shape)]
        region[b] = value  # removed blob (0) / added false-positive blob (2)
    return pred


def synthetic_cases(n: int = 3) -> list[tuple[str, np.ndarray, tuple[float, float, float]]]:
    """512 x 512 x 300 label maps (z first) with two kidney-like ellipsoids and a tumour."""
    cases = []
    zz, yy, xx = np.ogrid[:300, :512, :512]
    for i in range(n):
        lab = np.zeros((300, 512, 512), dtype=np.uint8)
        for cx in (170 + 5 * i, 340 - 5 * i):
            k = ((zz - 150) / 60.0) ** 2 + ((yy - 260) / 45.0) ** 2 + ((xx - cx) / 35.0) ** 2 <= 1
            lab[k] = 1
        t = (zz - 170) ** 2 + (yy - 280) ** 2 + (xx - 180) ** 2 <= (12 + 3 * i) ** 2
        lab[t] = 2
        cases.append((f"synthetic_{i}", lab, (1.0, 0.8, 0.8)))
    return cases


def real_cases() -> list[tuple[str, np.ndarray, tuple[float, float, float]]]:
    cases = []
    for f in sorted(KITS_DIR.glob("case_*/segmentation.nii.gz")):
        img = sitk.ReadImage(str(f))
        spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
        cases.append((f.parent.name, sitk.GetArrayFromImage(img), spacing))
    return cases


def max_rel_diff(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> float:
    worst = 0.0
    for region, vals in b.items():
        for metric, vb in vals.items():
            va = a[region][metric]
            if np.isnan(vb) or np.isnan(va):
                worst = max(worst, 0.0 if np.isnan(vb) and np.isnan(va) else np.inf)
                continue
            worst = max(worst, abs(va - vb) / max(abs(vb), 1e-12))
    return worst


def best_time(fn: Callable[[], dict[str, dict[str, float]]], repeats: int
              ) -> tuple[float, dict[str, dict[str, float]]]:
    """Best wall time of ``repeats`` calls and the last result."""
    best, result = np.inf, {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    cases = real_cases() if KITS_DIR.is_dir() else []
    source = f"real KiTS23 labels ({KITS_DIR.resolve()})" if cases else "synthetic volumes"
    if not cases:
        cases = synthetic_cases()
    lines = [
        "# metrics benchmark: nnrobustloss.metrics.evaluate_case vs official-style "
        "surface-distance evaluation",
        f"# cases: {source}; prediction: ref +/- 1-2 voxel boundary error, tumour eroded, "
        "ball removed + ball added",
        f"# 3 KiTS23 regions x (Dice, ASD, surface Dice); best of {args.repeats} runs; python "
        f"{platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"{'case':<12} {'shape':>16} {'t_ours[s]':>10} {'t_ref[s]':>9} {'speed-up':>9} "
        f"{'max_rel_diff':>13}",
    ]
    print("\n".join(lines), flush=True)
    t_ours_all = t_ref_all = 0.0
    worst = 0.0
    for i, (name, ref, spacing) in enumerate(cases):
        pred = make_prediction(ref, seed=i)
        t_ours, ours = best_time(
            lambda p=pred, r=ref, s=spacing: evaluate_case(p, r, s, KITS23_REGIONS,
                                                           KITS23_TOLERANCES_MM), args.repeats)
        t_ref, theirs = best_time(lambda p=pred, r=ref, s=spacing: official_style(p, r, s),
                                  args.repeats)
        diff = max_rel_diff(ours, theirs)
        worst = max(worst, diff)
        t_ours_all += t_ours
        t_ref_all += t_ref
        line = (f"{name:<12} {'x'.join(map(str, ref.shape)):>16} {t_ours:>10.3f} {t_ref:>9.3f} "
                f"{t_ref / t_ours:>8.1f}x {diff:>13.2e}")
        lines.append(line)
        print(line, flush=True)
    total = (f"{'total':<12} {'':>16} {t_ours_all:>10.3f} {t_ref_all:>9.3f} "
             f"{t_ref_all / t_ours_all:>8.1f}x {worst:>13.2e}")
    lines.append(total)
    print(total)
    if args.out is not None:
        write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
