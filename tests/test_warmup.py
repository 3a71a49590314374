"""The shared co-teaching warm-up: its length, which studies use it, where it lives, and the
epochs of a trial. The tuning epochs and GPU-hours it saves are tested in tests/test_cost.py;
that a trial started from it equals the trial trained from scratch, bit for bit, with real
trainings in tests/test_trainers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnrobustloss import pipeline as stages
from nnrobustloss.config import load_config
from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import METHODS
from nnrobustloss.warmup import train_warmup, trial_epochs, uses_shared_warmup, warmup_epochs

REPO = Path(__file__).resolve().parents[1]


def paper(**tuning: object) -> dict:
    return load_config(REPO / "config" / "paper.yaml", overrides={"tuning": tuning} if tuning else None)


@pytest.mark.parametrize(("epochs", "coteaching", "expected"), [
    (50, {"delay": 20, "gradual": 20}, 20),              # the paper's tuning trials
    (5, {"delay": 20, "gradual": 20}, 2),                # the default: capped at 40 % of 5
    (10, {"delay": 3, "gradual": 20}, 3),                # a delay below the cap is kept
    (50, {"delay": 0, "gradual": 20}, 0),                # no delay: nothing to share
    (1, {"delay": 20, "gradual": 20}, 0),                # floor(0.4) = 0
    (4, {"delay": 20, "gradual": 0, "max_fraction": 1.0}, 0),  # the whole trial: not shared
    (4, {"delay": 3, "gradual": 0, "max_fraction": 1.0}, 3),
])
def test_warmup_epochs_is_the_trials_scaled_delay(epochs, coteaching, expected):
    assert warmup_epochs(epochs, coteaching) == expected


def test_warmup_epochs_equals_the_trainers_scaled_delay():
    """warmup_epochs is scaled_schedule's delay (or 0 when it covers the whole trial)."""
    from nnrobustloss import schedule

    for epochs in range(1, 61):
        for delay in (0, 1, 2, 5, 20, 70):
            for fraction in (0.1, 0.25, 0.4, 0.5, 1.0):
                d, _ = schedule.scaled_schedule(delay, 20, epochs, fraction)
                co = {"delay": delay, "gradual": 20, "max_fraction": fraction}
                assert warmup_epochs(epochs, co) == (d if d < epochs else 0), (epochs, co)


def test_only_cot_cotplus_and_stocot_share_the_warmup():
    assert {m for m, spec in METHODS.items() if spec.shares_warmup} == {"CoT", "CoTPlus", "StoCoT"}
    cfg = paper()
    assert cfg["tuning"]["shared_warmup"] is True  # on by default
    assert [m for m in cfg["methods"] if uses_shared_warmup(cfg, m)] == ["CoT", "CoTPlus", "StoCoT"]
    assert not any(uses_shared_warmup(paper(shared_warmup=False), m) for m in cfg["methods"])
    assert not any(uses_shared_warmup(paper(enabled=False), m) for m in cfg["methods"])
    no_delay = load_config(REPO / "config" / "paper.yaml", overrides={"coteaching": {"delay": 0}})
    assert not any(uses_shared_warmup(no_delay, m) for m in cfg["methods"])


def test_warmup_checkpoint_path_and_params():
    cfg = paper()
    path = stages.warmup_checkpoint(cfg, "KiTS23", "StoCoT", 2)
    assert path == Path("results/tuning/KiTS23/warmup/fold2/seed0/checkpoint_warmup.pth")
    assert stages.warmup_checkpoint(cfg, "KiTS23", "CoT", 2) == path  # one per task x fold
    assert stages.warmup_checkpoint(cfg, "KiTS23", "HRL", 2) is None
    assert stages.warmup_checkpoint(paper(shared_warmup=False), "KiTS23", "CoT", 2) is None
    with pytest.raises(ConfigError, match="tasks.Nope"):
        stages.warmup_checkpoint(cfg, "Nope", "CoT", 0)
    params = stages.warmup_params(cfg, "KiTS23", 2)
    trial = stages.tune_params(cfg, "KiTS23", "StoCoT", 2)
    # the trials' training settings exactly (the warm-up must equal their first epochs)
    for key in ("dataset", "fold", "epochs", "iterations_per_epoch", "val_iterations_per_epoch",
                "coteaching", "svls", "seed", "configuration"):
        assert params[key] == trial[key], key
    assert params["warmup_epochs"] == 20 and params["method"] == "CoT"
    # the switch changes no result: not a param (switching it reruns no study for that reason)
    assert stages.tune_params(paper(shared_warmup=False), "KiTS23", "StoCoT", 2) == trial
    assert [trial_epochs(cfg, m) for m in ("APL2", "CoT", "CoTPlus", "StoCoT", "HRL")] == \
        [50, 30, 30, 30, 50]
    assert trial_epochs(paper(shared_warmup=False), "CoT") == 50


def test_train_warmup_refuses_a_schedule_without_warmup(tmp_path):
    with pytest.raises(ConfigError, match="no shared warm-up"):
        train_warmup(tmp_path / "w", preprocessed_dataset_dir=tmp_path, fold=0, epochs=5,
                     iterations_per_epoch=1, val_iterations_per_epoch=1,
                     coteaching={"delay": 0, "gradual": 2})
    assert not (tmp_path / "w").exists()
