"""Tests of the plan stage (nnrobustloss.planning) on the shared preprocessed phantom fixture."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.planning import (
    PLANS_IDENTIFIER,
    apply_cpu_plan,
    cpu_strides,
    nnunet_paths,
    plan_and_preprocess,
)

CONF = "3d_fullres"


def plans_of(d: Path) -> dict[str, Any]:
    return json.loads((d / f"{PLANS_IDENTIFIER}.json").read_text())


def raw_ids(raw_dir: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (raw_dir / "labelsTr").glob("*.nii.gz"))


# --- on the fixture ------------------------------------------------------------------------

def test_twin_plans_identical_except_dataset_name(preprocessed_phantom: dict[str, Path]) -> None:
    noisy = plans_of(preprocessed_phantom["preprocessed_dir"])
    ref = plans_of(preprocessed_phantom["reference_preprocessed_dir"])
    assert noisy["dataset_name"] == "Dataset981_PhantomTest"
    assert ref["dataset_name"] == "Dataset982_PhantomTestRef"
    assert noisy["plans_name"] == ref["plans_name"] == PLANS_IDENTIFIER
    noisy.pop("dataset_name")
    ref.pop("dataset_name")
    assert noisy == ref
    for name in ("dataset_fingerprint.json",):
        a = (preprocessed_phantom["preprocessed_dir"] / name).read_bytes()
        b = (preprocessed_phantom["reference_preprocessed_dir"] / name).read_bytes()
        assert a == b


def test_cpu_plan_is_applied(preprocessed_phantom: dict[str, Path]) -> None:
    from conftest import PHANTOM_TEST_CPU_PLAN

    conf = plans_of(preprocessed_phantom["preprocessed_dir"])["configurations"][CONF]
    assert conf["patch_size"] == PHANTOM_TEST_CPU_PLAN["patch_size"] == [16, 32, 32]
    assert conf["batch_size"] == PHANTOM_TEST_CPU_PLAN["batch_size"] == 2
    kw = conf["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 3
    assert kw["features_per_stage"] == [8, 16, 32]
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2]]
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 3
    assert len(kw["n_conv_per_stage"]) == 3 and len(kw["n_conv_per_stage_decoder"]) == 2
    assert conf["spacing"] == [2.0, 1.0, 1.0]  # the phantom's own spacing, no resampling


def test_cpu_plan_builds_a_working_network(preprocessed_phantom: dict[str, Path]) -> None:
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    conf = plans_of(preprocessed_phantom["preprocessed_dir"])["configurations"][CONF]
    arch = conf["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                 arch["_kw_requires_import"], 1, 3, deep_supervision=True)
    with torch.no_grad():
        outs = net(torch.zeros(conf["batch_size"], 1, *conf["patch_size"]))
    # One output per decoder stage (n_stages - 1), full resolution first.
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 32, 32), (2, 3, 8, 16, 16)]


def test_preprocessed_case_files_present_in_both(preprocessed_phantom: dict[str, Path]) -> None:
    ids = raw_ids(preprocessed_phantom["raw_dir"])
    assert ids == [f"phantom_{i:03d}" for i in range(6)]
    for key, raw_key in (("preprocessed_dir", "raw_dir"),
                         ("reference_preprocessed_dir", "reference_raw_dir")):
        d = preprocessed_phantom[key]
        data_dir = d / f"{PLANS_IDENTIFIER}_{CONF}"
        for case in ids:
            for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
                assert (data_dir / f"{case}{suffix}").is_file(), (key, case, suffix)
            assert (d / "gt_segmentations" / f"{case}.nii.gz").is_file()
        assert json.loads((d / "dataset.json").read_text()) == json.loads(
            (preprocessed_phantom[raw_key] / "dataset.json").read_text())
    # Nothing but the two datasets is left in preprocessed/ (no temporary root).
    assert sorted(p.name for p in preprocessed_phantom["preprocessed_dir"].parent.iterdir()) == [
        "Dataset981_PhantomTest", "Dataset982_PhantomTestRef"]


def test_preprocessed_twins_share_images_and_differ_in_novice_labels(
        preprocessed_phantom: dict[str, Path]) -> None:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    ids = raw_ids(preprocessed_phantom["raw_dir"])
    sets = [nnUNetDatasetBlosc2(str(preprocessed_phantom[k] / f"{PLANS_IDENTIFIER}_{CONF}"), ids)
            for k in ("preprocessed_dir", "reference_preprocessed_dir")]
    n_differing = 0
    for case in ids:
        (d1, s1, _, p1), (d2, s2, _, p2) = (ds.load_case(case) for ds in sets)
        np.testing.assert_array_equal(np.asarray(d1[:]), np.asarray(d2[:]))
        assert p1["spacing"] == p2["spacing"]
        s1, s2 = np.asarray(s1[:]), np.asarray(s2[:])
        # The reference twin's preprocessed labels are the reference labels (no resampling).
        ref = sitk.GetArrayFromImage(sitk.ReadImage(
            str(preprocessed_phantom["reference_labels"] / f"{case}.nii.gz")))
        bbox = p2["bbox_used_for_cropping"]
        crop = ref[tuple(slice(a, b) for a, b in bbox)]
        np.testing.assert_array_equal(s2[0], crop)
        n_differing += int(not np.array_equal(s1, s2))
    assert n_differing == 2  # n_noisy_cases of the fixture


def test_splits_final_in_both_preprocessed(preprocessed_phantom: dict[str, Path]) -> None:
    expected = json.loads(preprocessed_phantom["splits"].read_text())
    for key in ("preprocessed_dir", "reference_preprocessed_dir"):
        assert json.loads((preprocessed_phantom[key] / "splits_final.json").read_text()) == expected


# --- errors (no nnU-Net run) ---------------------------------------------------------------

def test_missing_raw_dataset(tmp_path: Path) -> None:
    with pytest.raises(InputDataError) as info:
        plan_and_preprocess("Nope", 971, 972, tmp_path, planner="default")
    msg = str(info.value)
    assert "Dataset971_Nope" in msg and "raw dataset not found" in msg and "convert" in msg
    assert not (tmp_path / "preprocessed").exists() or not any((tmp_path / "preprocessed").iterdir())


def test_missing_reference_twin(tmp_path: Path, preprocessed_phantom: dict[str, Path]) -> None:
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(preprocessed_phantom["raw_dir"], raw / "Dataset981_PhantomTest")
    with pytest.raises(InputDataError, match=r"Dataset982_PhantomTestRef.*raw dataset not found"):
        plan_and_preprocess("PhantomTest", 981, 982, tmp_path, planner="default")


def test_bad_planner_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"planning\.planner.*'fast'"):
        plan_and_preprocess("T", 1, 2, tmp_path, planner="fast")
    with pytest.raises(ConfigError, match=r"planning\.cpu_plan"):
        plan_and_preprocess("T", 1, 2, tmp_path, planner="cpu", cpu_plan=None)


# --- cpu_strides / apply_cpu_plan ----------------------------------------------------------

@pytest.mark.parametrize("patch,n_stages,expected", [
    ((16, 32, 32), 3, [[1, 1, 1], [2, 2, 2], [2, 2, 2]]),
    # 16 -> 8 -> 4 stops halving at 4; 32 keeps halving down to 4.
    ((16, 32, 32), 4, [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]),
    ((6, 32, 64), 3, [[1, 1, 1], [1, 2, 2], [1, 2, 2]]),
    ((8, 8), 3, [[1, 1], [2, 2], [1, 1]]),
    ((40, 24, 12), 2, [[1, 1, 1], [2, 2, 2]]),
    ((32, 32, 32), 1, [[1, 1, 1]]),
])
def test_cpu_strides(patch: tuple[int, ...], n_stages: int, expected: list[list[int]]) -> None:
    assert cpu_strides(patch, n_stages) == expected


def test_cpu_strides_never_pool_below_four() -> None:
    for patch in [(8, 16, 64), (12, 20, 36), (9, 33, 100)]:
        sizes = list(patch)
        for stage in cpu_strides(patch, 6):
            sizes = [s // st for s, st in zip(sizes, stage)]
            assert min(sizes) >= 4


def _plans() -> dict[str, Any]:
    return {"dataset_name": "X", "configurations": {CONF: {
        "patch_size": [64, 64, 64], "batch_size": 9,
        "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
            "n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
            "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4,
            "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4}}}}}


def test_apply_cpu_plan() -> None:
    plans = _plans()
    before = copy.deepcopy(plans)
    out = apply_cpu_plan(plans, CONF, {"patch_size": [16, 32, 48], "batch_size": 3,
                                       "features_per_stage": [4, 8, 16, 32]})
    assert plans == before  # the input is not modified
    conf = out["configurations"][CONF]
    assert conf["patch_size"] == [16, 32, 48] and conf["batch_size"] == 3
    kw = conf["architecture"]["arch_kwargs"]
    assert kw["n_stages"] == 4 and kw["features_per_stage"] == [4, 8, 16, 32]
    assert kw["strides"] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert kw["kernel_sizes"] == [[3, 3, 3]] * 4
    assert kw["n_conv_per_stage"] == [2] * 4 and kw["n_conv_per_stage_decoder"] == [2] * 3


def test_apply_cpu_plan_residual_encoder_blocks() -> None:
    plans = _plans()
    kw = plans["configurations"][CONF]["architecture"]["arch_kwargs"]
    del kw["n_conv_per_stage"]
    kw["n_blocks_per_stage"] = [1, 3, 4, 6, 6]
    out = apply_cpu_plan(plans, CONF, {"patch_size": [16, 32, 32], "batch_size": 2,
                                       "features_per_stage": [8, 16, 32]})
    kw = out["configurations"][CONF]["architecture"]["arch_kwargs"]
    assert kw["n_blocks_per_stage"] == [1, 1, 1] and "n_conv_per_stage" not in kw


@pytest.mark.parametrize("patch,axis,total", [
    ([18, 32, 32], 0, 4),   # 18 -> 9 -> 4: total stride 4 does not divide 18
    ([16, 36, 32], 1, 8),   # three halvings of 36 (36, 18, 9 >= 8) need a multiple of 8
    ([16, 32, 9], 2, 2),    # 9 -> 4: total stride 2 does not divide 9
])
def test_apply_cpu_plan_indivisible_patch(patch: list[int], axis: int, total: int) -> None:
    n_stages = 4 if axis == 1 else 3
    with pytest.raises(ConfigError) as info:
        apply_cpu_plan(_plans(), CONF, {"patch_size": patch, "batch_size": 2,
                                        "features_per_stage": [8] * n_stages})
    msg = str(info.value)
    assert "planning.cpu_plan.patch_size" in msg
    assert f"axis {axis} size {patch[axis]}" in msg and f"multiple of {total}" in msg


def test_nnunet_paths_sets_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("nnUNet_raw", "/somewhere")
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    with nnunet_paths(raw=tmp_path / "r", preprocessed=tmp_path / "p"):
        assert os.environ["nnUNet_raw"] == str((tmp_path / "r").resolve())
        assert os.environ["nnUNet_preprocessed"] == str((tmp_path / "p").resolve())
    assert os.environ["nnUNet_raw"] == "/somewhere"
    assert "nnUNet_preprocessed" not in os.environ
    with pytest.raises(RuntimeError), nnunet_paths(raw=tmp_path):
        raise RuntimeError("boom")
    assert os.environ["nnUNet_raw"] == "/somewhere"
