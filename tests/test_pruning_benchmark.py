"""benchmarks/pruning.py: its bookkeeping on hand-made Optuna studies, and a --tiny run end to end."""

from __future__ import annotations

import binascii
import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import pruning  # noqa: E402  (benchmarks/pruning.py)

SIGMA = {"sigma": FloatDistribution(0.2, 2.0)}


def _study(name: str = "Phantom.SVLS.fold0") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, direction="maximize")


def _add(study: optuna.Study, sigma: float, curve: list[float], state: TrialState) -> None:
    study.add_trial(create_trial(
        params={"sigma": sigma}, distributions=SIGMA, state=state,
        value=curve[-1] if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(curve))))


def test_trial_rows_count_the_epochs_each_trial_trained():
    s = _study()
    _add(s, 0.5, [0.1, 0.2, 0.3, 0.4], TrialState.COMPLETE)
    _add(s, 1.5, [0.05, 0.08], TrialState.PRUNED)
    s.add_trial(create_trial(params={"sigma": 1.0}, distributions=SIGMA, state=TrialState.FAIL))
    rows = pruning.trial_rows(s)
    assert [(r["number"], r["state"], r["epochs"], r["value"]) for r in rows] == [
        (0, "COMPLETE", 4, 0.4), (1, "PRUNED", 2, 0.08)]  # the failed trial is not finished
    assert rows[1]["curve"] == [0.05, 0.08] and rows[0]["params"] == {"sigma": 0.5}
    assert "bracket" not in rows[0]


def test_trial_rows_hyperband_brackets_follow_optunas_crc32_allocation():
    # 20 epochs, eta 3: floor(log3 20) + 1 = 3 brackets with trial budgets ceil(3*9/3) = 9,
    # ceil(3*3/2) = 5 and ceil(3*1/1) = 3 (17 in all); a trial's bracket is where
    # crc32("<study>_<number>") % 17 falls in 0-8 | 9-13 | 14-16.
    s = _study()
    for _ in range(12):
        _add(s, 0.5, [0.1, 0.2], TrialState.COMPLETE)
    rows = pruning.trial_rows(s, hyperband_epochs=20)
    expected = []
    for k in range(12):
        n = binascii.crc32(f"Phantom.SVLS.fold0_{k}".encode()) % 17
        expected.append(0 if n < 9 else 1 if n < 14 else 2)
    assert [r["bracket"] for r in rows] == expected
    assert set(expected) == {0, 1, 2}  # this study name uses every bracket in 12 trials


def test_rank_agreement_of_early_and_final_objective():
    s = _study()
    # step 0 ranks the three complete trials in reverse, step 1 in the final order
    _add(s, 0.3, [0.30, 0.10, 0.50], TrialState.COMPLETE)
    _add(s, 0.6, [0.20, 0.20, 0.60], TrialState.COMPLETE)
    _add(s, 0.9, [0.10, 0.30, 0.70], TrialState.COMPLETE)
    _add(s, 1.2, [0.90, 0.90], TrialState.PRUNED)  # ignored: no final objective
    rho = pruning.rank_agreement(pruning.trial_rows(s), [0, 1])
    assert rho[0] == pytest.approx(-1.0) and rho[1] == pytest.approx(1.0)


def test_replay_median_prunes_below_the_median_after_the_warm_up():
    # 4 epochs: MedianPruner(n_startup_trials=5, n_warmup_steps=1). Trials 0-4 complete (5
    # start-up trials, never pruned even when bad); trial 5's 0.15 at step 1 is below the median
    # 0.3 of trials 0-4 there -> pruned after 2 epochs; trial 6 stays at the median -> complete.
    curves = [[0.1, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2], [0.3, 0.3, 0.3, 0.3],
              [0.4, 0.4, 0.4, 0.4], [0.5, 0.5, 0.5, 0.5], [0.1, 0.15, 0.95, 0.99],
              [0.3, 0.3, 0.3, 0.3]]
    rows = [{"number": k, "params": {"sigma": 0.2 + 0.1 * k}, "state": "COMPLETE", "epochs": 4,
             "value": c[-1], "curve": c} for k, c in enumerate(curves)]
    got = pruning.replay(rows, "SVLS", "median", 4, "x")
    assert got == [("COMPLETE", 4)] * 5 + [("PRUNED", 2), ("COMPLETE", 4)]
    assert pruning.replay(rows, "SVLS", "none", 4, "x") == [("COMPLETE", 4)] * 7
    sm = pruning.replay_summary(rows, "SVLS", "median", 4, ["x"])
    # trial 5 (value 0.99) is the unpruned best; the median run chooses trial 4 (0.5)
    assert (sm["best_pruned"], sm["choice_differs"], sm["choices"]) == (1, 1, {4: 1})
    assert sm["epochs"] == [26] and sm["chosen_value"] == [0.5]


