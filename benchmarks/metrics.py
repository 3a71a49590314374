"""Benchmark: nnrobustloss.metrics.evaluate_case vs the official-style surface-distance evaluation.

Cases: the real KiTS23 labels in ../shared/data/kits23_labels when present, else synthetic
512 x 512 x 300 volumes with two kidney-sized ellipsoids. Each case is grouped by its slice
spacing: ``thick`` (largest spacing >= 3 mm) or ``thin``. From every reference, one prediction
of each kind is made (seeded per kind and case; not part of the timing):

- ``boundary``: the kidney+masses boundary dilated or eroded by 1-2 voxels, the tumour eroded by
  one voxel, a small ball removed from the kidney and a small false-positive ball added;
- ``shift``: the whole label map translated by 1-2 voxels in a random direction;
- ``scattered``: 1-5 % of the foreground voxels flipped to another label or to background,
  plus as many isolated false-positive voxels within 5 voxels of the foreground (an
  under-trained network's speckle);
- ``missing``: the tumour removed entirely (its voxels set to background);
- ``extra``: a tumour-labelled ball of radius 8 mm added at least 40 mm from the foreground;
- ``empty``: all background.

Both implementations compute Dice, ASD and surface Dice of the three KiTS23 regions:

- ours: ``evaluate_case(pred, ref, spacing, KITS23_REGIONS, KITS23_TOLERANCES_MM)``;
- official style: as the KiTS23 evaluation does it: full-volume boolean region masks, Dice,
  then ``surface_distance.compute_surface_distances`` per region, surface Dice at the region's
  tolerance and ASD from the same distances and surfel areas. An empty region mask takes the
  KiTS23 rules first (both empty: Dice 1, ASD 0, surface Dice 1; one empty: Dice 0, ASD NaN,
  surface Dice 0), as surface-distance returns inf/NaN there (and raises under NumPy 2); the
  comparison counts NaN == NaN as equal and any other NaN as an infinite difference.

Times are CPU seconds of the process (``time.process_time``), the best of ``--repeats`` runs,
single process. Predictions are seeded by the kind's and the case's positions among all kinds
and cases, so a subset run (``--kinds``, ``--cases``) times the same predictions as the full
run. Run: ``python benchmarks/metrics.py [--repeats 2] [--kinds ...] [--cases ...]
[--out benchmarks/results/metrics.txt]``.
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
THICK_MM = 3.0
"""Cases whose largest voxel spacing is at least this (mm) form the thick-slice group."""

Case = tuple[str, np.ndarray, tuple[float, float, float]]
Result = dict[str, dict[str, float]]


def official_style(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float, float]
                   ) -> Result:
    """The KiTS23 evaluation's way: full-volume region masks, then surface-distance per region."""
    out: Result = {}
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


# ------------------------------------------------------------------ kinds of prediction


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return zz**2 + yy**2 + xx**2 <= radius**2


