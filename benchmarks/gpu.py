"""GPU check: a short training of every method on a KiTS23-sized case, one prediction, and a
table of seconds per iteration and peak GPU memory per method.

Usage::

    python benchmarks/gpu.py [--root DIR] [--methods ...] [--iterations 6] [--out FILE]
    python benchmarks/gpu.py --tiny     # CPU-sized check of the same steps (used by the tests)

On CUDA: the synthetic KiTS23-like task of ``synthetic_kits.py`` (two cases of 512 x 512 x 200
voxels at 0.8 x 0.8 x 1 mm) is planned with nnU-Net's residual-encoder L planner (the paper's
plans) and preprocessed under ``--root``; each method trains one epoch of ``--iterations``
iterations (+ 1 validation iteration) on fold 0 through :func:`nnrobustloss.training.train`
with nnU-Net's mixed precision (autocast + grad scaler per peer) and data augmentation, the
two-peer methods once per peer schedule (``coteaching.peer_updates``); then the first trained
method's network predicts the held-out case (sliding window, test-time mirroring) through
:func:`nnrobustloss.prediction.predict_cases`. ``--tiny`` (implied without CUDA) uses
24 x 48 x 48 cases and the CPU plans of the tests (patch 16 x 32 x 32, batch 2).

Columns: s/it = median wall time of ``train_step`` over the iterations after the first (the
first includes cuDNN's algorithm search), synchronised; data loading is excluded.
epoch s = nnU-Net's epoch time (training + validation iterations). Peak = the largest memory
held while the method trained: CUDA ``torch.cuda.max_memory_allocated`` (and ``_reserved``,
what the card must have); CPU the resident-set high-water mark above the level before the
training (an indication only).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from synthetic_kits import KITS_SHAPE, KITS_SPACING, log, peak_memory, prepare_task

GiB = 2 ** 30
TINY_SHAPE = (24, 48, 48)
TINY_PLAN = {"patch_size": [16, 32, 32], "batch_size": 2, "features_per_stage": [8, 16, 32]}


@contextlib.contextmanager
def timed_train_steps(cls: type, seconds: list[float], cuda: bool) -> Iterator[None]:
    """Record the wall time of every ``cls.train_step`` call (synchronised on CUDA)."""
    import torch

    own = cls.__dict__.get("train_step")
    original = cls.train_step

    def train_step(self, batch: dict) -> dict:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = original(self, batch)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        return out

    cls.train_step = train_step
    try:
        yield
    finally:
        if own is None:
            del cls.train_step
        else:
            cls.train_step = own


def runs(methods: list[str]) -> list[tuple[str, str]]:
    """(method, peer schedule) pairs: both schedules for two-peer methods, '-' otherwise."""
    from nnrobustloss.trainers.coteaching import CoTeachingTrainer
    from nnrobustloss.trainers.loading import load_trainer_class
    from nnrobustloss.trainers.settings import PEER_UPDATE_MODES

    out = []
    for m in methods:
        two_peer = issubclass(load_trainer_class(m), CoTeachingTrainer)
        out += [(m, s) for s in (PEER_UPDATE_MODES if two_peer else ("-",))]
    return out


def train_one(pre: Path, pre_ref: Path, method: str, schedule: str, out: Path, iterations: int,
              device: str) -> dict[str, float]:
    """Train one method briefly on the noisy (or, for BaselineRef, the reference) dataset;
    return s/it, epoch s and peak memory (bytes)."""
    from nnrobustloss.methods import METHODS
    from nnrobustloss.trainers.loading import load_trainer_class
    from nnrobustloss.trainers.progress import read_progress_csv
    from nnrobustloss.training import train

    spec = METHODS[method]
    co = {"delay": 0, "gradual": 0}
    if schedule != "-":
        co["peer_updates"] = schedule
    steps: list[float] = []
    with timed_train_steps(load_trainer_class(spec), steps, device == "cuda"), \
            peak_memory(device) as mem, contextlib.redirect_stdout(io.StringIO()):
        train(pre_ref if spec.uses_reference else pre, method, 0, out, epochs=1,
              iterations_per_epoch=iterations, val_iterations_per_epoch=1, coteaching=co,
              device=device)
    row = read_progress_csv(out / "progress.csv")[0]
    return {"s_it": statistics.median(steps[1:] or steps), "epoch_s": float(row["epoch_seconds"]),
            "peak": mem["peak"] - (0 if device == "cuda" else mem["base"]),
            "reserved": mem.get("reserved", float("nan"))}


def predict_one(training_dir: Path, raw: Path, pre: Path, out: Path,
                device: str) -> dict[str, float]:
    """Predict fold 0's held-out case; return seconds and peak memory (bytes)."""
    import SimpleITK as sitk

    from nnrobustloss.prediction import predict_cases
    from nnrobustloss.splits import fold_cases

    case = fold_cases(pre / "splits_final.json", 0)[0]
    t0 = time.perf_counter()
    with peak_memory(device) as mem, contextlib.redirect_stdout(io.StringIO()):
        predict_cases(training_dir, raw / "imagesTr", [case], out, mirroring=True, device=device)
    seconds = time.perf_counter() - t0
    seg = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    img = sitk.ReadImage(str(raw / "imagesTr" / f"{case}_0000.nii.gz"))
    if seg.GetSize() != img.GetSize():
        raise RuntimeError(f"prediction of {case} has size {seg.GetSize()}, image {img.GetSize()}")
    return {"seconds": seconds, "peak": mem["peak"] - (0 if device == "cuda" else mem["base"]),
            "size": "x".join(map(str, img.GetSize()[::-1]))}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, prepare the task, train and predict, print (and write) the table."""
    import torch

    from nnrobustloss.fileio import read_json, write_text
    from nnrobustloss.methods import METHODS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=None, help="work folder (default: temporary)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--tiny", action="store_true", help="CPU-sized cases and plans")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tiny = args.tiny or device == "cpu"
    with contextlib.ExitStack() as stack:
        root = args.root or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        log(f"[gpu.py] {'tiny' if tiny else 'KiTS-sized'} task under {root} on {device}")
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # nnU-Net's planning log; stdout: the table
            pre, pre_ref, raw = prepare_task(root, TINY_SHAPE if tiny else KITS_SHAPE, KITS_SPACING,
                                    "cpu" if tiny else "resenc_l",
                                    cpu_plan=TINY_PLAN if tiny else None,
                                    num_processes=1 if tiny else 8)
        plan_s = time.perf_counter() - t0
        if device == "cpu":  # in-process augmentation (after planning: it crashes nnU-Net's planner)
            os.environ.setdefault("nnUNet_n_proc_DA", "0")
        conf = read_json(pre / "nnUNetPlans.json")["configurations"]["3d_fullres"]
        rows = []
        for method, schedule in runs(args.methods):
            log(f"[gpu.py] {method} {schedule}")
            out = root / "train" / f"{method}_{schedule}"
            rows.append((method, schedule,
                         train_one(pre, pre_ref, method, schedule, out, args.iterations, device)))
        first = root / "train" / f"{rows[0][0]}_{rows[0][1]}"
        pred = predict_one(first, raw, pre, root / "pred", device)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU (no CUDA device)"
    lines = [
        f"# gpu.py: {gpu}, {'tiny' if tiny else 'KiTS23-sized'} synthetic task "
        f"({pred['size']} voxels), plans {conf['architecture']['network_class_name'].split('.')[-1]}"
        f" patch {'x'.join(map(str, conf['patch_size']))} batch {conf['batch_size']}, "
        f"{args.iterations} iterations, mixed precision {'on' if device == 'cuda' else 'off (CPU)'}",
        "",
        "| method | peer schedule | s/it | epoch s | peak GiB (allocated) | peak GiB (reserved) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for method, schedule, r in rows:
        reserved = "-" if device == "cpu" else f"{r['reserved'] / GiB:.2f}"
        lines.append(f"| {method} | {schedule} | {r['s_it']:.3f} | {r['epoch_s']:.1f} | "
                     f"{r['peak'] / GiB:.2f} | {reserved} |")
    lines += ["", f"Prediction of one case ({pred['size']}, mirroring, {rows[0][0]}): "
              f"{pred['seconds']:.1f} s, peak {pred['peak'] / GiB:.2f} GiB. "
              f"Planning + preprocessing: {plan_s:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        write_text(args.out, text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
