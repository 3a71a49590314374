# ruff: noqa: F811  (test parameters named like the imported fixture)
"""Faults in the training stages (issue 22): checkpoints that say what they are, checked writes.

A finished 1-epoch Baseline training of the phantom task of tests/conftest.py is broken one
thing at a time in a copy (a zero-byte or cut checkpoint, another method's checkpoint, other
plans, other settings, a file size limit) and the stage is run again: through the Python API
for the error class and message, and through the ``nnrobustloss`` command for the one line a
user sees.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PHANTOM_TEST_CPU_PLAN, PHANTOM_TEST_TASK

from nnrobustloss import layout
from nnrobustloss.errors import ConfigError, InputDataError, OutputError

EPOCHS = dict(iterations_per_epoch=2, val_iterations_per_epoch=1)
LAUNCHER = ("import sys; from nnrobustloss.cli import main; "
            "sys.argv = ['nnrobustloss', *sys.argv[1:]]; sys.exit(main())")


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """The phantom fixture's paths and a finished 1-epoch Baseline training of fold 0 (its
    folder also holds a ``checkpoint_latest.pth`` copy of epoch 0, kept aside)."""
    from conftest import deterministic_cpu_training

    from nnrobustloss.training import train

    info = request.getfixturevalue("preprocessed_phantom")
    with deterministic_cpu_training():
        out = layout.training_dir(info["results_dir"], "PhantomTest", "Baseline", 0)
        train(info["preprocessed_dir"], "Baseline", 0, out, epochs=1, device="cpu", **EPOCHS)
        yield {**info, "model": out}


def _copy_model(trained: dict, tmp_path: Path, method: str = "Baseline") -> Path:
    """A copy of the finished training in a fresh folder named like ``method``'s training."""
    dst = layout.training_dir(tmp_path, "PhantomTest", method, 0)
    shutil.copytree(trained["model"], dst)
    return dst


def _as_unfinished(model: Path) -> Path:
    """Turn a finished training folder into an interrupted one (its final checkpoint becomes
    the latest, as after a kill in the last epoch); return the latest checkpoint."""
    latest = model / layout.CHECKPOINT_LATEST
    (model / layout.CHECKPOINT_FINAL).rename(latest)
    return latest


def _train(trained: dict, out: Path, method: str = "Baseline", epochs: int = 1, **kw):
    from nnrobustloss.training import train

    return train(kw.pop("pre", trained["preprocessed_dir"]), method, 0, out, epochs=epochs,
                 device="cpu", **EPOCHS, **kw)


# --- 1. checkpoints are read and identified before their weights are used -------------------

@pytest.mark.parametrize("damage", ["empty", "cut"])
def test_unreadable_latest_checkpoint_is_one_error_naming_it(trained, tmp_path, damage) -> None:
    latest = _as_unfinished(_copy_model(trained, tmp_path))
    data = latest.read_bytes()
    latest.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    with pytest.raises(InputDataError) as e:
        _train(trained, latest.parent)
    msg = str(e.value)
    assert msg.startswith(f"{latest}: unreadable checkpoint (") and "Delete it and rerun" in msg
    assert "starts again from epoch 0" in msg and "\n" not in msg


def test_latest_checkpoint_of_another_method_is_not_resumed(trained, tmp_path) -> None:
    latest = _as_unfinished(_copy_model(trained, tmp_path, method="APL1"))
    (latest.parent / "settings.json").unlink()  # only the checkpoint is foreign
    with pytest.raises(ConfigError) as e:
        _train(trained, latest.parent, method="APL1")
    assert str(e.value).startswith(f"{latest}: written by another training (it belongs to "
                                   "method Baseline (nnUNetTrainer_Baseline), not APL1)")


def test_latest_checkpoint_of_another_fold_is_not_resumed(trained, tmp_path) -> None:
    from nnrobustloss.training import train

    latest = _as_unfinished(_copy_model(trained, tmp_path))
    (latest.parent / "settings.json").unlink()
    with pytest.raises(ConfigError, match=r"fold 0, not 1"):
        train(trained["preprocessed_dir"], "Baseline", 1, latest.parent, epochs=1,
              device="cpu", **EPOCHS)


