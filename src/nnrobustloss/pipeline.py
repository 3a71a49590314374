"""The pipeline's stages, shared by the Snakemake rules and the ``nnrobustloss`` command.

Each stage has two functions:

- ``<stage>_params(config, ...)``: the result-relevant settings of the stage, taken from the
  validated config. The Snakefile puts exactly this dict into the rule's ``params:`` (so that
  Snakemake reruns a job when, and only when, one of them changes); the command line uses it too.
- ``run_<stage>(params, results_dir, *, <inputs and outputs>, <run options>)``: does the work
  and writes the outputs atomically. ``params`` is the dict ``<stage>_params`` returned, as it
  is (the rule's ``params.settings``); ``results_dir`` the results folder; everything else is a
  keyword: the files the rule reads and writes, then the settings that change no result
  (``device``, ``threads``, number of processes, ... :func:`run_options`).

Output locations follow docs/layout.md (:mod:`nnrobustloss.layout`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nnrobustloss import layout
from nnrobustloss.config import evaluation_regions
from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import atomic_path, remove_temporaries, stage_lock, write_json
from nnrobustloss.methods import config_options, declared_options, get_method
from nnrobustloss.metrics.registry import ONE_EMPTY_RULE
from nnrobustloss.planning import PLANS_IDENTIFIER


def _task(config: Mapping[str, Any], task: str) -> Mapping[str, Any]:
    if task not in config["tasks"]:
        raise ConfigError(f"tasks.{task}: unknown task; the config defines "
                          f"{', '.join(config['tasks'])}.")
    return config["tasks"][task]


@contextlib.contextmanager
def _one_run(results_dir: str | os.PathLike[str], stage: str, task: str,
             *outputs: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of ``stage`` for ``task`` (``<results_dir>/.locks/<stage>.<task>.lock``) and
    delete the temporaries that killed runs left beside ``outputs`` (:func:`remove_temporaries`)."""
    with stage_lock(Path(results_dir) / ".locks" / f"{stage}.{task}.lock",
                    f"{stage} stage of task {task}"):
        for out in map(Path, outputs):
            remove_temporaries(out.parent, out.name)
        yield


# --- convert -------------------------------------------------------------------------------

