"""Pruning, measured: a study tuned with ``tuning.pruner`` none, median and hyperband on the phantom.

Usage::

    nice -n 10 python benchmarks/pruning.py [--workdir DIR] [--method SVLS] [--trials 20]
        [--startup 5] [--epochs 20] [--iterations 10] [--pruners none median hyperband]
        [--seeds 1 2] [--out benchmarks/results/pruning.md] [--tiny]

On the default config's Phantom task, fold 0, CPU, one torch thread, single-threaded (so
deterministic) augmentation, the script converts and preprocesses the task once in ``--workdir``
(a temporary folder by default), then for every pruner runs the pipeline's stages in-process
with the same seed: the tune worker (``--trials`` trials of ``--epochs`` x ``--iterations``,
``--startup`` random start-up trials, the pruner from :func:`nnrobustloss.tuning.make_pruner`),
select_best, and the final training (the config's ``training`` budget) with the chosen
parameters, prediction of the fold's held-out cases and their evaluation against the reference
labels. It reports per pruner the chosen parameters, the best objective, the trials pruned, the
epochs trained (Optuna's intermediate values: one per epoch trained), the final Dice and the
wall and CPU time (this process and its children); per trial the parameters, epochs and
objective; how well the objective after few epochs ranks the unpruned run's trials (Spearman);
a replay of the unpruned run's recorded curves through each pruner (it must reproduce the
measured pruned run; for Hyperband also under ``--replays`` other bracket draws, with the final
stage of any other trial a draw would choose); and the noise: the objective of the unpruned
run's best and worst parameters and the final Dice of its chosen parameters with the other
``--seeds`` (training seed only; data and split fixed).

Each finished step leaves a ``result.json`` in its folder under ``--workdir``: a rerun with the
same settings reuses it (a killed run continues where it stopped; delete the folder to redo a
step). The Markdown goes to stdout and ``--out``; progress to stderr, nnU-Net's console output
to ``<workdir>/nnunet_stdout.log``. ``--tiny``: a 6-case phantom and minute-sized budgets, to
test the script (its numbers mean nothing). Results: ``benchmarks/results/pruning.md`` (its
last section, the reading, is written by hand).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from shared_warmup import _prepare  # noqa: E402  (benchmarks/shared_warmup.py: convert, split, plan)

TASK, FOLD = "Phantom", 0
PRUNERS = ("none", "median", "hyperband")
TINY_SOURCES = [{"type": "phantom", "n_cases": 6, "n_noisy_cases": 2, "shape": [20, 40, 40],
                 "spacing": [2.0, 1.0, 1.0]}]


def log(msg: str) -> None:
    """A progress line on stderr with the wall-clock time."""
    print(f"[pruning {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextlib.contextmanager
def stopwatch(out: dict[str, float]) -> Iterator[None]:
    """Store the block's wall seconds in ``out["wall_s"]`` and CPU seconds in ``out["cpu_s"]``."""
    w0, c0 = time.perf_counter(), cpu_seconds()
    yield
    out["wall_s"], out["cpu_s"] = time.perf_counter() - w0, cpu_seconds() - c0


