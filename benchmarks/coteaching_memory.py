"""Peak memory and time of one training step: Baseline vs the two-peer schedules.

Usage::

    python benchmarks/coteaching_memory.py [--root DIR] [--patch 64 64 64] [--batch 2]
        [--methods Baseline CoT StoCoT] [--steps 1] [--threads 2] [--device cpu]

Plans: the real nnU-Net residual-encoder L planner on the synthetic KiTS23-sized task of
``synthetic_kits.py`` (two 512 x 512 x 200 cases at 0.8 x 0.8 x 1 mm, planned and preprocessed
once under ``--root``). Each (method, peer schedule) runs in its own process: the real trainer
of the method (``initialize()``: network(s), optimisers, loss), one warm-up ``train_step`` (it
allocates the SGD momentum buffers), then ``--steps`` measured steps on a synthetic batch of the
plan's architecture with ``--patch`` / ``--batch`` (default: the plan's own). Selection is
active (delay 0, gradual 0). Columns: peak = the process's peak during the measured step
(CPU: resident set incl. Python, torch and nnU-Net; CUDA: allocated); held = memory at the
step's start (parameters, momentum, the previous step's gradients, batch; the sequential
schedule frees peer A's gradients after A's update, so it holds one set fewer); step peak above
held; seconds per step. CPU: resident-set high-water mark with glibc's mmap threshold lowered (see
``synthetic_kits.peak_memory``); CUDA: ``torch.cuda.max_memory_allocated`` with autocast.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic_kits import (
    KITS_SHAPE,
    KITS_SPACING,
    cpu_malloc_env,
    log,
    peak_memory,
    prepare_task,
)

MiB = 2 ** 20
SCHEDULES = {"Baseline": ["-"], "two-peer": ["joint", "sequential"]}


def _plans_dir(root: Path) -> Path:
    """The preprocessed KiTS-like dataset under ``root`` (planned on first use)."""
    pre = root / "preprocessed" / "Dataset991_KitsLike"
    if not (pre / "nnUNetPlans.json").is_file():
        log(f"planning the KiTS-sized task under {root} (ResEnc-L) ...")
        pre, _, _ = prepare_task(root, KITS_SHAPE, KITS_SPACING, "resenc_l")
    return pre


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints one JSON line."""
    import torch

    from nnrobustloss.fileio import read_json
    from nnrobustloss.trainers.coteaching import CoTeachingTrainer
    from nnrobustloss.trainers.loading import load_trainer_class
    from nnrobustloss.training import build_settings

    torch.set_num_threads(args.threads)
    pre = Path(args.root) / "preprocessed" / "Dataset991_KitsLike"
    plans = read_json(pre / "nnUNetPlans.json")
    conf = plans["configurations"]["3d_fullres"]
    patch = [int(p) for p in (args.patch or conf["patch_size"])]
    batch = int(args.batch or conf["batch_size"])
    conf["patch_size"], conf["batch_size"] = patch, batch
    plans["continue_training"] = False
    cls = load_trainer_class(args.method)
    device = torch.device(args.device)
    trainer = cls(plans, "3d_fullres", 0, read_json(pre / "dataset.json"), device)
    with tempfile.TemporaryDirectory() as out:
        trainer.set_output_paths(out, pre)
        co = {"delay": 0, "gradual": 0}
        if issubclass(cls, CoTeachingTrainer):
            co["peer_updates"] = args.schedule
        trainer.configure(build_settings(args.method, coteaching=co))
        trainer.initialize()
        nets = [trainer.network] + ([trainer.network_b] if hasattr(trainer, "network_b") else [])
        for net in nets:
            net.train()
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, 4, (batch, 1, *patch), generator=g, dtype=torch.int16)
        targets = []
        for scale in trainer._get_deep_supervision_scales():
            step = [round(1 / s) for s in scale]
            targets.append(labels[(..., *[slice(None, None, st) for st in step])].float())
        batch_dict = {"data": torch.randn(batch, 1, *patch, generator=g), "target": targets}
        trainer.train_step(batch_dict)  # warm-up: momentum buffers, lazy inits
        with peak_memory(device.type) as mem:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step(batch_dict)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - t0) / args.steps
        n_params = sum(p.numel() for p in trainer.network.parameters())
    print(json.dumps({"method": args.method, "schedule": args.schedule, "patch": patch,
                      "batch": batch, "peak_mib": mem["peak"] / MiB,
                      "step_mib": (mem["peak"] - mem["base"]) / MiB,
                      "base_mib": mem["base"] / MiB, "seconds": seconds,
                      "params": n_params}))


def main() -> None:
    """Parse arguments; as parent, run every (method, schedule) in a child and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "kits_like")
    ap.add_argument("--patch", type=int, nargs=3, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--methods", nargs="+", default=["Baseline", "CoT", "StoCoT", "HRL"])
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--method", help=argparse.SUPPRESS)
    ap.add_argument("--schedule", default="-", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    pre = _plans_dir(args.root)
    rows = []
    for method in args.methods:
        for schedule in SCHEDULES["Baseline" if method in ("Baseline", "APL1", "APL2", "SVLS")
                                  else "two-peer"]:
            cmd = [sys.executable, __file__, "--child", "--root", str(args.root), "--method",
                   method, "--schedule", schedule, "--steps", str(args.steps), "--threads",
                   str(args.threads), "--device", args.device]
            if args.patch:
                cmd += ["--patch", *map(str, args.patch)]
            if args.batch:
                cmd += ["--batch", str(args.batch)]
            log(f"{method} {schedule} ...")
            res = subprocess.run(cmd, capture_output=True, text=True, env=cpu_malloc_env(),
                                 check=False)
            if res.returncode:
                sys.exit(f"{method} {schedule} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    base = next((r["peak_mib"] for r in rows if r["method"] == "Baseline"), None)
    r0 = rows[0]
    print(f"# Peak memory of one training step, {args.device}, ResEnc-L plan of {pre.name} "
          f"(patch {'x'.join(map(str, r0['patch']))}, batch {r0['batch']}, "
          f"{r0['params'] / 1e6:.1f} M parameters per network)\n")
    print("| method | peer schedule | peak MiB | x Baseline | held before step MiB | "
          "step peak above held MiB | s/step |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ratio = f"{r['peak_mib'] / base:.2f}" if base else "-"
        print(f"| {r['method']} | {r['schedule']} | {r['peak_mib']:.0f} | {ratio} | "
              f"{r['base_mib']:.0f} | {r['step_mib']:.0f} | {r['seconds']:.1f} |")


if __name__ == "__main__":
    main()
