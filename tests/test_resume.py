"""Resuming interrupted work (issue 10 item 3): a prediction job continues per case from its
staging folder, and a retried tuning trial continues from its interrupted trial's checkpoint.

Interruptions are real: an exception raised in the middle of the job (between two cases, or
from a trial's report after an epoch's checkpoint) and SIGKILLed worker processes. The real
nnU-Net tests train and predict the phantom task of tests/conftest.py on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss import layout, prediction
from nnrobustloss.metrics import CALIBRATION_SUFFIX, CalibrationStats


class _Interrupted(Exception):
    """Stands for a wall-time kill in the middle of a job."""


@pytest.fixture(scope="module")
def phantom(request):
    """The phantom fixture's paths, a 1-epoch Baseline training of fold 0, and deterministic
    single-threaded CPU settings (restored afterwards)."""

    from nnrobustloss.training import train

    try:
        info = request.getfixturevalue("preprocessed_phantom")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no preprocessed_phantom fixture")
    from conftest import deterministic_cpu_training

    with deterministic_cpu_training():
        root = Path(info["results_dir"])
        model = train(info["preprocessed_dir"], "Baseline", 0,
                      layout.training_dir(root, "ResumeTest", "Baseline", 0), epochs=1,
                      iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu")
        yield {**info, "model": model}


def _cases(info: dict) -> list[str]:
    images = Path(info["raw_dir"]) / "imagesTr"
    return sorted(p.name.removesuffix("_0000.nii.gz") for p in images.glob("*_0000.nii.gz"))


def _predict(info: dict, out: Path, **kw):
    spec = prediction.CalibrationSpec(Path(info["reference_labels"]), {"organ": [1], "lesion": [2]})
    return prediction.predict_cases(info["model"], Path(info["raw_dir"]) / "imagesTr",
                                    _cases(info), out, mirroring=False, calibration=spec,
                                    device="cpu", **kw)


_PREDICT_CASE = prediction._predict_case


def _spy(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Count the cases really predicted; raise _Interrupted before the ``fail_at``-th (0-based)."""
    real = _PREDICT_CASE
    seen: list[str] = []

    def spy(predictors, files, out_truncated, *args):
        if fail_at is not None and len(seen) == fail_at:
            raise _Interrupted
        seen.append(Path(out_truncated).name)
        return real(predictors, files, out_truncated, *args)

    monkeypatch.setattr(prediction, "_predict_case", spy)
    return seen


def _arrays(folder: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
    return seg, CalibrationStats.load(folder / f"{case}{CALIBRATION_SUFFIX}").counts


@pytest.mark.slow
def test_interrupted_prediction_resumes_per_case_and_equals_an_uninterrupted_run(
        phantom, tmp_path, monkeypatch):
    cases, k = _cases(phantom), 2
    assert len(cases) == 6
    _predict(phantom, tmp_path / "ref")

    out = tmp_path / "pred" / "fold0"
    staging = layout.partial_dir(out)
    assert staging == tmp_path / "pred" / "fold0.partial"
    _spy(monkeypatch, fail_at=k)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    assert not out.exists()  # the declared output appears only complete
    assert sorted(p.name for p in staging.iterdir() if p.is_dir()) == cases[:k]
    for case in cases[:k]:
        assert sorted(p.name for p in (staging / case).iterdir()) == sorted(
            [f"{case}.nii.gz", f"{case}{CALIBRATION_SUFFIX}"])
    inodes = {case: (staging / case / f"{case}.nii.gz").stat().st_ino for case in cases[:k]}
    # what a SIGKILL in the middle of a case leaves: a temporary folder of atomic_dir
    killed = staging / f".tmp-123-{cases[k]}-abcdefgh"
    (killed / cases[k]).mkdir(parents=True)

    seen = _spy(monkeypatch)
    assert _predict(phantom, out) == out
    assert seen == cases[k:]  # only the missing cases were predicted
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for c in cases for n in (f"{c}.nii.gz", f"{c}{CALIBRATION_SUFFIX}"))
    for case in cases:
        seg, counts = _arrays(out, case)
        ref_seg, ref_counts = _arrays(tmp_path / "ref", case)
        assert np.array_equal(seg, ref_seg), case
        assert np.array_equal(counts, ref_counts), case
    for case, ino in inodes.items():  # the cases of the first run are its files, not redone
        assert (out / f"{case}.nii.gz").stat().st_ino == ino


