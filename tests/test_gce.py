"""The example method GCE (README, "Adding a loss"): its loss, its place outside the default
study, and a real training, prediction and evaluation on the phantom of tests/conftest.py."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from conftest import (
    PHANTOM_TEST_CPU_PLAN,
    PHANTOM_TEST_TASK,
    deterministic_cpu_training,
    predict_and_evaluate,
)

from nnrobustloss.config import validate_config
from nnrobustloss.errors import ConfigError
from nnrobustloss.losses import CEDiceLoss, GCELoss
from nnrobustloss.methods import METHODS, get_method, resolve_params

# two voxels, K = 2: logits (0, ln 3) give p = (1/4, 3/4); labels 1 and 0, so p_y = 3/4, 1/4
LOGITS = torch.tensor([0.0, math.log(3.0)]).view(1, 2, 1, 1, 1).repeat(1, 1, 1, 1, 2)
TARGET = torch.tensor([1, 0]).view(1, 1, 1, 1, 2)


def _gce_only(q: float, mask: torch.Tensor | None = None) -> float:
    return float(GCELoss(q, weight_dice=0.0)(LOGITS, TARGET, mask))


def test_gce_term_hand_values():
    # GCE_q = (1 - p_y^q) / q per voxel, averaged over the (kept) voxels
    v0, v1 = (1 - math.sqrt(0.75)) / 0.5, (1 - math.sqrt(0.25)) / 0.5  # 0.2679..., 1.0
    assert _gce_only(0.5) == pytest.approx((v0 + v1) / 2, rel=1e-6)
    assert _gce_only(1.0) == pytest.approx(((1 - 0.75) + (1 - 0.25)) / 2, rel=1e-6)  # the MAE
    q = 1e-3  # the low end of the search range: close to CE (q -> 0)
    exact = ((1 - 0.75 ** q) / q + (1 - 0.25 ** q) / q) / 2
    ce = (-math.log(0.75) - math.log(0.25)) / 2
    assert _gce_only(q) == pytest.approx(exact, rel=1e-4)
    assert abs(exact - ce) < 1e-3
    keep_first = torch.tensor([True, False]).view(1, 1, 1, 1, 2)
    assert _gce_only(0.5, keep_first) == pytest.approx(v0, rel=1e-6)
    with pytest.raises(ConfigError, match="w=0.0"):
        GCELoss(0.0)


def test_gce_adds_nnunets_dice_against_the_hard_label():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 6, 6, generator=g)
    target = torch.randint(0, 3, (2, 1, 4, 6, 6), generator=g)
    dice = CEDiceLoss(weight_ce=0.0)(logits, target)  # nnU-Net's soft Dice alone
    assert float(GCELoss(0.7)(logits, target)) == pytest.approx(
        float(GCELoss(0.7, weight_dice=0.0)(logits, target) + dice), rel=1e-6)


def test_gce_is_an_example_outside_the_default_study(tmp_path):
    spec = get_method("GCE")
    assert not spec.in_default_study and spec.peers == 1 and spec.options == ()
    assert [(p.name, p.low, p.high) for p in spec.search_space] == [("q", 1e-3, 1.0)]
    assert resolve_params("GCE") == {"q": 0.7}
    with pytest.raises(ConfigError, match=r"params.q of method GCE: 1.5 is outside"):
        resolve_params("GCE", {"q": 1.5})
    task = {"tasks": {"PhantomTest": PHANTOM_TEST_TASK}, "results_dir": str(tmp_path)}
    default = validate_config(task)["methods"]
    assert "GCE" not in default and len(default) == 9
    assert default == [m for m in METHODS if m != "GCE"]
    assert validate_config({**task, "methods": ["Baseline", "GCE"]})["methods"] == \
        ["Baseline", "GCE"]


@pytest.mark.slow
def test_gce_trains_predicts_and_evaluates(preprocessed_phantom):
    from nnrobustloss import pipeline as stages

    r = preprocessed_phantom["results_dir"]
    splits = preprocessed_phantom["splits"]
    cfg = validate_config({
        "results_dir": str(r), "methods": ["GCE"], "folds": [0],
        "tasks": {"PhantomTest": PHANTOM_TEST_TASK},
        "planning": {"planner": "cpu", "cpu_plan": PHANTOM_TEST_CPU_PLAN},
        "training": {"epochs": 2, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1},
        "tuning": {"enabled": False}, "prediction": {"mirroring": False},
        "evaluation": {"n_workers": 1}})
    with deterministic_cpu_training():
        out = stages.run_train(stages.train_params(cfg, "PhantomTest", "GCE", 0), results_dir=r,
                               hparams={"q": 0.3}, device="cpu",
                               **{k: v for k, v in stages.run_options(cfg, "train").items()
                                  if k != "device"})
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"] == "GCE" and settings["params"] == {"q": 0.3}
    assert settings["options"] == {}
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer_GCE"
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["epoch"]) == [0, 1] and progress["train_loss"].notna().all()

    metrics = predict_and_evaluate(cfg, r, "PhantomTest", "GCE", 0, splits)
    held_out = json.loads(splits.read_text())[0]["val"]
    assert set(metrics["method"]) == {"GCE"} and set(metrics["case"]) == set(held_out)
    dice = metrics[metrics["metric"] == "dice"]["value"]
    assert dice.between(0, 1).all()
