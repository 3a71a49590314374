"""Seconds per training epoch of every method through the real nnU-Net pipeline.

Usage::

    nnUNet_n_proc_DA=0 python benchmarks/trainers.py PREPROCESSED_DATASET_DIR \
        [--epochs 3] [--iterations 6] [--val-iterations 2] [--threads 1]

Trains each method (``BaselineRef`` is the Baseline trainer and is skipped) for ``--epochs``
epochs on fold 0 in a temporary folder, on the CPU, and prints a Markdown table: the mean
``epoch_seconds`` of progress.csv (training + validation iterations, nnU-Net's own epoch time)
over the epochs after the first, and the wall time per epoch including checkpointing and
nnU-Net's progress.png (``total / epochs``, start-up excluded).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    """Parse arguments, train every method briefly, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preprocessed_dir", type=Path)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--val-iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    torch.set_num_threads(args.threads)

    from nnrobustloss.methods import METHODS
    from nnrobustloss.trainers.progress import read_progress_csv
    from nnrobustloss.training import train

    rows = []
    for method in METHODS:
        if method == "BaselineRef":
            continue
        with tempfile.TemporaryDirectory() as d:
            starts: list[float] = []
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's console log
                train(args.preprocessed_dir, method, 0, Path(d) / method, epochs=args.epochs,
                      iterations_per_epoch=args.iterations,
                      val_iterations_per_epoch=args.val_iterations,
                      coteaching={"delay": 0, "gradual": 0}, device="cpu",
                      epoch_callback=lambda e, m, s=starts: s.append(time.perf_counter()))
            total = time.perf_counter() - t0
            prog = read_progress_csv(Path(d) / method / "progress.csv")
        secs = [float(r["epoch_seconds"]) for r in prog]
        steady = secs[1:] if len(secs) > 1 else secs
        wall = np.diff(starts).mean() if len(starts) > 1 else float("nan")
        rows.append((method, float(np.mean(steady)), float(wall), total))
    base = rows[0][1]
    print(f"# Seconds per epoch, {args.iterations} train + {args.val_iterations} val iterations, "
          f"CPU, {args.threads} torch thread(s), dataset {args.preprocessed_dir.name}\n")
    print("| method | epoch_seconds (progress.csv) | x Baseline | wall s/epoch (incl. checkpoint,"
          " plot) | total s incl. start-up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for method, sec, wall, total in rows:
        print(f"| {method} | {sec:.2f} | {sec / base:.2f} | {wall:.2f} | {total:.1f} |")


if __name__ == "__main__":
    main()
