"""The paper's configuration on KiTS23-sized data (config/paper.yaml + config/kits23_stages.yaml).

CI runs the data stages (convert, noise report, splits, plan + preprocessing with the residual-
encoder L planner) through Snakemake on three real KiTS23 label maps with synthetic CT images;
benchmarks/kits23_stages.py runs every stage and measures them. Also covers the synthetic CT
images and the overlay's way of removing tasks (null).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnrobustloss.config import load_config, validate_config
from nnrobustloss.datasets.synthetic_ct import (
    AIR_HU,
    KITS23_HU,
    synthetic_ct_for_labels,
    write_synthetic_kits23,
)
from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import geometry_mismatch
from nnrobustloss.noise import DICE_TOLERANCE, dice_per_case

REPO = Path(__file__).resolve().parents[1]
SHARED_KITS = REPO.parent / "shared" / "data" / "kits23_labels"
CONFIGS = (REPO / "config" / "paper.yaml", REPO / "config" / "kits23_stages.yaml")
CASES = ("case_00021", "case_00402", "case_00289")  # 38, 49, 86 slices of 5 mm


def needs_shared() -> None:
    if not SHARED_KITS.is_dir():
        pytest.skip(f"{SHARED_KITS} not found (the shared KiTS23 labels are not available)")


def label_image(shape=(6, 40, 30), spacing=(0.8, 0.8, 5.0)) -> sitk.Image:
    """A small label map (kidney with a tumour and a cyst inside), sitk spacing (x, y, z)."""
    arr = np.zeros(shape, np.uint8)
    arr[1:5, 10:30, 8:22] = 1
    arr[2:4, 12:18, 10:14] = 2
    arr[2:4, 22:26, 16:20] = 3
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -4.0, 2.5))
    img.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img


def test_synthetic_ct_has_the_label_geometry_and_class_intensities() -> None:
    label = label_image()
    ct = synthetic_ct_for_labels(label, seed=3)
    assert ct.GetPixelID() == sitk.sitkInt16
    assert geometry_mismatch(ct, label) is None
    img, lab = sitk.GetArrayFromImage(ct).astype(float), sitk.GetArrayFromImage(label)
    for value in (1, 2, 3):
        assert abs(img[lab == value].mean() - KITS23_HU[value]) < 8.0  # 25 HU noise, >= 32 voxels
    # Air outside the body cylinder (the slice plane is y, x here: the two 0.8 mm axes).
    assert abs(img[:, 0, 0].mean() - AIR_HU) < 30.0
    assert abs(img[lab == 0][img[lab == 0] > -500].mean() - KITS23_HU[0]) < 5.0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(synthetic_ct_for_labels(label, seed=3)),
                                  sitk.GetArrayFromImage(ct))
    assert not np.array_equal(sitk.GetArrayFromImage(synthetic_ct_for_labels(label, seed=4)),
                              sitk.GetArrayFromImage(ct))


def test_synthetic_ct_refuses_unknown_label_values() -> None:
    arr = sitk.GetArrayFromImage(label_image())
    arr[0, 0, 0] = 7
    with pytest.raises(InputDataError, match=r"label values \[7\]"):
        synthetic_ct_for_labels(sitk.GetImageFromArray(arr))


def test_write_synthetic_kits23_links_the_reference(tmp_path: Path) -> None:
    needs_shared()
    (folder,) = write_synthetic_kits23(SHARED_KITS, tmp_path / "src", ["case_00021"])
    seg = folder / "segmentation.nii.gz"
    assert seg.is_symlink() and seg.resolve() == (SHARED_KITS / "case_00021" /
                                                  "segmentation.nii.gz").resolve()
    ct, ref = sitk.ReadImage(str(folder / "imaging.nii.gz")), sitk.ReadImage(str(seg))
    assert geometry_mismatch(ct, ref) is None and ct.GetSize() == (38, 512, 512)
    with pytest.raises(InputDataError, match="case_99999"):
        write_synthetic_kits23(SHARED_KITS, tmp_path / "src", ["case_99999"])


def test_overlay_keeps_only_kits23_with_the_paper_settings() -> None:
    cfg = load_config(*CONFIGS)
    assert list(cfg["tasks"]) == ["KiTS23"]
    kits = cfg["tasks"]["KiTS23"]
    assert kits["noise"] == {"type": "boundary", "target_dice": 0.96,
                             "structures": [[1, 2, 3], [2, 3], [2]]}
    assert cfg["planning"]["planner"] == "resenc_l" and cfg["n_folds"] == 3
    assert cfg["prediction"]["mirroring"] is True and cfg["prediction"]["tile_step_size"] == 0.5
    assert cfg["tuning"]["storage"] == "journal" and cfg["tuning"]["pruner"] == "none"
    cpu = load_config(*CONFIGS, REPO / "config" / "kits23_stages_cpu.yaml")
    assert cpu["planning"]["planner"] == "cpu" and cpu["results_dir"] != cfg["results_dir"]
    assert cpu["tasks"] == cfg["tasks"] and cpu["prediction"]["tile_step_size"] == 0.5


def test_null_task_is_removed_and_no_task_left_is_an_error() -> None:
    base = {"tasks": {"A": {"dataset_id": 1, "reference_dataset_id": 2,
                            "labels": {"background": 0, "x": 1},
                            "sources": [{"type": "phantom"}]}}}
    assert list(validate_config({"tasks": {**base["tasks"], "B": None}})["tasks"]) == ["A"]
    with pytest.raises(ConfigError, match="config key tasks"):
        validate_config({"tasks": {"A": None}})


def test_paper_data_stages_on_kits23_sized_cases(tmp_path: Path) -> None:
    """convert, noise, splits and plan (ResEnc-L) of the paper's config, through Snakemake."""
    needs_shared()
    cfg = load_config(*CONFIGS)
    write_synthetic_kits23(SHARED_KITS, tmp_path / cfg["tasks"]["KiTS23"]["sources"][0]["path"],
                           CASES)
    env = dict(os.environ, nnUNet_compile="false")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
           "--configfile", *map(str, CONFIGS), "--", "data"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-6000:]
    res = tmp_path / cfg["results_dir"]

    # Plans: the residual-encoder L planner at the cases' median spacing, twins identical.
    pre = res / "preprocessed"
    plans = json.loads((pre / "Dataset621_KiTS23" / "nnUNetPlans.json").read_text())
    twin = json.loads((pre / "Dataset622_KiTS23Ref" / "nnUNetPlans.json").read_text())
    assert plans["experiment_planner_used"] == "nnUNetPlannerResEncL"
    assert {k: v for k, v in twin.items() if k != "dataset_name"} == \
        {k: v for k, v in plans.items() if k != "dataset_name"}
    conf = plans["configurations"]["3d_fullres"]
    arch = conf["architecture"]
    assert arch["network_class_name"].endswith("ResidualEncoderUNet")
    assert arch["arch_kwargs"]["n_blocks_per_stage"] == [1, 3, 4, 6, 6, 6, 6]
    assert arch["arch_kwargs"]["features_per_stage"] == [32, 64, 128, 256, 320, 320, 320]
    assert conf["patch_size"] == [32, 384, 384] and conf["batch_size"] == 2
    np.testing.assert_allclose(conf["spacing"], [5.0, 0.822265625, 0.822265625], atol=1e-6)
    assert len(list((pre / "Dataset621_KiTS23" / "nnUNetPlans_3d_fullres").glob("*.pkl"))) == 3

    # Splits: 3 folds of 1 held-out case each, the same file in both preprocessed datasets.
    splits = json.loads((res / "splits" / "KiTS23.json").read_text())
    assert sorted(c for fold in splits for c in fold["val"]) == sorted(CASES)
    assert all(sorted(f["train"] + f["val"]) == sorted(CASES) for f in splits)
    for name in ("Dataset621_KiTS23", "Dataset622_KiTS23Ref"):
        assert json.loads((pre / name / "splits_final.json").read_text()) == splits

    # Noise: the noisy training labels are calibrated to the paper's mean Dice of 0.96; the
    # noise report's region Dice is that of the label files.
    dices, tumor = [], {}
    for case in CASES:
        noisy = sitk.GetArrayFromImage(sitk.ReadImage(
            str(res / "raw" / "Dataset621_KiTS23" / "labelsTr" / f"{case}.nii.gz")))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(res / "reference" / "KiTS23" /
                                                        f"{case}.nii.gz")))
        ref_link = (SHARED_KITS / case / "segmentation.nii.gz")
        np.testing.assert_array_equal(ref, sitk.GetArrayFromImage(sitk.ReadImage(str(ref_link))))
        dices.append(dice_per_case(noisy, ref))
        a, b = noisy == 2, ref == 2
        tumor[case] = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert abs(np.mean(dices) - 0.96) <= DICE_TOLERANCE + 1e-9
    assert all(d < 1.0 for d in dices)
    report = pd.read_csv(res / "noise" / "KiTS23.csv")
    rows = report[(report["region"] == "Tumor") & (report["metric"] == "dice")]
    assert dict(zip(rows["case"], rows["value"])) == pytest.approx(tumor, abs=1e-9)
    assert set(report["region"]) == {"Kidney+Tumor+Cyst", "Tumor+Cyst", "Tumor"}
    for stage in ("convert", "noise", "splits", "plan"):
        assert (res / "benchmarks" / stage / "KiTS23.tsv").is_file()