def cached(folder: Path, key: dict[str, Any], compute: Callable[[Path], dict[str, Any]]
           ) -> dict[str, Any]:
    """``folder/result.json`` when it was written for the same ``key``; else empty ``folder``,
    run ``compute(folder)`` and store its (JSON-serialisable) result with ``key`` and the time
    it finished (``"finished"``, ISO format)."""
    f = folder / "result.json"
    if f.is_file():
        data = json.loads(f.read_text())
        if data.get("key") == key:
            log(f"{folder.name}: reusing {f}")
            return dict(data["result"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = {**compute(folder), "finished": datetime.datetime.now().isoformat(timespec="minutes")}
    f.write_text(json.dumps({"key": key, "result": result}, indent=1))
    return result


def results_root(folder: Path, shared: Path) -> Path:
    """``folder`` as a results_dir of its own (studies, trainings, predictions, metrics) that
    shares the converted, split and preprocessed data of ``shared`` through symlinks."""
    for sub in ("raw", "reference", "splits", "preprocessed"):
        link = folder / sub
        if not link.exists():
            link.symlink_to(shared / sub)
    return folder


def trial_rows(study: Any, hyperband_epochs: int | None = None) -> list[dict[str, Any]]:
    """One dict per finished trial of an Optuna ``study``: ``number``, ``params``, ``state``
    (COMPLETE / PRUNED), ``epochs`` (intermediate values reported: one per epoch trained),
    ``value`` (objective; a pruned trial's last reported EMA), ``curve`` ([EMA per epoch]) and,
    with ``hyperband_epochs``, its Hyperband ``bracket`` (of ``make_pruner("hyperband", E)``)."""
    from optuna.trial import TrialState

    from nnrobustloss.tuning import FINISHED_STATES, make_pruner

    pruner = make_pruner("hyperband", hyperband_epochs) if hyperband_epochs else None
    if pruner is not None:
        pruner._try_initialization(study)  # Optuna's own bracket assignment (crc32 of name_number)
    rows = []
    for t in study.get_trials(deepcopy=False, states=FINISHED_STATES):
        curve = [float(v) for _, v in sorted(t.intermediate_values.items())]
        if sorted(t.intermediate_values) != list(range(len(curve))):  # one report per epoch
            raise ValueError(f"trial {t.number}: steps {sorted(t.intermediate_values)}")
        value = float(t.value) if t.state == TrialState.COMPLETE else curve[-1]
        row = {"number": t.number, "params": dict(t.params), "state": t.state.name,
               "epochs": len(curve), "value": value, "curve": curve}
        if pruner is not None:
            row["bracket"] = pruner._get_bracket_id(study, t)
        rows.append(row)
    return rows


def rank_agreement(rows: Sequence[dict[str, Any]], epochs: Sequence[int]) -> dict[int, float]:
    """Spearman correlation, over the COMPLETE trials of ``rows`` (:func:`trial_rows`), between
    the EMA after ``epoch + 1`` epochs (step ``epoch``) and the final objective: how well a pruner
    deciding at that step ranks the trials. NaN with fewer than 3 trials or constant values."""
    from scipy.stats import spearmanr

    done = [r for r in rows if r["state"] == "COMPLETE"]
    out = {}
    for e in epochs:
        early = [r["curve"][e] for r in done]
        final = [r["value"] for r in done]
        out[e] = float(spearmanr(early, final).statistic) if len(done) >= 3 else float("nan")
    return out


def replay(rows: Sequence[dict[str, Any]], method: str, pruner: str, epochs: int,
           name: str, startup: int = 5) -> list[tuple[str, int]]:
    """Feed the recorded per-epoch curves of ``rows`` (an unpruned study's trials, in order,
    :func:`trial_rows`) through ``make_pruner(pruner, epochs, startup)`` and the tuning's own
    stopping rule (:func:`nnrobustloss.tuning.pruned_after`) in an in-memory study called
    ``name`` (Hyperband's brackets depend on it); return ``(state, epochs trained)`` per trial.

    Valid while the pruned study would sample the same parameters (it does when TPE's few "good"
    trials are never pruned) and training is deterministic (a trial's curve up to its pruning
    epoch is the unpruned one): then it equals the real pruned study."""
    import optuna

    from nnrobustloss.methods import get_method
    from nnrobustloss.tuning import make_pruner, pruned_after

    spec = get_method(method)
    study = optuna.create_study(study_name=name, direction="maximize",
                                pruner=make_pruner(pruner, epochs, startup))
    out = []
    for r in rows:
        study.enqueue_trial(r["params"])
        trial = study.ask()
        spec.suggest(trial)
        for step, value in enumerate(r["curve"]):
            trial.report(value, step)
            if pruned_after(trial, step, epochs):
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                out.append(("PRUNED", step + 1))
                break
        else:
            study.tell(trial, r["value"])
            out.append(("COMPLETE", len(r["curve"])))
    return out


def replay_summary(rows: Sequence[dict[str, Any]], method: str, pruner: str, epochs: int,
                   names: Sequence[str], measured: Sequence[dict[str, Any]] | None = None,
                   startup: int = 5) -> dict[str, Any]:
    """:func:`replay` of ``rows`` under every study name of ``names``: how often the pruner
    stops the unpruned study's best trial, how often the chosen (best COMPLETE) trial differs
    from it, per name the epochs trained and the chosen trial's objective (lists), how often
    each trial is chosen (``choices``: {number: count}) and whether the replay under the first
    name equals ``measured`` (the pruned study's :func:`trial_rows`; None: not compared)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        best = max(rows, key=lambda r: (r["value"], -r["number"]))["number"]
        stopped, other, spent, chosen, choices, same = 0, 0, [], [], {}, None
        for name in names:
            res = replay(rows, method, pruner, epochs, name, startup)
            if same is None and measured is not None:
                same = ([(r["state"], r["epochs"]) for r in measured] == res
                        and [r["params"] for r in measured] == [r["params"] for r in rows])
            done = [(r["value"], -r["number"]) for r, (st, _) in zip(rows, res) if st == "COMPLETE"]
            stopped += res[[r["number"] for r in rows].index(best)][0] == "PRUNED"
            other += -max(done)[1] != best
            spent.append(sum(e for _, e in res))
            chosen.append(max(done)[0])
            choices[-max(done)[1]] = choices.get(-max(done)[1], 0) + 1
    finally:
        optuna.logging.set_verbosity(level)
    return {"n": len(names), "best_pruned": stopped, "choice_differs": other, "epochs": spent,
            "chosen_value": chosen, "choices": choices, "same_as_measured": same}


def fold_dice(metrics_csv: Path) -> dict[str, float]:
    """Mean Dice over the fold's cases per region (``{region: Dice}``) of an evaluate CSV."""
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    d = df[df["metric"] == "dice"]
    return {str(k): float(v) for k, v in d.groupby("region", sort=False)["value"].mean().items()}


def make_config(args: argparse.Namespace, results_dir: Path, pruner: str) -> dict[str, Any]:
    """The default config with this benchmark's method, fold, budgets and ``pruner``."""
    from nnrobustloss.config import load_config

    over: dict[str, Any] = {
        "results_dir": str(results_dir), "folds": [FOLD], "methods": [args.method],
        "device": "cpu",
        "tuning": {"n_trials": args.trials, "n_startup_trials": args.startup,
                   "epochs": args.epochs, "iterations_per_epoch": args.iterations,
                   "val_iterations_per_epoch": 1, "pruner": pruner, "storage": "sqlite",
                   "workers": 1}}
    if args.tiny:
        over["tasks"] = {TASK: {"sources": TINY_SOURCES}}
        over["training"] = {"epochs": args.final_epochs or 1, "iterations_per_epoch": 2,
                            "val_iterations_per_epoch": 1}
    elif args.final_epochs:
        over["training"] = {"epochs": args.final_epochs}
    return load_config(REPO / "config" / "config.yaml", overrides=over)


def final_stage(cfg: dict[str, Any], root: Path, hparams: dict[str, float], seed: int
                ) -> dict[str, Any]:
    """Final training of ``hparams`` with training seed ``seed`` (the config's budget), then
    prediction and evaluation of the fold's held-out cases: ``{"dice": {region: Dice}, wall_s,
    cpu_s, epochs}``."""
    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages

    m = cfg["methods"][0]
    splits = layout.splits_json(root, TASK)
    tp = {**stages.train_params(cfg, TASK, m, FOLD), "seed": seed}
    pred = layout.predictions_dir(root, TASK, m, FOLD)
    csv = layout.metrics_csv(root, TASK, m, FOLD)
    csv.parent.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    with stopwatch(out):
        stages.run_train(tp, results_dir=root, hparams=hparams, device="cpu", threads=1)
        stages.run_predict(stages.predict_params(cfg, TASK, m, FOLD), results_dir=root,
                           splits_json=splits, out_dir=pred, device="cpu", threads=1)
        stages.run_evaluate(stages.evaluate_params(cfg, TASK, m, FOLD), results_dir=root,
                            splits_json=splits, pred_dir=pred, out_csv=csv, n_workers=1,
                            reliability_csv=layout.reliability_csv(root, TASK, m, FOLD))
    out["dice"] = fold_dice(csv)
    out["epochs"] = cfg["training"]["epochs"]
    return out


def tune_and_train(cfg: dict[str, Any], root: Path) -> dict[str, Any]:
    """The pipeline's tuning of one study (worker 0 of 1, select_best) and the final stage of
    its best parameters, timed separately; returns the trials (:func:`trial_rows`) and results."""
    import optuna

    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages
    from nnrobustloss.tuning import open_storage, storage_url, study_name

    m, tu = cfg["methods"][0], cfg["tuning"]
    study = layout.study_dir(root, TASK, m, FOLD)
    params = stages.tune_params(cfg, TASK, m, FOLD)
    tuning: dict[str, Any] = {}
    with stopwatch(tuning):
        stages.run_tune_worker(params, worker=0, workers=1, results_dir=root,
                               marker=layout.worker_marker(root, TASK, m, FOLD, 0), device="cpu",
                               threads=1)
        best = stages.run_select_best(params, results_dir=root,
                                      trials_csv=layout.trials_csv(root, TASK, m, FOLD),
                                      best_params_json=layout.best_params_json(root, TASK, m, FOLD))
    s = optuna.load_study(study_name=study_name(TASK, m, FOLD),
                          storage=open_storage("sqlite", storage_url("sqlite", study)))
    rows = trial_rows(s, tu["epochs"] if tu["pruner"] == "hyperband" else None)
    log(f"{tu['pruner']}: tuned in {tuning['wall_s']:.0f} s wall, best {best['params']} "
        f"(trial {best['trial']}, objective {best['value']:.4f}); final training")
    final = final_stage(cfg, root, best["params"], cfg["seed"])
    log(f"{tu['pruner']}: final Dice {final['dice']} in {final['wall_s']:.0f} s wall")
    return {"best": best, "trials": rows, "tuning": tuning, "final": final}


def objective_with_seed(cfg: dict[str, Any], folder: Path, hparams: dict[str, float], seed: int
                        ) -> dict[str, Any]:
    """The tuning objective (EMA of the training pseudo Dice after the trial's last epoch, as
    :func:`nnrobustloss.tuning.training_objective` reads it) of one trial-budget training of
    ``hparams`` with training seed ``seed``: ``{"value", wall_s, cpu_s}``."""
    from nnrobustloss import pipeline as stages
    from nnrobustloss.trainers.progress import read_progress_csv
    from nnrobustloss.training import train

    kw = stages.train_kwargs({**stages.tune_params(cfg, TASK, cfg["methods"][0], FOLD),
                              "seed": seed}, cfg["results_dir"])
    out: dict[str, Any] = {}
    with stopwatch(out):
        train(output_dir=folder / "trial", params=hparams, device="cpu", continue_training=False,
              **kw)
    out["value"] = float(read_progress_csv(folder / "trial" / "progress.csv")[-1]
                         ["train_pseudo_dice_ema"])
    for ckpt in (folder / "trial").glob("checkpoint_*.pth"):
        ckpt.unlink()
    return out


def machine_facts() -> list[str]:
    """Markdown bullet lines: CPU model and count, date, git commit, Python and package versions."""
    import nnunetv2
    import optuna
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor() or "unknown")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return [f"- Machine: {cpu}, {os.cpu_count()} cores, {platform.machine()}, no GPU used "
            f"(device cpu, 1 torch thread, nnUNet_n_proc_DA=0); shared with other jobs.",
            f"- Date: {datetime.date.today().isoformat()}; git commit {commit}"
            f"{' (src/ modified)' if dirty else ''}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, nnunetv2 {getattr(nnunetv2, '__version__', '2.8.1')}, "
            f"Optuna {optuna.__version__}."]


def _fmt_params(p: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in p.items())


def _std(xs: Sequence[float]) -> float:
    """Sample standard deviation (n - 1); NaN for fewer than 2 values."""
    import statistics

    return statistics.stdev(xs) if len(xs) > 1 else float("nan")


def render(args: argparse.Namespace, cfg: dict[str, Any], runs: dict[str, dict[str, Any]],
           extra: dict[str, Any], cmd: str, wall: float) -> str:
    """The Markdown report: settings, the comparison table, per-trial table, early-ranking
    table, replay, noise table and the machine facts. ``extra``: ``prep`` (stopwatch of convert
    + plan), ``noise`` (:func:`seed_checks`), ``replays`` (:func:`replays`), ``alternates``
    ({trial: final stage}), ``steps`` (every step's cached result: wall_s, finished); ``wall``:
    this invocation's wall seconds."""
    noise = extra.get("noise") or {}
    tu, tr = cfg["tuning"], cfg["training"]
    E, N = tu["epochs"], tu["n_trials"]
    regions = list(next(iter(runs.values()))["final"]["dice"])
    lines = [f"# Pruning, measured: {args.method} on the phantom, fold {FOLD}"
             + (" (--tiny: a test of the script, numbers meaningless)" if args.tiny else ""), "",
             f"Study: {N} trials ({tu['n_startup_trials']} random start-up, then TPE) of {E} "
             f"epochs x {tu['iterations_per_epoch']} iterations; objective = EMA (lambda 0.9) of "
             f"the training pseudo Dice after the last epoch, reported every epoch. Final "
             f"training {tr['epochs']} x {tr['iterations_per_epoch']} iterations with the chosen "
             f"parameters, then prediction and evaluation of the fold's held-out cases against "
             f"the reference labels. Seed {cfg['seed']} everywhere (the runs differ only in the "
             "pruner).",
             f"Pruners (`nnrobustloss.tuning.make_pruner`): median = MedianPruner(n_startup_trials"
             f"={tu['n_startup_trials']}, n_warmup_steps={max(1, E // 4)}): no pruning before "
             f"{tu['n_startup_trials']} trials are COMPLETE, "
             f"then a trial whose best EMA so far is below the median of the completed trials at "
             f"the same epoch is stopped, from step {max(1, E // 4)} on (after "
             f"{max(1, E // 4) + 1} of {E} epochs). hyperband = HyperbandPruner(min_resource=1, "
             f"max_resource={E}, reduction_factor=3): trials go to brackets by a hash of their "
             "number; a bracket's rungs are at steps 1, 3, 9, ... (from the bracket's own "
             "minimum) and a trial passes a rung only in the top third of the values recorded "
             "there (among the first 2, only the best).", "",
             "| pruner | chosen params (trial) | best objective | trials complete / pruned | "
             f"epochs trained (of {N * E}) | tuning wall s | tuning CPU s | "
             + " | ".join(f"final Dice {r}" for r in regions)
             + " | final wall s | final CPU s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | " + "---: | " * len(regions)
             + "---: | ---: |"]
    for name, run in runs.items():
        rows, b = run["trials"], run["best"]
        pruned = sum(r["state"] == "PRUNED" for r in rows)
        lines.append(
            f"| {name} | {_fmt_params(b['params'])} (#{b['trial']}) | {b['value']:.4f} | "
            f"{len(rows) - pruned} / {pruned} | {sum(r['epochs'] for r in rows)} | "
            f"{run['tuning']['wall_s']:.0f} | {run['tuning']['cpu_s']:.0f} | "
            + " | ".join(f"{100 * run['final']['dice'][r]:.1f}" for r in regions)
            + f" | {run['final']['wall_s']:.0f} | {run['final']['cpu_s']:.0f} |")
    lines += ["", "Dice in %, mean over the fold's held-out cases. Epochs trained: the sum over "
              "trials of the epochs each trial actually trained (its intermediate values). "
              "Wall and CPU seconds of this process and its children; the machine is shared, so "
              "CPU time is the better measure of the work.", "",
              "## Every trial", "",
              "| trial | " + " | ".join(f"{n}: params, epochs, objective" for n in runs) + " |",
              "| ---: |" + " --- |" * len(runs)]
    by_number = {n: {r["number"]: r for r in run["trials"]} for n, run in runs.items()}
    for k in range(N):
        cells = []
        for n in runs:
            r = by_number[n].get(k)
            if r is None:
                cells.append("-")
                continue
            mark = "**" if k == runs[n]["best"]["trial"] else ""
            where = f" (bracket {r['bracket']})" if "bracket" in r else ""
            state = "" if r["state"] == "COMPLETE" else " pruned"
            cells.append(f"{mark}{_fmt_params(r['params'])}, {r['epochs']}{state}{where}, "
                         f"{r['value']:.4f}{mark}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "Bold: the chosen trial. A pruned trial's objective is its last reported EMA "
              "(not comparable with a completed trial's: fewer epochs)."]
    ref = runs.get("none")
    if ref is not None:
        rank = {r["number"]: i + 1 for i, r in enumerate(
            sorted(ref["trials"], key=lambda r: (-r["value"], r["number"])))}
        for n, run in runs.items():
            if n == "none":
                continue
            lost = [f"#{r['number']} (rank {rank[r['number']]}, {r['epochs']} epochs)"
                    for r in run["trials"] if r["state"] == "PRUNED"
                    and r["params"] == by_number["none"][r["number"]]["params"]]
            lines.append(f"- {n} pruned (with the unpruned run's parameters; rank of its final "
                         f"objective there, of {len(ref['trials'])}): {', '.join(lost) or 'none'}.")
        steps = sorted({s for s in (0, 1, 3, max(1, E // 4), 9, E // 2, 3 * E // 4) if s < E - 1})
        agree = rank_agreement(ref["trials"], steps)
        lines += ["", "## Does the early objective rank the trials like the final one?", "",
                  "Spearman correlation, over the unpruned run's trials, between the EMA after "
                  "k epochs and the final objective (1: the same order; the pruners decide on "
                  "the early values).", "",
                  "| epochs seen | " + " | ".join(str(s + 1) for s in steps) + " |",
                  "| --- |" + " ---: |" * len(steps),
                  "| Spearman rho | " + " | ".join(f"{agree[s]:.2f}" for s in steps) + " |"]
        if extra.get("replays"):
            lines += replay_lines(ref, extra["replays"], extra.get("alternates", {}))
        vals = [r["value"] for r in ref["trials"] if r["state"] == "COMPLETE"]
        lines += ["", f"Objective of the unpruned run's {len(vals)} trials: "
                  f"{min(vals):.4f} to {max(vals):.4f} (range {max(vals) - min(vals):.4f}, "
                  f"standard deviation {_std(vals):.4f})."]
    if noise:
        seeds = [cfg["seed"], *args.seeds]
        lines += ["", "## Noise: the same parameters with other training seeds", "",
                  "| what | params | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | std over seeds |", "| --- | --- |" + " ---: |" * (len(seeds) + 1)]
        for label, item in noise["objective"].items():
            v = item["values"]
            lines.append(f"| objective, {label} trial of 'none' | {_fmt_params(item['params'])} | "
                         + " | ".join(f"{x:.4f}" for x in v) + f" | {_std(v):.4f} |")
        for r in regions:
            v = [d[r] * 100 for d in noise["final"]["dice"]]
            lines.append(f"| final Dice {r} (%), chosen by 'none' | "
                         f"{_fmt_params(noise['final']['params'])} | "
                         + " | ".join(f"{x:.1f}" for x in v) + f" | {_std(v):.1f} |")
        lines += ["", "Seed 0 is the study's (and the final training's) own value; the other seeds "
                  "change the training seed only (initial weights, patch sampling, "
                  "augmentation), not the data or the split."]
    steps = extra.get("steps", [])
    done = sorted(st["finished"] for st in steps if "finished" in st)
    work = sum(st["wall_s"] for st in steps if "wall_s" in st)
    work += sum(st[k]["wall_s"] for st in steps for k in ("tuning", "final") if k in st)
    prep = extra.get("prep", {})
    lines += ["", "## Run", "", *machine_facts(),
              f"- Command: `{cmd}`",
              f"- Steps finished {done[0] if done else '-'} to {done[-1] if done else '-'}; their "
              f"wall times add up to {work + prep.get('wall_s', 0):.0f} s (convert + split + plan "
              f"{prep.get('wall_s', 0):.0f} s included); this invocation took {wall:.0f} s "
              "(steps finished before are reused from --workdir)."]
    return "\n".join(lines) + "\n"


def replays(args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """:func:`replay_summary` of the unpruned run for every other pruner run: the measured
    study's name, and for Hyperband ``args.replays - 1`` more names (other bracket draws)."""
    from nnrobustloss.tuning import study_name

    ref, study = runs["none"], study_name(TASK, args.method, FOLD)
    out = {}
    for name, run in runs.items():
        if name == "none":
            continue
        names = [study] + ([f"{study}.draw{k}" for k in range(1, args.replays)]
                           if name == "hyperband" else [])
        log(f"replaying {name} under {len(names)} study names")
        out[name] = replay_summary(ref["trials"], args.method, name, args.epochs, names,
                                   measured=run["trials"], startup=args.startup)
    return out


def replay_lines(ref: dict[str, Any], summaries: dict[str, Any],
                 alternates: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown section: the replays (:func:`replays`) and the final Dice of the trials that a
    replay chooses instead of the unpruned run's choice (``alternates``: {trial number: final
    stage result})."""
    best = ref["best"]
    lines = ["", "## Replay: the unpruned run's curves through the pruners", "",
             "Training is deterministic here, so a trial's curve up to the epoch it is pruned at "
             "is the unpruned run's, and the replay of the measured study equals the measured "
             "pruned run as long as the sampler proposes the same parameters. Hyperband's "
             "decisions depend on the brackets, which a hash of the study name and trial number "
             "draws: for Hyperband the replay repeats the study under other names (the first: "
             "the measured one). After a replayed prune of one of TPE's few best trials a real "
             "study would sample other parameters; the replay keeps the recorded ones (an "
             "approximation for those draws).", "",
             "| pruner | replay = measured run | bracket draws | unpruned best trial "
             f"(#{best['trial']}) pruned | chosen trials (draws) | worst chosen objective "
             "(vs the best) | epochs trained: mean (min-max) |",
             "| --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for name, sm in summaries.items():
        ep, worst = sm["epochs"], min(sm["chosen_value"])
        chosen = ", ".join(f"#{k} ({n})" for k, n in sorted(sm["choices"].items(),
                                                             key=lambda kv: -kv[1]))
        lines.append(f"| {name} | {sm['same_as_measured']} | {sm['n']} | {sm['best_pruned']} | "
                     f"{chosen} | {worst:.4f} ({worst - best['value']:+.4f}) | "
                     f"{sum(ep) / len(ep):.0f} ({min(ep)}-{max(ep)}) |")
    by_number = {r["number"]: r for r in ref["trials"]}
    for k, res in alternates.items():
        r = by_number[int(k)]
        lines.append("")
        lines.append(f"Final stage of the other choice #{k} ({_fmt_params(r['params'])}, objective "
                     f"{r['value']:.4f}), the same seed: Dice "
                     + ", ".join(f"{reg} {100 * v:.1f} %" for reg, v in res["dice"].items())
                     + f" (the unpruned run's choice #{best['trial']}: "
                     + ", ".join(f"{reg} {100 * v:.1f} %" for reg, v in ref["final"]["dice"].items())
                     + ").")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring); ``--tiny`` fills small budgets."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="kept between runs (default: a temporary folder)")
    ap.add_argument("--method", default="SVLS")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--startup", type=int, help="TPE's random start-up trials")
    ap.add_argument("--epochs", type=int, help="epochs per trial")
    ap.add_argument("--iterations", type=int, help="iterations per epoch of a trial")
    ap.add_argument("--final-epochs", type=int, help="final training epochs (default: config's)")
    ap.add_argument("--pruners", nargs="+", choices=PRUNERS, default=list(PRUNERS))
    ap.add_argument("--seeds", type=int, nargs="*", help="extra training seeds for the noise "
                    "checks (none: skip them)")
    ap.add_argument("--replays", type=int, help="Hyperband bracket draws of the replay")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    ap.add_argument("--tiny", action="store_true", help="6 cases, tiny budgets: tests the script")
    args = ap.parse_args(argv)
    small, full = dict(trials=3, startup=2, epochs=4, iterations=2, seeds=[1], replays=20), \
        dict(trials=20, startup=5, epochs=20, iterations=10, seeds=[1, 2],
                                                 replays=1000)
    for k, v in (small if args.tiny else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the comparison (see the module docstring); print and write the Markdown."""
    args = parse_args(argv)
    cmd = shlex.join(["python", "benchmarks/pruning.py", *(sys.argv[1:] if argv is None else argv)])
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work = work.resolve()
        work.mkdir(parents=True, exist_ok=True)
        shared = work / "shared"
        cfg0 = make_config(args, shared, "none")
        stdout = stack.enter_context(open(work / "nnunet_stdout.log", "a"))
        extra: dict[str, Any] = {"prep": {}}
        if (shared / "prep.json").is_file():
            extra["prep"] = json.loads((shared / "prep.json").read_text())
        else:
            log(f"converting and preprocessing {TASK} into {shared}")
            shutil.rmtree(shared, ignore_errors=True)
            with contextlib.redirect_stdout(stdout), stopwatch(extra["prep"]):
                _prepare(cfg0, TASK, shared)
            (shared / "prep.json").write_text(json.dumps(extra["prep"]))
        os.environ["nnUNet_n_proc_DA"] = "0"  # after planning (the planner needs workers)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.INFO)  # "Trial n pruned / finished" on stderr
        base_key = {k: v for k, v in vars(args).items() if k not in ("workdir", "out", "pruners",
                                                                      "seeds", "replays")}
        runs: dict[str, dict[str, Any]] = {}
        for name in args.pruners:
            cfg = make_config(args, work / name, name)
            log(f"{name}: tuning {args.trials} trials x {args.epochs} epochs x "
                f"{args.iterations} iterations")
            with contextlib.redirect_stdout(stdout):
                runs[name] = cached(work / name, {**base_key, "pruner": name},
                                    lambda d, c=cfg: tune_and_train(c, results_root(d, shared)))
        extra["steps"] = list(runs.values())
        if "none" in runs:
            ref = runs["none"]
            if args.seeds:
                extra["noise"] = seed_checks(args, work, shared, ref, base_key, stdout)
                extra["steps"] += extra["noise"]["steps"]
            extra["replays"] = replays(args, runs)
            extra["alternates"] = {}
            others = {k for sm in extra["replays"].values() for k in sm["choices"]}
            for k in sorted(others - {ref["best"]["trial"]}):
                params = next(r["params"] for r in ref["trials"] if r["number"] == k)
                log(f"final stage of trial {k}'s {params}, another choice of a replay")
                with contextlib.redirect_stdout(stdout):
                    res = cached(work / "alternates" / f"trial{k}", {**base_key, "params": params},
                                 lambda d, p=params: final_stage(
                                     make_config(args, results_root(d, shared), "none"), d, p,
                                     cfg0["seed"]))
                extra["alternates"][k] = res
                extra["steps"].append(res)
    text = render(args, cfg0, runs, extra, cmd, time.perf_counter() - t_start)
    print(text, end="")
    if args.out:
        args.out.write_text(text)


def seed_checks(args: argparse.Namespace, work: Path, shared: Path, ref: dict[str, Any],
                base_key: dict[str, Any], stdout: Any) -> dict[str, Any]:
    """Noise of the objective and of the final Dice: the unpruned run's best and worst complete
    trials' parameters trained at the trial budget, and its chosen parameters through the final
    stage, with every seed of ``args.seeds`` (nnU-Net's console output to ``stdout``). Returns
    ``{"objective": {label: {params, values}}, "final": {params, dice: [{region: Dice} per
    seed]}, "steps": [each step's result]}`` (seed 0's values from ``ref``)."""
    done = [r for r in ref["trials"] if r["state"] == "COMPLETE"]
    picks = {"best": max(done, key=lambda r: r["value"]), "worst": min(done, key=lambda r: r["value"])}
    out: dict[str, Any] = {"objective": {}, "final": {"params": ref["best"]["params"],
                                                      "dice": [ref["final"]["dice"]]}, "steps": []}
    cfg = make_config(args, shared, "none")  # the objective's trainings read shared/preprocessed
    for label, r in picks.items():
        values = [r["value"]]
        for s in args.seeds:
            log(f"noise: objective of the {label} trial's {r['params']} with seed {s}")
            with contextlib.redirect_stdout(stdout):
                res = cached(work / "seeds" / f"objective_{label}_seed{s}",
                             {**base_key, "params": r["params"], "seed": s},
                             lambda d, p=r["params"], s=s: objective_with_seed(cfg, d, p, s))
            values.append(res["value"])
            out["steps"].append(res)
        out["objective"][label] = {"params": r["params"], "values": values}
    for s in args.seeds:
        log(f"noise: final training of {ref['best']['params']} with seed {s}")
        with contextlib.redirect_stdout(stdout):
            res = cached(work / "seeds" / f"final_seed{s}",
                         {**base_key, "params": ref["best"]["params"], "seed": s},
                         lambda d, s=s: final_stage(make_config(args, results_root(d, shared), "none"),
                                                    d, ref["best"]["params"], s))
        out["final"]["dice"].append(res["dice"])
        out["steps"].append(res)
    return out


if __name__ == "__main__":
    main()
