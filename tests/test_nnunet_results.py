"""The nnU-Net results tree: stock nnU-Net tools use the models the pipeline trains.

The slow test trains Baseline, APL2 and CoT for one epoch on the phantom of tests/conftest.py,
predicts with the pipeline's predict stage, links the tree and then runs nnU-Net's own command
line tools in a fresh process with only ``nnUNet_results`` and ``nnUNet_extTrainer`` set:
``nnUNetv2_predict`` must give the predict stage's segmentations voxel for voxel, and
``nnUNetv2_export_model_to_zip`` must pack the trained checkpoint byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import PHANTOM_TEST_CPU_PLAN, PHANTOM_TEST_TASK

import nnrobustloss
from nnrobustloss import layout
from nnrobustloss.errors import ConfigError, OutputError
from nnrobustloss.fileio import link_relative
from nnrobustloss.methods import METHODS, MethodSpec

TRAINERS_DIR = Path(nnrobustloss.__file__).parent / "trainers"
TREE_METHODS = ("Baseline", "APL2", "CoT")


def _config(results_dir: Path | str, methods=TREE_METHODS, **extra):
    from nnrobustloss.config import validate_config

    return validate_config({
        "results_dir": str(results_dir), "methods": list(methods), "folds": [0],
        "tasks": {"PhantomTest": PHANTOM_TEST_TASK}, "device": "cpu",
        "planning": {"planner": "cpu", "cpu_plan": PHANTOM_TEST_CPU_PLAN},
        "training": {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1},
        "tuning": {"enabled": False}, "evaluation": {"n_workers": 1, "calibration": False},
        **extra})


def test_models_of_the_default_methods(tmp_path):
    from nnrobustloss import pipeline as P
    from nnrobustloss.nnunet_results import nnunet_models

    cfg = _config(tmp_path, methods=list(METHODS))
    models = nnunet_models(cfg)
    # Baseline and BaselineRef share the trainer class but not the dataset
    assert models[("Dataset981_PhantomTest", "nnUNetTrainer_Baseline")] == ("PhantomTest",
                                                                            "Baseline")
    assert models[("Dataset982_PhantomTestRef", "nnUNetTrainer_Baseline")] == ("PhantomTest",
                                                                               "BaselineRef")
    assert len(models) == len(METHODS)
    targets = P.nnunet_targets(cfg)
    assert tmp_path / "nnUNet_results" / "Dataset981_PhantomTest" / \
        "nnUNetTrainer_CoT__nnUNetPlans__3d_fullres" / "fold_0" / "validation" / \
        "summary.json" in targets
    assert len(targets) == len(METHODS)  # one fold
    assert P.nnunet_results_params(cfg, "Dataset982_PhantomTestRef", "nnUNetTrainer_Baseline",
                                   0)["method"] == "BaselineRef"
    with pytest.raises(ConfigError, match="no method of the config trains"):
        P.nnunet_results_params(cfg, "Dataset981_PhantomTest", "nnUNetTrainer_X", 0)


def test_two_methods_of_one_model_are_refused(tmp_path, monkeypatch):
    twin = MethodSpec("Baseline2", "Baseline 2", METHODS["Baseline"].trainer_class)
    monkeypatch.setitem(METHODS, "Baseline2", twin)
    with pytest.raises(ConfigError, match="Baseline and Baseline2 both train "
                                          "nnUNetTrainer_Baseline on Dataset981_PhantomTest"):
        _config(tmp_path, methods=["Baseline", "Baseline2"])


def test_link_relative(tmp_path):
    target = tmp_path / "a" / "b" / "file.txt"
    target.parent.mkdir(parents=True)
    target.write_text("x")
    link = link_relative(tmp_path / "tree" / "x" / "file.txt", target)
    assert os.readlink(link) == os.path.join("..", "..", "a", "b", "file.txt")
    assert link.read_text() == "x"
    other = tmp_path / "other.txt"
    other.write_text("y")
    link_relative(link, other)  # an existing link is replaced
    assert link.read_text() == "y"
    (tmp_path / "plain.txt").write_text("z")
    with pytest.raises(OutputError, match="plain.txt: exists and is not a symbolic link"):
        link_relative(tmp_path / "plain.txt", other)


@pytest.fixture(scope="module")
def tree(request, tmp_path_factory):
    """A results folder linking the phantom fixture's data, with 1-epoch Baseline, APL2 and CoT
    trainings of fold 0, their predictions (with test-time mirroring) and the tree."""
    from conftest import deterministic_cpu_training

    from nnrobustloss import pipeline as P
    from nnrobustloss.nnunet_results import nnunet_models

    info = request.getfixturevalue("preprocessed_phantom")
    root = tmp_path_factory.mktemp("tree_results")
    for name in ("raw", "reference", "splits", "preprocessed"):
        (root / name).symlink_to(Path(info["results_dir"]) / name)
    cfg = _config(root)
    splits = layout.splits_json(root, "PhantomTest")
    with deterministic_cpu_training():
        for method in TREE_METHODS:
            P.run_train(P.train_params(cfg, "PhantomTest", method, 0), results_dir=root,
                        device="cpu")
            P.run_predict(P.predict_params(cfg, "PhantomTest", method, 0), results_dir=root,
                          splits_json=splits,
                          out_dir=layout.predictions_dir(root, "PhantomTest", method, 0),
                          device="cpu")
    for dataset, trainer in nnunet_models(cfg):
        P.run_nnunet_results(P.nnunet_results_params(cfg, dataset, trainer, 0), root)
    return root


def _nnunet(*args: str, root: Path, cwd: Path) -> None:
    """Run a stock nnU-Net command with only the two documented variables set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_results=str(root / "nnUNet_results"), nnUNet_extTrainer=str(TRAINERS_DIR),
               nnUNet_compile="false")
    proc = subprocess.run(args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]