def test_latest_checkpoint_of_other_plans_is_not_resumed(trained, tmp_path) -> None:
    pre = tmp_path / "pre"
    shutil.copytree(trained["preprocessed_dir"], pre, symlinks=True)
    plans_file = pre / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    arch = plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    arch["features_per_stage"] = [f * 2 for f in arch["features_per_stage"]]
    plans_file.write_text(json.dumps(plans))
    latest = _as_unfinished(_copy_model(trained, tmp_path))
    with pytest.raises(ConfigError, match=r"other plans \(nnUNetPlans as planned when it was "
                                          r"trained; the network no longer matches"):
        _train(trained, latest.parent, pre=pre)


def test_finished_training_with_other_settings_is_refused_not_kept(trained, tmp_path) -> None:
    model = _copy_model(trained, tmp_path)
    final = model / layout.CHECKPOINT_FINAL
    before = final.stat().st_mtime_ns
    assert _train(trained, model) == model  # the same settings: done, nothing trained
    with pytest.raises(ConfigError) as e:
        _train(trained, model, epochs=3)
    msg = str(e.value)
    assert msg.startswith(f"{final}: written by another training (other settings: "
                          "num_epochs (1 -> 3))")
    assert f"The finished model is kept: delete {model} and rerun" in msg
    assert final.stat().st_mtime_ns == before


def test_cut_final_checkpoint_is_noticed_by_train_and_predict(trained, tmp_path) -> None:
    from nnrobustloss.prediction import predict_cases

    model = _copy_model(trained, tmp_path)
    final = model / layout.CHECKPOINT_FINAL
    final.write_bytes(final.read_bytes()[:1000])
    with pytest.raises(InputDataError, match=r"unreadable checkpoint \(1000 bytes"):
        _train(trained, model)
    with pytest.raises(InputDataError, match=r"unreadable checkpoint .* the train stage trains "
                                             r"Baseline again"):
        predict_cases(model, Path(trained["raw_dir"]) / "imagesTr", ["Phantom_000"],
                      tmp_path / "pred", device="cpu", method="Baseline", fold=0)
    assert not (tmp_path / "pred").exists()


def test_prediction_refuses_another_methods_model(trained, tmp_path) -> None:
    from nnrobustloss.prediction import predict_cases

    model = _copy_model(trained, tmp_path, method="APL2")
    cases = sorted(p.name.removesuffix("_0000.nii.gz")
                   for p in (Path(trained["raw_dir"]) / "imagesTr").glob("*_0000.nii.gz"))[:1]
    with pytest.raises(ConfigError, match=r"belongs to method Baseline .*not APL2\). Delete"):
        predict_cases(model, Path(trained["raw_dir"]) / "imagesTr", cases, tmp_path / "pred",
                      device="cpu", method="APL2", fold=0)
    with pytest.raises(ConfigError, match=r"fold 0, not 2"):
        predict_cases(model, Path(trained["raw_dir"]) / "imagesTr", cases, tmp_path / "pred",
                      device="cpu", method="Baseline", fold=2)
    assert not (tmp_path / "pred").exists() and not layout.partial_dir(tmp_path / "pred").exists()


def test_checkpoint_records_its_identity(trained) -> None:
    import torch

    from nnrobustloss.trainers.identity import identity_of, plans_digest

    ckpt = torch.load(trained["model"] / layout.CHECKPOINT_FINAL, map_location="cpu",
                      weights_only=False, mmap=True)
    ident = ckpt["nnrobustloss"]["identity"]
    plans = json.loads((Path(trained["preprocessed_dir"]) / "nnUNetPlans.json").read_text())
    assert ident == identity_of(ckpt)
    assert {k: ident[k] for k in ("trainer", "method", "epochs", "seed", "plans_identifier",
                                  "configuration", "fold")} == {
        "trainer": "nnUNetTrainer_Baseline", "method": "Baseline", "epochs": 1, "seed": 0,
        "plans_identifier": "nnUNetPlans", "configuration": "3d_fullres", "fold": 0}
    assert ident["plans_sha256"] == plans_digest(plans, "3d_fullres")
    # a checkpoint written before the identity existed is identified by its other keys
    del ckpt["nnrobustloss"]["identity"]
    assert identity_of(ckpt) == ident


