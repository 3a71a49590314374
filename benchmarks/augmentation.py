"""Throughput of the seeded augmentation workers against nnU-Net's non-deterministic augmenter.

Usage::

    python benchmarks/augmentation.py PREPROCESSED_DATASET_DIR [--workers 2] [--batches 60]
        [--epochs 3] [--iterations 20] [--threads 1] [--out benchmarks/results/augmentation.md]

Two measurements on the CPU, each for in-process augmentation (0 workers), nnU-Net's
``NonDetMultiThreadedAugmenter(seeds=None)`` and this package's seeded ``MultiThreadedAugmenter``
(:mod:`nnrobustloss.trainers.augmentation`) with ``--workers`` processes:

1. loader alone: batches per second drawn from the Baseline trainer's training loader
   (nnU-Net's real sampling and augmentation), after the warm-up batch;
2. training: iterations per second of Baseline trainings of ``--epochs`` x ``--iterations``
   (progress.csv ``epoch_seconds``, epochs after the first), the network on ``--threads``
   torch threads; nnU-Net's augmenter is what ``nnUNetTrainer.get_dataloaders`` builds.

It also checks that two seeded runs give the same losses and two non-deterministic ones (in
general) do not. Prints a Markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODES = ("in-process (0 workers)", "nnU-Net NonDet", "seeded (this package)")


@contextlib.contextmanager
def _mode(mode: str, workers: int):
    """Make RobustTrainer build the loaders of ``mode`` (nnU-Net's NonDet: its own
    get_dataloaders with nnUNet_n_proc_DA = workers)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnrobustloss.trainers.base import RobustTrainer

    original = RobustTrainer.get_dataloaders
    old_env = os.environ.get("nnUNet_n_proc_DA")
    try:
        if mode == MODES[1]:
            RobustTrainer.get_dataloaders = nnUNetTrainer.get_dataloaders  # type: ignore[method-assign]
            os.environ["nnUNet_n_proc_DA"] = str(workers)
        yield 0 if mode == MODES[0] else workers
    finally:
        RobustTrainer.get_dataloaders = original  # type: ignore[method-assign]
        if old_env is None:
            os.environ.pop("nnUNet_n_proc_DA", None)
        else:
            os.environ["nnUNet_n_proc_DA"] = old_env


def _trainer(pre: Path, out: Path, workers: int, iterations: int, epochs: int):
    from nnrobustloss.fileio import read_json
    from nnrobustloss.planning import nnunet_paths
    from nnrobustloss.trainers.loading import load_trainer_class
    from nnrobustloss.training import build_settings, resolve_device

    plans = read_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False
    with nnunet_paths(results=str(out)):
        trainer = load_trainer_class("Baseline")(
            plans=plans, configuration="3d_fullres", fold=0,
            dataset_json=read_json(pre / "dataset.json"), device=resolve_device("cpu"))
        trainer.set_output_paths(out, pre)
    trainer.configure(build_settings("Baseline", epochs=epochs, iterations_per_epoch=iterations,
                                     val_iterations_per_epoch=1), augmentation_workers=workers)
    return trainer


def loader_rate(pre: Path, mode: str, workers: int, batches: int) -> float:
    """Batches per second of the training loader of ``mode`` (after the warm-up batch)."""
    with _mode(mode, workers) as n, tempfile.TemporaryDirectory() as d, \
            contextlib.redirect_stdout(io.StringIO()):
        trainer = _trainer(pre, Path(d), n, 10, 1)
        trainer.initialize()
        train_loader, val_loader = trainer.get_dataloaders()
        try:
            t0 = time.perf_counter()
            for _ in range(batches):
                next(train_loader)
            return batches / (time.perf_counter() - t0)
        finally:
            trainer.dataloader_train, trainer.dataloader_val = train_loader, val_loader
            trainer._shutdown_dataloaders()


def training_rate(pre: Path, mode: str, workers: int, epochs: int,
                  iterations: int) -> tuple[float, list[str]]:
    """Training iterations per second (epochs after the first) and the epochs' train losses."""
    from nnrobustloss.trainers.progress import read_progress_csv
    from nnrobustloss.training import train

    with _mode(mode, workers) as n, tempfile.TemporaryDirectory() as d, \
            contextlib.redirect_stdout(io.StringIO()):
        train(pre, "Baseline", 0, Path(d) / "run", epochs=epochs,
              iterations_per_epoch=iterations, val_iterations_per_epoch=1, device="cpu",
              augmentation_workers=n, seed=0)
        rows = read_progress_csv(Path(d) / "run" / "progress.csv")
    secs = [float(r["epoch_seconds"]) for r in rows][1:]
    return iterations / float(np.mean(secs)), [r["train_loss"] for r in rows]


def main() -> None:
    """Parse arguments, measure, print (and write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("preprocessed_dir", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"# Augmentation throughput: {args.workers} workers, CPU "
             f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
             f"{args.threads} torch thread(s), dataset {args.preprocessed_dir.name}", "",
             f"Loader: {args.batches} training batches after the warm-up; training: Baseline, "
             f"{args.epochs} epochs x {args.iterations} iterations (+1 validation iteration), "
             "epochs after the first.", "",
             "| augmentation | loader batches/s | training iterations/s | same losses on a rerun |",
             "| --- | ---: | ---: | --- |"]
    for mode in MODES:
        rate = loader_rate(args.preprocessed_dir, mode, args.workers, args.batches)
        it_s, losses = training_rate(args.preprocessed_dir, mode, args.workers, args.epochs,
                                     args.iterations)
        _, again = training_rate(args.preprocessed_dir, mode, args.workers, args.epochs,
                                 args.iterations)
        lines.append(f"| {mode} | {rate:.2f} | {it_s:.2f} | {'yes' if losses == again else 'no'} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
