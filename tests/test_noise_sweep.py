"""The noise sweep: its task generation (levels, dataset ids, seeds), identical images, reference
labels and splits across levels, and the shipped config/noise_sweep.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss.config import load_config, noise_sweep_tasks, validate_config
from nnrobustloss.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"
SWEEP = REPO / "config" / "noise_sweep.yaml"
SMALL = {"type": "phantom", "n_cases": 6, "n_noisy_cases": 2, "shape": [12, 16, 16],
         "spacing": [2.0, 1.0, 1.0]}


def _config(**sweep: object) -> dict:
    task = {"dataset_id": 700, "reference_dataset_id": 701,
            "labels": {"background": 0, "organ": 1, "lesion": 2}, "sources": [dict(SMALL)]}
    block = {"task": "Tiny", "n_noisy_cases": [0, 3, 6]}
    block.update(sweep)
    return {"tasks": {"Tiny": task}, "noise_sweep": block}


def test_levels_replace_the_template_with_their_own_ids_and_noise():
    cfg = validate_config(_config(dataset_id_start=800))
    assert list(cfg["tasks"]) == ["TinyNoisy00", "TinyNoisy03", "TinyNoisy06"]
    assert noise_sweep_tasks(cfg) == {"TinyNoisy00": 0, "TinyNoisy03": 3, "TinyNoisy06": 6}
    ids = [(t["dataset_id"], t["reference_dataset_id"]) for t in cfg["tasks"].values()]
    assert ids == [(800, 801), (802, 803), (804, 805)]
    sources = [t["sources"][0] for t in cfg["tasks"].values()]
    assert [s["n_noisy_cases"] for s in sources] == [0, 3, 6]
    # everything else (cases, shape, spacing, labels) is the template's
    for s in sources:
        assert {k: v for k, v in s.items() if k != "n_noisy_cases"} == \
            {k: v for k, v in SMALL.items() if k != "n_noisy_cases"}
    # validating the expanded config again changes nothing (Snakefile and CLI both validate)
    assert validate_config(cfg)["tasks"] == cfg["tasks"]


@pytest.mark.parametrize(("sweep", "tasks_edit", "message"), [
    ({"task": "Missing"}, None, "noise_sweep.task: 'Missing' is not a task"),
    ({"n_noisy_cases": [0, 7]}, None, "7 is larger than the 6 cases"),
    ({"n_noisy_cases": [0]}, None, "noise_sweep.n_noisy_cases"),
    ({}, "second_source", "exactly one source, of type phantom"),
    ({}, "clash", "generated task TinyNoisy03 already exists"),
])
def test_bad_sweeps_name_the_key(sweep, tasks_edit, message):
    cfg = _config(**sweep)
    if tasks_edit == "second_source":
        cfg["tasks"]["Tiny"]["sources"].append(dict(SMALL, case_prefix="b"))
        cfg["tasks"]["Tiny"]["sources"][0]["case_prefix"] = "a"
    if tasks_edit == "clash":
        cfg["tasks"]["TinyNoisy03"] = dict(cfg["tasks"]["Tiny"], dataset_id=900,
                                           reference_dataset_id=901)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg)


def test_shipped_sweep_config():
    cfg = load_config(DEFAULT, SWEEP)
    levels = noise_sweep_tasks(cfg)
    assert len(levels) >= 4 and min(levels.values()) == 0
    n_cases = cfg["tasks"]["PhantomNoisy00"]["sources"][0]["n_cases"]
    assert max(levels.values()) / n_cases >= 0.6  # heavier than the default's 4 of 14
    assert "Phantom" not in cfg["tasks"] and cfg["results_dir"] != "results"
    default = load_config(DEFAULT)
    assert 4 in levels.values()  # the default's noise is one of the levels
    for name in levels:  # same seed, budgets and phantom as the default study
        src = cfg["tasks"][name]["sources"][0]
        assert {k: v for k, v in src.items() if k != "n_noisy_cases"} == \
            {k: v for k, v in default["tasks"]["Phantom"]["sources"][0].items()
             if k != "n_noisy_cases"}
    assert cfg["seed"] == default["seed"] and cfg["training"] == default["training"]


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_levels_share_images_reference_labels_and_splits(tmp_path: Path):
    """Convert and split two levels: only the noisy labels of the novice cases differ."""
    from nnrobustloss.datasets.convert import convert_task
    from nnrobustloss.datasets.phantom import novice_case_indices
    from nnrobustloss.splits import write_splits

    cfg = validate_config(_config(n_noisy_cases=[0, 3]))
    raws, splits = {}, {}
    for name, task in cfg["tasks"].items():
        raws[name] = convert_task(name, task, tmp_path, seed=cfg["seed"])
        out = tmp_path / "splits" / f"{name}.json"
        write_splits(raws[name].noisy, out, n_folds=3, seed=cfg["seed"])
        splits[name] = json.loads(out.read_text())
    clean, noisy = raws["TinyNoisy00"], raws["TinyNoisy03"]
    assert list(clean.case_ids) == list(noisy.case_ids)
    assert splits["TinyNoisy00"] == splits["TinyNoisy03"]
    novices = {f"phantom_{i:03d}" for i in novice_case_indices(6, 3, cfg["seed"])}
    assert len(novices) == 3
    for case in clean.case_ids:
        for sub in ("imagesTr", "labelsTr"):
            suffix = "_0000.nii.gz" if sub == "imagesTr" else ".nii.gz"
            a = _read(clean.reference / sub / f"{case}{suffix}")
            b = _read(noisy.reference / sub / f"{case}{suffix}")
            assert np.array_equal(a, b), (case, sub)
        clean_labels = _read(clean.noisy / "labelsTr" / f"{case}.nii.gz")
        noisy_labels = _read(noisy.noisy / "labelsTr" / f"{case}.nii.gz")
        reference = _read(clean.reference / "labelsTr" / f"{case}.nii.gz")
        assert np.array_equal(clean_labels, reference)  # level 0: noisy == reference
        assert np.array_equal(noisy_labels, reference) == (case not in novices), case