@pytest.mark.slow
def test_staged_cases_of_other_options_or_another_model_are_discarded(
        phantom, tmp_path, monkeypatch):
    cases = _cases(phantom)
    out = tmp_path / "fold0"
    _spy(monkeypatch, fail_at=3)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    seen = _spy(monkeypatch)
    _predict(phantom, out, tile_step_size=0.75)  # another option: every case again
    assert seen == cases

    _spy(monkeypatch, fail_at=1)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    info = layout.partial_dir(out) / prediction.STAGING_INFO
    assert info.is_file()
    # a retrained model (another checkpoint_final.pth) makes the staged case stale too
    text = info.read_text()
    info.write_text(text.replace(text.split('"checkpoint_sha256": "')[1][:64], "0" * 64))
    seen = _spy(monkeypatch)
    _predict(phantom, out)
    assert seen == cases


# ----------------------------------------------------------------------------- tuning trials

EPOCHS = 3


def _worker_kwargs(study_dir: Path, **kw) -> dict:
    return {"task": "Phantom", "method": "StoCoT", "fold": 0, "worker": 0, "workers": 1,
            "n_trials": 3, "study_dir": str(study_dir), "storage": "journal", "seed": 0,
            "n_startup_trials": 3, "pruner": "none", "epochs": EPOCHS, **kw}


def _load(study_dir: Path, method: str = "StoCoT"):
    import optuna

    from nnrobustloss import tuning

    st = tuning.open_storage("journal", tuning.storage_url("journal", study_dir))
    return optuna.load_study(study_name=tuning.study_name("Phantom", method, 0), storage=st)


def _ran(folder: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split())) for line in (folder / "ran.txt").read_text().split("\n")
            if line]


def test_killed_trial_is_continued_from_its_checkpoint_in_its_folder(tmp_path):
    from cheap_worker import make_objective, run_killed_worker
    from optuna.trial import TrialState

    from nnrobustloss import tuning

    tuning.run_worker(**_worker_kwargs(tmp_path / "ref"), run_trial=make_objective(EPOCHS))
    ref = _load(tmp_path / "ref").trials

    kw, k = _worker_kwargs(tmp_path / "study"), 1
    run_killed_worker(kw, EPOCHS, k, tmp_path / "marker")  # SIGKILLed at the start of epoch 1
    killed = tuning.trial_dir(tmp_path / "study", k)
    assert (killed / "checkpoint_latest.pth").read_text() == "1"  # epoch 0 done

    summary = tuning.run_worker(**kw, run_trial=make_objective(EPOCHS))
    assert (summary["recovered"], summary["ran"]) == (1, 2)
    trials = _load(tmp_path / "study").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL,
                                         TrialState.COMPLETE, TrialState.COMPLETE]
    retry = trials[k + 1]
    assert tuning.retried_trial(retry) == k
    # the killed trial's folder became the retry's; the retry ran only the missing epochs
    assert not killed.exists()
    folder = tuning.trial_dir(tmp_path / "study", k + 1)
    assert _ran(folder) == [(k, 0), (k + 1, 1), (k + 1, 2)]
    assert not (folder / "checkpoint_latest.pth").exists()  # deleted once finished
    assert _ran(tuning.trial_dir(tmp_path / "study", k + 2)) == [(k + 2, e) for e in range(EPOCHS)]
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.params for t in done] == [t.params for t in ref]
    assert [t.value for t in done] == [t.value for t in ref]
    assert [t.intermediate_values for t in done] == [t.intermediate_values for t in ref]


