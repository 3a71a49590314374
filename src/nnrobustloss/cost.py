"""Wall time and GPU cost of the study's GPU jobs, from the config alone (docs/tuning.md).

The work of a job is epochs x the seconds of one epoch: ``cluster.seconds_per_epoch`` of the
planner (an epoch of 250 training iterations of one network), scaled by the budget's
``iterations_per_epoch`` and, for the two-peer methods, by ``cluster.two_peer_factor``. A tuning
worker's work is its quota of trials x ``tuning.epochs`` (less the shared warm-up's epochs for
CoT, CoT+ and StoCoT with ``tuning.shared_warmup``, :mod:`nnrobustloss.warmup`); a warm-up
job's is its epochs of the two-peer CoT trainer; a final training's is ``training.epochs``; a
predict job's is ``cluster.predict_hours``.

- :func:`job_minutes` is the runtime a job asks for: the work x ``cluster.safety_factor`` plus
  ``cluster.job_overhead_minutes``; :func:`runtime_minutes` multiplies it by Snakemake's
  ``attempt`` (a retried job gets more time) and caps it at ``cluster.max_job_hours``.
- :func:`tuning_workers` splits a study into workers whose quota fits the limit
  (``tuning.workers: auto``), or checks that an explicit count fits.
- :func:`check_fits` (run by the Snakefile at start-up; ``plan-cost`` prints the same) warns
  about a GPU job whose first attempt cannot fit the limit, naming the key to change
  (``tuning.workers: auto`` always fits or is refused).
- :func:`cost_plan` / :func:`format_cost_plan`: jobs, epochs and GPU-hours per task and method
  (``nnrobustloss plan-cost``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

from nnrobustloss.errors import ConfigError
from nnrobustloss.mappings import deep_update
from nnrobustloss.methods import get_method
from nnrobustloss.warmup import (
    WARMUP_METHOD,
    config_warmup_epochs,
    trial_epochs,
    uses_shared_warmup,
)

GPU_RULES = ("tune_warmup", "tune_worker", "train", "predict")
#: The method column of the cost plan's rows of the shared warm-ups (``tune_warmup`` jobs).
WARMUP_ROW = "warm-up"
#: seconds_per_epoch is given for an epoch of this many training iterations (nnU-Net's default).
REFERENCE_ITERATIONS = 250
#: tuning.workers: auto never splits a study into more workers than this (one trial each at most).
MAX_AUTO_WORKERS = 64


def tuned_methods(config: Mapping[str, Any]) -> list[str]:
    """The config's methods that get Optuna studies (none when ``tuning.enabled`` is false)."""
    if not config["tuning"]["enabled"]:
        return []
    return [m for m in config["methods"] if get_method(m).needs_tuning]


def epoch_seconds(config: Mapping[str, Any], method: str, stage: str) -> float:
    """Estimated seconds of one epoch of ``method`` in ``stage`` (``tuning`` or ``training``)."""
    cl = config["cluster"]
    planner = config["planning"]["planner"]
    base = float(cl["seconds_per_epoch"][planner])
    scale = config[stage]["iterations_per_epoch"] / REFERENCE_ITERATIONS
    peers = cl["two_peer_factor"] if get_method(method).peers == 2 else 1.0
    return base * scale * peers


def trial_seconds(config: Mapping[str, Any], method: str) -> float:
    """Estimated seconds of one tuning trial (``tuning.epochs`` epochs, less the shared warm-up's:
    :func:`nnrobustloss.warmup.trial_epochs`)."""
    return trial_epochs(config, method) * epoch_seconds(config, method, "tuning")


