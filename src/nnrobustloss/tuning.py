"""Optuna hyper-parameter tuning: one study per (task, method, fold), run by one or more workers.

See docs/tuning.md. A study is named ``<Task>.<Method>.fold<k>`` and lives in the configured
storage: a per-study SQLite file by default, a journal file (several workers on a shared file
system) or a PostgreSQL URL read from an environment variable (never from the config). Each
worker runs a fixed quota of the ``n_trials`` trials with a TPE sampler seeded from ``seed + worker``
and the index of the trial within the worker's quota (constant liar when several workers share
the study), so ``MaxTrialsCallback`` overshoot cannot happen and a restarted worker does not
replay the random draws of its first run. A trial is one training of ``tuning.epochs`` epochs;
its value is the EMA (lambda 0.9) of the training-set pseudo Dice after the last epoch, reported
to Optuna every epoch so that an optional pruner can stop it.

Fault tolerance: a worker tags its trials with its index. When it starts it marks its own
leftover RUNNING trials (from a killed run) as FAIL and enqueues their parameters again, so the
retry evaluates exactly the same point; it then runs only the part of its quota that is not yet
finished. Finished trials are never repeated. RDB storages (SQLite, PostgreSQL) additionally
record heartbeats, so that another worker fails a dead worker's trial and
``RetryHeartbeatStaleTrialCallback`` re-enqueues it. A trial interrupted in-process (Ctrl-C) is
enqueued again by its own worker.

Resumption: the retry takes over the interrupted trial's folder (``trials/trial<old>`` is moved
to ``trials/trial<new>``, with its ``checkpoint_latest.pth``, written every epoch) and
:func:`training_objective` continues the training from there; the trainers restore the RNG
states, so the retry's training and objective equal those of a trial that was never
interrupted (single-threaded augmentation on the CPU; statistically the same otherwise).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from nnrobustloss.errors import ConfigError, InputDataError, NNRobustLossError, user_error
from nnrobustloss.fileio import atomic_path, remove_temporaries, write_json
from nnrobustloss.methods import get_method
from nnrobustloss.metrics.registry import TRIALS_KEY_COLUMNS

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
STORAGES = ("sqlite", "journal", "postgresql")
"""Kinds of study storage (``tuning.storage``, :func:`storage_url`)."""
PRUNERS = ("none", "median", "hyperband")
"""Pruners of ``tuning.pruner`` (:func:`make_pruner`)."""
HEARTBEAT_SECONDS = 60
WORKER_ATTR = "worker"
RETRY_ATTR = "retry_of"

#: An objective: (trial, params, trial output folder) -> objective value (higher is better).
#: When the trial retries an interrupted one, the folder holds that trial's files (same params):
#: the runner continues from its checkpoint.
TrialRunner = Callable[[optuna.Trial, dict[str, float], Path], float]


def study_name(task: str, method: str, fold: int) -> str:
    """The study's name: ``<Task>.<Method>.fold<k>``."""
    return f"{task}.{method}.fold{fold}"


_SQLITE_URI = "sqlite:///file:"


def storage_url(kind: str, study_dir: str | os.PathLike[str],
                url_env: str = "NNROBUSTLOSS_OPTUNA_URL") -> str:
    """A storage locator: ``sqlite:///<study_dir>/study.sqlite3``, a journal file path
    ``<study_dir>/study.journal``, or the PostgreSQL URL held by the environment variable
    ``url_env``. Raises ConfigError for an unknown kind or an unset variable.

    A path that a URL cannot hold as it is (``?``, ``#``, ``%``, spaces) is percent-quoted in
    SQLite's URI form (``sqlite:///file:<quoted path>?uri=true``), so the study never lands in
    another file.
    """
    d = Path(study_dir).resolve()
    if kind == "sqlite":
        path = str(d / "study.sqlite3")
        quoted = urllib.parse.quote(path, safe="/")
        return f"sqlite:///{path}" if quoted == path else f"{_SQLITE_URI}{quoted}?uri=true"
    if kind == "journal":
        return str(d / "study.journal")
    if kind == "postgresql":
        url = os.environ.get(url_env)
        if not url:
            raise ConfigError(f"tuning.postgresql_url_env: the environment variable {url_env} is "
                              "not set; export it with the PostgreSQL URL "
                              "(postgresql://user:password@host/db) before running.")
        return url
    raise ConfigError(f"tuning.storage: unknown storage {kind!r}; use one of "
                      f"{', '.join(STORAGES)}.")


