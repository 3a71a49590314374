"""The ``nnrobustloss`` command: every pipeline stage callable by hand.

Each subcommand runs the same package function as the corresponding Snakemake rule, with the
settings of the given config files (default ``config/config.yaml``) and the output paths of
DESIGN.md section 2. Examples::

    nnrobustloss convert --task Phantom
    nnrobustloss train --task Phantom --method APL2 --fold 0 --params '{"w": 0.7}' --epochs 5
    nnrobustloss report
    nnrobustloss plan-cost --configfile config/paper.yaml

User errors (bad config, bad input files) and failed file operations (``OSError``: a full
disk, a read-only folder, a file in the way) print one ``error:`` line and exit with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnrobustloss import layout
from nnrobustloss import pipeline as P
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
    if s == "convert":
        P.run_convert(**P.convert_params(cfg, args.task), results_dir=r,
                      manifest=Path(r) / "raw" / f"{args.task}.json")
    elif s == "noise":
        P.run_noise_report(**P.noise_params(cfg, args.task), results_dir=r,
                           out_csv=Path(r) / "noise" / f"{args.task}.csv")
    elif s == "splits":
        P.run_splits(**P.splits_params(cfg, args.task), results_dir=r,
                     out_json=Path(r) / "splits" / f"{args.task}.json")
    elif s == "plan":
        P.run_plan(**P.plan_params(cfg, args.task), results_dir=r,
                   splits_json=Path(r) / "splits" / f"{args.task}.json",
                   manifest=Path(r) / "preprocessed" / f"{args.task}.json",
                   num_processes=cfg["planning"]["num_processes"])
    elif s == "tune":
        params = P.tune_params(cfg, args.task, args.method, args.fold)
        study = layout.study_dir(r, args.task, params["method"], args.fold)
        workers = args.workers or tuning_workers(cfg, params["method"])
        url_env = cfg["tuning"]["postgresql_url_env"]
        warmup = P.warmup_checkpoint(cfg, args.task, params["method"], args.fold)
        if warmup is not None and not warmup.is_file():  # CoT, CoT+, StoCoT: train it once
            P.run_warmup(P.warmup_params(cfg, args.task, args.fold), results_dir=r,
                         checkpoint=warmup, device=cfg["device"],
                         peer_updates=cfg["coteaching"].get("peer_updates"))
        P.run_tune_worker(params, worker=args.worker, workers=workers, results_dir=r,
                          marker=study / f"worker{args.worker}.done", url_env=url_env,
                          device=cfg["device"],
                          checkpoint_minutes=cfg["checkpoint_minutes"],
                          peer_updates=cfg["coteaching"].get("peer_updates"), warmup=warmup)
        try:
            best = P.run_select_best(params, results_dir=r, trials_csv=study / "trials.csv",
                                     best_params_json=study / "best_params.json", url_env=url_env)
            print(f"best parameters: {best['params']} (EMA pseudo Dice {best['value']:.4f})")
        except NNRobustLossError as e:  # other workers still running: not an error here
            print(f"study not complete yet: {e}")
    elif s == "train":
        params = P.train_params(cfg, args.task, args.method, args.fold)
        if args.epochs is not None:
            params["epochs"] = args.epochs
        best = layout.study_dir(r, args.task, params["method"], args.fold) / "best_params.json"
        from nnrobustloss.training import parse_params

        source = args.params if args.params is not None else (str(best) if best.is_file() else None)
        out = P.run_train(params, results_dir=r, hparams=parse_params(source) if source else None,
                          device=cfg["device"],
                          checkpoint_minutes=cfg["checkpoint_minutes"],
                          peer_updates=cfg["coteaching"].get("peer_updates"))
        print(f"trained: {out / 'checkpoint_final.pth'}")
    elif s == "predict":
        params = P.predict_params(cfg, args.task, args.method, args.fold)
        P.run_predict(params, results_dir=r, splits_json=Path(r) / "splits" / f"{args.task}.json",
                      out_dir=layout.predictions_dir(r, args.task, params["method"], args.fold),
                      device=cfg["device"])
    elif s == "evaluate":
        params = P.evaluate_params(cfg, args.task, args.method, args.fold)
        P.run_evaluate(params, results_dir=r, splits_json=Path(r) / "splits" / f"{args.task}.json",
                       pred_dir=layout.predictions_dir(r, args.task, params["method"], args.fold),
                       out_csv=Path(r) / "metrics" / args.task / params["method"] / f"fold{args.fold}.csv",
                       n_workers=cfg["evaluation"]["n_workers"],
                       reliability_csv=Path(r) / "metrics" / args.task / params["method"]
                       / f"fold{args.fold}_reliability.csv")
    elif s == "plan-cost":
        print(format_cost_plan(cfg), end="")
    elif s == "report":
        root = Path(r)
        out = P.run_report(P.report_params(cfg),
                           metrics_csvs=sorted(str(f) for f in root.glob("metrics/*/*/fold*.csv")
                                               if not f.name.endswith("_reliability.csv")),
                           reliability_csvs=sorted(
                               map(str, root.glob("metrics/*/*/fold*_reliability.csv"))),
                           noise_csvs=sorted(map(str, root.glob("noise/*.csv"))),
                           trials_csvs=sorted(map(str, root.glob("tuning/*/*/fold*/trials.csv"))),
                           progress_csvs=sorted(map(str, root.glob("training/*/*/fold*/progress.csv"))),
                           tables_dir=root / "tables", figures_dir=root / "figures")
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