def test_retry_adopts_the_nearest_folder_of_its_chain_and_fresh_trials_start_empty(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from nnrobustloss import tuning

    study = optuna.create_study(direction="maximize")
    dist = {"w": FloatDistribution(0.0, 1.0)}

    def add(state, user_attrs=None, system_attrs=None):
        study.add_trial(create_trial(state=state, params={"w": 0.5}, distributions=dist,
                                     value=0.0 if state == TrialState.COMPLETE else None,
                                     user_attrs=user_attrs or {}, system_attrs=system_attrs or {}))
        return study.trials[-1]

    t0 = add(TrialState.FAIL)
    t1 = add(TrialState.FAIL, {"retry_of": 0})
    # a heartbeat retry copies the failed trial's user attributes (retry_of 0 is stale)
    t2 = add(TrialState.COMPLETE, {"retry_of": 0}, {"failed_trial": 0, "retry_history": [1]})
    fresh = add(TrialState.COMPLETE)
    assert [tuning.retried_trial(t) for t in (t0, t1, t2, fresh)] == [None, 0, 1, None]

    # trial 1 died before it took over trial 0's folder: trial 2 takes it
    tuning.trial_dir(tmp_path, 0).mkdir(parents=True)
    (tuning.trial_dir(tmp_path, 0) / "checkpoint_latest.pth").write_text("0")
    assert tuning.adopt_interrupted_folder(study, t2, tmp_path) == 0
    assert (tuning.trial_dir(tmp_path, 2) / "checkpoint_latest.pth").read_text() == "0"
    assert not tuning.trial_dir(tmp_path, 0).exists()
    # a folder of a deleted study with a fresh trial's number is emptied, never continued
    stale = tuning.trial_dir(tmp_path, fresh.number)
    stale.mkdir()
    (stale / "checkpoint_latest.pth").write_text("old")
    assert tuning.adopt_interrupted_folder(study, fresh, tmp_path) is None
    assert not stale.exists()


class _InterruptingTrial:
    """An Optuna trial whose first ``report`` raises KeyboardInterrupt (after that epoch's
    checkpoint): Ctrl-C in the middle of a real training trial."""

    def __init__(self, trial):
        self._trial = trial

    def __getattr__(self, name):
        return getattr(self._trial, name)

    def report(self, value, step):
        raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_training_trial_continues_and_equals_an_uninterrupted_one(
        phantom, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from nnrobustloss import tuning
    from nnrobustloss.trainers.base import RobustTrainer
    from nnrobustloss.trainers.progress import read_progress_csv

    objective = tuning.training_objective({
        "preprocessed_dataset_dir": phantom["preprocessed_dir"], "method": "APL2", "fold": 0,
        "epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1, "seed": 0,
        "device": "cpu"})
    kw = {"method": "APL2", "n_trials": 1, "epochs": 2}
    tuning.run_worker(**_worker_kwargs(tmp_path / "ref", **kw), run_trial=objective,
                      keep_checkpoints=True)
    ref = _load(tmp_path / "ref", "APL2").trials[0]

    study_dir = tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        tuning.run_worker(**_worker_kwargs(study_dir, **kw), keep_checkpoints=True,
                          run_trial=lambda t, p, d: objective(_InterruptingTrial(t), p, d))
    trials = _load(study_dir, "APL2").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert (tuning.trial_dir(study_dir, 0) / "checkpoint_latest.pth").is_file()

    real = RobustTrainer.on_train_epoch_start
    epochs: list[int] = []

    def spy(self):
        epochs.append(self.current_epoch)
        real(self)

    monkeypatch.setattr(RobustTrainer, "on_train_epoch_start", spy)
    summary = tuning.run_worker(**_worker_kwargs(study_dir, **kw), run_trial=objective,
                                keep_checkpoints=True)
    assert (summary["recovered"], summary["ran"]) == (0, 1)
    assert epochs == [1]  # continued from the checkpoint of epoch 0
    retry = _load(study_dir, "APL2").trials[1]
    assert retry.state == TrialState.COMPLETE and tuning.retried_trial(retry) == 0
    assert retry.params == ref.params
    assert retry.value == ref.value
    assert retry.intermediate_values == ref.intermediate_values
    a = read_progress_csv(tuning.trial_dir(tmp_path / "ref", 0) / "progress.csv")
    b = read_progress_csv(tuning.trial_dir(study_dir, 1) / "progress.csv")
    assert [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in a] == \
        [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in b]


# ------------------------------------------------------------------------ checkpoint policy


@pytest.mark.slow
def test_checkpoint_minutes_spaces_the_latest_checkpoint_and_best_is_never_written(
        phantom, tmp_path):
    from nnrobustloss.errors import ConfigError
    from nnrobustloss.training import train

    def kill_after_epoch_0(epoch, metrics):
        if epoch == 0:
            raise _Interrupted

    kw = dict(epochs=2, iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu")
    for minutes, latest in ((0, True), (1e6, False)):
        out = tmp_path / f"every{minutes}"
        with pytest.raises(_Interrupted):
            train(phantom["preprocessed_dir"], "Baseline", 0, out, checkpoint_minutes=minutes,
                  epoch_callback=kill_after_epoch_0, **kw)
        assert (out / "checkpoint_latest.pth").is_file() == latest, minutes
        assert not (out / "checkpoint_best.pth").exists()
    train(phantom["preprocessed_dir"], "Baseline", 0, tmp_path / "every0", **kw)
    assert (tmp_path / "every0" / "checkpoint_final.pth").is_file()
    assert not (tmp_path / "every0" / "checkpoint_best.pth").exists()
    with pytest.raises(ConfigError, match="checkpoint_minutes=-1"):
        train(phantom["preprocessed_dir"], "Baseline", 0, tmp_path / "bad", checkpoint_minutes=-1,
              **kw)
