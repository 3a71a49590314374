"""Tests of the Optuna tuning machinery (docs/tuning.md, issue 5 items 1 and 8).

Real Optuna storages in ``tmp_path`` (SQLite, journal file); the objective of most tests is a
cheap deterministic function of the parameters that reports one value per "epoch", so that the
tests exercise the study, sampler, quota, recovery and selection logic. Killed workers are real
processes killed with SIGKILL in the middle of a trial. One ``slow`` test tunes a real nnU-Net
training (``tuning.training_objective``) on the phantom task of tests/conftest.py.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import cheap_worker
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from nnrobustloss import layout, pipeline, tuning
from nnrobustloss.errors import ConfigError, NNRobustLossError
from nnrobustloss.methods import METHODS, get_method

optuna.logging.set_verbosity(optuna.logging.WARNING)

TUNED_METHODS = [m for m, spec in METHODS.items() if spec.needs_tuning]
UNTUNED_METHODS = [m for m, spec in METHODS.items() if not spec.needs_tuning]


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """tests/cheap_worker.py: the cheap objective of the in-process workers, and the same code
    as a killed worker process (``script.run_killed_worker``)."""
    return cheap_worker


EPOCHS = 3


def worker_kwargs(study_dir: Path, *, storage: str = "journal", method: str = "StoCoT",
                  n_trials: int = 6, worker: int = 0, workers: int = 1, seed: int = 0,
                  n_startup_trials: int = 3, pruner: str = "none") -> dict[str, Any]:
    """Keyword arguments of run_worker except run_trial (3 random start-up trials, then TPE)."""
    return {"task": "Phantom", "method": method, "fold": 0, "worker": worker, "workers": workers,
            "n_trials": n_trials, "study_dir": str(study_dir), "storage": storage, "seed": seed,
            "n_startup_trials": n_startup_trials, "pruner": pruner, "epochs": EPOCHS}


def run(script: ModuleType, **kw: Any) -> dict[str, Any]:
    return tuning.run_worker(**worker_kwargs(**kw), run_trial=script.make_objective(EPOCHS))


def load(study_dir: Path, storage: str = "journal", method: str = "StoCoT") -> optuna.Study:
    st = tuning.open_storage(storage, tuning.storage_url(storage, study_dir))
    return optuna.load_study(study_name=tuning.study_name("Phantom", method, 0), storage=st)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(states=tuning.FINISHED_STATES)


def params_seq(study: optuna.Study) -> list[dict[str, float]]:
    return [t.params for t in finished(study)]


# ------------------------------------------------------------------ quota, names, storages


@pytest.mark.parametrize("workers", range(1, 9))
def test_worker_quota_splits_n_trials_exactly(workers):
    for n in range(0, 41):
        quotas = [tuning.worker_quota(n, workers, w) for w in range(workers)]
        assert sum(quotas) == n
        assert max(quotas) - min(quotas) <= 1
        assert quotas == sorted(quotas, reverse=True)  # the first workers take the remainder
    assert [tuning.worker_quota(30, 4, w) for w in range(4)] == [8, 8, 7, 7]


def test_worker_quota_rejects_a_worker_that_does_not_exist():
    for worker in (-1, 3):
        with pytest.raises(ConfigError, match=f"worker {worker} does not exist"):
            tuning.worker_quota(10, 3, worker)


def test_study_name():
    assert tuning.study_name("KiTS23", "CoTPlus", 2) == "KiTS23.CoTPlus.fold2"


def test_storage_url_sqlite_and_journal(tmp_path):
    d = tmp_path / "study"
    assert tuning.storage_url("sqlite", d) == f"sqlite:///{d.resolve() / 'study.sqlite3'}"
    assert tuning.storage_url("journal", d) == str(d.resolve() / "study.journal")
    with pytest.raises(ConfigError, match="tuning.storage: unknown storage 'redis'"):
        tuning.storage_url("redis", d)


def test_storage_url_postgresql_from_environment_only(tmp_path, monkeypatch):
    url = "postgresql://user:secret@db.example.org/optuna"
    monkeypatch.setenv("NNROBUSTLOSS_OPTUNA_URL", url)
    assert tuning.storage_url("postgresql", tmp_path) == url
    monkeypatch.setenv("MY_OPTUNA_DB", url + "2")
    assert tuning.storage_url("postgresql", tmp_path, url_env="MY_OPTUNA_DB") == url + "2"
    monkeypatch.delenv("NNROBUSTLOSS_OPTUNA_URL")
    with pytest.raises(ConfigError, match="NNROBUSTLOSS_OPTUNA_URL is not set"):
        tuning.storage_url("postgresql", tmp_path)
    monkeypatch.setenv("NNROBUSTLOSS_OPTUNA_URL", "")
    with pytest.raises(ConfigError, match="NNROBUSTLOSS_OPTUNA_URL"):
        tuning.storage_url("postgresql", tmp_path)


def test_run_worker_postgresql_without_variable_is_a_config_error(tmp_path, monkeypatch, script):
    monkeypatch.delenv("NO_SUCH_OPTUNA_URL", raising=False)
    with pytest.raises(ConfigError, match="NO_SUCH_OPTUNA_URL"):
        tuning.run_worker(**worker_kwargs(tmp_path, storage="postgresql"),
                          url_env="NO_SUCH_OPTUNA_URL", run_trial=script.make_objective(EPOCHS))


@pytest.mark.parametrize("storage, filename", [("sqlite", "study.sqlite3"),
                                               ("journal", "study.journal")])
def test_study_lives_in_its_storage_file_with_its_name(tmp_path, script, storage, filename):
    summary = run(script, study_dir=tmp_path / "s", storage=storage, n_trials=2)
    assert (tmp_path / "s" / filename).is_file()
    assert summary == {"study": "Phantom.StoCoT.fold0", "worker": 0, "quota": 2,
                       "finished_before": 0, "ran": 2, "recovered": 0}
    study = load(tmp_path / "s", storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert t.user_attrs["worker"] == 0
        # the value is the last epoch's report; every epoch was reported
        assert sorted(t.intermediate_values) == list(range(EPOCHS))
        assert t.value == t.intermediate_values[EPOCHS - 1] == script.quadratic(t.params, EPOCHS - 1)


def test_trial_checkpoints_are_deleted_unless_kept(tmp_path, script):
    run(script, study_dir=tmp_path / "a", n_trials=1)
    trial_dir = tmp_path / "a" / "trials" / "trial0"
    assert (trial_dir / "progress.csv").is_file()
    assert not (trial_dir / "checkpoint_latest.pth").exists()
    tuning.run_worker(**worker_kwargs(tmp_path / "b", n_trials=1), keep_checkpoints=True,
                      run_trial=script.make_objective(EPOCHS))
    assert (tmp_path / "b" / "trials" / "trial0" / "checkpoint_latest.pth").is_file()
    tuning.remove_trial_folders(tmp_path / "b")
    assert not (tmp_path / "b" / "trials").exists()
    assert (tmp_path / "b" / "study.journal").is_file()


def test_non_finite_objective_fails_the_trial_and_stops(tmp_path):
    def nan_trial(trial, params, trial_dir):
        return float("nan")

    with pytest.raises(NNRobustLossError, match="trial 0: objective is nan"):
        tuning.run_worker(**worker_kwargs(tmp_path), run_trial=nan_trial)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL]


@pytest.mark.parametrize("method", ["Baseline", "BaselineRef", "APL1"])
def test_methods_without_hyper_parameters_are_not_tuned(tmp_path, script, method):
    assert method in UNTUNED_METHODS
    with pytest.raises(ConfigError, match=f"method {method} has no hyper-parameters"):
        tuning.run_worker(**worker_kwargs(tmp_path, method=method),
                          run_trial=script.make_objective(EPOCHS))
    assert not (tmp_path / "study.journal").exists()


# ------------------------------------------------------------------------------ sampling


def test_sampler_settings():
    one = tuning.make_sampler(3, 10, workers=1)
    many = tuning.make_sampler(3, 10, workers=4)
    assert isinstance(one, optuna.samplers.TPESampler)
    assert one._multivariate is True and many._multivariate is True
    assert one._n_startup_trials == 10
    assert one._constant_liar is False  # one worker: no concurrent trial to lie about
    assert many._constant_liar is True
    seeds = [tuning.trial_seed(5, i) for i in range(50)]
    assert seeds == [tuning.trial_seed(5, i) for i in range(50)]
    assert len(set(seeds)) == 50
    assert tuning.trial_seed(5, 0) != tuning.trial_seed(6, 0)


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
def test_same_seed_same_trials_different_seed_different(tmp_path, script, storage):
    # 3 random start-up trials, then 3 multivariate TPE trials
    a = params_seq(_tuned(script, tmp_path / "a", storage, seed=0))
    b = params_seq(_tuned(script, tmp_path / "b", storage, seed=0))
    c = params_seq(_tuned(script, tmp_path / "c", storage, seed=1))
    assert len(a) == len(b) == len(c) == 6
    assert a == b
    assert all(pa != pc for pa, pc in zip(a, c, strict=True))
    assert len({tuple(p.values()) for p in a}) == 6  # no point drawn twice


def _tuned(script: ModuleType, d: Path, storage: str, seed: int) -> optuna.Study:
    run(script, study_dir=d, storage=storage, seed=seed)
    return load(d, storage)


def test_storage_kind_does_not_change_the_trials(tmp_path, script):
    assert (params_seq(_tuned(script, tmp_path / "s", "sqlite", 0))
            == params_seq(_tuned(script, tmp_path / "j", "journal", 0)))


@pytest.mark.parametrize("method", TUNED_METHODS)
def test_parameters_within_the_methods_search_space(tmp_path, script, method):
    spec = get_method(method)
    run(script, study_dir=tmp_path, method=method, n_trials=5, n_startup_trials=2)
    trials = finished(load(tmp_path, method=method))
    assert len(trials) == 5
    for t in trials:
        assert tuple(t.params) == spec.param_names
        for p in spec.search_space:
            assert p.low <= t.params[p.name] <= p.high
            dist = t.distributions[p.name]
            assert isinstance(dist, FloatDistribution)
            assert (dist.low, dist.high, dist.log) == (p.low, p.high, p.log)


def test_restarted_worker_continues_the_sequence_of_an_uninterrupted_run(tmp_path, script):
    """A worker stopped after 2 of 6 trials and run again draws what one run of 6 draws (a
    worker-seeded sampler would replay its first random points)."""
    ref = params_seq(_tuned(script, tmp_path / "ref", "journal", 0))
    run(script, study_dir=tmp_path / "two", n_trials=2)
    summary = run(script, study_dir=tmp_path / "two", n_trials=6)
    assert summary["finished_before"] == 2 and summary["ran"] == 4
    assert params_seq(load(tmp_path / "two")) == ref


# ------------------------------------------------------------------------- several workers


def test_workers_in_threads_share_one_journal_study(tmp_path, script):
    n_trials, workers = 7, 3
    errors: list[BaseException] = []

    def work(w: int) -> None:
        try:
            run(script, study_dir=tmp_path, n_trials=n_trials, worker=w, workers=workers)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    study = load(tmp_path)
    assert len(study.trials) == n_trials  # no overshoot
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    per_worker = [sum(t.user_attrs["worker"] == w for t in study.trials) for w in range(workers)]
    assert per_worker == [3, 2, 2]
    assert len({tuple(t.params.values()) for t in study.trials}) == n_trials
    # rerunning finished workers adds nothing
    for w in range(workers):
        assert run(script, study_dir=tmp_path, n_trials=n_trials, worker=w,
                   workers=workers)["ran"] == 0
    assert len(load(tmp_path).trials) == n_trials


def test_workers_run_sequentially_and_fewer_workers_never_overshoot(tmp_path, script):
    kw = {"study_dir": tmp_path, "n_trials": 6, "workers": 2}
    assert run(script, worker=1, **kw)["ran"] == 3
    # tuning.workers changed from 2 to 1: worker 0 now has the whole quota, the study needs 3
    summary = run(script, worker=0, **{**kw, "workers": 1})
    assert (summary["quota"], summary["ran"]) == (6, 3)
    study = load(tmp_path)
    assert len(finished(study)) == len(study.trials) == 6
    # and back to 2 workers: nothing left to do for either
    assert [run(script, worker=w, **kw)["ran"] for w in (0, 1)] == [0, 0]
    assert len(load(tmp_path).trials) == 6


# --------------------------------------------------------------------------- killed workers


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_killed_worker_rerun_retries_the_same_point_and_loses_nothing(
        tmp_path, script, storage):
    n_trials, k = 6, 1  # killed in trial 1; trial 2 is a random start-up one, 3.. use TPE
    ref = finished(_tuned(script, tmp_path / "ref", storage, 0))
    kw = worker_kwargs(tmp_path / "study", storage=storage, n_trials=n_trials)
    marker = tmp_path / "killed.marker"
    script.run_killed_worker(kw, EPOCHS, k, marker)
    assert marker.is_file()

    study = load(tmp_path / "study", storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * k + [TrialState.RUNNING]
    left = study.trials[k]
    assert left.params == ref[k].params
    assert sorted(left.intermediate_values) == [0]  # killed at epoch 1
    assert (tmp_path / "study" / "trials" / f"trial{k}" / "checkpoint_latest.pth").is_file()

    summary = tuning.run_worker(**kw, run_trial=script.make_objective(EPOCHS, k, str(marker)))
    assert summary["recovered"] == 1
    assert summary["finished_before"] == k and summary["ran"] == n_trials - k

    study = load(tmp_path / "study", storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * k + [TrialState.FAIL] + [TrialState.COMPLETE] * (
        n_trials - k)
    retry = study.trials[k + 1]
    assert retry.user_attrs["retry_of"] == k
    assert retry.params == left.params  # the same point, evaluated again
    done = finished(study)
    assert len(done) == n_trials
    # every finished trial (before and after the kill) equals the uninterrupted run's, in order
    assert [t.params for t in done] == [t.params for t in ref]
    assert [t.value for t in done] == [t.value for t in ref]
    assert len({tuple(t.params.values()) for t in done}) == n_trials
    # a further rerun finds the study complete and adds nothing
    again = tuning.run_worker(**kw, run_trial=script.make_objective(EPOCHS))
    assert (again["recovered"], again["ran"]) == (0, 0)
    assert len(load(tmp_path / "study", storage).trials) == n_trials + 1


def test_worker_killed_twice_is_recovered_each_time(tmp_path, script):
    kw = worker_kwargs(tmp_path / "study", n_trials=4)
    script.run_killed_worker(kw, EPOCHS, 1, tmp_path / "m1")
    script.run_killed_worker(kw, EPOCHS, 2, tmp_path / "m2")  # dies again, in the retry of 1
    study = load(tmp_path / "study")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                               TrialState.RUNNING]
    assert study.trials[2].params == study.trials[1].params
    summary = tuning.run_worker(**kw, run_trial=script.make_objective(EPOCHS))
    assert (summary["recovered"], summary["ran"]) == (1, 3)
    study = load(tmp_path / "study")
    assert len(finished(study)) == 4
    assert study.trials[3].params == study.trials[1].params
    assert study.trials[3].user_attrs["retry_of"] == 2
    ref = finished(_tuned(script, tmp_path / "ref", "journal", 0))[:4]
    assert [t.params for t in finished(study)] == [t.params for t in ref]


def test_journal_worker_recovers_only_its_own_leftover_trial(tmp_path, script):
    """Journal (no heartbeat), 2 workers: worker 1 leaves worker 0's RUNNING trial alone; the
    rerun of worker 0 fails it and evaluates its point again."""
    kw0 = worker_kwargs(tmp_path, n_trials=5, worker=0, workers=2)
    script.run_killed_worker(kw0, EPOCHS, 0, tmp_path / "marker")
    s1 = tuning.run_worker(**{**kw0, "worker": 1}, run_trial=script.make_objective(EPOCHS))
    assert (s1["recovered"], s1["ran"]) == (0, 2)
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] + [TrialState.COMPLETE] * 2
    s0 = tuning.run_worker(**kw0, run_trial=script.make_objective(EPOCHS))
    assert (s0["recovered"], s0["finished_before"], s0["ran"]) == (1, 0, 3)
    study = load(tmp_path)
    assert study.trials[0].state == TrialState.FAIL
    assert study.trials[3].params == study.trials[0].params
    assert study.trials[3].user_attrs == {"worker": 0, "retry_of": 0}
    assert len(finished(study)) == 5 and len(study.trials) == 6
    assert [sum(t.user_attrs["worker"] == w for t in finished(study)) for w in (0, 1)] == [3, 2]


def test_other_worker_takes_over_a_dead_workers_trial_by_heartbeat(
        tmp_path, script, monkeypatch):
    """SQLite: worker 0 dies in trial 0; after the grace period worker 1 fails it through the
    heartbeat, the retry callback re-enqueues the point and worker 1 evaluates it."""
    kw0 = worker_kwargs(tmp_path, storage="sqlite", n_trials=4, worker=0, workers=2)
    script.run_killed_worker(kw0, EPOCHS, 0, tmp_path / "marker")
    killed = load(tmp_path, "sqlite").trials[0]
    assert killed.state == TrialState.RUNNING

    monkeypatch.setattr(tuning, "HEARTBEAT_SECONDS", 1)  # grace period 2 s in this process
    # let worker 0's heartbeat become stale: SQLite's clock (CURRENT_TIMESTAMP) has whole seconds
    time.sleep(3.5)
    s1 = tuning.run_worker(**{**kw0, "worker": 1}, run_trial=script.make_objective(EPOCHS))
    assert (s1["recovered"], s1["ran"]) == (0, 2)
    study = load(tmp_path, "sqlite")
    assert study.trials[0].state == TrialState.FAIL
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == killed.params
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.user_attrs["worker"] == 1

    s0 = tuning.run_worker(**kw0, run_trial=script.make_objective(EPOCHS))
    assert (s0["recovered"], s0["finished_before"], s0["ran"]) == (0, 0, 2)
    study = load(tmp_path, "sqlite")
    assert len(finished(study)) == 4 and len(study.trials) == 5
    assert [sum(t.user_attrs["worker"] == w for t in finished(study)) for w in (0, 1)] == [2, 2]


# ----------------------------------------------------------------------------- select_best


def _study_with(tmp_path: Path, trials: list[tuple[TrialState, float | None, float]],
                storage: str = "journal") -> None:
    """A study of method APL2 with hand-made trials (state, value, w)."""
    st = tuning.open_storage(storage, tuning.storage_url(storage, tmp_path))
    study = optuna.create_study(study_name=tuning.study_name("Phantom", "APL2", 1), storage=st,
                                direction="maximize")
    dist = {"w": FloatDistribution(1e-3, 1.0)}
    for i, (state, value, w) in enumerate(trials):
        inter = {0: value} if value is not None else {}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state != TrialState.FAIL else None, params={"w": w},
            distributions=dist, intermediate_values=inter, user_attrs={"worker": i % 2}))


def _select(tmp_path: Path, n_trials: int, storage: str = "journal") -> dict[str, Any]:
    return tuning.select_best(task="Phantom", method="APL2", fold=1, n_trials=n_trials,
                              study_dir=tmp_path, storage=storage,
                              trials_csv=tmp_path / "out" / "trials.csv",
                              best_params_json=tmp_path / "out" / "best_params.json")


C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL


def test_select_best_refuses_an_unfinished_study(tmp_path):
    _study_with(tmp_path, [(C, 0.5, 0.2), (F, None, 0.3), (P, 0.1, 0.4)])
    with pytest.raises(NNRobustLossError,
                       match=r"Phantom.APL2.fold1: 2 of 3 trials finished; rerun the pipeline"):
        _select(tmp_path, 3)
    assert not (tmp_path / "out").exists()


def test_select_best_without_a_study(tmp_path):
    with pytest.raises(NNRobustLossError, match="study Phantom.APL2.fold1 not found"):
        _select(tmp_path, 2)


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_select_best_writes_trials_and_best_params(tmp_path, storage):
    # trial 2 (pruned) has the highest value but is never selected; 1 and 4 tie -> lower number
    _study_with(tmp_path, [(C, 0.5, 0.2), (C, 0.8, 0.6), (P, 0.95, 0.9), (F, None, 0.3),
                           (C, 0.8, 0.7)], storage)
    result = _select(tmp_path, 4, storage)
    best = json.loads((tmp_path / "out" / "best_params.json").read_text())
    assert best == result
    assert best == {"study": "Phantom.APL2.fold1", "params": {"w": 0.6}, "value": 0.8,
                    "trial": 1, "n_finished": 4}
    df = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert list(df.columns[:6]) == ["task", "method", "fold", "number", "value", "state"]
    assert "params_w" in df.columns and "user_attrs_worker" in df.columns
    assert (df["task"] == "Phantom").all() and (df["method"] == "APL2").all()
    assert (df["fold"] == 1).all()
    assert df["number"].tolist() == [0, 1, 2, 3, 4]
    assert df["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert df["params_w"].tolist() == [0.2, 0.6, 0.9, 0.3, 0.7]
    assert df["value"].iloc[[0, 1, 2, 4]].tolist() == [0.5, 0.8, 0.95, 0.8]
    assert math.isnan(df["value"].iloc[3])
    # selecting again gives the same files
    before = (tmp_path / "out" / "trials.csv").read_text()
    assert _select(tmp_path, 4, storage) == result
    assert (tmp_path / "out" / "trials.csv").read_text() == before


def test_select_best_with_every_trial_pruned(tmp_path):
    _study_with(tmp_path, [(P, 0.5, 0.2), (P, 0.6, 0.3)])
    with pytest.raises(NNRobustLossError, match="every trial was pruned"):
        _select(tmp_path, 2)
    assert not (tmp_path / "out" / "best_params.json").exists()


def test_pipeline_select_best_after_the_workers(tmp_path, script):
    """pipeline.run_select_best on the study that run_worker filled, at the layout's paths."""
    params = {"task": "Phantom", "method": "StoCoT", "fold": 0, "n_trials": 3,
              "storage": "sqlite"}
    study_dir = layout.study_dir(tmp_path, "Phantom", "StoCoT", 0)
    run(script, study_dir=study_dir, storage="sqlite", n_trials=2)
    out = tmp_path / "tuning" / "Phantom" / "StoCoT" / "fold0"
    with pytest.raises(NNRobustLossError, match="2 of 3 trials finished"):
        pipeline.run_select_best(params, tmp_path, trials_csv=out / "trials.csv",
                                 best_params_json=out / "best_params.json")
    run(script, study_dir=study_dir, storage="sqlite", n_trials=3)
    best = pipeline.run_select_best(params, tmp_path, trials_csv=out / "trials.csv",
                                 best_params_json=out / "best_params.json")
    trials = finished(load(study_dir, "sqlite"))
    top = max(trials, key=lambda t: t.value)
    assert (best["trial"], best["params"], best["value"]) == (top.number, top.params, top.value)
    assert len(pd.read_csv(out / "trials.csv")) == 3


