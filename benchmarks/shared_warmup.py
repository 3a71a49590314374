"""Savings of the shared co-teaching warm-up (``tuning.shared_warmup``), planned and measured.

Usage::

    python benchmarks/shared_warmup.py [--workdir DIR] [--trials 3] [--epochs 5] [--iterations 3]
        [--seconds-per-epoch 120] [--two-peer-factor 2] [--skip-phantom]

Part 1, the plan: tuning epochs of ``config/paper.yaml`` with and without the shared warm-up
(:func:`nnrobustloss.warmup.tuning_epochs`), and GPU-hours from an assumed time per epoch of
one network (``--seconds-per-epoch``; two-peer methods count ``--two-peer-factor`` times that).
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


def plan_table(seconds_per_epoch: float, two_peer_factor: float) -> str:
    """Markdown: the paper config's tuning epochs and GPU-hours with and without the warm-up."""
    from nnrobustloss.config import load_config
    from nnrobustloss.methods import get_method
    from nnrobustloss.trainers.coteaching import CoTeachingTrainer
    from nnrobustloss.warmup import tuning_epochs, warmup_epochs

    cfg = load_config(REPO / "config" / "paper.yaml")
    tu = cfg["tuning"]
    off, on = tuning_epochs(cfg, False), tuning_epochs(cfg, True)

    def factor(m: str) -> float:
        two = issubclass(get_method(m).load_trainer_class(), CoTeachingTrainer)
        return two_peer_factor if two else 1.0

    def hours(plan: dict[str, Any]) -> float:
        net = sum(e * factor(m) for m, e in plan["per_method"].items())
        return (net + plan["warmup"] * two_peer_factor) * seconds_per_epoch / 3600

    lines = [f"## Plan: config/paper.yaml ({len(cfg['tasks'])} tasks x {len(cfg['folds'])} folds, "
             f"{tu['n_trials']} trials x {tu['epochs']} epochs, warm-up "
             f"{warmup_epochs(tu['epochs'], cfg['coteaching'])} epochs)", "",
             "| methods | epochs without | epochs with | saved | GPU-h without | GPU-h with |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    groups = {"CoT + CoT+ + StoCoT (incl. warm-ups)": [m for m in on["per_method"] if m in SHARED],
              "all tuned methods": list(on["per_method"])}
    for name, ms in groups.items():
        sub_off = {"per_method": {m: off["per_method"][m] for m in ms}, "warmup": 0}
        sub_on = {"per_method": {m: on["per_method"][m] for m in ms}, "warmup": on["warmup"]}
        e_off = sum(sub_off["per_method"].values())
        e_on = sum(sub_on["per_method"].values()) + on["warmup"]
        lines.append(f"| {name} | {e_off} | {e_on} | {1 - e_on / e_off:.1%} | "
                     f"{hours(sub_off):,.0f} | {hours(sub_on):,.0f} |")
    lines += ["", f"{on['warmups']} warm-up jobs ({on['warmup']} epochs) replace "
              f"{off['total'] - on['total'] + on['warmup']} trial epochs. GPU-hours assume "
              f"{seconds_per_epoch:g} s per epoch of one network and {two_peer_factor:g}x that "
              "for two-peer methods (an assumption: scale linearly with the real figure)."]
    return "\n".join(lines)


def _epochs_trained(folder: Path) -> int:
    """``Epoch N`` lines of every nnU-Net training log under ``folder`` (epochs trained here)."""
    return sum(len(re.findall(r": Epoch (\d+)\s*$", f.read_text(), flags=re.M))
               for f in folder.rglob("training_log_*.txt"))


def _prepare(cfg: dict[str, Any], task: str, r: Path) -> None:
    """Convert, split and preprocess ``task`` into results folder ``r``."""
    from nnrobustloss import pipeline as P

    P.run_convert(**P.convert_params(cfg, task), results_dir=r, manifest=r / "raw" / f"{task}.json")
    P.run_splits(**P.splits_params(cfg, task), results_dir=r,
                 out_json=r / "splits" / f"{task}.json")
    P.run_plan(**P.plan_params(cfg, task), results_dir=r, splits_json=r / "splits" / f"{task}.json",
               manifest=r / "preprocessed" / f"{task}.json", num_processes=1)


def phantom_table(workdir: Path, trials: int, epochs: int, iterations: int) -> str:
    """Markdown: the three methods' tuning on the phantom, from scratch and from the warm-up."""
    import optuna

    from nnrobustloss import layout
    from nnrobustloss import pipeline as P
    from nnrobustloss.config import load_config
    from nnrobustloss.tuning import open_storage, storage_url

    overlay = {"results_dir": str(workdir), "folds": [0], "methods": list(SHARED),
               "device": "cpu", "tuning": {"n_trials": trials, "epochs": epochs,
                                           "iterations_per_epoch": iterations,
                                           "val_iterations_per_epoch": 1}}
    cfg = load_config(REPO / "config" / "config.yaml", overrides=overlay)
    r, task = Path(cfg["results_dir"]), "Phantom"
    if not (r / "preprocessed" / f"{task}.json").is_file():
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
                warm = P.warmup_checkpoint({**cfg, "results_dir": str(root)}, task, "CoT", 0)
                P.run_warmup(P.warmup_params(cfg, task, 0), results_dir=root, checkpoint=warm,
                             device="cpu")
            t_warm, c_warm = time.perf_counter() - t0, time.process_time() - c0
            per: dict[str, Any] = {}
            for m in SHARED:
                params = P.tune_params(cfg, task, m, 0)
                study = layout.study_dir(root, task, m, 0)
                P.run_tune_worker(params, worker=0, workers=1, results_dir=root,
                                  marker=study / "worker0.done", device="cpu", warmup=warm)
                best = P.run_select_best(params, results_dir=root, trials_csv=study / "trials.csv",
                                         best_params_json=study / "best_params.json")
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
             f"{P.warmup_params(cfg, task, 0)['warmup_epochs']} epochs), CPU", "",
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
    ap.add_argument("--seconds-per-epoch", type=float, default=120.0)
    ap.add_argument("--two-peer-factor", type=float, default=2.0)
    ap.add_argument("--skip-phantom", action="store_true")
    args = ap.parse_args()
    print(plan_table(args.seconds_per_epoch, args.two_peer_factor))
    if args.skip_phantom:
        return
    with tempfile.TemporaryDirectory() as d:
        print()
        print(phantom_table(args.workdir or Path(d), args.trials, args.epochs, args.iterations))


if __name__ == "__main__":
    main()
