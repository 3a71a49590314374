"""Tests of configuration loading and validation (nnrobustloss.config)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from nnrobustloss.config import deep_update, evaluation_regions, load_config, validate_config
from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "config" / "config.yaml"
PAPER = ROOT / "config" / "paper.yaml"
PATHS_EXAMPLE = ROOT / "config" / "paths.example.yaml"


def minimal() -> dict[str, Any]:
    return {"tasks": {"T": {"dataset_id": 11, "reference_dataset_id": 12,
                            "labels": {"background": 0, "a": 1, "b": 2},
                            "sources": [{"type": "phantom"}]}}}


def default_config() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT.read_text())


def set_key(cfg: dict[str, Any], key: tuple[str | int, ...], value: Any) -> None:
    """Set the nested key ``key`` (names and list indices) of ``cfg`` to ``value``."""
    node: Any = cfg
    for part in key[:-1]:
        node = node[part]
    node[key[-1]] = value


def error_of(cfg: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return str(info.value)


# --- shipped configs -----------------------------------------------------------------------

def test_default_config_validates() -> None:
    cfg = load_config(DEFAULT)
    assert cfg["tasks"]["Phantom"]["dataset_id"] == 501
    assert cfg["planning"]["planner"] == "cpu"
    assert cfg["folds"] == [0, 1, 2] and cfg["n_folds"] == 3
    # validate_config is idempotent on its own output.
    assert validate_config(cfg) == cfg


def test_paper_config_validates() -> None:
    if not PAPER.is_file():
        pytest.skip("config/paper.yaml does not exist yet")
    cfg = load_config(PAPER)
    assert set(cfg["tasks"]) == {"HIE", "Heart", "KiTS23"}
    assert cfg["planning"]["planner"] == "resenc_l"
    assert cfg["tuning"]["n_trials"] == 30 and cfg["tuning"]["epochs"] == 50
    assert cfg["training"]["epochs"] == 200
    kits = cfg["tasks"]["KiTS23"]
    assert kits["noise"]["type"] == "boundary" and kits["noise"]["target_dice"] == 0.96
    assert list(evaluation_regions(kits)) == ["Kidney+Tumor+Cyst", "Tumor+Cyst", "Tumor"]
    assert list(evaluation_regions(cfg["tasks"]["Heart"])) == ["LV", "RV", "LA", "RA", "Myo"]


def test_paper_config_with_paths_overlay() -> None:
    if not (PAPER.is_file() and PATHS_EXAMPLE.is_file()):
        pytest.skip("config/paper.yaml or config/paths.example.yaml does not exist yet")
    cfg = load_config(PAPER, PATHS_EXAMPLE)
    heart = cfg["tasks"]["Heart"]
    assert [s["type"] for s in heart["sources"]] == ["mmwhs", "folder"]
    assert all(s["path"] for t in cfg["tasks"].values() for s in t["sources"])
    assert heart["dataset_id"] == 611  # keys the overlay does not name are kept


# --- errors name the key -------------------------------------------------------------------

def test_unknown_top_level_key() -> None:
    cfg = minimal()
    cfg["epochz"] = 3
    msg = error_of(cfg)
    assert "epochz" in msg and "unknown key" in msg


@pytest.mark.parametrize("where,key", [
    (("planning",), "planner_name"),
    (("tuning",), "trials"),
    (("tasks", "T"), "datasetid"),
    (("tasks", "T", "noise"), "dice"),
])
def test_unknown_nested_key(where: tuple[str, ...], key: str) -> None:
    cfg = default_config() if where[0] != "tasks" else minimal()
    node = cfg
    for part in where:
        node = node.setdefault(part, {})
    node[key] = 1
    msg = error_of(cfg)
    assert f"config key {'.'.join(where)}.{key}: unknown key" in msg


def test_unknown_key_in_a_source_is_named_with_its_index() -> None:
    cfg = minimal()
    cfg["tasks"]["T"]["sources"].append({"type": "folder", "path": "/x", "prefix": "a_"})
    msg = error_of(cfg)
    assert "tasks.T.sources[1].prefix" in msg and "unknown key" in msg


@pytest.mark.parametrize("key,value,fragment", [
    (("seed",), "zero", "config key seed:"),
    (("n_folds",), 2.5, "config key n_folds:"),
    (("folds",), 0, "config key folds:"),
    (("training", "epochs"), "many", "config key training.epochs:"),
    (("prediction", "mirroring"), "yes", "config key prediction.mirroring:"),
    (("planning", "cpu_plan", "patch_size"), [16, 32], "config key planning.cpu_plan.patch_size:"),
    (("tasks", "Phantom", "dataset_id"), "5o1", "config key tasks.Phantom.dataset_id:"),
])
def test_wrong_type(key: tuple[str, ...], value: Any, fragment: str) -> None:
    cfg = default_config()
    set_key(cfg, key, value)
    msg = error_of(cfg)
    assert fragment in msg, msg


@pytest.mark.parametrize("key,value,fragment", [
    (("n_folds",), 1, "config key n_folds:"),
    (("n_folds",), 21, "config key n_folds:"),
    (("seed",), -1, "config key seed:"),
    (("tuning", "n_trials"), 0, "config key tuning.n_trials:"),
    (("prediction", "tile_step_size"), 0, "config key prediction.tile_step_size:"),
    (("prediction", "tile_step_size"), 1.5, "config key prediction.tile_step_size:"),
    (("tasks", "Phantom", "dataset_id"), 1000, "config key tasks.Phantom.dataset_id:"),
    (("tasks", "Phantom", "labels", "organ"), 256, "config key tasks.Phantom.labels.organ:"),
    (("tasks", "Phantom", "sources"), [], "config key tasks.Phantom.sources:"),
    (("methods",), [], "config key methods:"),
])
def test_out_of_range(key: tuple[str, ...], value: Any, fragment: str) -> None:
    cfg = default_config()
    set_key(cfg, key, value)
    msg = error_of(cfg)
    assert fragment in msg, msg


def test_out_of_range_in_a_source() -> None:
    cfg = default_config()
    cfg["tasks"]["Phantom"]["sources"][0]["shape"] = [4, 40, 40]
    assert "config key tasks.Phantom.sources[0].shape[0]:" in error_of(cfg)


@pytest.mark.parametrize("key,value", [
    (("device",), "gpu"),
    (("planning", "planner"), "resenc_s"),
    (("tuning", "storage"), "redis"),
    (("tuning", "pruner"), "asha"),
    (("svls", "kernel"), "box"),
    (("tasks", "Phantom", "noise", "type"), "gaussian"),
])
def test_bad_enum(key: tuple[str, ...], value: str) -> None:
    cfg = default_config()
    set_key(cfg, key, value)
    msg = error_of(cfg)
    assert f"config key {'.'.join(key)}:" in msg and repr(value) in msg, msg


def test_fold_not_below_n_folds() -> None:
    cfg = minimal()
    cfg.update(n_folds=3, folds=[0, 3])
    msg = error_of(cfg)
    assert "config key folds" in msg and "fold 3" in msg and "n_folds=3" in msg
    cfg.update(n_folds=4)
    assert validate_config(cfg)["folds"] == [0, 3]


def test_folds_default_to_all_folds_of_n_folds() -> None:
    cfg = minimal()
    cfg["n_folds"] = 5
    assert validate_config(cfg)["folds"] == [0, 1, 2, 3, 4]
    cfg["n_folds"] = 2
    assert validate_config(cfg)["folds"] == [0, 1]
    assert validate_config(minimal())["folds"] == [0, 1, 2]


def test_duplicate_dataset_ids_across_tasks() -> None:
    cfg = minimal()
    cfg["tasks"]["U"] = copy.deepcopy(cfg["tasks"]["T"])
    cfg["tasks"]["U"]["dataset_id"] = 13
    cfg["tasks"]["U"]["reference_dataset_id"] = 11
    msg = error_of(cfg)
    assert "tasks.U.reference_dataset_id" in msg and "11" in msg and "tasks.T" in msg


def test_tolerance_dict_missing_a_region_and_regions_accepted() -> None:
    cfg = minimal()
    cfg["tasks"]["T"]["tolerance_mm"] = {"a": 1.0}
    msg = error_of(cfg)
    assert "tasks.T.tolerance_mm" in msg and "b" in msg
    cfg["tasks"]["T"]["regions"] = {"ab": [1, 2]}
    cfg["tasks"]["T"]["tolerance_mm"] = {"a": 1.0, "b": 2.0, "ab": 1.5}
    assert validate_config(cfg)["tasks"]["T"]["tolerance_mm"]["ab"] == 1.5


def test_noise_structures_with_undeclared_label_values() -> None:
    cfg = minimal()
    cfg["tasks"]["T"]["noise"] = {"type": "boundary", "structures": [[1, 2], [3]]}
    msg = error_of(cfg)
    assert "config key tasks.T.noise.structures[1]:" in msg and "[3]" in msg
    cfg["tasks"]["T"]["noise"]["structures"] = [[1, 2], [2]]
    assert validate_config(cfg)["tasks"]["T"]["noise"]["structures"] == [[1, 2], [2]]


@pytest.mark.parametrize("key,value,fragments", [
    pytest.param(("tasks", "T", "sources", 0, "type"), "dicom",
                 ["tasks.T.sources[0].type", "'dicom'"], id="source-type"),
    pytest.param(("methods",), ["Baseline", "FocalLoss"], ["methods", "'FocalLoss'"],
                 id="unknown-method"),
    pytest.param(("folds",), [1, 1], ["config key folds:"], id="duplicate-folds"),
    pytest.param(("tasks", "T", "reference_dataset_id"), 11, ["tasks.T.reference_dataset_id"],
                 id="duplicate-dataset-ids-within-a-task"),
    pytest.param(("tasks", "T", "tolerance_mm"), {"a": 1.0, "b": 1.0, "c": 2.0},
                 ["tasks.T.tolerance_mm.c", "a, b"], id="tolerance-of-an-unknown-region"),
    pytest.param(("tasks", "T", "tolerance_mm"), 0, ["config key tasks.T.tolerance_mm:"],
                 id="tolerance-not-positive"),
    pytest.param(("tasks", "T", "regions"), {"a": [1, 2]},
                 ["config key tasks.T.regions.a:", "already used by a class"],
                 id="region-named-like-a-class"),
    pytest.param(("tasks", "T", "regions"), {"ab": [1, 2], "x": [2, 7]},
                 ["config key tasks.T.regions.x:", "[7]", "[1, 2]"],
                 id="region-with-undeclared-label-values"),
    pytest.param(("tasks", "T", "labels"), {"background": 0, "a": 1, "b": 1},
                 ["tasks.T.labels", "unique"], id="labels-not-unique"),
    pytest.param(("tasks", "T", "labels"), {"background": 1, "a": 2},
                 ["tasks.T.labels.background"], id="background-not-0"),
    pytest.param(("tasks", "T", "labels"), {"a": 1}, ["tasks.T.labels", "background"],
                 id="no-background"),
    pytest.param(("tasks", "T", "sources"), [{"type": "phantom", "n_cases": 4, "n_noisy_cases": 5}],
                 ["tasks.T.sources[0].n_noisy_cases"], id="phantom-noisy-cases-above-cases"),
    pytest.param(("planning",), {"planner": "cpu"}, ["planning.cpu_plan"],
                 id="cpu-planner-needs-cpu-plan"),
    pytest.param(("seed",), "x", ["config.schema.yaml"], id="message-points-to-the-schema"),
])
def test_invalid_setting_of_the_minimal_config(key: tuple[str | int, ...], value: Any,
                                               fragments: list[str]) -> None:
    """``key`` set to ``value`` in :func:`minimal`: a ConfigError whose message holds every
    fragment (the key's path, the offending value or what it should be)."""
    cfg = minimal()
    set_key(cfg, key, value)
    msg = error_of(cfg)
    assert all(f in msg for f in fragments), (fragments, msg)


@pytest.mark.parametrize("name", ["My-Task", "1Task", "Task_1"])
def test_task_names_must_be_identifiers(name: str) -> None:
    cfg = minimal()
    cfg["tasks"][name] = cfg["tasks"].pop("T")
    assert "tasks" in error_of(cfg)


def test_missing_required_keys() -> None:
    assert "tasks" in error_of({"seed": 1})
    cfg = minimal()
    del cfg["tasks"]["T"]["sources"]
    msg = error_of(cfg)
    assert "config key tasks.T:" in msg and "sources" in msg


# --- defaults ------------------------------------------------------------------------------

def test_defaults_are_filled() -> None:
    cfg = validate_config(minimal())
    assert cfg["results_dir"] == "results" and cfg["seed"] == 0 and cfg["device"] == "auto"
    assert cfg["n_folds"] == 3 and cfg["folds"] == [0, 1, 2]
    assert cfg["methods"][0] == "Baseline" and len(cfg["methods"]) == 9
    assert cfg["planning"] == {"planner": "default", "configuration": "3d_fullres",
                               "num_processes": 2}
    assert cfg["training"] == {"epochs": 200, "iterations_per_epoch": 250,
                               "val_iterations_per_epoch": 50, "replicates": 1,
                               "augmentation_workers": "auto"}
    assert cfg["tuning"]["n_trials"] == 30 and cfg["tuning"]["pruner"] == "none"
    assert cfg["coteaching"] == {"delay": 20, "gradual": 20, "max_fraction": 0.4,
                                 "stocot_thresholds": "random", "peer_updates": "sequential"}
    t = cfg["tasks"]["T"]
    assert t["channel"] == "MRI" and t["noise"] == {"type": "none", "target_dice": 0.96}
    assert t["regions"] == {} and t["tolerance_mm"] == 1.0 and t["include_classes"] is True
    assert t["table_metrics"] == ["dice", "asd"]


def test_defaults_fill_partial_sections_and_keep_given_values() -> None:
    cfg = minimal()
    cfg["training"] = {"epochs": 5}
    cfg["tasks"]["T"]["noise"] = {"type": "boundary"}
    out = validate_config(cfg)
    assert out["training"] == {"epochs": 5, "iterations_per_epoch": 250,
                               "val_iterations_per_epoch": 50, "replicates": 1,
                               "augmentation_workers": "auto"}
    assert out["tasks"]["T"]["noise"] == {"type": "boundary", "target_dice": 0.96}
    assert cfg["training"] == {"epochs": 5}  # the input is not modified


def test_validated_default_config_matches_the_file() -> None:
    raw = default_config()
    cfg = validate_config(raw)
    for key in ("results_dir", "seed", "n_folds", "folds"):
        assert cfg[key] == raw[key]
    # the registry's default study (an example method is built only when listed)
    assert "methods" not in raw and cfg["methods"] == [m for m in METHODS
                                                       if METHODS[m].in_default_study]
    assert cfg["planning"]["cpu_plan"] == raw["planning"]["cpu_plan"]


# --- deep_update and overlays --------------------------------------------------------------

def test_deep_update_semantics() -> None:
    base = {"a": 1, "b": {"c": 2, "d": {"e": 3, "f": 4}}, "l": [1, 2], "m": {"x": 1}}
    upd = {"b": {"d": {"e": 30}, "g": 5}, "l": [9], "m": None, "n": {"y": 2}}
    out = deep_update(base, upd)
    assert out == {"a": 1, "b": {"c": 2, "d": {"e": 30, "f": 4}, "g": 5}, "l": [9], "m": None,
                   "n": {"y": 2}}
    # Inputs are untouched and the output shares no mutable parts with them.
    assert base == {"a": 1, "b": {"c": 2, "d": {"e": 3, "f": 4}}, "l": [1, 2], "m": {"x": 1}}
    out["n"]["y"] = 7
    out["b"]["d"]["f"] = 40
    assert upd["n"] == {"y": 2} and base["b"]["d"]["f"] == 4


def test_deep_update_replaces_a_scalar_by_a_mapping_and_back() -> None:
    assert deep_update({"t": 1.0}, {"t": {"a": 1.0}}) == {"t": {"a": 1.0}}
    assert deep_update({"t": {"a": 1.0}}, {"t": 2.0}) == {"t": 2.0}


def test_load_config_overlays_files_and_overrides(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "seed": 7, "training": {"epochs": 9},
        "tasks": {"Phantom": {"sources": [{"type": "phantom", "n_cases": 6, "n_noisy_cases": 2}]}},
    }))
    second = tmp_path / "second.yaml"
    second.write_text("seed: 8\nplanning:\n  cpu_plan:\n    batch_size: 4\n")
    cfg = load_config(DEFAULT, overlay, second, overrides={"folds": [1]})
    assert cfg["seed"] == 8  # the later file wins
    # the overlay's epochs, the default's other training keys
    assert cfg["training"]["epochs"] == 9
    assert cfg["training"]["iterations_per_epoch"] == \
        load_config(DEFAULT)["training"]["iterations_per_epoch"]
    assert cfg["folds"] == [1]
    assert cfg["planning"]["cpu_plan"] == {"patch_size": [16, 32, 32], "batch_size": 4,
                                           "features_per_stage": [8, 16, 32]}
    # Lists are replaced whole: the overlay's source lost the default's shape and spacing.
    assert cfg["tasks"]["Phantom"]["sources"] == [{"type": "phantom", "n_cases": 6,
                                                   "n_noisy_cases": 2}]
    assert cfg["tasks"]["Phantom"]["dataset_id"] == 501


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_config(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="list.yaml: the top level must be a mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="tasks"):
        load_config(empty)  # an empty file is an empty mapping: tasks are required
    with pytest.raises(ConfigError, match="config key seed"):
        load_config(DEFAULT, overrides={"seed": "x"})


def test_evaluation_regions() -> None:
    task = validate_config(minimal())["tasks"]["T"]
    assert evaluation_regions(task) == {"a": [1], "b": [2]}
    task["regions"] = {"ab": [1, 2]}
    assert evaluation_regions(task) == {"a": [1], "b": [2], "ab": [1, 2]}
    task["include_classes"] = False
    assert evaluation_regions(task) == {"ab": [1, 2]}