# ---------------------------------------------------------------------------------- pruning


def test_make_pruner_names():
    assert isinstance(tuning.make_pruner("none", 50), optuna.pruners.NopPruner)
    assert isinstance(tuning.make_pruner("median", 50), optuna.pruners.MedianPruner)
    assert isinstance(tuning.make_pruner("hyperband", 50), optuna.pruners.HyperbandPruner)
    with pytest.raises(ConfigError, match="tuning.pruner: unknown pruner 'asha'"):
        tuning.make_pruner("asha", 50)
    # why 'none' must be explicit: Optuna 5 prunes with a MedianPruner by default
    assert isinstance(optuna.create_study().pruner, optuna.pruners.MedianPruner)


def test_median_pruner_waits_for_the_configured_start_up_trials():
    assert tuning.make_pruner("median", 50)._n_startup_trials == 5
    assert tuning.make_pruner("median", 50, n_startup_trials=10)._n_startup_trials == 10
    assert tuning.make_pruner("median", 50)._n_warmup_steps == 12


def test_a_trial_is_never_pruned_after_its_last_epoch():
    """A trial far below the median is pruned after any epoch but its last: then it is
    finished, and pruning would only throw its objective away."""
    study = optuna.create_study(direction="maximize",
                                pruner=tuning.make_pruner("median", 4, n_startup_trials=1))
    study.enqueue_trial({})
    first = study.ask()
    for epoch in range(4):
        first.report(0.9, epoch)
    study.tell(first, 0.9)
    bad = study.ask()
    decisions = []
    for epoch in range(4):
        bad.report(0.1, epoch)
        decisions.append(tuning.pruned_after(bad, epoch, 4))
    # epoch 0 is the median pruner's warm-up (epochs // 4 = 1 step); the last epoch never prunes
    assert decisions == [False, True, True, False]
    assert bad.should_prune()  # what the pruner alone would have said after the last epoch