def work_seconds(config: Mapping[str, Any], rule: str, method: str,
                 workers: int | None = None) -> float:
    """Estimated GPU seconds of one job of ``rule`` (one of :data:`GPU_RULES`) for ``method``.

    A ``tune_worker`` job runs the largest quota, ``ceil(n_trials / workers)`` trials (the first
    workers take the remainder, :func:`nnrobustloss.tuning.worker_quota`); ``workers`` defaults
    to :func:`tuning_workers`.
    """
    if rule == "tune_worker":
        w = tuning_workers(config, method) if workers is None else workers
        return -(-config["tuning"]["n_trials"] // w) * trial_seconds(config, method)
    if rule == "tune_warmup":  # whatever ``method``: the warm-up's own trainer
        return config_warmup_epochs(config) * epoch_seconds(config, WARMUP_METHOD, "tuning")
    if rule == "train":
        return config["training"]["epochs"] * epoch_seconds(config, method, "training")
    if rule == "predict":
        return config["cluster"]["predict_hours"] * 3600.0
    raise ConfigError(f"rule {rule!r} is not a GPU rule ({', '.join(GPU_RULES)}).")


def _job_minutes(config: Mapping[str, Any], work_s: float) -> int:
    cl = config["cluster"]
    return math.ceil(cl["job_overhead_minutes"] + work_s * cl["safety_factor"] / 60.0)


def limit_minutes(config: Mapping[str, Any]) -> int | None:
    """``cluster.max_job_hours`` in whole minutes; None without a limit."""
    hours = config["cluster"]["max_job_hours"]
    return None if hours is None else math.floor(hours * 60)


def job_minutes(config: Mapping[str, Any], rule: str, method: str,
                workers: int | None = None) -> int:
    """Runtime (minutes) the first attempt of a ``rule`` job for ``method`` asks for, uncapped:
    overhead + estimated work x safety factor."""
    return _job_minutes(config, work_seconds(config, rule, method, workers))


def runtime_minutes(config: Mapping[str, Any], rule: str, method: str, attempt: int = 1) -> int:
    """The ``runtime`` resource of a ``rule`` job: :func:`job_minutes` x ``attempt`` (Snakemake's
    attempt counter, 1 for the first submission), capped at ``cluster.max_job_hours``."""
    minutes = job_minutes(config, rule, method) * max(1, int(attempt))
    cap = limit_minutes(config)
    return minutes if cap is None else min(minutes, cap)


def tuning_workers(config: Mapping[str, Any], method: str) -> int:
    """Number of workers (Snakemake jobs) of each study of ``method``.

    ``tuning.workers: auto``: the fewest workers whose largest quota fits
    ``cluster.max_job_hours`` (1 without a limit). An integer is taken as it is. ConfigError
    when no quota fits (a single trial is longer than the limit) or when more than one worker
    would share an SQLite storage.
    """
    tu = config["tuning"]
    n_trials = tu["n_trials"]
    cap = limit_minutes(config)
    if tu["workers"] != "auto":
        return int(tu["workers"])
    if cap is None:
        return 1
    one = _job_minutes(config, trial_seconds(config, method))
    if one > cap:
        raise ConfigError(
            f"config key tuning.epochs: one trial of {method} of {tu['epochs']} epochs needs about "
            f"{one / 60:.1f} h (cluster.seconds_per_epoch x safety factor + overhead), more than "
            f"cluster.max_job_hours={config['cluster']['max_job_hours']}. Lower tuning.epochs or "
            "raise cluster.max_job_hours (null: no limit).")
    for w in range(1, min(n_trials, MAX_AUTO_WORKERS) + 1):
        if _job_minutes(config, work_seconds(config, "tune_worker", method, w)) <= cap:
            break
    if w > 1 and tu["storage"] == "sqlite":
        raise ConfigError(f"config key tuning.storage: the {method} studies need {w} workers to "
                          f"fit cluster.max_job_hours={config['cluster']['max_job_hours']}, and "
                          "several workers cannot share an SQLite storage. Set tuning.storage to "
                          "journal (or postgresql).")
    return w


class WallTimeWarning(UserWarning):
    """A GPU job's first attempt asks for more than ``cluster.max_job_hours``."""


def fit_warnings(config: Mapping[str, Any]) -> list[str]:
    """One message per kind of GPU job whose first attempt cannot fit ``cluster.max_job_hours``
    (empty without a limit). Such a job is capped at the limit: SLURM stops it there and its
    retry continues from the last checkpoint. Raises ConfigError where ``tuning.workers: auto``
    cannot split a study (see :func:`tuning_workers`)."""
    cap = limit_minutes(config)
    if cap is None:
        return []
    limit = config["cluster"]["max_job_hours"]
    tail = (f"more than cluster.max_job_hours={limit}: it is stopped at the limit and continues "
            "from its checkpoint when retried.")
    out = []
    tuned = tuned_methods(config)
    for method in config["methods"]:
        if method in tuned:
            need = job_minutes(config, "tune_worker", method)  # also resolves tuning_workers
            if need > cap:
                w = tuning_workers(config, method)
                out.append(f"config key tuning.workers: with {w} worker(s), each {method} worker "
                           f"runs {-(-config['tuning']['n_trials'] // w)} trials, about "
                           f"{need / 60:.1f} h, {tail} Set tuning.workers to auto (or more "
                           "workers), or raise cluster.max_job_hours (null: no limit).")
        need = job_minutes(config, "train", method)
        if need > cap:
            out.append(f"config key training.epochs: a {method} training of "
                       f"{config['training']['epochs']} epochs needs about {need / 60:.1f} h, "
                       f"{tail} Lower training.epochs or raise cluster.max_job_hours.")
    need = job_minutes(config, "predict", config["methods"][0])
    if need > cap:
        out.append(f"config key cluster.predict_hours: a predict job needs about "
                   f"{need / 60:.1f} h, {tail}")
    return out


def check_fits(config: Mapping[str, Any]) -> None:
    """Warn (:class:`WallTimeWarning`) about every message of :func:`fit_warnings`."""
    for message in fit_warnings(config):
        warnings.warn(message, WallTimeWarning, stacklevel=3)


def cost_plan(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (task, method) of the GPU work the config builds (its ``folds``).

    Columns: ``task, method, tune_jobs, tune_epochs, train_jobs, train_epochs, predict_jobs``,
    the estimated GPU-hours ``tune_gpu_h, train_gpu_h, predict_gpu_h, gpu_h`` (work without the
    safety factor) and ``reserved_gpu_h``: the runtimes the first attempts ask for. Final
    trainings and predictions count every replicate (``training.replicates`` per fold; tuning is
    shared by the replicates). With the shared warm-up, each task has a row of method
    :data:`WARMUP_ROW` whose ``tune_*`` columns are its ``tune_warmup`` jobs (one per fold).
    """
    n_folds = len(config["folds"])
    n_final = n_folds * int(config["training"].get("replicates", 1))  # train/predict jobs
    tuned = tuned_methods(config)
    tu = config["tuning"]
    rows = []
    for task in config["tasks"]:
        for method in config["methods"]:
            row: dict[str, Any] = {"task": task, "method": method}
            reserved = 0.0
            if method in tuned:
                w = tuning_workers(config, method)
                row["tune_jobs"] = n_folds * w
                row["tune_epochs"] = n_folds * tu["n_trials"] * trial_epochs(config, method)
                row["tune_gpu_h"] = n_folds * tu["n_trials"] * trial_seconds(config, method) / 3600
                reserved += row["tune_jobs"] * runtime_minutes(config, "tune_worker", method) / 60
            else:
                row.update(tune_jobs=0, tune_epochs=0, tune_gpu_h=0.0)
            row["train_jobs"] = n_final
            row["train_epochs"] = n_final * config["training"]["epochs"]
            row["train_gpu_h"] = n_final * work_seconds(config, "train", method) / 3600
            row["predict_jobs"] = n_final
            row["predict_gpu_h"] = n_final * work_seconds(config, "predict", method) / 3600
            for rule in ("train", "predict"):
                reserved += n_final * runtime_minutes(config, rule, method) / 60
            row["gpu_h"] = row["tune_gpu_h"] + row["train_gpu_h"] + row["predict_gpu_h"]
            row["reserved_gpu_h"] = reserved
            rows.append(row)
        if any(uses_shared_warmup(config, m) for m in tuned):
            warm = work_seconds(config, "tune_warmup", WARMUP_METHOD)
            rows.append({"task": task, "method": WARMUP_ROW, "tune_jobs": n_folds,
                         "tune_epochs": n_folds * config_warmup_epochs(config),
                         "tune_gpu_h": n_folds * warm / 3600, "train_jobs": 0, "train_epochs": 0,
                         "train_gpu_h": 0.0, "predict_jobs": 0, "predict_gpu_h": 0.0,
                         "gpu_h": n_folds * warm / 3600, "reserved_gpu_h": n_folds * runtime_minutes(
                             config, "tune_warmup", WARMUP_METHOD) / 60})
    return pd.DataFrame(rows)


def format_cost_plan(config: Mapping[str, Any], plan: pd.DataFrame | None = None) -> str:
    """The cost plan as Markdown: GPU jobs and runtimes per rule, then per task and method
    (jobs, epochs, estimated and reserved GPU-hours) with totals."""
    plan = cost_plan(config) if plan is None else plan
    limit = config["cluster"]["max_job_hours"]
    planner = config["planning"]["planner"]
    lines = [f"# GPU cost plan: planner {planner}, "
             f"{config['cluster']['seconds_per_epoch'][planner]} s per epoch of "
             f"{REFERENCE_ITERATIONS} iterations (one network), wall-time limit "
             f"{'none' if limit is None else f'{limit} h'} per job", "",
             "| rule | jobs | runtime per job, first attempt (min) |", "| --- | ---: | --- |"]
    warm = plan["method"] == WARMUP_ROW
    if warm.any():
        lines.append(f"| tune_warmup | {int(plan.loc[warm, 'tune_jobs'].sum())} | "
                     f"{runtime_minutes(config, 'tune_warmup', WARMUP_METHOD)} |")
    for rule, col in (("tune_worker", "tune_jobs"), ("train", "train_jobs"),
                      ("predict", "predict_jobs")):
        methods = tuned_methods(config) if rule == "tune_worker" else list(config["methods"])
        minutes = sorted({runtime_minutes(config, rule, m) for m in methods})
        shown = ", ".join(map(str, minutes)) or "-"
        jobs = plan.loc[~warm, col].sum() if rule == "tune_worker" else plan[col].sum()
        lines.append(f"| {rule} | {int(jobs)} | {shown} |")
    lines += ["", "| task | method | tune jobs | tune epochs | train epochs | tune GPU-h | "
              "train GPU-h | predict GPU-h | GPU-h | reserved GPU-h |",
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in plan.itertuples():
        lines.append(f"| {r.task} | {r.method} | {r.tune_jobs} | {r.tune_epochs} | "
                     f"{r.train_epochs} | {r.tune_gpu_h:.1f} | {r.train_gpu_h:.1f} | "
                     f"{r.predict_gpu_h:.1f} | {r.gpu_h:.1f} | {r.reserved_gpu_h:.1f} |")
    t = plan.sum(numeric_only=True)
    lines.append(f"| **total** | | {int(t.tune_jobs)} | {int(t.tune_epochs)} | "
                 f"{int(t.train_epochs)} | {t.tune_gpu_h:.1f} | {t.train_gpu_h:.1f} | "
                 f"{t.predict_gpu_h:.1f} | {t.gpu_h:.1f} | {t.reserved_gpu_h:.1f} |")
    if warm.any():  # the same studies trained from scratch (tuning.shared_warmup: false)
        off = cost_plan(deep_update(config, {"tuning": {"shared_warmup": False}}))
        lines += ["", f"Shared warm-up (tuning.shared_warmup): {int(t.tune_epochs)} tuning epochs "
                  f"and {t.tune_gpu_h:,.0f} tuning GPU-hours; without it "
                  f"{int(off['tune_epochs'].sum())} and {off['tune_gpu_h'].sum():,.0f} "
                  f"(-{1 - t.tune_epochs / off['tune_epochs'].sum():.1%} epochs, "
                  f"-{1 - t.tune_gpu_h / off['tune_gpu_h'].sum():.1%} GPU-hours)."]
    lines += [""] + [f"warning: {m}" for m in fit_warnings(config)]
    lines += ["", f"GPU jobs: {int(t.tune_jobs + t.train_jobs + t.predict_jobs)}; estimated "
              f"{t.gpu_h:,.0f} GPU-hours, reserved (first attempts) {t.reserved_gpu_h:,.0f} "
              "GPU-hours. Estimates come from cluster.seconds_per_epoch: measure your GPU and "
              "set it."]
    return "\n".join(lines) + "\n"