def sqlite_path(locator: str) -> Path:
    """The database file of a :func:`storage_url` SQLite locator (either form)."""
    if locator.startswith(_SQLITE_URI):
        return Path(urllib.parse.unquote(locator[len(_SQLITE_URI):].removesuffix("?uri=true")))
    return Path(locator.removeprefix("sqlite:///"))


def _rdb_failure(kind: str, locator: str, e: Exception) -> ConfigError:
    """One-line ConfigError for an RDB storage that cannot be opened (no driver, no server);
    the password of a URL is never shown."""
    from sqlalchemy.engine import make_url

    try:
        shown = make_url(locator).render_as_string(hide_password=True)
    except Exception:
        shown = "the configured URL"
    if isinstance(e, ImportError):
        return ConfigError(f"tuning.storage: {kind}: the database driver for {shown} is not "
                           f"installed ({e}). Install it with pip install 'nnrobustloss[postgres]' "
                           "(psycopg2-binary), or use tuning.storage: journal.")
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ConfigError(f"tuning.storage: {kind}: cannot open {shown} ({first}). Check the URL "
                       "(tuning.postgresql_url_env) and that the server is running and reachable.")


def repair_journal(path: str | os.PathLike[str]) -> int:
    """Check an Optuna journal file and cut off a last record that a kill or a full disk left
    without its line end; return the number of bytes removed (0: nothing to repair).

    Runs under the journal's own lock (Optuna's ``JournalFileSymlinkLock``, the one every
    worker's ``JournalFileBackend`` takes to append), so a record being written by a live
    worker is never mistaken for a cut one. Without the repair Optuna skips the cut record on
    reading but appends the next one to it, which makes the journal unreadable for good. Every
    complete line must be a JSON record with an ``op_code``: InputDataError naming the file and
    the line otherwise (a garbled journal is not repaired by guessing).
    """
    import json

    from optuna.storages.journal import JournalFileSymlinkLock

    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return 0
    lock = JournalFileSymlinkLock(str(p))
    lock.acquire()
    try:
        data = p.read_bytes()
        end = data.rfind(b"\n") + 1
        lines = data[:end].splitlines()
        for k, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not (isinstance(record, dict) and "op_code" in record):
                raise InputDataError(
                    f"{p}: line {k} of {len(lines)} is not an Optuna journal record (the file is "
                    "corrupt). Restore it from a backup, or delete it to tune this study again "
                    "(its finished trials are lost then).")
        cut = len(data) - end
        if cut:
            os.truncate(p, end)
            print(f"[tune] {p}: removed its cut last record ({cut} bytes, left by a killed "
                  f"worker or a full disk); the {len(lines)} records before it are kept.",
                  file=sys.stderr, flush=True)
        return cut
    finally:
        lock.release()


def check_sqlite(path: str | os.PathLike[str]) -> None:
    """InputDataError naming ``path`` unless it is absent, empty or an intact SQLite database
    (SQLite's ``PRAGMA quick_check``; read-only, nothing is written)."""
    import sqlite3

    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro",
                                                uri=True)) as db:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        result = str(e)
    if result != "ok":
        raise InputDataError(f"{p}: not an intact SQLite database ({result}). Restore it from a "
                             "backup, or delete it to tune this study again (its finished trials "
                             "are lost then).")