# --- 3. checked writes ----------------------------------------------------------------------

_SAVE_UNDER_LIMIT = """
import resource, sys, torch
from nnrobustloss.errors import NNRobustLossError
from nnrobustloss.fileio import write_torch
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    write_torch({"w": torch.zeros(100000)}, sys.argv[1])
except NNRobustLossError as e:
    print(type(e).__name__, e)
"""


def test_torch_save_under_a_file_size_limit_is_one_line_and_leaves_nothing(tmp_path) -> None:
    target = tmp_path / "checkpoint_latest.pth"
    proc = subprocess.run([sys.executable, "-c", _SAVE_UNDER_LIMIT, str(target)],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == (f"OutputError {target}: File too large; a file size limit "
                                   "was hit (ulimit -f); raise it and rerun.")
    assert list(tmp_path.iterdir()) == []


def test_a_short_torch_file_is_never_committed(tmp_path, monkeypatch) -> None:
    """A writer that stops short without an error (as a full network file system can) leaves
    an incomplete zip: it is refused before the rename."""
    import torch

    from nnrobustloss import fileio

    real = torch.save

    def short_save(obj, fh, *a, **k):
        real(obj, fh, *a, **k)
        fh.truncate(fh.tell() // 2)

    monkeypatch.setattr(torch, "save", short_save)
    with pytest.raises(OutputError, match=r"writing stopped short .* incomplete"):
        fileio.write_torch({"w": torch.zeros(1000)}, tmp_path / "c.pth")
    assert list(tmp_path.iterdir()) == []


# --- the one line a user sees -----------------------------------------------------------------

def _study_config(trained: dict, results: Path) -> Path:
    cfg = {"results_dir": str(results), "tasks": {"PhantomTest": PHANTOM_TEST_TASK},
           "methods": ["Baseline", "APL1"], "folds": [0], "device": "cpu",
           "planning": {"planner": "cpu", "cpu_plan": PHANTOM_TEST_CPU_PLAN,
                        "num_processes": 1},
           "training": {"epochs": 1, **EPOCHS}}
    path = results.parent / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(config: Path, *args: str, limit_fsize: int | None = None
         ) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        if limit_fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_fsize, limit_fsize))

    return subprocess.run([sys.executable, "-c", LAUNCHER, *args, "--configfile", str(config)],
                          capture_output=True, text=True, timeout=600, preexec_fn=limit,
                          cwd=config.parent)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture
def study(trained, tmp_path) -> tuple[Path, Path]:
    """A copy of the phantom results folder (converted, split, planned, Baseline trained) and
    a config that runs on it; returns (config, results folder)."""
    results = tmp_path / "results"
    shutil.copytree(trained["results_dir"], results, symlinks=True,
                    ignore=shutil.ignore_patterns("ResumeTest", "nnunet_results"))
    return _study_config(trained, results), results


def test_cli_cut_checkpoint_and_file_size_limit_are_one_line(study) -> None:
    config, results = study
    model = layout.training_dir(results, "PhantomTest", "Baseline", 0)
    final = model / layout.CHECKPOINT_FINAL
    final.write_bytes(final.read_bytes()[:5000])
    line = _error_line(_cli(config, "train", "--task", "PhantomTest", "--method", "Baseline",
                            "--fold", "0"))
    assert line.startswith(f"error: {final}: unreadable checkpoint (5000 bytes;")
    print(line)
    shutil.rmtree(model)
    line = _error_line(_cli(config, "train", "--task", "PhantomTest", "--method", "Baseline",
                            "--fold", "0", limit_fsize=100_000))
    print(line)
    assert line.startswith(f"error: {model}/") and line.endswith(
        ": File too large; a file size limit was hit (ulimit -f); raise it and rerun.")
    assert not [p for p in model.rglob(".tmp-*")] if model.exists() else True