def _fg_box(ref: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the foreground grown by ``margin`` voxels (clipped to the volume)."""
    fg_idx = np.nonzero(ref)
    lo = np.maximum(np.min(fg_idx, axis=1) - margin, 0)
    hi = np.minimum(np.max(fg_idx, axis=1) + margin + 1, ref.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def boundary_error(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator
                   ) -> np.ndarray:
    """Boundary dilated (or eroded) by 1-2 voxels, tumour eroded, a ball removed and one added."""
    pred = ref.copy()
    box = _fg_box(ref, 8)
    sub, sub_ref = pred[box], ref[box]
    fg = sub_ref > 0
    iters = int(rng.integers(1, 3))
    if rng.random() < 0.5:  # over-segmentation: new boundary voxels become kidney
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


def shift(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """The label map translated by a random offset of 1-2 voxels (each axis in -2..2)."""
    while True:
        off = rng.integers(-2, 3, size=3)
        if 1 <= np.abs(off).max() <= 2:
            break
    pred = np.zeros_like(ref)
    src = tuple(slice(max(-o, 0), n - max(o, 0)) for o, n in zip(off, ref.shape, strict=True))
    dst = tuple(slice(max(o, 0), n - max(-o, 0)) for o, n in zip(off, ref.shape, strict=True))
    pred[dst] = ref[src]
    return pred


def scattered(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator
              ) -> np.ndarray:
    """1-5 % of the foreground voxels flipped to another label or background, and as many
    isolated false positives (random foreground label) within 5 voxels of the foreground."""
    pred = ref.copy()
    box = _fg_box(ref, 5)
    sub, sub_ref = pred[box], ref[box]
    fg = np.flatnonzero(sub_ref)
    frac = rng.uniform(0.01, 0.05)
    flip = rng.choice(fg, size=int(frac * fg.size), replace=False)
    old = sub_ref.flat[flip]
    sub.flat[flip] = (old + rng.integers(1, 4, size=flip.size)) % 4  # another of 0..3
    near = ndimage.binary_dilation(sub_ref > 0, iterations=5) & (sub_ref == 0)
    bg = np.flatnonzero(near)
    fp = rng.choice(bg, size=min(flip.size, bg.size), replace=False)
    sub.flat[fp] = rng.integers(1, 4, size=fp.size)
    return pred


def missing(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator
            ) -> np.ndarray:
    """The tumour (label 2) removed entirely: its voxels become background."""
    pred = ref.copy()
    pred[pred == 2] = 0
    return pred


def extra(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """A tumour-labelled ball (radius 8 mm) added >= 40 mm from the foreground box (else as far
    as the volume allows)."""
    pred = ref.copy()
    sp = np.asarray(spacing)
    half = np.maximum(np.round(8.0 / sp).astype(int), 1)
    box = _fg_box(ref, 0)
    lo = np.array([s.start for s in box]) * sp
    hi = np.array([s.stop - 1 for s in box]) * sp
    shape = np.asarray(ref.shape)
    best, best_d = None, -1.0
    for _ in range(2000):
        c = rng.integers(half, np.maximum(shape - half, half + 1))
        p = c * sp
        d = float(np.linalg.norm(np.maximum(np.maximum(lo - p, p - hi), 0.0)))
        if d > best_d:
            best, best_d = c, d
        if d >= 40.0:
            break
    assert best is not None
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    ball = sum((g * s) ** 2 for g, s in zip(grids, sp, strict=True)) <= 8.0**2
    sl = tuple(slice(int(c - h), int(c + h + 1)) for c, h in zip(best, half, strict=True))
    target = pred[sl]
    target[ball[tuple(slice(0, n) for n in target.shape)]] = 2
    return pred


def empty(ref: np.ndarray, spacing: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    """All background."""
    return np.zeros_like(ref)


KINDS: dict[str, Callable[[np.ndarray, tuple[float, ...], np.random.Generator], np.ndarray]] = {
    "boundary": boundary_error, "shift": shift, "scattered": scattered, "missing": missing,
    "extra": extra, "empty": empty,
}


# ------------------------------------------------------------------ cases, timing, comparison


def synthetic_cases(n: int = 3) -> list[Case]:
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
        cases.append((f"synthetic_{i}", lab, (1.0 + 2.0 * i, 0.8, 0.8)))
    return cases


def real_case_names() -> list[str]:
    """Names of all real KiTS23 cases, sorted (a case's position seeds its predictions)."""
    return sorted(f.parent.name for f in KITS_DIR.glob("case_*/segmentation.nii.gz"))


def real_cases(names: list[str] | None) -> list[Case]:
    cases = []
    for name in real_case_names():
        if names and name not in names:
            continue
        img = sitk.ReadImage(str(KITS_DIR / name / "segmentation.nii.gz"))
        spacing = tuple(float(s) for s in img.GetSpacing()[::-1])
        cases.append((name, sitk.GetArrayFromImage(img), spacing))
    return cases


def max_rel_diff(a: Result, b: Result) -> float:
    """Largest relative difference over regions and metrics (NaN equals only NaN)."""
    worst = 0.0
    for region, vals in b.items():
        for metric, vb in vals.items():
            va = a[region][metric]
            if np.isnan(vb) or np.isnan(va):
                worst = max(worst, 0.0 if np.isnan(vb) and np.isnan(va) else np.inf)
                continue
            worst = max(worst, abs(va - vb) / max(abs(vb), 1e-12))
    return worst


def best_time(fn: Callable[[], Result], repeats: int) -> tuple[float, Result]:
    """Best CPU time (process_time) of ``repeats`` calls and the last result."""
    best, result = np.inf, {}
    for _ in range(repeats):
        t0 = time.process_time()
        result = fn()
        best = min(best, time.process_time() - t0)
    return best, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--cases", nargs="*", default=None, help="real case names (default all)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    cases = real_cases(args.cases) if KITS_DIR.is_dir() else []
    source = f"real KiTS23 labels ({KITS_DIR.resolve()})" if cases else "synthetic volumes"
    # seeds from the positions among all kinds and all cases: a run on a subset (--kinds,
    # --cases) makes the same predictions as the full run
    all_names = real_case_names() if cases else []
    if not cases:
        cases = synthetic_cases()
        all_names = [c[0] for c in cases]
    lines = [
        "# metrics benchmark: nnrobustloss.metrics.evaluate_case vs official-style "
        "surface-distance evaluation",
        f"# cases: {source}; group thick = largest spacing >= {THICK_MM:g} mm, else thin",
        "# kinds of prediction (seeded): " + ", ".join(args.kinds),
        "# 3 KiTS23 regions x (Dice, ASD, surface Dice); empty masks: KiTS23 rules on both sides, "
        "NaN == NaN",
        f"# time: CPU seconds of the process (time.process_time), best of {args.repeats} runs; "
        f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}",
        f"{'kind':<10} {'case':<12} {'group':<5} {'shape':>12} {'t_ours[s]':>10} "
        f"{'t_ref[s]':>9} {'speed-up':>9} {'max_rel_diff':>13}",
    ]
    print("\n".join(lines), flush=True)
    totals: dict[tuple[str, str], list[float]] = {}
    for kind in args.kinds:
        for name, ref, spacing in cases:
            group = "thick" if max(spacing) >= THICK_MM else "thin"
            seed = [list(KINDS).index(kind), all_names.index(name)]
            pred = KINDS[kind](ref, spacing, np.random.default_rng(seed))
            t_ours, ours = best_time(
                lambda p=pred, r=ref, s=spacing: evaluate_case(p, r, s, KITS23_REGIONS,
                                                               KITS23_TOLERANCES_MM),
                args.repeats)
            t_ref, theirs = best_time(lambda p=pred, r=ref, s=spacing: official_style(p, r, s),
                                      args.repeats)
            diff = max_rel_diff(ours, theirs)
            for key in ((kind, group), (kind, "all"), ("all", group), ("all", "all")):
                acc = totals.setdefault(key, [0.0, 0.0, 0.0])
                acc[0] += t_ours
                acc[1] += t_ref
                acc[2] = max(acc[2], diff)
            line = (f"{kind:<10} {name:<12} {group:<5} {'x'.join(map(str, ref.shape)):>12} "
                    f"{t_ours:>10.3f} {t_ref:>9.3f} {t_ref / t_ours:>8.1f}x {diff:>13.2e}")
            lines.append(line)
            print(line, flush=True)
    summary = ["", "# totals per kind and slice group (sum of the per-case times)",
               f"{'kind':<10} {'group':<5} {'t_ours[s]':>10} {'t_ref[s]':>9} {'speed-up':>9} "
               f"{'max_rel_diff':>13}"]
    for kind in [*args.kinds, "all"]:
        for group in ("thick", "thin", "all"):
            if (kind, group) not in totals:
                continue
            t_o, t_r, d = totals[(kind, group)]
            summary.append(f"{kind:<10} {group:<5} {t_o:>10.3f} {t_r:>9.3f} {t_r / t_o:>8.1f}x "
                           f"{d:>13.2e}")
    print("\n".join(summary))
    lines += summary
    if args.out is not None:
        write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
