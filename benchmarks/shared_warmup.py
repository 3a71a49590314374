"""Savings of the shared co-teaching warm-up (``tuning.shared_warmup``), planned and measured.

Usage::

    python benchmarks/shared_warmup.py [--workdir DIR] [--trials 3] [--epochs 5] [--iterations 3]
        [--skip-phantom]

Part 1, the plan: tuning epochs, GPU-hours and jobs of ``config/paper.yaml`` with and without
the shared warm-up (the cost plan of ``nnrobustloss plan-cost``, :mod:`nnrobustloss.cost`).
Part 2, measured on the default config's Phantom (fold 0, CPU, single-threaded augmentation):
converts and preprocesses it in ``--workdir`` (a temporary folder by default), then runs the
tuning of CoT, CoTPlus and StoCoT through the pipeline's tune worker twice, from scratch and
from the shared warm-up, and prints the epochs actually trained (``Epoch N`` lines of the
trainings' logs), the wall time of each way and whether every trial's parameters and objective
and each study's best parameters are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = ("CoT", "CoTPlus", "StoCoT")


def plan_table() -> str:
    """Markdown: the paper config's tuning epochs and GPU-hours with and without the warm-up
    (:func:`nnrobustloss.cost.cost_plan`, from ``cluster.seconds_per_epoch``)."""
    from nnrobustloss.config import load_config
    from nnrobustloss.cost import WARMUP_ROW, cost_plan
    from nnrobustloss.warmup import warmup_epochs

    cfg = load_config(REPO / "config" / "paper.yaml")
    tu = cfg["tuning"]
    on = cost_plan(cfg)
    off = cost_plan(load_config(REPO / "config" / "paper.yaml",
                                overrides={"tuning": {"shared_warmup": False}}))
    lines = [f"## Plan: config/paper.yaml ({len(cfg['tasks'])} tasks x {len(cfg['folds'])} folds, "
             f"{tu['n_trials']} trials x {tu['epochs']} epochs, warm-up "
             f"{warmup_epochs(tu['epochs'], cfg['coteaching'])} epochs; nnrobustloss plan-cost)",
             "", "| methods | tuning epochs without | with | saved | tuning GPU-h without | with "
             "| saved | tuning jobs without | with |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, ms in (("CoT + CoT+ + StoCoT (with their warm-ups)", (*SHARED, WARMUP_ROW)),
                     ("all tuned methods", tuple(on["method"]))):
        a, b = off[off["method"].isin(ms)].sum(numeric_only=True), \
            on[on["method"].isin(ms)].sum(numeric_only=True)
        lines.append(f"| {name} | {int(a.tune_epochs)} | {int(b.tune_epochs)} | "
                     f"{1 - b.tune_epochs / a.tune_epochs:.1%} | {a.tune_gpu_h:,.0f} | "
                     f"{b.tune_gpu_h:,.0f} | {1 - b.tune_gpu_h / a.tune_gpu_h:.1%} | "
                     f"{int(a.tune_jobs)} | {int(b.tune_jobs)} |")
    planner = cfg["planning"]["planner"]
    lines += ["", f"GPU-hours from cluster.seconds_per_epoch.{planner} = "
              f"{cfg['cluster']['seconds_per_epoch'][planner]} s per epoch of one network, "
              f"x {cfg['cluster']['two_peer_factor']} for two peers (scale with your GPU's "
              "figure); jobs with tuning.workers: auto (the warm-up lets 4 workers instead of 6 "
              "fit 24 h), warm-up jobs included."]
    return "\n".join(lines)


def _epochs_trained(folder: Path) -> int:
    """``Epoch N`` lines of every nnU-Net training log under ``folder`` (epochs trained here)."""
    return sum(len(re.findall(r": Epoch (\d+)\s*$", f.read_text(), flags=re.M))
               for f in folder.rglob("training_log_*.txt"))


def _prepare(cfg: dict[str, Any], task: str, r: Path) -> None:
    """Convert, split and preprocess ``task`` into results folder ``r``."""
    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages

    stages.run_convert(stages.convert_params(cfg, task), results_dir=r,
                       manifest=layout.raw_manifest(r, task))
    stages.run_splits(stages.splits_params(cfg, task), results_dir=r,
                      out_json=layout.splits_json(r, task))
    stages.run_plan(stages.plan_params(cfg, task), results_dir=r,
                    splits_json=layout.splits_json(r, task),
                    manifest=layout.preprocessed_manifest(r, task), num_processes=1)


def phantom_table(workdir: Path, trials: int, epochs: int, iterations: int) -> str:
    """Markdown: the three methods' tuning on the phantom, from scratch and from the warm-up."""
    import optuna

    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages
    from nnrobustloss.config import load_config
    from nnrobustloss.tuning import open_storage, storage_url

    overlay = {"results_dir": str(workdir), "folds": [0], "methods": list(SHARED),
               "device": "cpu", "tuning": {"n_trials": trials, "epochs": epochs,
                                           "iterations_per_epoch": iterations,
                                           "val_iterations_per_epoch": 1}}
    cfg = load_config(REPO / "config" / "config.yaml", overrides=overlay)
    r, task = Path(cfg["results_dir"]), "Phantom"
    if not layout.preprocessed_manifest(r, task).is_file():
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's planner log
            _prepare(cfg, task, r)
    os.environ["nnUNet_n_proc_DA"] = "0"  # after planning: deterministic augmentation
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, dict[str, Any]] = {}
    for way in ("scratch", "shared"):
        root = r / way  # its own studies (from a clean start); the preprocessed data are shared
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        (root / "preprocessed").symlink_to(r / "preprocessed")
        t0, c0 = time.perf_counter(), time.process_time()
        warm = None
        with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's console log
            if way == "shared":
                warm = stages.warmup_checkpoint({**cfg, "results_dir": str(root)}, task, "CoT", 0)
                stages.run_warmup(stages.warmup_params(cfg, task, 0), results_dir=root,
                                  checkpoint=warm, device="cpu")
            t_warm, c_warm = time.perf_counter() - t0, time.process_time() - c0
            per: dict[str, Any] = {}
            for m in SHARED:
                params = stages.tune_params(cfg, task, m, 0)
                study = layout.study_dir(root, task, m, 0)
                stages.run_tune_worker(params, worker=0, workers=1, results_dir=root,
                                       marker=layout.worker_marker(root, task, m, 0, 0),
                                       device="cpu", warmup=warm)
                best = stages.run_select_best(params, results_dir=root,
                                              trials_csv=layout.trials_csv(root, task, m, 0),
                                              best_params_json=layout.best_params_json(root, task,
                                                                                       m, 0))
                s = optuna.load_study(study_name=f"{task}.{m}.fold0", storage=open_storage(
                    "sqlite", storage_url("sqlite", study)))
                per[m] = {"trials": [(t.params, t.value) for t in s.trials], "best": best}
        results[way] = {"wall": time.perf_counter() - t0, "warmup_wall": t_warm,
                        "cpu": time.process_time() - c0, "warmup_cpu": c_warm,
                        "epochs": _epochs_trained(root), "per": per}
    a, b = results["scratch"], results["shared"]
    same_trials = all(a["per"][m]["trials"] == b["per"][m]["trials"] for m in SHARED)
    same_best = all((a["per"][m]["best"]["params"], a["per"][m]["best"]["value"]) ==
                    (b["per"][m]["best"]["params"], b["per"][m]["best"]["value"]) for m in SHARED)
    lines = [f"## Measured: Phantom fold 0, CoT + CoT+ + StoCoT, {trials} trials x {epochs} "
             f"epochs x {iterations} iterations each (warm-up "
             f"{stages.warmup_params(cfg, task, 0)['warmup_epochs']} epochs), CPU", "",
             "| way | epochs trained | wall s (all three studies) | of which warm-up | "
             "CPU s | of which warm-up |",
             "| --- | ---: | ---: | ---: | ---: | ---: |",
             f"| from scratch | {a['epochs']} | {a['wall']:.0f} | - | {a['cpu']:.0f} | - |",
             f"| shared warm-up | {b['epochs']} | {b['wall']:.0f} | {b['warmup_wall']:.0f} | "
             f"{b['cpu']:.0f} | {b['warmup_cpu']:.0f} |",
             "", f"Epochs saved: {1 - b['epochs'] / a['epochs']:.1%}; wall time saved: "
             f"{1 - b['wall'] / a['wall']:.1%}; CPU time saved: {1 - b['cpu'] / a['cpu']:.1%} "
             "(CPU time of this process, 1 torch thread: less sensitive to other load than "
             "wall time).",
             f"Every trial's parameters and objective identical: {same_trials}; best parameters "
             f"and objective identical: {same_best}.", ""]
    for m in SHARED:
        best = b["per"][m]["best"]
        lines.append(f"- {m}: best {best['params']} (trial {best['trial']}), objective "
                     f"{best['value']!r}")
    return "\n".join(lines)


def main() -> None:
    """Parse arguments, print both tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--skip-phantom", action="store_true")
    args = ap.parse_args()
    print(plan_table())
    if args.skip_phantom:
        return
    with tempfile.TemporaryDirectory() as d:
        print()
        print(phantom_table(args.workdir or Path(d), args.trials, args.epochs, args.iterations))


if __name__ == "__main__":
    main()