# --- 2. studies that survive their storage --------------------------------------------------

def _journal_study(path: Path, n: int):
    """A journal study with ``n`` completed trials (no training: values set directly)."""
    import optuna

    from nnrobustloss.tuning import open_storage

    study = optuna.create_study(study_name="T.APL2.fold0", direction="maximize",
                                storage=open_storage("journal", str(path)))
    for i in range(n):
        study.enqueue_trial({"w": 0.1 * (i + 1)})
        study.optimize(lambda t: t.suggest_float("w", 1e-3, 1.0), n_trials=1)
    return study


@pytest.mark.parametrize("keep", [1, 10, -1])
def test_cut_last_journal_record_is_removed_and_the_finished_trials_kept(tmp_path, keep,
                                                                         capsys) -> None:
    """A kill in the middle of Optuna's one-write append leaves a prefix of the last record:
    cut after its first byte, in its middle, or one byte short of its line end."""
    import optuna

    from nnrobustloss.tuning import open_storage

    path = tmp_path / "study.journal"
    _journal_study(path, 3)
    whole = path.read_bytes()
    # append the record of a 4th trial's start, then cut it as a kill would
    record = b'{"op_code":4,"worker_id":"x","study_id":0,"datetime_start":"2026-01-01T00:00:00"}\n'
    path.write_bytes(whole + record[: keep if keep > 0 else len(record) + keep])
    study = optuna.load_study(study_name="T.APL2.fold0", storage=open_storage("journal", str(path)))
    assert path.read_bytes() == whole
    assert [t.params["w"] for t in study.trials] == pytest.approx([0.1, 0.2, 0.3])
    assert "removed its cut last record" in capsys.readouterr().err
    study.optimize(lambda t: t.suggest_float("w", 1e-3, 1.0), n_trials=1)  # appends cleanly
    again = optuna.load_study(study_name="T.APL2.fold0", storage=open_storage("journal", str(path)))
    assert len(again.trials) == 4 and all(t.state.name == "COMPLETE" for t in again.trials)