def open_storage(kind: str, locator: str) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``storage_url``'s locator; RDB storages get heartbeats and retries.

    A missing database driver or an unreachable database server raises ConfigError (one line,
    without the URL's password). A journal's cut last record is removed first
    (:func:`repair_journal`); a corrupt journal or SQLite file raises InputDataError naming it."""
    import sqlalchemy.exc

    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        Path(locator).parent.mkdir(parents=True, exist_ok=True)
        repair_journal(locator)
        try:
            return JournalStorage(JournalFileBackend(locator))
        except (ValueError, KeyError, TypeError) as e:  # records Optuna cannot replay
            raise InputDataError(f"{locator}: an Optuna journal that cannot be replayed ({e}). "
                                 "Restore it from a backup, or delete it to tune this study "
                                 "again (its finished trials are lost then).") from e
    if kind == "sqlite":
        sqlite_path(locator).parent.mkdir(parents=True, exist_ok=True)
        check_sqlite(sqlite_path(locator))
    # Optuna 5 names the callback heartbeat_stale_trial_callback (failed_trial_callback and
    # RetryFailedTrialCallback are deprecated aliases); heartbeats are "experimental" since 2.9.
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    locator, heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=2 * HEARTBEAT_SECONDS,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            # Workers starting together on an empty database race to create Optuna's tables
            # ("already exists"): the tables are there now, so opening again succeeds.
            if attempt == 2:
                raise _rdb_failure(kind, locator, e) from e
            time.sleep(0.5 * (attempt + 1))
        except (ImportError, sqlalchemy.exc.SQLAlchemyError) as e:
            raise _rdb_failure(kind, locator, e) from e
    raise AssertionError("unreachable")


def make_sampler(seed: int, n_startup_trials: int, workers: int) -> optuna.samplers.TPESampler:
    """Seeded multivariate TPE; constant liar when several workers share a study."""
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                      multivariate=True, constant_liar=workers > 1)


def trial_seed(seed: int, index: int) -> int:
    """Sampler seed of a worker's ``index``-th trial (0-based, in its quota) from its seed
    ``seed + worker``: a uint32 from ``numpy.random.SeedSequence([seed, index])``.

    A sampler seeded once per worker would replay its random draws after a restart (the same
    parameters evaluated twice); seeding per trial index makes a restarted worker continue the
    sequence of an uninterrupted run.
    """
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def make_pruner(name: str, max_epochs: int, n_startup_trials: int = 5
                ) -> optuna.pruners.BasePruner:
    """``none`` -> NopPruner (Optuna would default to MedianPruner); ``median`` ->
    MedianPruner that prunes nothing before ``n_startup_trials`` trials completed (the
    sampler's random start-up trials, ``tuning.n_startup_trials``) nor in the first quarter of
    a trial's ``max_epochs`` epochs; ``hyperband`` -> HyperbandPruner over 1..``max_epochs``
    epochs. A trial's last epoch is never pruned (:func:`pruned_after`)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials,
                                           n_warmup_steps=max(1, max_epochs // 4))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    raise ConfigError(f"tuning.pruner: unknown pruner {name!r}; use one of {', '.join(PRUNERS)}.")


def pruned_after(trial: optuna.Trial, epoch: int, epochs: int) -> bool:
    """Whether the pruner stops ``trial`` after epoch ``epoch`` (0-based) of its ``epochs``,
    its objective of that epoch already reported. Never after the last epoch: the trial is
    finished then, and pruning it would only throw its objective away."""
    return epoch < epochs - 1 and trial.should_prune()


def worker_quota(n_trials: int, workers: int, worker: int) -> int:
    """Trials worker ``worker`` of ``workers`` runs: an even split, the first ones take the rest."""
    if not 0 <= worker < workers:
        raise ConfigError(f"worker {worker} does not exist with tuning.workers={workers}.")
    return n_trials // workers + (1 if worker < n_trials % workers else 0)


def _own(trial: optuna.trial.FrozenTrial, worker: int) -> bool:
    return trial.user_attrs.get(WORKER_ATTR) == worker


def retried_trial(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the interrupted trial that ``trial`` retries, None for a fresh trial: the
    last entry of the heartbeat callback's ``retry_history`` (it copies the failed trial's user
    attributes, so a stale ``retry_of`` may come along), else our ``retry_of``."""
    history = trial.system_attrs.get("retry_history")
    if history:
        return int(history[-1])
    number = trial.user_attrs.get(RETRY_ATTR)
    return None if number is None else int(number)


def _retry_chain(trial: optuna.trial.FrozenTrial,
                 by_number: Mapping[int, optuna.trial.FrozenTrial]) -> list[int]:
    """Numbers of the trials ``trial`` retries, nearest first (a retry may be retried again)."""
    chain: list[int] = []
    n = retried_trial(trial)
    while n is not None and n not in chain:
        chain.append(n)
        n = retried_trial(by_number[n]) if n in by_number else None
    return chain


def trial_dir(study_dir: str | os.PathLike[str], number: int) -> Path:
    """A trial's training folder: ``<study_dir>/trials/trial<number>``."""
    return Path(study_dir) / "trials" / f"trial{number}"


def adopt_interrupted_folder(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                             study_dir: str | os.PathLike[str]) -> int | None:
    """Give ``trial`` the folder of the interrupted trial it retries; return that trial's number.

    The nearest trial of the retry chain that still has a folder wins; its folder is renamed
    to ``trial_dir(study_dir, trial.number)``. A fresh trial (or one whose predecessors left
    no folder) gets an empty folder: anything there is a leftover of a deleted study.
    """
    dst = trial_dir(study_dir, trial.number)
    if dst.exists():
        shutil.rmtree(dst)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for n in _retry_chain(trial, by_number):
        src = trial_dir(study_dir, n)
        if src.is_dir():
            os.replace(src, dst)
            return n
    return None


def recover_leftover_trials(study: optuna.Study, worker: int) -> int:
    """Fail this worker's RUNNING trials (left by a killed run) and enqueue their parameters again
    (user attribute ``retry_of``: the failed trial's number, whose folder the retry continues).

    Returns how many trials were recovered. Safe because one worker index runs in one job at a
    time (Snakemake never runs the same job twice concurrently).
    """
    recovered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _own(t, worker):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (ValueError, UpdateFinishedTrialError):
                # finished meanwhile: another worker failed it (heartbeat) and its callback
                # re-enqueued it (ValueError: finished when read; the other: while written)
                continue
            if t.params:
                study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number},
                                    skip_if_exists=False)
            recovered += 1
    return recovered


def run_worker(*, task: str, method: str, fold: int, worker: int, workers: int, n_trials: int,
               study_dir: str | os.PathLike[str], storage: str, seed: int,
               n_startup_trials: int, pruner: str, epochs: int, run_trial: TrialRunner,
               url_env: str = "NNROBUSTLOSS_OPTUNA_URL", keep_checkpoints: bool = False
               ) -> dict[str, Any]:
    """Run worker ``worker``'s quota of the study's trials; return a summary dict.

    ``run_trial(trial, params, trial_dir)`` trains one trial and returns its objective; it may
    raise ``optuna.TrialPruned``. Trial folders are ``<study_dir>/trials/trial<N>``; a retry of
    an interrupted trial gets that trial's folder (:func:`adopt_interrupted_folder`). Checkpoints
    are deleted once a trial is finished (or failed for good) unless ``keep_checkpoints``; those
    of interrupted trials waiting for their retry are kept.
    """
    spec = get_method(method)
    if not spec.needs_tuning:
        raise ConfigError(f"method {method} has no hyper-parameters to tune.")
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    quota = worker_quota(n_trials, workers, worker)
    st = open_storage(storage, storage_url(storage, study_dir, url_env))
    study = optuna.create_study(
        study_name=study_name(task, method, fold), storage=st, direction="maximize",
        sampler=make_sampler(seed + worker, n_startup_trials, workers),
        pruner=make_pruner(pruner, epochs, n_startup_trials), load_if_exists=True)
    recovered = recover_leftover_trials(study, worker)
    if not keep_checkpoints:  # failed trials' checkpoints, except those a retry will continue
        trials = study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        awaited = {n for t in trials if t.state == TrialState.WAITING
                   for n in _retry_chain(t, by_number)}
        for t in trials:
            if t.state == TrialState.FAIL and t.number not in awaited:
                for ckpt in trial_dir(study_dir, t.number).glob("checkpoint_*.pth"):
                    ckpt.unlink()
                remove_temporaries(trial_dir(study_dir, t.number), None)
    finished = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    done = sum(1 for t in finished if _own(t, worker))
    # Never more than the study still needs: after a change of tuning.workers the other
    # workers' finished trials may exceed their new quotas (no overshoot of n_trials).
    todo = max(0, min(quota - done, n_trials - len(finished)))
    print(f"[tune {study.study_name}] worker {worker}/{workers}: quota {quota}, finished {done}, "
          f"recovered {recovered}, running {todo}", file=sys.stderr, flush=True)

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER_ATTR, worker)
        params = spec.suggest(trial)
        folder = trial_dir(study_dir, trial.number)
        this = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        resumed = adopt_interrupted_folder(study, this, study_dir)
        remove_temporaries(folder, None)  # a trial's folder is its own: what a kill left there
        if resumed is not None:
            print(f"[tune {study.study_name}] trial {trial.number} continues interrupted trial "
                  f"{resumed} from its checkpoint", file=sys.stderr, flush=True)
        try:
            value = float(run_trial(trial, params, folder))
        except KeyboardInterrupt:
            # Optuna fails the trial; enqueue its point so that the rerun continues its folder
            study.enqueue_trial(params, user_attrs={RETRY_ATTR: trial.number},
                                skip_if_exists=False)
            raise
        except Exception:  # pruned or failed for good: never continued (SystemExit keeps them)
            if not keep_checkpoints:
                _remove_checkpoints(folder)
            raise
        if not keep_checkpoints:
            _remove_checkpoints(folder)
        if not math.isfinite(value):
            raise NNRobustLossError(f"trial {trial.number}: objective is {value}")
        return value

    # A failing trial (not pruned) is an error of the code or data: stop and show it.
    _quiet_user_errors()
    for j in range(todo):
        study.sampler = make_sampler(trial_seed(seed + worker, done + j), n_startup_trials,
                                     workers)
        try:
            study.optimize(objective, n_trials=1, catch=())
        except OSError as e:
            if e.filename is None and storage == "journal":  # Optuna's append to the journal
                raise user_error(OSError(e.errno, e.strerror, str(storage_url(
                    storage, study_dir, url_env)))) from e
            raise
    return {"study": study.study_name, "worker": worker, "quota": quota,
            "finished_before": done, "ran": todo, "recovered": recovered}