def _bad_last_trial(bad_number: int):
    """Identical good curves (0.5, 0.51, ...) except trial ``bad_number``, which reports -1."""

    def run_trial(trial, params, trial_dir):
        value = 0.0
        for epoch in range(4):
            value = -1.0 if trial.number == bad_number else 0.5 + 0.01 * epoch
            trial.report(value, step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    return run_trial


@pytest.mark.parametrize("pruner, expected", [("none", TrialState.COMPLETE),
                                              ("median", TrialState.PRUNED)])
def test_pruner_none_never_prunes_median_prunes_a_bad_trial(tmp_path, pruner, expected):
    kw = {**worker_kwargs(tmp_path, n_trials=7, pruner=pruner), "epochs": 4}
    summary = tuning.run_worker(**kw, run_trial=_bad_last_trial(6))
    assert summary["ran"] == 7
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6 + [expected]
    bad = study.trials[6]
    if pruner == "median":
        # 5 start-up trials done, warm-up 4 // 4 = 1 step: pruned at the first step allowed
        assert bad.last_step == 1 and sorted(bad.intermediate_values) == [0, 1]
        assert bad.value == -1.0
        best = _select_stocot(tmp_path, 7)
        assert best["trial"] != 6 and best["n_finished"] == 7
    else:
        assert bad.last_step == 3


def _select_stocot(tmp_path: Path, n_trials: int) -> dict[str, Any]:
    return tuning.select_best(task="Phantom", method="StoCoT", fold=0, n_trials=n_trials,
                              study_dir=tmp_path, storage="journal",
                              trials_csv=tmp_path / "trials.csv",
                              best_params_json=tmp_path / "best_params.json")


# --------------------------------------------------------- real nnU-Net training (slow)


@pytest.mark.slow
def test_real_training_trials_report_the_progress_ema(tmp_path, request):
    try:
        info = request.getfixturevalue("preprocessed_phantom")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no preprocessed_phantom fixture")

    from conftest import deterministic_cpu_training

    from nnrobustloss.trainers.progress import read_progress_csv

    with deterministic_cpu_training():  # after planning (the fixture)
        objective = tuning.training_objective({
            "preprocessed_dataset_dir": info["preprocessed_dir"], "method": "SVLS", "fold": 0,
            "epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1,
            "coteaching": {"delay": 0, "gradual": 0}, "svls": {"kernel": "islam"}, "seed": 0,
            "device": "cpu"})
        kw = {**worker_kwargs(tmp_path / "study", storage="sqlite", method="SVLS", n_trials=2),
              "epochs": 2}
        tuning.run_worker(**kw, run_trial=objective)

    study = load(tmp_path / "study", "sqlite", method="SVLS")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.trials[0].params != study.trials[1].params
    for t in study.trials:
        trial_dir = tmp_path / "study" / "trials" / f"trial{t.number}"
        rows = read_progress_csv(trial_dir / "progress.csv")
        assert [int(r["epoch"]) for r in rows] == [0, 1]
        emas = [float(r["train_pseudo_dice_ema"]) for r in rows]
        assert t.value == pytest.approx(emas[-1], rel=0, abs=1e-12)
        assert [t.intermediate_values[e] for e in (0, 1)] == pytest.approx(emas, abs=1e-12)
        assert 0.0 <= t.value <= 1.0
        # EMA lambda 0.9: ema1 = 0.9 * ema0 + 0.1 * dice1, ema0 = dice0
        dice = [float(r["train_pseudo_dice"]) for r in rows]
        assert emas[0] == pytest.approx(dice[0])
        assert emas[1] == pytest.approx(0.9 * dice[0] + 0.1 * dice[1])
        settings = json.loads((trial_dir / "settings.json").read_text())
        assert settings["params"] == t.params  # trained with the trial's parameters
        assert settings["num_epochs"] == 2
        assert not list(trial_dir.glob("checkpoint_*.pth"))  # deleted after the trial
    best = tuning.select_best(task="Phantom", method="SVLS", fold=0, n_trials=2,
                              study_dir=tmp_path / "study", storage="sqlite",
                              trials_csv=tmp_path / "trials.csv",
                              best_params_json=tmp_path / "best_params.json")
    assert best["value"] == max(t.value for t in study.trials)