def _array(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.mark.slow
def test_the_tree_links_the_training(tree):
    import json

    model = tree / "nnUNet_results" / "Dataset981_PhantomTest" / \
        "nnUNetTrainer_APL2__nnUNetPlans__3d_fullres"
    ckpt = model / "fold_0" / "checkpoint_final.pth"
    assert ckpt.is_symlink() and not os.path.isabs(os.readlink(ckpt))
    assert ckpt.resolve() == layout.training_checkpoint(tree, "PhantomTest", "APL2", 0).resolve()
    for name in ("plans.json", "dataset.json", "dataset_fingerprint.json"):
        assert (model / name).is_symlink() and (model / name).is_file()
    held_out = json.loads(layout.splits_json(tree, "PhantomTest").read_text())[0]["val"]
    validation = model / "fold_0" / "validation"
    assert sorted(p.name for p in validation.glob("*.nii.gz")) == sorted(
        f"{c}.nii.gz" for c in held_out)
    summary = json.loads((validation / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}  # organ, lesion
    assert len(summary["metric_per_case"]) == len(held_out)
    # nnU-Net's Dice of a case equals one computed here from the two label maps
    case = summary["metric_per_case"][0]
    pred, ref = _array(Path(case["prediction_file"])), _array(Path(case["reference_file"]))
    tp = np.sum((pred == 1) & (ref == 1))
    expected = 2 * tp / (np.sum(pred == 1) + np.sum(ref == 1))
    assert case["metrics"]["1"]["Dice"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_stock_nnunet_predict_equals_the_predict_stage(tree, tmp_path):
    import json

    held_out = json.loads(layout.splits_json(tree, "PhantomTest").read_text())[0]["val"]
    images = tmp_path / "images"
    images.mkdir()
    raw_images = layout.raw_dir(tree, "PhantomTest", 981) / "imagesTr"
    for case in held_out:
        (images / f"{case}_0000.nii.gz").symlink_to(raw_images / f"{case}_0000.nii.gz")
    for method in TREE_METHODS:
        trainer = METHODS[method].trainer_name
        out = tmp_path / method
        _nnunet("nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d",
                "Dataset981_PhantomTest", "-tr", trainer, "-p", "nnUNetPlans", "-c",
                "3d_fullres", "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                root=tree, cwd=tmp_path)
        ours = layout.predictions_dir(tree, "PhantomTest", method, 0)
        for case in held_out:
            stock, mine = _array(out / f"{case}.nii.gz"), _array(ours / f"{case}.nii.gz")
            assert stock.shape == mine.shape and np.array_equal(stock, mine), (method, case)
            assert np.unique(mine).size > 1, (method, case)  # not an empty segmentation


@pytest.mark.slow
def test_stock_export_to_zip_packs_the_checkpoint(tree, tmp_path):
    zip_file = tmp_path / "cot.zip"
    _nnunet("nnUNetv2_export_model_to_zip", "-d", "Dataset981_PhantomTest", "-tr",
            "nnUNetTrainer_CoT", "-c", "3d_fullres", "-f", "0", "-o", str(zip_file),
            root=tree, cwd=tmp_path)
    member = ("Dataset981_PhantomTest/nnUNetTrainer_CoT__nnUNetPlans__3d_fullres/fold_0/"
              "checkpoint_final.pth")
    with zipfile.ZipFile(zip_file) as z:
        names = set(z.namelist())
        assert member in names
        assert z.read(member) == layout.training_checkpoint(tree, "PhantomTest", "CoT",
                                                            0).read_bytes()
        for name in ("plans.json", "dataset.json", "dataset_fingerprint.json",
                     "fold_0/validation/summary.json", "fold_0/progress.png"):
            assert f"Dataset981_PhantomTest/nnUNetTrainer_CoT__nnUNetPlans__3d_fullres/{name}" \
                in names, name
