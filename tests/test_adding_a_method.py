"""Adding a method touches a loss, one trainer class and one registry entry, nothing else.

The toy method below is added exactly as the README's "Adding a loss" says: a loss module, a
trainer class that only overrides ``_build_loss`` (no ``__init__``) and a ``MethodSpec`` with its
search space. Nothing else is registered or exported anywhere; the test then runs every stage of
the pipeline that involves a method (config validation, cost plan, an Optuna study, the final
training with the study's best parameters, prediction through nnU-Net's predictor, evaluation)
on the phantom of tests/conftest.py.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    PHANTOM_TEST_CPU_PLAN,
    PHANTOM_TEST_TASK,
    deterministic_cpu_training,
    predict_and_evaluate,
)
from torch import nn

from nnrobustloss.errors import ConfigError
from nnrobustloss.losses import CEDiceLoss
from nnrobustloss.methods import METHODS, FloatParam, MethodSpec
from nnrobustloss.trainers import RobustTrainer


class ToyLoss(nn.Module):
    """The new loss: ``t`` x (CE + Dice), nnU-Net's call ``loss(logits, target)``."""

    def __init__(self, t: float, soft_dice_kwargs: dict) -> None:
        super().__init__()
        self.t = t
        self.ce_dice = CEDiceLoss(soft_dice_kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.t * self.ce_dice(logits, target)


class nnUNetTrainer_Toy(RobustTrainer):
    """The new trainer: only the loss differs."""

    def _build_loss(self) -> nn.Module:
        return self._wrap_deep_supervision(
            ToyLoss(self.settings.params["t"], soft_dice_kwargs=self._soft_dice_kwargs()))


TOY = MethodSpec("Toy", "Toy loss", nnUNetTrainer_Toy, search_space=(FloatParam("t", 0.5, 1.0),))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "Toy", TOY)
    yield TOY


def _config(results_dir):
    from nnrobustloss.config import validate_config

    return validate_config({
        "results_dir": str(results_dir), "methods": ["Baseline", "Toy"], "folds": [0],
        "tasks": {"PhantomTest": PHANTOM_TEST_TASK},
        "planning": {"planner": "cpu", "cpu_plan": PHANTOM_TEST_CPU_PLAN},
        "training": {"epochs": 1, "iterations_per_epoch": 2, "val_iterations_per_epoch": 1},
        "tuning": {"n_trials": 2, "n_startup_trials": 1, "epochs": 1, "iterations_per_epoch": 2,
                   "val_iterations_per_epoch": 1},
        "prediction": {"mirroring": False}, "evaluation": {"n_workers": 1},
    })


def test_an_unregistered_method_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'Toy'"):
        _config(tmp_path)


def test_the_registry_entry_is_all_the_config_and_cost_plan_need(toy_registered, tmp_path):
    from nnrobustloss.cost import cost_plan, tuned_methods

    cfg = _config(tmp_path)
    assert tuned_methods(cfg) == ["Toy"]
    plan = cost_plan(cfg)
    toy = plan[plan["method"] == "Toy"].iloc[0]
    assert toy["tune_epochs"] == 2 * 1  # 2 trials x 1 epoch, one study (fold 0)


@pytest.mark.slow
def test_a_toy_method_runs_through_every_stage(toy_registered, preprocessed_phantom):
    from nnrobustloss import layout
    from nnrobustloss import pipeline as stages

    r = preprocessed_phantom["results_dir"]
    cfg = _config(r)
    splits = preprocessed_phantom["splits"]
    with deterministic_cpu_training():
        tune = stages.tune_params(cfg, "PhantomTest", "Toy", 0)
        study = layout.study_dir(r, "PhantomTest", "Toy", 0)
        stages.run_tune_worker(tune, worker=0, workers=1, results_dir=r,
                               marker=study / "worker0.done", device="cpu")
        best = stages.run_select_best(tune, results_dir=r, trials_csv=study / "trials.csv",
                                      best_params_json=study / "best_params.json")
        assert set(best["params"]) == {"t"} and 0.5 <= best["params"]["t"] <= 1.0
        assert best["n_finished"] == 2

        out = stages.run_train(stages.train_params(cfg, "PhantomTest", "Toy", 0), results_dir=r,
                               best_params_json=study / "best_params.json", device="cpu")
    settings = json.loads((out / "settings.json").read_text())
    assert settings["method"] == "Toy" and settings["params"] == best["params"]
    ckpt = torch.load(out / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainer_Toy"

    metrics = predict_and_evaluate(cfg, r, "PhantomTest", "Toy", 0, splits)
    assert set(metrics["method"]) == {"Toy"}
    held_out = json.loads(splits.read_text())[0]["val"]
    assert set(metrics["case"]) == set(held_out)
    dice = metrics[metrics["metric"] == "dice"]["value"]
    assert len(dice) == 2 * len(held_out) and dice.between(0, 1).all()


@pytest.mark.slow
def test_the_toy_trainer_refuses_another_method(toy_registered, preprocessed_phantom, tmp_path):
    from test_trainers import _make_trainer

    from nnrobustloss.training import build_settings

    trainer = _make_trainer(preprocessed_phantom["preprocessed_dir"], tmp_path, "Toy")
    with pytest.raises(ConfigError, match="trains method\\(s\\) Toy, not 'Baseline'"):
        trainer.configure(build_settings("Baseline"))