def test_fold_dice_means_over_cases_per_region(tmp_path):
    csv = tmp_path / "fold0.csv"
    csv.write_text("task,method,fold,case,region,metric,value\n"
                   "P,SVLS,0,a,organ,dice,0.9\nP,SVLS,0,a,organ,asd,3.0\n"
                   "P,SVLS,0,a,lesion,dice,0.5\nP,SVLS,0,b,organ,dice,0.8\n"
                   "P,SVLS,0,b,lesion,dice,0.7\nP,SVLS,0,b,ece,ece,0.1\n")
    d = pruning.fold_dice(csv)
    assert list(d) == ["organ", "lesion"]
    assert d["organ"] == pytest.approx(0.85) and d["lesion"] == pytest.approx(0.6)


def test_cached_reuses_a_result_of_the_same_key_only(tmp_path):
    calls = []

    def compute(folder: Path) -> dict[str, int]:
        calls.append(folder)
        (folder / "work.txt").write_text("x")
        return {"n": len(calls)}

    d = tmp_path / "step"
    first = pruning.cached(d, {"trials": 3}, compute)
    assert first["n"] == 1 and set(first) == {"n", "finished"}
    assert pruning.cached(d, {"trials": 3}, compute) == first and len(calls) == 1
    (d / "stale.txt").write_text("left by the first run")
    assert pruning.cached(d, {"trials": 4}, compute)["n"] == 2
    assert not (d / "stale.txt").exists()  # another key starts from an empty folder
    assert json.loads((d / "result.json").read_text())["key"] == {"trials": 4}


@pytest.mark.slow
def test_pruning_script_tiny_end_to_end(tmp_path):
    """The three pruners on a 6-case phantom: the table, the epoch bookkeeping, and the noise
    check's objective equal to the study's for the same parameters and seed."""
    work, out = tmp_path / "work", tmp_path / "pruning.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pruning.py"), "--tiny",
                          "--workdir", str(work), "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=1200, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out.read_text() == res.stdout
    lines = res.stdout.splitlines()
    top = lines[lines.index(next(x for x in lines if x.startswith("| pruner | chosen"))) + 2:]
    rows = {x.split("|")[1].strip(): [c.strip() for c in x.split("|")[2:-1]]
            for x in top[:top.index("")]}
    assert list(rows) == ["none", "median", "hyperband"]
    runs = {n: json.loads((work / n / "result.json").read_text())["result"] for n in rows}
    for n, cells in rows.items():
        trials = runs[n]["trials"]
        assert len(trials) == 3
        pruned = sum(t["state"] == "PRUNED" for t in trials)
        assert cells[2] == f"{3 - pruned} / {pruned}"
        assert int(cells[3]) == sum(t["epochs"] for t in trials)
        assert all(t["epochs"] == 4 for t in trials if t["state"] == "COMPLETE")
        # each trial's progress.csv has one row per epoch reported to Optuna
        for t in trials:
            progress = (work / n / "tuning" / "Phantom" / "SVLS" / "fold0" / "trials"
                        / f"trial{t['number']}" / "progress.csv")
            assert len(progress.read_text().strip().splitlines()) - 1 == t["epochs"]
    assert rows["none"][2] == "3 / 0"
    # median: nothing is pruned before --startup (2 in --tiny) trials are complete; whether the
    # third is pruned depends on its curve (the replay below checks that decision)
    assert [t["state"] for t in runs["median"]["trials"][:2]] == ["COMPLETE", "COMPLETE"]
    # no pruning before a trial is pruned: the runs' first trials are the same trainings
    first = [{k: runs[n]["trials"][0][k] for k in ("params", "state", "curve")} for n in runs]
    assert first[0] == first[1] == first[2]
    # the replay of the unpruned curves reproduces each measured pruned run
    replay = lines[lines.index("## Replay: the unpruned run's curves through the pruners"):]
    replay_rows = [x for x in replay if x.startswith(("| median | ", "| hyperband | "))]
    assert [x.split("|")[2].strip() for x in replay_rows] == ["True", "True"]
    # the noise check's objective measures what the study measured (seed 0 = the study's value)
    from conftest import deterministic_cpu_training

    args = pruning.parse_args(["--tiny"])
    best = runs["none"]["best"]
    with deterministic_cpu_training():
        again = pruning.objective_with_seed(pruning.make_config(args, work / "shared", "none"),
                                            tmp_path / "again", best["params"], 0)
    assert again["value"] == best["value"]
