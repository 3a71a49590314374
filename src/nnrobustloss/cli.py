"""The ``nnrobustloss`` command: every pipeline stage callable by hand.

Each subcommand runs the same package function as the corresponding Snakemake rule, with the
settings of the given config files (default ``config/config.yaml``) and the output paths of
docs/layout.md. Examples::

    nnrobustloss convert --task Phantom
    nnrobustloss train --task Phantom --method APL2 --fold 0 --params '{"w": 0.7}' --epochs 5
    nnrobustloss report
    nnrobustloss plan-cost --configfile config/paper.yaml

User errors (bad config, bad input files) and failed file operations (``OSError``: a full
disk, a read-only folder, a file in the way) print one ``error:`` line and exit with status 1.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnrobustloss import layout
from nnrobustloss import pipeline as stages
from nnrobustloss.cost import format_cost_plan, tuning_workers
from nnrobustloss.errors import NNRobustLossError, one_line

STAGES = ("convert", "noise", "splits", "plan", "tune", "train", "predict", "evaluate", "report")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnrobustloss", description="Robust-loss benchmark for nnU-Net: pipeline stages.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help_: str, task: bool = True, method: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--configfile", nargs="+", default=["config/config.yaml"],
                       help="config files, later ones override earlier ones (default: %(default)s)")
        p.add_argument("--results-dir", help="override results_dir of the config")
        if task:
            p.add_argument("--task", required=True, help="task name (a key of tasks: in the config)")
        if method:
            p.add_argument("--method", required=True, help="method id, e.g. Baseline, APL2, HRL")
            p.add_argument("--fold", type=int, required=True, help="fold index")
        return p

    stage("convert", "convert a task's sources into its noisy and reference raw datasets")
    stage("noise", "measure the label noise of a task (noise/<Task>.csv)")
    stage("splits", "write the task's k-fold splits (splits/<Task>.json)")
    stage("plan", "nnU-Net planning and preprocessing of both datasets of a task")
    p = stage("tune", "run one worker of a task x method x fold Optuna study, then select the best "
              "parameters when the study is complete", method=True)
    p.add_argument("--worker", type=int, default=0, help="worker index (default 0)")
    p.add_argument("--workers", type=int, help="number of workers (default: tuning.workers; "
                   "auto: nnrobustloss.cost.tuning_workers)")
    p = stage("train", "final training of a task x method x fold", method=True)
    p.add_argument("--params", help="hyper-parameters as JSON or a best_params.json file "
                   "(default: tuning/<T>/<M>/fold<k>/best_params.json when it exists, else the "
                   "method's defaults)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    stage("predict", "predict the held-out cases of a fold", method=True)
    stage("evaluate", "evaluate a fold's predictions against the reference labels", method=True)
    stage("report", "Table 1, Table 2, the noise table and Figure 1 from the CSVs", task=False)
    stage("plan-cost", "print the GPU jobs per rule, epochs and estimated GPU-hours per task and "
          "method of the config, before anything is submitted", task=False)
    return parser


def _version() -> str:
    from nnrobustloss import __version__

    return f"nnrobustloss {__version__}"


def _load(args: argparse.Namespace) -> dict[str, Any]:
    from nnrobustloss.config import load_config

    overrides = {"results_dir": args.results_dir} if args.results_dir else None
    return load_config(*args.configfile, overrides=overrides)


def run(args: argparse.Namespace) -> None:
    """Run the stage selected by parsed command-line ``args``."""
    cfg = _load(args)
    r = cfg["results_dir"]
    s = args.stage
    if s == "plan-cost":
        print(format_cost_plan(cfg), end="")
        return
    if s == "report":
        _report(cfg, r)
        return
    task = args.task
    splits = layout.splits_json(r, task)
    if s == "convert":
        stages.run_convert(stages.convert_params(cfg, task), results_dir=r,
                           manifest=layout.raw_manifest(r, task))
    elif s == "noise":
        stages.run_noise_report(stages.noise_params(cfg, task), results_dir=r,
                                out_csv=layout.noise_csv(r, task))
    elif s == "splits":
        stages.run_splits(stages.splits_params(cfg, task), results_dir=r, out_json=splits)
    elif s == "plan":
        stages.run_plan(stages.plan_params(cfg, task), results_dir=r, splits_json=splits,
                        manifest=layout.preprocessed_manifest(r, task),
                        num_processes=cfg["planning"]["num_processes"])
    elif s == "tune":
        _tune(cfg, r, task, args)
    elif s == "train":
        settings = stages.train_params(cfg, task, args.method, args.fold)
        if args.epochs is not None:
            settings["epochs"] = args.epochs
        best = layout.best_params_json(r, task, settings["method"], args.fold)
        from nnrobustloss.training import parse_params

        if args.params is not None:
            out = stages.run_train(settings, results_dir=r, hparams=parse_params(args.params),
                                   **stages.run_options(cfg, "train"))
        else:
            out = stages.run_train(settings, results_dir=r,
                                   best_params_json=best if best.is_file() else None,
                                   **stages.run_options(cfg, "train"))
        print(f"trained: {out / layout.CHECKPOINT_FINAL}")
    elif s == "predict":
        settings = stages.predict_params(cfg, task, args.method, args.fold)
        stages.run_predict(settings, results_dir=r, splits_json=splits,
                           out_dir=layout.predictions_dir(r, task, settings["method"], args.fold),
                           **stages.run_options(cfg, "predict"))
    elif s == "evaluate":
        settings = stages.evaluate_params(cfg, task, args.method, args.fold)
        method, fold = settings["method"], args.fold
        stages.run_evaluate(settings, results_dir=r, splits_json=splits,
                            pred_dir=layout.predictions_dir(r, task, method, fold),
                            out_csv=layout.metrics_csv(r, task, method, fold),
                            n_workers=cfg["evaluation"]["n_workers"],
                            reliability_csv=layout.reliability_csv(r, task, method, fold))


def _tune(cfg: dict[str, Any], r: str, task: str, args: argparse.Namespace) -> None:
    """One worker of a study (training the shared warm-up first when it is missing), then the
    best parameters when the study is complete."""
    settings = stages.tune_params(cfg, task, args.method, args.fold)
    method, fold = settings["method"], args.fold
    workers = args.workers or tuning_workers(cfg, method)
    url_env = cfg["tuning"]["postgresql_url_env"]
    warmup = stages.warmup_checkpoint(cfg, task, method, fold)
    if warmup is not None and not warmup.is_file():  # CoT, CoT+, StoCoT: train it once
        stages.run_warmup(stages.warmup_params(cfg, task, fold), results_dir=r,
                          checkpoint=warmup, **stages.run_options(cfg, "warmup"))
    stages.run_tune_worker(settings, results_dir=r, worker=args.worker, workers=workers,
                           marker=layout.worker_marker(r, task, method, fold, args.worker),
                           warmup=warmup, url_env=url_env, **stages.run_options(cfg, "tune"))
    try:
        best = stages.run_select_best(settings, results_dir=r,
                                      trials_csv=layout.trials_csv(r, task, method, fold),
                                      best_params_json=layout.best_params_json(r, task, method,
                                                                               fold),
                                      url_env=url_env)
        print(f"best parameters: {best['params']} (EMA pseudo Dice {best['value']:.4f})")
    except NNRobustLossError as e:  # other workers still running: not an error here
        print(f"study not complete yet: {e}")


def _report(cfg: dict[str, Any], r: str) -> None:
    """The report from every stage CSV under the results folder (the layout's paths with ``*``
    for task, method and fold)."""
    def found(path: Path) -> list[str]:
        return sorted(glob.glob(str(path)))

    reliability = found(layout.reliability_csv(r, "*", "*", "*"))
    out = stages.run_report(
        stages.report_params(cfg), results_dir=r,
        metrics_csvs=[f for f in found(layout.metrics_csv(r, "*", "*", "*")) if f not in reliability],
        reliability_csvs=reliability, noise_csvs=found(layout.noise_csv(r, "*")),
        trials_csvs=found(layout.trials_csv(r, "*", "*", "*")),
        progress_csvs=found(layout.progress_csv(r, "*", "*", "*")))
    for path in out.values():
        print(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnrobustloss`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        run(args)
    except (NNRobustLossError, OSError) as e:  # a file operation's OSError: one line too
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