def test_garbled_journal_is_one_error_naming_it(tmp_path) -> None:
    from nnrobustloss.tuning import open_storage

    path = tmp_path / "study.journal"
    _journal_study(path, 2)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + [b"\x00garbage\n"] + lines[2:]))
    with pytest.raises(InputDataError, match=rf"^{path}: line 3 of {len(lines) + 1} is not an "
                                             r"Optuna journal record \(the file is corrupt\)"):
        open_storage("journal", str(path))


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_corrupt_sqlite_study_is_one_error_naming_it(tmp_path, damage) -> None:
    import optuna

    from nnrobustloss.tuning import open_storage, storage_url

    url = storage_url("sqlite", tmp_path)
    study = optuna.create_study(study_name="s", storage=open_storage("sqlite", url))
    study.optimize(lambda t: t.suggest_float("w", 0, 1), n_trials=3)
    db = tmp_path / "study.sqlite3"
    data = db.read_bytes()
    db.write_bytes(b"not a database at all" * 100 if damage == "garbage" else data[: len(data) // 3])
    with pytest.raises(InputDataError, match=rf"^{db}: not an intact SQLite database"):
        open_storage("sqlite", url)


@pytest.mark.parametrize(("content", "problem"), [
    ({"study": "T.APL2.fold0", "params": {}}, r"'params' does not match the search space of APL2 "
                                              r"\(missing w\)"),
    ({"study": "T.APL2.fold0"}, r"not a best_params.json \(no 'params' object\)"),
    ({"study": "T.APL2.fold0", "params": {"w": 7.0}}, r"params.w=7.0 is outside the search "
                                                      r"space of APL2"),
    ({"study": "T.APL2.fold0", "params": {"w": 0.5, "q": 1}}, r"'params' .* APL2 \(unknown q\)"),
    ({"study": "T.APL2.fold1", "params": {"w": 0.5}}, r"written for study 'T.APL2.fold1', not "
                                                      r"'T.APL2.fold0'"),
])
def test_best_params_are_checked_against_study_and_search_space(tmp_path, content,
                                                                problem) -> None:
    from nnrobustloss.tuning import read_best_params

    path = tmp_path / "best_params.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputDataError, match=rf"^{path}: {problem}.* select_best job writes it"):
        read_best_params(path, "T", "APL2", 0)
    path.write_text(json.dumps({"study": "T.APL2.fold0", "params": {"w": 0.25}}))
    assert read_best_params(path, "T", "APL2", 0) == {"w": 0.25}


# --- 5. inputs checked before anything is created -------------------------------------------

def test_tune_before_plan_creates_no_study(trained, tmp_path) -> None:
    from nnrobustloss.config import load_config
    from nnrobustloss.pipeline import run_tune_worker, tune_params

    results = tmp_path / "results"
    cfg = load_config(_study_config(trained, results))
    with pytest.raises(InputDataError, match=r"preprocessed dataset folder not found. Run the "
                                             r"plan stage first"):
        run_tune_worker(tune_params(cfg, "PhantomTest", "APL2", 0), results, worker=0, workers=1,
                        marker=tmp_path / "marker.json")
    assert not (results / "tuning").exists() and not (tmp_path / "marker.json").exists()


def test_train_before_plan_creates_no_folder_or_lock(trained, tmp_path) -> None:
    from nnrobustloss.config import load_config
    from nnrobustloss.pipeline import run_train, train_params

    results = tmp_path / "results"
    cfg = load_config(_study_config(trained, results))
    with pytest.raises(InputDataError, match=r"preprocessed dataset folder not found"):
        run_train(train_params(cfg, "PhantomTest", "Baseline", 0), results)
    assert not (results / "training").exists()


def test_plan_of_two_stages_is_refused_by_schema_and_planner() -> None:
    from nnrobustloss.config import validate_config
    from nnrobustloss.planning import apply_cpu_plan

    plan = {"patch_size": [16, 32, 32], "batch_size": 2, "features_per_stage": [8, 16]}
    with pytest.raises(ConfigError, match=r"planning.cpu_plan.features_per_stage: \[8, 16\] is "
                                          r"too short"):
        validate_config({**yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text()),
                         "planning": {"planner": "cpu", "cpu_plan": plan}})
    with pytest.raises(ConfigError, match=r"2 stages; a network needs at least 3 .* 0/0"):
        apply_cpu_plan({"configurations": {"3d_fullres": {}}}, "3d_fullres", plan)


def test_nan_loss_stops_training_with_one_line_and_no_model(trained, tmp_path,
                                                            monkeypatch) -> None:
    from nnrobustloss.errors import NNRobustLossError
    from nnrobustloss.trainers.single import nnUNetTrainer_Baseline

    real = nnUNetTrainer_Baseline._build_loss

    def nan_loss(self):
        loss = real(self)
        return lambda output, target: loss(output, target) * float("nan")

    monkeypatch.setattr(nnUNetTrainer_Baseline, "_build_loss", nan_loss)
    out = tmp_path / "fold0"
    with pytest.raises(NNRobustLossError) as e:
        _train(trained, out, epochs=2)
    assert str(e.value).startswith(f"{out}: the Baseline loss became NaN or infinite in epoch 0 "
                                   "(fold 0); training stopped before writing a model.")
    assert not list(out.glob("checkpoint_*.pth"))


# --- 3b. a prediction verifies what it wrote ------------------------------------------------

def test_prediction_cut_short_by_a_full_disk_is_not_committed(trained, tmp_path,
                                                              monkeypatch) -> None:
    """nnU-Net's exporter does not report a short write (a full disk, calibration off)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnrobustloss.prediction import predict_cases

    real = SimpleITKIO.write_seg

    def short_write(self, seg, path, props):
        real(self, seg, path, props)
        Path(path).write_bytes(Path(path).read_bytes()[:100])

    monkeypatch.setattr(SimpleITKIO, "write_seg", short_write)
    cases = sorted(p.name.removesuffix("_0000.nii.gz")
                   for p in (Path(trained["raw_dir"]) / "imagesTr").glob("*_0000.nii.gz"))[:1]
    out = tmp_path / "pred"
    with pytest.raises(OutputError, match=r"writing stopped short \(100 bytes written, the "
                                          r"file is incomplete\): the disk is full"):
        predict_cases(trained["model"], Path(trained["raw_dir"]) / "imagesTr", cases, out,
                      mirroring=False, device="cpu", method="Baseline", fold=0)
    assert not out.exists()
    staged = layout.partial_dir(out)
    assert sorted(p.name for p in staged.iterdir()) == ["staging.json"]


# --- 4. kills before every commit leave the old or the new state, and no temporaries -------

def _killed_run(args: list[str], kill_at: int) -> int:
    """Run ``nnrobustloss *args`` in a forked child that SIGKILLs itself just before its
    ``kill_at``-th commit (``os.replace``: every atomic write and folder switch of the package);
    return the child's exit code (-9 when killed, else the command's status)."""
    import multiprocessing
    import os
    import signal

    def child() -> None:
        real, seen = os.replace, [0]

        def replace(src, dst, *a, **k):
            seen[0] += 1
            if seen[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *a, **k)

        os.replace = replace
        sys.argv = ["nnrobustloss", *args]
        from nnrobustloss.cli import main

        os._exit(main())

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(600)
    return proc.exitcode


def _temporaries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".tmp-*"))


def _complete_checkpoints(folder: Path) -> None:
    """Every visible checkpoint reads (a kill never shows a half-written one)."""
    from nnrobustloss.trainers.identity import read_checkpoint

    for ckpt in folder.rglob("checkpoint_*.pth"):
        read_checkpoint(ckpt, "")


def _kill_at_every_commit(args: list[str], folder: Path, check) -> int:
    """Kill the stage before its 1st commit, rerun it and kill it before its 2nd, ... until a
    run finishes; ``check(folder)`` after every kill; then no temporaries may be left. Returns
    the number of runs that were killed."""
    from conftest import deterministic_cpu_training

    kills = 0
    with deterministic_cpu_training():
        while True:
            code = _killed_run(args, kills + 1)
            if code != -9:
                assert code == 0, f"{args}: exit {code} after {kills} kills"
                break
            kills += 1
            check(folder)
            assert kills < 40
    assert _temporaries(folder) == []
    print(f"{args[0]}: killed before {kills} commits in turn, then finished")
    return kills


def test_kills_before_each_commit_of_train(study) -> None:
    config, results = study
    model = layout.training_dir(results, "PhantomTest", "Baseline", 0)
    shutil.rmtree(model)
    kills = _kill_at_every_commit(["train", "--task", "PhantomTest", "--method", "Baseline",
                                   "--fold", "0", "--epochs", "2", "--configfile", str(config)],
                                  model, _complete_checkpoints)
    assert kills >= 4  # settings, progress rows, checkpoints of two epochs, the final one
    from nnrobustloss.trainers.identity import read_checkpoint

    final = read_checkpoint(model / layout.CHECKPOINT_FINAL, "")
    assert final["current_epoch"] == 2 and final["nnrobustloss"]["identity"]["replicate"] == 0
    assert not (model / layout.CHECKPOINT_LATEST).exists()
    from nnrobustloss.prediction import predict_cases

    with pytest.raises(ConfigError, match=r"written by another training \(replicate 0, not 1\)"):
        predict_cases(model, results / "raw", ["x"], results / "pred", method="Baseline",
                      fold=0, replicate=1)
    # progress.csv names its run in its first columns, one row per epoch
    rows = (model / "progress.csv").read_text().splitlines()
    assert rows[0].startswith("task,method,fold,replicate,epoch,")
    assert [r.split(",")[:5] for r in rows[1:]] == [["PhantomTest", "Baseline", "0", "0", "0"],
                                                   ["PhantomTest", "Baseline", "0", "0", "1"]]


def test_kills_before_each_commit_of_tune(study) -> None:
    config, results = study
    cfg = yaml.safe_load(config.read_text())
    cfg["tuning"] = {"n_trials": 2, "epochs": 1, **EPOCHS, "storage": "journal"}
    config.write_text(yaml.safe_dump(cfg))
    study_dir = layout.study_dir(results, "PhantomTest", "APL2", 0)
    kills = _kill_at_every_commit(["tune", "--task", "PhantomTest", "--method", "APL2",
                                   "--fold", "0", "--configfile", str(config)],
                                  study_dir, _complete_checkpoints)
    assert kills >= 3
    best = json.loads((study_dir / "best_params.json").read_text())
    assert best["n_finished"] == 2 and set(best["params"]) == {"w"}


def test_kills_before_each_commit_of_predict(study) -> None:
    import SimpleITK as sitk

    config, results = study
    out = layout.predictions_dir(results, "PhantomTest", "Baseline", 0)

    def complete_cases(folder: Path) -> None:
        for seg in folder.rglob("*.nii.gz"):
            if ".tmp-" not in str(seg):
                sitk.ReadImage(str(seg))  # a visible case reads whole

    kills = _kill_at_every_commit(["predict", "--task", "PhantomTest", "--method", "Baseline",
                                   "--fold", "0", "--configfile", str(config)],
                                  out.parent, complete_cases)
    assert kills >= 2 and not layout.partial_dir(out).exists()
    assert len(list(out.glob("*.nii.gz"))) == 2


# --- 5b. planning checks its raw cases and the splits before it writes anything ------------

def _plan_copy(trained: dict, tmp_path: Path) -> Path:
    """A copy of the converted phantom task (raw datasets and splits, nothing planned)."""
    results = tmp_path / "results"
    shutil.copytree(trained["results_dir"], results, symlinks=True,
                    ignore=shutil.ignore_patterns("preprocessed", "training", "tuning",
                                                  "nnunet_results", "ResumeTest"))
    return results


def test_plan_names_a_missing_raw_case(trained, tmp_path) -> None:
    from nnrobustloss.planning import plan_and_preprocess

    results = _plan_copy(trained, tmp_path)
    raw = layout.raw_dir(results, "PhantomTest", 981)
    image = sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[2]
    image.resolve().unlink()
    with pytest.raises(InputDataError, match=rf"^{image}: image of case .* is missing"):
        plan_and_preprocess("PhantomTest", 981, 982, results, planner="cpu",
                            cpu_plan=PHANTOM_TEST_CPU_PLAN, num_processes=1)
    assert not (results / "preprocessed").exists() or not any(
        (results / "preprocessed").iterdir())


def test_plan_refuses_splits_naming_unknown_cases(trained, tmp_path) -> None:
    from nnrobustloss.planning import plan_and_preprocess

    results = _plan_copy(trained, tmp_path)
    splits_file = results / "splits" / "PhantomTest.json"
    splits = json.loads(splits_file.read_text())
    splits[1]["val"].append("case_that_is_not_there")
    splits_file.write_text(json.dumps(splits))
    with pytest.raises(InputDataError, match=rf"^{splits_file}: fold 1 names case\(s\) "
                                             r"case_that_is_not_there that Dataset981_PhantomTest "
                                             r"does not have. Delete the splits file and rerun"):
        plan_and_preprocess("PhantomTest", 981, 982, results, planner="cpu",
                            cpu_plan=PHANTOM_TEST_CPU_PLAN, splits_file=splits_file,
                            num_processes=1)
