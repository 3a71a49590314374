"""Wall time of the GPU jobs (nnrobustloss.cost): per-rule runtimes, tuning workers that fit the
limit, the config checks, the cost plan and the plan-cost command."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nnrobustloss import cost
from nnrobustloss.cli import main
from nnrobustloss.config import load_config
from nnrobustloss.errors import ConfigError
from nnrobustloss.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"
SINGLE, TWO_PEERS = ["APL2", "SVLS"], ["CoT", "CoTPlus", "StoCoT", "HRL"]


@pytest.fixture(scope="module")
def paper() -> dict:
    return load_config(PAPER)


def _minutes(epochs: int, peers: float, s_per_epoch: float = 126.0) -> int:
    """Runtime by hand: 15 min overhead + epochs x seconds x peers x safety 1.25."""
    return math.ceil(15 + epochs * s_per_epoch * peers * 1.25 / 60)


def test_paper_runtimes_follow_epochs_peers_and_seconds_per_epoch(paper):
    assert cost.runtime_minutes(paper, "train", "Baseline") == _minutes(200, 1) == 540
    assert cost.runtime_minutes(paper, "train", "HRL") == _minutes(200, 2) == 1065
    # APL2: 3 workers of 10 trials x 50 epochs; HRL: 6 workers of 5 trials
    assert cost.runtime_minutes(paper, "tune_worker", "APL2") == _minutes(10 * 50, 1) == 1328
    assert cost.runtime_minutes(paper, "tune_worker", "HRL") == _minutes(5 * 50, 2) == 1328
    assert cost.runtime_minutes(paper, "predict", "HRL") == math.ceil(15 + 2 * 60 * 1.25) == 165
    faster = load_config(PAPER, overrides={"cluster": {"seconds_per_epoch": {"resenc_l": 63}}})
    assert cost.runtime_minutes(faster, "train", "Baseline") == _minutes(200, 1, 63) == 278


def test_runtime_grows_with_attempt_up_to_the_limit(paper):
    assert [cost.runtime_minutes(paper, "predict", "APL1", a) for a in (1, 2, 3)] == [165, 330, 495]
    assert [cost.runtime_minutes(paper, "train", "CoT", a) for a in (1, 2)] == [1065, 24 * 60]
    unlimited = load_config(PAPER, overrides={"cluster": {"max_job_hours": None}})
    assert cost.runtime_minutes(unlimited, "train", "CoT", 2) == 2 * 1065


def test_auto_workers_are_the_fewest_whose_quota_fits(paper):
    cap = cost.limit_minutes(paper)
    # CoT, CoT+, StoCoT trials start from the shared warm-up: 30 of 50 epochs, 8 trials fit
    shared = {"CoT": 4, "CoTPlus": 4, "StoCoT": 4}
    for method, expected in [*((m, 3) for m in SINGLE),
                             *((m, shared.get(m, 6)) for m in TWO_PEERS)]:
        w = cost.tuning_workers(paper, method)
        assert w == expected, method
        assert cost.job_minutes(paper, "tune_worker", method, w) <= cap
        assert cost.job_minutes(paper, "tune_worker", method, w - 1) > cap
    longer = load_config(PAPER, overrides={"cluster": {"max_job_hours": 72}})
    assert cost.tuning_workers(longer, "APL2") == 1 and cost.tuning_workers(longer, "HRL") == 2


def test_an_explicit_worker_count_that_cannot_fit_is_warned_about_and_capped():
    one = load_config(PAPER, overrides={"tuning": {"workers": 1}})
    with pytest.warns(cost.WallTimeWarning, match=r"tuning\.workers: with 1 worker\(s\), each APL2 "
                      r"worker runs 30 trials, about 65\.9 h, more than cluster\.max_job_hours=24: "
                      r"it is stopped at the limit"):
        cost.check_fits(one)
    assert len(cost.fit_warnings(one)) == 6  # one per tuned method
    assert cost.tuning_workers(one, "APL2") == 1
    assert cost.runtime_minutes(one, "tune_worker", "APL2") == 24 * 60
    ok = load_config(PAPER, overrides={"tuning": {"workers": 6}})
    assert cost.fit_warnings(ok) == cost.fit_warnings(load_config(PAPER)) == []
    assert cost.tuning_workers(ok, "HRL") == 6
    # no limit (a workstation): one worker, runtime uncapped
    free = load_config(PAPER, overrides={"tuning": {"workers": 1}, "cluster": {"max_job_hours": None}})
    assert cost.tuning_workers(free, "HRL") == 1
    assert cost.runtime_minutes(free, "tune_worker", "HRL") == _minutes(30 * 50, 2)


def test_jobs_longer_than_the_limit_name_the_key_to_change():
    """auto cannot split a trial or share SQLite: refused; a long training: a warning."""
    with pytest.raises(ConfigError, match=r"tuning\.epochs: one trial of HRL of 50 epochs needs "
                                          r"about 4\.6 h.*max_job_hours=4"):
        load_config(PAPER, overrides={"methods": ["HRL"], "training": {"epochs": 10},
                                      "cluster": {"max_job_hours": 4}})
    long = load_config(PAPER, overrides={"training": {"epochs": 400}})
    assert [m.split(" training of")[0] for m in cost.fit_warnings(long)] == [
        f"config key training.epochs: a {m}" for m in TWO_PEERS]
    with pytest.raises(ConfigError, match=r"tuning\.storage: the APL2 studies need 3 workers"):
        load_config(PAPER, overrides={"tuning": {"storage": "sqlite"}})
    with pytest.raises(ConfigError, match=r"cluster\.max_job_hours"):
        load_config(PAPER, overrides={"cluster": {"max_job_hours": 0}})


def test_the_default_and_noise_sweep_configs_fit(paper):
    for files in ([REPO / "config" / "config.yaml"],
                  [REPO / "config" / "config.yaml", REPO / "config" / "noise_sweep.yaml"]):
        cfg = load_config(*files)
        assert all(cost.tuning_workers(cfg, m) == 1 for m in cost.tuned_methods(cfg))


def test_cost_plan_of_the_paper_without_the_shared_warmup():
    paper = load_config(PAPER, overrides={"tuning": {"shared_warmup": False}})
    plan = cost.cost_plan(paper)
    assert len(plan) == 3 * 9
    t = plan.sum(numeric_only=True)
    assert (t.tune_jobs, t.train_jobs, t.predict_jobs) == (270, 81, 81)
    assert t.tune_epochs == 3 * 3 * 6 * 30 * 50 and t.train_epochs == 81 * 200
    # 9 studies per method: 30 x 50 epochs x 126 s, twice for the two-peer methods
    assert t.tune_gpu_h == pytest.approx(9 * (2 + 2 * 4) * 30 * 50 * 126 / 3600)  # 4725
    assert t.train_gpu_h == pytest.approx(9 * (5 + 2 * 4) * 200 * 126 / 3600)  # 819
    assert t.predict_gpu_h == pytest.approx(81 * 2)
    assert t.reserved_gpu_h == pytest.approx((270 * 1328 + 45 * 540 + 36 * 1065 + 81 * 165) / 60)
    # the runtimes of the former profile (7200, 2880, 240 min) reserved 10,692 GPU-hours
    assert t.reserved_gpu_h < (54 * 7200 + 81 * 2880 + 81 * 240) / 60
    untuned = cost.cost_plan(load_config(PAPER, overrides={"tuning": {"enabled": False}}))
    assert untuned["tune_jobs"].sum() == 0 and untuned["tune_gpu_h"].sum() == 0


def test_cost_plan_of_the_paper_with_the_shared_warmup(paper):
    plan = cost.cost_plan(paper)
    warm = plan[plan["method"] == cost.WARMUP_ROW]
    assert list(warm["task"]) == ["HIE", "Heart", "KiTS23"] and list(warm["tune_jobs"]) == [3] * 3
    # one warm-up of 20 epochs of two peers per task x fold: 20 x 126 s x 2
    assert warm["tune_gpu_h"].sum() == pytest.approx(9 * 20 * 126 * 2 / 3600)  # 12.6
    assert cost.runtime_minutes(paper, "tune_warmup", "CoT") == _minutes(20, 2) == 120
    cot = plan[plan["method"] == "CoT"]
    assert list(cot["tune_epochs"]) == [3 * 30 * 30] * 3  # 30 of 50 epochs per trial
    assert cost.runtime_minutes(paper, "tune_worker", "CoT") == _minutes(8 * 30, 2) == 1275
    t = plan.sum(numeric_only=True)
    assert t.tune_epochs == 81000 - 9 * 3 * 30 * 20 + 9 * 20 == 64980
    # per task x fold: APL2 + SVLS 2 x 52.5 h, HRL 105 h, CoT + CoT+ + StoCoT 3 x 63 h
    assert t.tune_gpu_h == pytest.approx(9 * (2 * 52.5 + 105 + 3 * 63) + 12.6)  # 3603.6 of 4725
    assert t.tune_jobs == 9 * (2 * 3 + 6 + 3 * 4) + 9
    text = cost.format_cost_plan(paper, plan)
    assert "| tune_warmup | 9 | 120 |" in text and "| tune_worker | 216 | 1275, 1328 |" in text
    assert ("64980 tuning epochs and 3,604 tuning GPU-hours; without it 81000 and 4,725 "
            "(-19.8% epochs, -23.7% GPU-hours)") in text


def test_plan_cost_command(capsys):
    assert main(["plan-cost", "--configfile", str(PAPER)]) == 0
    out = capsys.readouterr().out
    assert "| tune_worker | 216 | 1275, 1328 |" in out and "| train | 81 | 540, 1065 |" in out
    assert "| KiTS23 | HRL | 18 | 4500 | 600 | 315.0 | 42.0 | 6.0 | 363.0 | 459.9 |" in out
    assert "| KiTS23 | warm-up | 3 | 60 | 0 | 4.2 |" in out
    assert "GPU jobs: 387; estimated 4,585 GPU-hours" in out and "warning" not in out


def test_plan_cost_command_reports_a_study_that_cannot_be_split(tmp_path, capsys):
    overlay = tmp_path / "sqlite.yaml"
    overlay.write_text("tuning: {storage: sqlite}\n")
    assert main(["plan-cost", "--configfile", str(PAPER), str(overlay)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: config key tuning.storage") and err.count("\n") == 1


def test_peers_are_the_coteaching_trainers():
    from nnrobustloss.trainers.coteaching import CoTeachingTrainer
    from nnrobustloss.trainers.loading import load_trainer_class

    for spec in METHODS.values():
        assert spec.peers == (2 if issubclass(load_trainer_class(spec), CoTeachingTrainer) else 1)


def test_cost_plan_counts_replicates_of_the_final_trainings_only(paper):
    """3 replicates: 3 x the train and predict jobs, epochs and GPU-hours of the paper's plan
    (81 -> 243 each), the same tuning jobs and hours."""
    one = cost.cost_plan(paper)
    three = cost.cost_plan(load_config(PAPER, overrides={"training": {"replicates": 3}}))
    for col in ("train_jobs", "train_epochs", "predict_jobs"):
        assert three[col].sum() == 3 * one[col].sum()
    assert one["train_jobs"].sum() == 81 and three["predict_jobs"].sum() == 243
    assert three["train_gpu_h"].sum() == pytest.approx(3 * one["train_gpu_h"].sum())
    assert three["tune_jobs"].sum() == one["tune_jobs"].sum()
    assert three["tune_gpu_h"].sum() == pytest.approx(one["tune_gpu_h"].sum())
