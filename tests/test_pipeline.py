"""Stage parameters (what reruns a job) and the command line."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from nnrobustloss import pipeline as stages
from nnrobustloss.cli import STAGES, main
from nnrobustloss.config import load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config() -> dict:
    return load_config(REPO / "config" / "config.yaml")


def test_workers_and_device_do_not_change_any_stage_params(config: dict) -> None:
    # Several workers need a storage they can share (SQLite with workers > 1 is refused).
    config = validate_config({**config, "tuning": {**config["tuning"], "storage": "journal"}})
    other = validate_config({**config, "device": "cpu",
                             "tuning": {**config["tuning"], "workers": 4}})
    for fn in (stages.tune_params, stages.train_params, stages.predict_params, stages.evaluate_params):
        assert fn(config, "Phantom", "HRL", 1) == fn(other, "Phantom", "HRL", 1)


def test_run_options_are_the_config_values_each_run_function_takes(config: dict) -> None:
    cfg = validate_config({**config, "device": "cpu", "checkpoint_minutes": 7,
                           "coteaching": {**config["coteaching"], "peer_updates": "joint"},
                           "training": {**config["training"], "augmentation_workers": 3}})
    schedule = {"coteaching": {"peer_updates": "joint"}}  # the options of results=False
    assert stages.run_options(cfg, "train") == {"device": "cpu", "checkpoint_minutes": 7,
                                                "schedule_options": schedule,
                                                "augmentation_workers": 3}
    assert stages.run_options(cfg, "tune") == stages.run_options(cfg, "train")
    assert stages.run_options(cfg, "warmup") == {"device": "cpu", "schedule_options": schedule,
                                                 "augmentation_workers": 3}
    assert stages.run_options(cfg, "predict") == {"device": "cpu"}
    runs = {"tune": stages.run_tune_worker, "warmup": stages.run_warmup,
            "train": stages.run_train, "predict": stages.run_predict}
    assert set(runs) == set(stages.RUN_OPTIONS)
    for stage, run in runs.items():
        accepted = set(inspect.signature(run).parameters)
        assert set(stages.run_options(cfg, stage)) <= accepted, stage
        # a run option the function takes but is not given would silently stay at its default
        assert accepted & {"device", "checkpoint_minutes", "schedule_options",
                           "augmentation_workers"} == set(stages.RUN_OPTIONS[stage]), stage
    with pytest.raises(ValueError, match="no run options for stage 'report'"):
        stages.run_options(cfg, "report")


# The params function whose dict each stage function takes (the rule's params.settings).
STAGE_PARAMS = {"convert": "convert", "noise_report": "noise", "splits": "splits", "plan": "plan",
                "warmup": "warmup", "tune_worker": "tune", "select_best": "tune",
                "train": "train", "predict": "predict", "evaluate": "evaluate",
                "nnunet_results": "nnunet_results", "report": "report"}


def test_every_stage_function_has_one_calling_convention() -> None:
    """run_<stage>(params, results_dir, *, <inputs and outputs>, <run options>), ``params``
    being what ``<stage>_params`` returns, passed as it is (docs/layout.md#stages)."""
    runs = {name[4:]: fn for name, fn in inspect.getmembers(stages, inspect.isfunction)
            if name.startswith("run_") and name != "run_options"}
    assert set(runs) == set(STAGE_PARAMS)
    for stage, run in runs.items():
        sig = list(inspect.signature(run).parameters.values())
        assert [p.name for p in sig[:2]] == ["params", "results_dir"], stage
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty
                   for p in sig[:2]), stage
        assert all(p.kind is p.KEYWORD_ONLY for p in sig[2:]), stage
        # the docstring states the contract, naming the params function
        assert f":func:`{STAGE_PARAMS[stage]}_params`" in (run.__doc__ or ""), stage
    for script in (REPO / "workflow" / "scripts").glob("*.py"):
        text = script.read_text()
        assert "**snakemake.params" not in text, script.name
        if "run_" in text:
            assert "(snakemake.params.settings, results_dir=" in text, script.name


def test_result_relevant_settings_change_the_params(config: dict) -> None:
    longer = validate_config({**config, "training": {**config["training"], "epochs": 9}})
    assert stages.train_params(longer, "Phantom", "APL2", 0)["epochs"] == 9
    assert (stages.train_params(longer, "Phantom", "APL2", 0)
            != stages.train_params(config, "Phantom", "APL2", 0))
    assert (stages.tune_params(longer, "Phantom", "APL2", 0)
            == stages.tune_params(config, "Phantom", "APL2", 0))


def test_baseline_ref_trains_on_the_reference_twin(config: dict) -> None:
    assert stages.train_params(config, "Phantom", "BaselineRef", 0)["dataset"] == "Dataset502_PhantomRef"
    assert stages.train_params(config, "Phantom", "Baseline", 0)["dataset"] == "Dataset501_Phantom"


def test_evaluation_regions_of_the_phantom_and_kits(config: dict) -> None:
    assert stages.evaluate_params(config, "Phantom", "SVLS", 2)["regions"] == {"organ": [1], "lesion": [2]}
    paper = load_config(REPO / "config" / "paper.yaml")
    assert stages.evaluate_params(paper, "KiTS23", "HRL", 0)["regions"] == {
        "Kidney+Tumor+Cyst": [1, 2, 3], "Tumor+Cyst": [2, 3], "Tumor": [2]}


def test_unknown_task_is_a_clear_error(config: dict) -> None:
    with pytest.raises(Exception, match="tasks.Nope: unknown task"):
        stages.train_params(config, "Nope", "Baseline", 0)


def test_cli_lists_every_stage() -> None:
    out = subprocess.run([sys.executable, "-m", "nnrobustloss.cli", "--help"], text=True,
                         capture_output=True, check=True).stdout
    for stage in STAGES:
        assert stage in out


def test_cli_user_error_exits_1_with_one_message(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {P: {dataset_id: 1, reference_dataset_id: 2, labels: {background: 0}, "
                   "sources: [{type: phantom}]}}\nseed: -1\n")
    assert main(["splits", "--task", "P", "--configfile", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config key seed:")


def test_cli_missing_stage_input_names_the_file(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["splits", "--task", "Phantom", "--configfile", str(REPO / "config" / "config.yaml"),
               "--results-dir", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "Dataset501_Phantom" in err and "dataset.json" in err


def test_command_line_config_strings_are_parsed_by_the_schema_type() -> None:
    # snakemake --config folds=[1] seed=3 prediction=... hands the values over as strings
    cfg = load_config(REPO / "config" / "config.yaml",
                      overrides={"folds": ["1"], "seed": "3", "methods": "[APL2, HRL]",
                                 "prediction": {"mirroring": "false"}})
    assert cfg["folds"] == [1] and cfg["seed"] == 3 and cfg["methods"] == ["APL2", "HRL"]
    assert cfg["prediction"]["mirroring"] is False
    with pytest.raises(Exception, match="config key seed: 'abc' is not of type 'integer'"):
        load_config(REPO / "config" / "config.yaml", overrides={"seed": "abc"})


def test_train_params_from_a_best_params_file(tmp_path: Path) -> None:
    from nnrobustloss.training import parse_params

    best = tmp_path / "best_params.json"
    best.write_text('{"study": "P.HRL.fold0", "params": {"a": 2.0, "w": 0.3}, "value": 0.8}')
    assert parse_params(str(best)) == {"a": 2.0, "w": 0.3}
