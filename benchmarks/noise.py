"""Benchmark: calibrated boundary noise on the 12 real KiTS23 segmentations (full CT size).

Usage: python benchmarks/noise.py [KITS23_LABELS_DIR] [--target DICE] [--seed 0]

Loads every ``case_*/segmentation.nii.gz`` below the folder (default
/work/shared/data/kits23_labels), runs ``corrupt_dataset`` with the default KiTS23 structures
and prints one row per case: array shape, spacing (mm, array axis order), seconds of the case's
own share (label counts, bounding boxes, distance transforms, final corruption), and the Dice
of noisy vs reference (recomputed on the full arrays with ``dice_per_case``). Then the total
time, the calibration's evaluations and the achieved mean Dice. The output is committed as
benchmarks/results/noise.txt.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnrobustloss.fileio import read_image
from nnrobustloss.noise import DEFAULT_TARGET_DICE, corrupt_dataset_with_calibration, dice_per_case

DEFAULT_DIR = Path("/work/shared/data/kits23_labels")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--target", type=float, default=DEFAULT_TARGET_DICE,
                    help="target mean Dice (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    files = sorted(args.labels_dir.glob("case_*/segmentation.nii.gz"))
    if not files:
        print(f"{args.labels_dir}: no case_*/segmentation.nii.gz found", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    labels, spacings = [], []
    for f in files:
        img = read_image(f)
        labels.append(sitk.GetArrayFromImage(img))
        spacings.append(tuple(float(s) for s in img.GetSpacing()[::-1]))  # array axis order
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    noisy, info = corrupt_dataset_with_calibration(labels, spacings, args.target, args.seed)
    total_s = time.perf_counter() - t0
    dice = [dice_per_case(n, r) for n, r in zip(noisy, labels, strict=True)]

    print(f"Boundary noise on {len(files)} KiTS23 label maps from {args.labels_dir}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()}; target Dice {args.target}, seed {args.seed}, "
          f"structures {[list(g) for g in info.structures]}")
    print()
    head = (f"{'case':<11} {'shape':>15} {'spacing (mm)':>20} {'flips (d/e)':>11} "
            f"{'setup s':>8} {'paint s':>8} {'case s':>7} {'Dice':>7}")
    print(head)
    print("-" * len(head))
    for k, f in enumerate(files):
        shape = "x".join(str(n) for n in labels[k].shape)
        sp = "x".join(f"{s:.3g}" for s in spacings[k])
        flips = "".join("d" if d else "e" for d in info.dilate[k])
        own = info.setup_seconds[k] + info.paint_seconds[k]
        print(f"{f.parent.name:<11} {shape:>15} {sp:>20} {flips:>11} "
              f"{info.setup_seconds[k]:8.2f} {info.paint_seconds[k]:8.2f} {own:7.2f} "
              f"{dice[k]:7.4f}")
    print("-" * len(head))
    own_total = sum(info.setup_seconds) + sum(info.paint_seconds)
    print(f"reading the {len(files)} NIfTI files: {load_s:.1f} s (not counted below)")
    print(f"corrupt_dataset total: {total_s:.1f} s (cases' own share {own_total:.1f} s, "
          f"calibration search {info.calibration_seconds:.1f} s incl. distance transforms)")
    print(f"calibration: {info.evaluations} evaluations of the mean Dice, "
          f"radius scale {info.scale_mm:.4f} mm (radii = scale x U(0, 2))")
    if info.partial_layer is None:
        print("no partial layer needed (the closest whole-layer step is within 0.001)")
    else:
        k, j, level, moved, size = info.partial_layer
        print(f"partial layer: {files[k].parent.name}, structure {list(info.structures[j])}, "
              f"{moved} of the {size} voxels at {level:.3f} mm moved")
    print(f"achieved mean Dice {np.mean(dice):.4f} (calibration's own value "
          f"{info.mean_dice:.4f}), target {args.target}, "
          f"|error| {abs(np.mean(dice) - args.target):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