class _NoTracebackForUserErrors(logging.Filter):
    """Drop the traceback Optuna logs with a failed trial when the error is one of ours (or a
    file operation's): the command prints its one line; Optuna's own line stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (NNRobustLossError, OSError)):
            record.exc_info = None
        return True


def _quiet_user_errors() -> None:
    log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoTracebackForUserErrors) for f in log.filters):
        log.addFilter(_NoTracebackForUserErrors())


def _remove_checkpoints(folder: Path) -> None:
    for ckpt in folder.glob("checkpoint_*.pth"):
        ckpt.unlink()


def training_objective(config_training: Mapping[str, Any]) -> TrialRunner:
    """A :data:`TrialRunner` that trains with :func:`nnrobustloss.training.train`.

    ``config_training`` holds the keyword arguments of ``train`` except params, output folder
    and callback (preprocessed_dataset_dir, method, fold, epochs, iterations, ...). Every epoch's
    EMA pseudo Dice is reported to the trial (step = epoch) and the pruner consulted. A trial
    folder holding an interrupted trial's checkpoint is continued (``continue_training``); the
    epochs trained before the interruption are reported from its ``progress.csv`` (restored
    from the checkpoint), and the objective is the last epoch's EMA there.
    """
    from nnrobustloss.trainers.progress import read_progress_csv
    from nnrobustloss.training import train

    def run(trial: optuna.Trial, params: dict[str, float], trial_dir: Path) -> float:
        progress = trial_dir / "progress.csv"
        reported: set[int] = set()

        def report(epoch: int, value: float) -> None:
            if epoch not in reported:
                reported.add(epoch)
                trial.report(value, step=epoch)

        def report_restored(below: int | None = None) -> None:
            for row in read_progress_csv(progress) if progress.is_file() else []:
                if below is None or int(row["epoch"]) < below:
                    report(int(row["epoch"]), float(row["train_pseudo_dice_ema"]))

        def on_epoch(epoch: int, metrics: dict[str, Any]) -> None:
            if len(reported) < epoch:  # continued: the epochs before come from the checkpoint
                report_restored(below=epoch)
            value = float(metrics["train_pseudo_dice_ema"])
            report(epoch, value)
            if pruned_after(trial, epoch, int(config_training["epochs"])):
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (EMA {value:.4f})")

        train(output_dir=trial_dir, params=params, epoch_callback=on_epoch,
              continue_training=True, **config_training)
        report_restored()  # a retry of a trial killed after its last epoch trains nothing
        rows = read_progress_csv(progress) if progress.is_file() else []
        if not rows:
            raise NNRobustLossError(f"{trial_dir}: training finished without an epoch.")
        return float(rows[-1]["train_pseudo_dice_ema"])

    return run


def select_best(*, task: str, method: str, fold: int, n_trials: int,
                study_dir: str | os.PathLike[str], storage: str,
                trials_csv: str | os.PathLike[str], best_params_json: str | os.PathLike[str],
                url_env: str = "NNROBUSTLOSS_OPTUNA_URL") -> dict[str, Any]:
    """Write ``trials.csv`` and ``best_params.json`` once the study holds ``n_trials`` finished
    trials (COMPLETE or PRUNED); otherwise raise NNRobustLossError saying what is missing.

    ``trials.csv`` has the columns ``task, method, fold, number, value, state``, the trial's
    parameters as ``params_<name>``, its worker and timing. ``best_params.json`` holds
    ``{"params": {...}, "value": best EMA, "trial": number, "study": name, "n_finished": n}``.
    """
    for out in map(Path, (trials_csv, best_params_json)):
        remove_temporaries(out.parent, out.name)  # of a select_best killed earlier
    locator = storage_url(storage, study_dir, url_env)
    st = open_storage(storage, locator)
    name = study_name(task, method, fold)
    try:
        study = optuna.load_study(study_name=name, storage=st)
    except KeyError as e:
        raise NNRobustLossError(f"{study_dir}: study {name} not found in the {storage} storage; "
                                "run its tune_worker jobs first.") from e
    finished = study.get_trials(deepcopy=False, states=FINISHED_STATES)
    if len(finished) < n_trials:
        raise NNRobustLossError(f"study {name}: {len(finished)} of {n_trials} trials finished; "
                                "rerun the pipeline to let its workers complete the study.")
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    if not complete:
        raise NNRobustLossError(f"study {name}: every trial was pruned; no best parameters.")
    best = max(complete, key=lambda t: (t.value, -t.number))
    df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs",
                                       "datetime_start", "datetime_complete", "duration"))
    for i, (column, value) in enumerate(zip(TRIALS_KEY_COLUMNS, (task, method, fold), strict=True)):
        df.insert(i, column, value)
    df["state"] = df["state"].astype(str).str.replace("TrialState.", "", regex=False)
    with atomic_path(trials_csv) as tmp:
        df.to_csv(tmp, index=False)
    result = {"study": name, "params": dict(best.params), "value": float(best.value),
              "trial": best.number, "n_finished": len(finished)}
    write_json(best_params_json, result)
    return result


def read_best_params(path: str | os.PathLike[str], task: str, method: str,
                     fold: int) -> dict[str, float]:
    """The ``params`` of a :func:`select_best` ``best_params.json``, checked against the study
    it must come from (``study`` is :func:`study_name` of task, method, fold) and the method's
    search space: every hyper-parameter present, none unknown, each a number in its range.
    InputDataError naming the file and what to do otherwise (an empty or partial file never
    trains with the registry's defaults)."""
    from nnrobustloss.fileio import read_json

    p = Path(path)
    obj = read_json(p)
    spec = get_method(method)
    expected = study_name(task, method, fold)
    todo = ("Delete it and rerun; its select_best job writes it again from the study (the "
            "trials are kept).")
    if not isinstance(obj, dict) or not isinstance(obj.get("params"), dict):
        raise InputDataError(f"{p}: not a best_params.json (no 'params' object). {todo}")
    if obj.get("study") != expected:
        raise InputDataError(f"{p}: written for study {obj.get('study')!r}, not {expected!r}. "
                             f"{todo}")
    params = obj["params"]
    missing = [n for n in spec.param_names if n not in params]
    unknown = sorted(set(params) - set(spec.param_names))
    if missing or unknown:
        what = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(unknown)}" if unknown else "") if x)
        raise InputDataError(f"{p}: 'params' does not match the search space of {spec.id} "
                             f"({what}). {todo}")
    for param in spec.search_space:
        v = params[param.name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not \
                param.low <= v <= param.high:
            raise InputDataError(f"{p}: params.{param.name}={v!r} is outside the search space "
                                 f"of {spec.id} [{param.low}, {param.high}]. {todo}")
    return {k: float(v) for k, v in params.items()}


def remove_trial_folders(study_dir: str | os.PathLike[str]) -> None:
    """Delete a study's trial training folders (the storage and results are kept)."""
    shutil.rmtree(Path(study_dir) / "trials", ignore_errors=True)