def convert_params(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Settings of the convert stage: the task's definition and the seed."""
    t = _task(config, task)
    keys = ("dataset_id", "reference_dataset_id", "labels", "channel", "noise", "sources")
    return {"task": task, "task_cfg": {k: t[k] for k in keys if k in t}, "seed": config["seed"]}


def run_convert(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                manifest: str | os.PathLike[str]) -> None:
    """Convert the task's sources into its raw datasets and reference labels, with the manifest
    ``manifest`` (``raw/<Task>.json``: dataset folders and case ids), all committed as a whole:
    after a kill either the old complete state or the new one is visible; one run per task at a
    time. ``params``: :func:`convert_params`."""
    from nnrobustloss.datasets.convert import convert_task

    convert_task(params["task"], params["task_cfg"], results_dir, seed=params["seed"],
                 manifest=manifest)


# --- noise report --------------------------------------------------------------------------

def noise_params(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Settings of the noise report: the task's ids, regions and surface tolerance."""
    t = _task(config, task)
    return {"task": task, "dataset_id": t["dataset_id"], "regions": evaluation_regions(t),
            "tolerance_mm": t["tolerance_mm"], "one_empty_rule": ONE_EMPTY_RULE}


def run_noise_report(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                     out_csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Write the task's label-noise report ``out_csv`` (``noise/<Task>.csv``, tidy: ``task,
    case, region, metric, value, worst_case``; see
    :func:`nnrobustloss.noise.report.measure_noise_levels`) from the noisy dataset's labels and
    the reference labels, print the means and return the table. ``params``:
    :func:`noise_params`; its ``one_empty_rule`` (default
    :data:`nnrobustloss.metrics.registry.ONE_EMPTY_RULE`) is there so that a new rule reruns
    the report; another value is an error."""
    from nnrobustloss.noise.report import measure_noise_levels

    task, dataset_id = params["task"], params["dataset_id"]
    one_empty_rule = params.get("one_empty_rule", ONE_EMPTY_RULE)
    if one_empty_rule != ONE_EMPTY_RULE:
        raise ConfigError(f"one_empty_rule {one_empty_rule!r}: this version of nnrobustloss "
                          f"evaluates with {ONE_EMPTY_RULE!r}; rebuild the job's settings.")
    noisy_dir = layout.raw_dir(results_dir, task, dataset_id) / "labelsTr"
    # A missing or empty folder would give an empty report that reads as "no noise".
    if not noisy_dir.is_dir() or not any(noisy_dir.glob("*.nii.gz")):
        raise InputDataError(f"{noisy_dir}: no label files (*.nii.gz) found. Run the convert "
                             f"stage for task {task} first.")
    with _one_run(results_dir, "noise", task, out_csv):
        df = measure_noise_levels(noisy_dir, layout.reference_labels_dir(results_dir, task),
                                  params["regions"], params["tolerance_mm"], task=task)
        with atomic_path(out_csv) as tmp:
            df.to_csv(tmp, index=False, na_rep="NaN")
    means = df.groupby(["region", "metric"])["value"].mean().unstack()
    print(f"[noise {task}] mean noisy-vs-reference per region:\n{means.to_string()}",
          file=sys.stderr)
    return df


# --- splits --------------------------------------------------------------------------------

def splits_params(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Settings of the splits stage: number of folds and seed."""
    t = _task(config, task)
    return {"task": task, "dataset_id": t["dataset_id"], "n_folds": config["n_folds"],
            "seed": config["seed"]}


def run_splits(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
               out_json: str | os.PathLike[str]) -> None:
    """Write the task's k-fold splits ``out_json`` (``splits/<Task>.json``, shared by the noisy
    and reference datasets) from the case ids of the noisy raw dataset. ``params``:
    :func:`splits_params`."""
    from nnrobustloss.splits import write_splits

    task = params["task"]
    with _one_run(results_dir, "splits", task, out_json):
        write_splits(layout.raw_dir(results_dir, task, params["dataset_id"]), out_json,
                     n_folds=params["n_folds"], seed=params["seed"])


# --- plan ----------------------------------------------------------------------------------

def plan_params(config: Mapping[str, Any], task: str) -> dict[str, Any]:
    """Settings of the plan stage: dataset ids, planner and (for ``cpu``) the CPU plan."""
    t = _task(config, task)
    p = config["planning"]
    return {"task": task, "dataset_id": t["dataset_id"],
            "reference_dataset_id": t["reference_dataset_id"], "planner": p["planner"],
            "configuration": p["configuration"], "cpu_plan": p.get("cpu_plan")}


def run_plan(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
             splits_json: str | os.PathLike[str], manifest: str | os.PathLike[str],
             num_processes: int = 2) -> None:
    """Plan and preprocess both raw datasets with identical plans and the splits
    ``splits_json``; write the manifest ``manifest`` (``preprocessed/<Task>.json``).
    ``params``: :func:`plan_params`; ``num_processes``: nnU-Net's preprocessing processes."""
    from nnrobustloss.planning import plan_and_preprocess

    task, configuration = params["task"], params["configuration"]
    # The planner's temporary folder is preprocessed/.tmp-<pid>-<task>-<8 random>.
    with _one_run(results_dir, "plan", task, manifest, Path(manifest).parent / task):
        noisy, ref = plan_and_preprocess(task, params["dataset_id"],
                                         params["reference_dataset_id"], results_dir,
                                         planner=params["planner"], configuration=configuration,
                                         cpu_plan=params["cpu_plan"], splits_file=splits_json,
                                         num_processes=num_processes)
        write_json(manifest, {"task": task, "noisy": noisy.name, "reference": ref.name,
                              "plans": PLANS_IDENTIFIER, "configuration": configuration})


# --- training (shared by tuning and final training) ----------------------------------------

def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of final-training replicate ``replicate`` (>= 0) of a study seeded with
    ``seed``: ``seed`` itself for replicate 0 (a one-replicate study trains as before), else a
    hash of both in [0, 2**31) (SHA-256: stable across machines and Python runs; unlike
    ``seed + replicate`` it does not make replicate 1 of seed 0 the replicate 0 of seed 1)."""
    import hashlib

    if replicate < 0:
        raise ValueError(f"replicate must be >= 0, got {replicate}")
    if replicate == 0:
        return int(seed)
    digest = hashlib.sha256(f"nnrobustloss:{int(seed)}:replicate:{int(replicate)}".encode())
    return int.from_bytes(digest.digest()[:4], "big") % 2**31


def custom_definitions(config: Mapping[str, Any], methods: Sequence[str]) -> dict[str, Any]:
    """``{"custom_methods": {id: definition}}`` for those of ``methods`` that the config's
    ``custom_methods`` defines, else ``{}``: merged into a stage's params, so that the job's
    process can register them (:func:`register_methods`) and a changed definition reruns the
    job, while the params of built-in methods stay as they were."""
    custom = config.get("custom_methods") or {}
    found = {m: custom[m] for m in methods if m in custom}
    return {"custom_methods": found} if found else {}


def register_methods(params: Mapping[str, Any]) -> None:
    """Register the custom methods a stage's params carry (:func:`custom_definitions`) in this
    process's registry; nothing for built-in methods. Every ``run_<stage>`` that looks a method
    up calls it first. Without custom methods it imports nothing (no trainer, no torch: the
    select_best and report jobs stay light)."""
    if not params.get("custom_methods"):
        return
    from nnrobustloss.trainers.loading import register_custom_methods

    register_custom_methods(params["custom_methods"])


def _training_kwargs(config: Mapping[str, Any], task: str, method: str, fold: int,
                     budget: Mapping[str, Any], replicate: int = 0) -> dict[str, Any]:
    t = _task(config, task)
    spec = get_method(method)
    ds = t["reference_dataset_id"] if spec.uses_reference else t["dataset_id"]
    return {
        **custom_definitions(config, [spec.id]),
        "task": task, "method": spec.id, "fold": int(fold), "replicate": int(replicate),
        "dataset": layout.dataset_name(ds, task, reference=spec.uses_reference),
        "epochs": budget["epochs"], "iterations_per_epoch": budget["iterations_per_epoch"],
        "val_iterations_per_epoch": budget["val_iterations_per_epoch"],
        # the declared method options that change results, by config section (the methods'
        # options that only schedule the same updates are run options)
        **config_options(config, results=True),
        "seed": replicate_seed(config["seed"], replicate),
        "configuration": config["planning"]["configuration"],
    }


# Which run options (settings that change no result, so not in any ``<stage>_params``) each
# stage's run function takes: the warm-up checkpoints only at its end (its last epoch is the
# warm-up), prediction has no epochs.
RUN_OPTIONS: dict[str, tuple[str, ...]] = {
    "tune": ("device", "checkpoint_minutes", "schedule_options", "augmentation_workers"),
    "warmup": ("device", "schedule_options", "augmentation_workers"),
    "train": ("device", "checkpoint_minutes", "schedule_options", "augmentation_workers"),
    "predict": ("device",),
}


def run_options(config: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """Keyword arguments of ``run_<stage>`` that come from the config but change no result
    (``device``, ``checkpoint_minutes``, ``training.augmentation_workers`` and
    ``schedule_options``: the method options declared with ``results=False``, by config
    section, :func:`nnrobustloss.methods.config_options`; see :data:`RUN_OPTIONS`). The one
    place that reads them for the Snakemake scripts and the command line; changing them reruns
    nothing (the number of seeded augmentation workers does not change the batches, see
    :mod:`nnrobustloss.trainers.augmentation`)."""
    if stage not in RUN_OPTIONS:
        raise ValueError(f"no run options for stage {stage!r}; stages: {sorted(RUN_OPTIONS)}")
    values = {"device": config["device"], "checkpoint_minutes": config["checkpoint_minutes"],
              "schedule_options": config_options(config, results=False),
              "augmentation_workers": config["training"].get("augmentation_workers", "auto")}
    return {key: values[key] for key in RUN_OPTIONS[stage]}


def limit_cpu_threads(device: str, threads: int | None) -> None:
    """On the CPU, let PyTorch use ``threads`` threads (the job's share of the cores, e.g.
    Snakemake's ``threads``), so that parallel jobs do not oversubscribe the machine.
    ``None`` keeps PyTorch's default."""
    from nnrobustloss.training import resolve_device

    if threads and resolve_device(device).type == "cpu":
        import torch

        torch.set_num_threads(int(threads))


def train_kwargs(kw: Mapping[str, Any], results_dir: str | os.PathLike[str],
                schedule_options: Mapping[str, Mapping[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Keyword arguments of :func:`nnrobustloss.training.train` from training kwargs (their
    method options, by config section) and the run's ``schedule_options`` (method options that
    change no result, by section; None: their defaults)."""
    sections = {sec: dict(kw[sec]) for sec in declared_options() if sec in kw}
    for sec, values in (schedule_options or {}).items():
        sections.setdefault(sec, {}).update(values)
    return {"preprocessed_dataset_dir": layout.preprocessed_dataset_dir(results_dir, kw["dataset"]),
            "method": kw["method"], "fold": kw["fold"], "epochs": kw["epochs"],
            "iterations_per_epoch": kw["iterations_per_epoch"],
            "val_iterations_per_epoch": kw["val_iterations_per_epoch"],
            "options": sections, "seed": kw["seed"], "configuration": kw["configuration"]}


# --- tune ----------------------------------------------------------------------------------

def tune_params(config: Mapping[str, Any], task: str, method: str, fold: int) -> dict[str, Any]:
    """Settings of a study: its trial budget, sampler and pruner, and the trials' training."""
    tu = config["tuning"]
    kw = _training_kwargs(config, task, method, fold, tu)
    kw.update({"n_trials": tu["n_trials"], "storage": tu["storage"], "pruner": tu["pruner"],
               "n_startup_trials": tu["n_startup_trials"]})
    return kw


def warmup_params(config: Mapping[str, Any], task: str, fold: int) -> dict[str, Any]:
    """Settings of the shared co-teaching warm-up of a task x fold (:mod:`nnrobustloss.warmup`):
    the tuning trials' training settings with the warm-up's trainer and its epoch count."""
    from nnrobustloss.warmup import WARMUP_METHOD, config_warmup_epochs

    kw = _training_kwargs(config, task, WARMUP_METHOD, fold, config["tuning"])
    kw["warmup_epochs"] = config_warmup_epochs(config)
    return kw


def warmup_checkpoint(config: Mapping[str, Any], task: str, method: str,
                      fold: int) -> Path | None:
    """The shared warm-up checkpoint that the tuning trials of (task, method, fold) start from,
    or None when they train from scratch (see :func:`nnrobustloss.warmup.uses_shared_warmup`)."""
    from nnrobustloss.warmup import uses_shared_warmup

    _task(config, task)
    if not uses_shared_warmup(config, method):
        return None
    return layout.warmup_checkpoint(config["results_dir"], task, fold, config["seed"])


def run_warmup(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
               checkpoint: str | os.PathLike[str], device: str = "auto",
               threads: int | None = None,
               schedule_options: Mapping[str, Mapping[str, Any]] | None = None,
               augmentation_workers: int | str = "auto") -> Path:
    """Train the shared warm-up of a task x fold into the folder of ``checkpoint`` (a
    :func:`warmup_checkpoint` path); a killed run continues from its latest checkpoint; one run
    per task x fold at a time (a lock). ``params``: :func:`warmup_params`.
    ``schedule_options``: method options that change no result (the trials may use others,
    :func:`run_options`); ``augmentation_workers``: ``training.augmentation_workers``."""
    from nnrobustloss.warmup import WARMUP_METHOD, train_warmup

    p = dict(params)
    limit_cpu_threads(device, threads)
    call = train_kwargs(p, results_dir, schedule_options)
    if call.pop("method") != WARMUP_METHOD:
        raise ConfigError(f"warm-up params name method {p['method']}, not {WARMUP_METHOD}.")
    latest = Path(checkpoint).with_name(layout.CHECKPOINT_LATEST)  # its killed writes, GBs each
    with _one_run(results_dir, f"warmup.fold{p['fold']}", p["task"], checkpoint, latest):
        return train_warmup(Path(checkpoint).parent, device=device,
                            augmentation_workers=augmentation_workers, **call)


def run_tune_worker(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                    worker: int, workers: int, marker: str | os.PathLike[str],
                    warmup: str | os.PathLike[str] | None = None,
                    url_env: str = "NNROBUSTLOSS_OPTUNA_URL", device: str = "auto",
                    threads: int | None = None, checkpoint_minutes: float = 0.0,
                    schedule_options: Mapping[str, Mapping[str, Any]] | None = None,
                    augmentation_workers: int | str = "auto") -> None:
    """Run worker ``worker``'s quota (of ``workers``) of the trials of a study (in the
    study's folder ``tuning/<Task>/<Method>/fold<k>/``); write the worker's marker JSON
    ``marker`` when done. ``params``: :func:`tune_params`.

    ``warmup``: the shared warm-up checkpoint (:func:`warmup_checkpoint`) every trial starts
    from; None trains every trial from scratch (the same results, more epochs).
    ``url_env``: the environment variable with the PostgreSQL URL (``storage: postgresql``).
    ``checkpoint_minutes``: see :func:`nnrobustloss.training.train`; ``schedule_options``: the
    method options that change no result (:func:`run_options`); ``augmentation_workers``:
    ``training.augmentation_workers``. None of these is a result setting, so none is in
    ``params``."""
    from nnrobustloss.training import check_preprocessed
    from nnrobustloss.tuning import run_worker, training_objective

    p = dict(params)
    register_methods(p)
    limit_cpu_threads(device, threads)
    call = train_kwargs(p, results_dir, schedule_options)
    # before the study exists: no study, trial or folder for a task that is not planned yet
    check_preprocessed(call["preprocessed_dataset_dir"], PLANS_IDENTIFIER, call["configuration"],
                       call["fold"])
    remove_temporaries(Path(marker).parent, Path(marker).name)  # of this worker killed earlier
    call["device"] = device
    call["checkpoint_minutes"] = checkpoint_minutes
    call["augmentation_workers"] = augmentation_workers
    call["run_keys"] = {"task": p["task"]}
    if warmup is not None:
        call["start_from"] = Path(warmup)
    summary = run_worker(
        task=p["task"], method=p["method"], fold=p["fold"], worker=worker, workers=workers,
        n_trials=p["n_trials"], study_dir=layout.study_dir(results_dir, p["task"], p["method"],
                                                           p["fold"]),
        storage=p["storage"], seed=p["seed"], n_startup_trials=p["n_startup_trials"],
        pruner=p["pruner"], epochs=p["epochs"], run_trial=training_objective(call),
        url_env=url_env)
    write_json(marker, summary)


def run_select_best(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                    trials_csv: str | os.PathLike[str], best_params_json: str | os.PathLike[str],
                    url_env: str = "NNROBUSTLOSS_OPTUNA_URL") -> dict[str, Any]:
    """Write ``trials_csv`` (``trials.csv``) and ``best_params_json`` (``best_params.json``) of
    a complete study and return the best parameters' record. ``params``: :func:`tune_params`
    (the study's); ``url_env``: as in :func:`run_tune_worker`."""
    from nnrobustloss.tuning import select_best

    p = dict(params)
    register_methods(p)
    return select_best(task=p["task"], method=p["method"], fold=p["fold"], n_trials=p["n_trials"],
                       study_dir=layout.study_dir(results_dir, p["task"], p["method"], p["fold"]),
                       storage=p["storage"], trials_csv=trials_csv,
                       best_params_json=best_params_json, url_env=url_env)


# --- train ---------------------------------------------------------------------------------

def train_params(config: Mapping[str, Any], task: str, method: str, fold: int,
                 replicate: int = 0) -> dict[str, Any]:
    """Settings of a final training, replicate ``replicate`` (seed :func:`replicate_seed`);
    its hyper-parameters come from ``best_params.json`` of the (shared) study."""
    _check_replicate(config, replicate)
    return _training_kwargs(config, task, method, fold, config["training"], replicate)


def _check_replicate(config: Mapping[str, Any], replicate: int) -> None:
    n = config["training"].get("replicates", 1)
    if not 0 <= int(replicate) < n:
        raise ConfigError(f"replicate {replicate}: training.replicates is {n}, so replicates "
                          f"are 0..{n - 1}. Raise training.replicates or pick one of them.")


def run_train(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
              best_params_json: str | os.PathLike[str] | None = None,
              hparams: Mapping[str, Any] | None = None, device: str = "auto",
              threads: int | None = None, checkpoint_minutes: float = 0.0,
              schedule_options: Mapping[str, Mapping[str, Any]] | None = None,
              augmentation_workers: int | str = "auto") -> Path:
    """Train the final model of a (task, method, fold, replicate) into its folder
    ``training/<Task>/<Method>/fold<k>[_rep<r>]/`` (:func:`nnrobustloss.layout.training_dir`)
    and return that folder, resuming from its latest checkpoint (written as
    ``checkpoint_minutes`` says, see :func:`nnrobustloss.training.train`). ``params``:
    :func:`train_params`.

    Hyper-parameters: ``hparams`` if given, else the ``params`` of ``best_params_json``, else the
    method's defaults (methods without any). ``schedule_options``: the method options that
    change no result (:func:`run_options`); ``augmentation_workers``:
    ``training.augmentation_workers``.
    """
    from nnrobustloss.training import check_preprocessed, train

    p = dict(params)
    register_methods(p)
    limit_cpu_threads(device, threads)
    if hparams is None and best_params_json is not None:
        from nnrobustloss.tuning import read_best_params

        hparams = read_best_params(best_params_json, p["task"], p["method"], p["fold"])
    kwargs = train_kwargs(p, results_dir, schedule_options)
    # before the lock file or any folder exists: train before plan leaves nothing behind
    check_preprocessed(kwargs["preprocessed_dataset_dir"], PLANS_IDENTIFIER,
                       kwargs["configuration"], kwargs["fold"])
    out = layout.training_dir(results_dir, p["task"], p["method"], p["fold"],
                              p.get("replicate", 0))
    # One run per training: a second job of the same training (Snakemake restarted while the
    # first still runs on the cluster) waits for it, then finds the finished model. The lock
    # lives beside the folder, so that it never blocks on a stale temporary inside it.
    lock = out.with_name(f".{out.name}.lock")
    with stage_lock(lock, f"training of {p['task']}/{p['method']}/{out.name}", wait=True):
        remove_temporaries(out, None)  # what a killed run left (0.8-1.6 GB per checkpoint)
        return train(output_dir=out, params=hparams, device=device, continue_training=True,
                     checkpoint_minutes=checkpoint_minutes,
                     run_keys={"task": p["task"], "replicate": int(p.get("replicate", 0))},
                     augmentation_workers=augmentation_workers, **kwargs)


# --- predict -------------------------------------------------------------------------------

def calibration_params(config: Mapping[str, Any], task: str) -> dict[str, Any] | None:
    """What calibration measures (``evaluation.calibration``): the task's evaluation regions,
    the number of equal-width bins and the band half-width in mm; None when it is off.
    Shared by the predict stage (which measures it) and the evaluate stage (which reports it)."""
    ev = config["evaluation"]
    if not ev["calibration"]:
        return None
    return {"regions": evaluation_regions(_task(config, task)), "bins": ev["calibration_bins"],
            "band_mm": ev["calibration_band_mm"]}


def predict_params(config: Mapping[str, Any], task: str, method: str, fold: int,
                   replicate: int = 0) -> dict[str, Any]:
    """Settings of inference of a final training (replicate ``replicate``): test-time mirroring,
    tile step, peer averaging, probabilities, and calibration (:func:`calibration_params`)."""
    t = _task(config, task)
    _check_replicate(config, replicate)
    return {**custom_definitions(config, [method]),
            "task": task, "method": get_method(method).id, "fold": int(fold),
            "replicate": int(replicate),
            "dataset_id": t["dataset_id"], **config["prediction"],
            "calibration": calibration_params(config, task)}


def run_predict(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                splits_json: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                device: str = "auto", threads: int | None = None) -> None:
    """Predict the held-out (``val``) cases of the fold (of ``splits_json``) with the final
    model into ``out_dir`` (``predictions/<Task>/<Method>/fold<k>[_rep<r>]/``), and measure
    their calibration against the reference labels when ``params["calibration"]`` is set.
    ``params``: :func:`predict_params`."""
    from nnrobustloss.prediction import CalibrationSpec, predict_cases
    from nnrobustloss.splits import fold_cases

    p = dict(params)
    cal = p.get("calibration")
    spec_cal = (CalibrationSpec(layout.reference_labels_dir(results_dir, p["task"]),
                                cal["regions"], cal["bins"], cal["band_mm"]) if cal else None)
    limit_cpu_threads(device, threads)
    register_methods(p)
    spec = get_method(p["method"])
    cases = fold_cases(splits_json, p["fold"], "val")
    average = bool(p["average_peers"]) and spec.peers == 2
    predict_cases(layout.training_dir(results_dir, p["task"], p["method"], p["fold"],
                                      p.get("replicate", 0)),
                  layout.raw_dir(results_dir, p["task"], p["dataset_id"]) / "imagesTr",
                  cases, out_dir, mirroring=p["mirroring"], tile_step_size=p["tile_step_size"],
                  average_peers=average, save_probabilities=p["save_probabilities"],
                  calibration=spec_cal, device=device, method=spec.id, fold=p["fold"],
                  replicate=int(p.get("replicate", 0)))


# --- evaluate ------------------------------------------------------------------------------

def evaluate_params(config: Mapping[str, Any], task: str, method: str, fold: int,
                    replicate: int = 0) -> dict[str, Any]:
    """Settings of evaluation: the task's regions and surface-Dice tolerances, the rule for
    exactly one empty mask (:data:`nnrobustloss.metrics.registry.ONE_EMPTY_RULE`), calibration."""
    t = _task(config, task)
    _check_replicate(config, replicate)
    return {"task": task, "method": get_method(method).id, "fold": int(fold),
            "replicate": int(replicate), "one_empty_rule": ONE_EMPTY_RULE,
            "regions": evaluation_regions(t), "tolerance_mm": t["tolerance_mm"],
            "calibration": calibration_params(config, task)}


def run_evaluate(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
                 splits_json: str | os.PathLike[str], pred_dir: str | os.PathLike[str],
                 out_csv: str | os.PathLike[str],
                 reliability_csv: str | os.PathLike[str] | None = None,
                 n_workers: int = 1) -> None:
    """Evaluate a fold's predictions ``pred_dir`` (its held-out cases of ``splits_json``)
    against the reference labels into ``out_csv`` (``metrics/.../fold<k>.csv``). ``params``:
    :func:`evaluate_params`; ``n_workers``: evaluation processes.

    With ``params["calibration"]`` the CSV also holds the calibration rows (from the cases'
    ``<case>_calibration.npz``, see :func:`nnrobustloss.metrics.calibration.calibration_folder`).
    ``reliability_csv`` (``metrics/.../fold<k>_reliability.csv``) gets the fold's
    reliability-diagram bins, header only when calibration is off.
    """
    from nnrobustloss.metrics.calibration import RELIABILITY_COLUMNS, calibration_folder
    from nnrobustloss.metrics.evaluation import evaluate_folder
    from nnrobustloss.splits import fold_cases

    p = dict(params)
    cases = fold_cases(splits_json, p["fold"], "val")
    cal = p.get("calibration")
    extra, reliability = None, pd.DataFrame(columns=list(RELIABILITY_COLUMNS))
    if cal:  # cheap (kB per case): read first, so that a missing file fails before evaluation
        extra, reliability = calibration_folder(pred_dir, cases, p["task"], p["method"], p["fold"],
                                                list(cal["regions"]), cal["bins"], cal["band_mm"])
    if reliability_csv is not None:
        with atomic_path(reliability_csv) as tmp:
            reliability.to_csv(tmp, index=False, na_rep="NaN")
    evaluate_folder(pred_dir, layout.reference_labels_dir(results_dir, p["task"]), cases,
                    p["task"], p["method"], p["fold"], p["regions"], p["tolerance_mm"], out_csv,
                    n_workers=n_workers, extra_rows=extra, replicate=p.get("replicate", 0))


# --- nnU-Net results tree ------------------------------------------------------------------

def nnunet_targets(config: Mapping[str, Any]) -> list[Path]:
    """The ``validation/summary.json`` of every model and fold of the nnU-Net results tree
    (:mod:`nnrobustloss.nnunet_results`): one per task x method x fold of the config."""
    from nnrobustloss.nnunet_results import nnunet_models

    conf = config["planning"]["configuration"]
    return [layout.nnunet_summary_json(config["results_dir"], dataset, trainer, PLANS_IDENTIFIER,
                                       conf, fold)
            for dataset, trainer in nnunet_models(config) for fold in config["folds"]]


def nnunet_results_params(config: Mapping[str, Any], dataset: str, trainer: str,
                          fold: int) -> dict[str, Any]:
    """Settings of the tree's fold ``fold`` of the model (``dataset``, ``trainer``): the task
    and method that train it (:func:`nnrobustloss.nnunet_results.nnunet_models`) and the
    plans' configuration. ConfigError when no method of the config trains that model."""
    from nnrobustloss.nnunet_results import nnunet_models

    models = nnunet_models(config)
    if (dataset, trainer) not in models:
        raise ConfigError(f"{layout.NNUNET_RESULTS}/{dataset}/{trainer}: no method of the config "
                          "trains this model (config keys methods, tasks).")
    task, method = models[dataset, trainer]
    return {"task": task, "method": method, "fold": int(fold), "dataset": dataset,
            "trainer": trainer, "configuration": config["planning"]["configuration"]}


def run_nnunet_results(params: Mapping[str, Any], results_dir: str | os.PathLike[str]) -> Path:
    """Link a fold's final training (replicate 0) and predictions into the nnU-Net results
    tree ``nnUNet_results/`` and write its ``validation/summary.json``
    (:func:`nnrobustloss.nnunet_results.link_fold`); return that file. ``params``:
    :func:`nnunet_results_params`; every path follows from them and ``results_dir``."""
    from nnrobustloss.nnunet_results import link_fold

    return link_fold(results_dir, **dict(params))


# --- report --------------------------------------------------------------------------------

def report_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of the report: task order with their table metrics, method order, the noise
    sweep's levels (``{task: n_noisy_cases}``, empty without a sweep) and the final trainings'
    budget (a run below ``report.min_training_iterations`` is labelled a smoke run)."""
    from nnrobustloss.config import noise_sweep_tasks

    tr = config["training"]
    return {**custom_definitions(config, config["methods"]),
            "tasks": {name: {"table_metrics": list(t["table_metrics"])}
                      for name, t in config["tasks"].items()},
            "labels": {name: {int(v): str(k) for k, v in t["labels"].items() if int(v) != 0}
                       for name, t in config["tasks"].items()},
            "methods": list(config["methods"]),
            "sweep": noise_sweep_tasks(config),
            "training_iterations": int(tr["epochs"]) * int(tr["iterations_per_epoch"]),
            "training_budget": f"{tr['epochs']} epochs x {tr['iterations_per_epoch']} "
                               "iterations",
            "min_training_iterations": int(config["report"]["min_training_iterations"])}


def run_report(params: Mapping[str, Any], results_dir: str | os.PathLike[str], *,
               metrics_csvs: Sequence[str], noise_csvs: Sequence[str],
               trials_csvs: Sequence[str], reliability_csvs: Sequence[str] | None = None,
               progress_csvs: Sequence[str] | None = None,
               tables_dir: str | os.PathLike[str] | None = None,
               figures_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Regenerate the tables and figures from the stage CSVs: Table 1, Table 2, the noise
    table, Figure 1; with the evaluate stage's ``reliability_csvs`` Table 3 and the reliability
    diagrams; with the final trainings' ``progress_csvs`` the training curves; with a noise
    sweep in ``params`` its table and figure. ``params``: :func:`report_params`. The tables go
    to ``tables_dir``, the figures to ``figures_dir``, by default ``tables/`` and ``figures/``
    of ``results_dir`` (:func:`nnrobustloss.layout.tables_dir`,
    :func:`nnrobustloss.layout.figures_dir`); returns the written files by name."""
    from nnrobustloss.report.build import build_report

    register_methods(params)
    if not metrics_csvs:
        raise InputDataError("report: no metrics files (metrics/<Task>/<Method>/fold<k>.csv) "
                             "were found. Run the evaluate stage first (snakemake builds it).")
    if tables_dir is None:
        tables_dir = layout.tables_dir(results_dir)
    if figures_dir is None:
        figures_dir = layout.figures_dir(results_dir)
    return build_report(metrics_csvs, noise_csvs, trials_csvs, tables_dir, figures_dir,
                        tasks=params["tasks"], methods=params["methods"],
                        reliability_csvs=reliability_csvs, progress_csvs=progress_csvs,
                        sweep=params.get("sweep") or None,
                        training_iterations=params.get("training_iterations"),
                        min_training_iterations=params.get("min_training_iterations", 0),
                        training_budget=params.get("training_budget", ""),
                        labels=params.get("labels"))


def mean_dice(noise_csv: str | os.PathLike[str]) -> float:
    """Mean noisy-vs-reference Dice over cases and regions of a noise report (for logs/tests)."""
    df = pd.read_csv(noise_csv)
    return float(np.nanmean(df.loc[df["metric"] == "dice", "value"]))
