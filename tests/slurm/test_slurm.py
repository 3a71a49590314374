"""The study on a real SLURM scheduler (issue 19): the one-node cluster of
tests/slurm/cluster.py (Debian's slurm-wlm and munge, one emulated GPU, no accounting), the
shipped profile profiles/slurm with only its memory and CPU requests scaled to the node.

Marked ``slurm``: they need root (to install and start the daemons); elsewhere they skip with
the reason. CI (``.ci/run``) runs them as root.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from nnrobustloss.cost import GPU_RULES

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import cluster  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")
#: what the tests add to the command line: faster status polling than the plugin's 40 s, and
#: the plugin's logs of successful jobs kept (it deletes them by default)
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "5", "--slurm-keep-successful-logs")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The running one-node cluster and a copy of profiles/slurm scaled to it (1 CPU and
    1.5 GB per job: the 2-core CI machine runs one CPU job beside one GPU job)."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM tests start slurmctld/slurmd and need root")
    was_up = cluster.is_up()
    try:
        info = cluster.start()
    except cluster.ClusterError as e:
        pytest.skip(f"no SLURM cluster: {e}")
    profile = cluster.scaled_profile(REPO / "profiles" / "slurm",
                                     tmp_path_factory.mktemp("profile"), cpus=1, mem_mb=1500)
    yield {**info, "profile": profile}
    if not was_up:  # a cluster someone started before the tests keeps running
        cluster.stop()


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def run_study(workdir: Path, profile: Path, *configs: Path, args: tuple[str, ...] = (),
              timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    """snakemake with the scaled profile on the default config, the smoke overlay and
    ``configs``, in ``workdir``; stdout and stderr merged."""
    # (targets and options before --configfile, which takes every following word as a file)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--profile", str(profile), *FAST_POLLING, *args, "--configfile",
           str(REPO / "config" / "config.yaml"), str(REPO / "config" / "smoke.yaml"),
           *map(str, configs)]
    return subprocess.run(cmd, cwd=workdir, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout,
                          env=dict(os.environ, nnUNet_compile="false"))


def submissions(output: str) -> dict[str, str]:
    """{SLURM job id: rule} of every submission in a Snakemake log (the plugin's job logs are
    ``.snakemake/slurm_logs/rule_<rule>/...``)."""
    out = {}
    for jobid, log in SUBMITTED.findall(output):
        rule = next(p[5:] for p in Path(log).parts if p.startswith("rule_"))
        out[jobid] = rule
    return out


def job_record(jobid: str) -> dict[str, str]:
    """``scontrol show job -o`` of a job as {key: value} (finished jobs stay for MinJobAge)."""
    text = subprocess.run(["scontrol", "show", "job", "-o", jobid], text=True,
                          capture_output=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


REDUCED = {"methods": ["Baseline", "CoT"], "folds": [0]}
"""The DAG of CI: every stage, a single- and a two-peer method, a tuning worker, one fold."""


def test_smoke_study_runs_through_the_scheduler(slurm, tmp_path: Path) -> None:
    """Every rule but the local ones is an sbatch job on the profile's partition with its GPU;
    select_best and report run in the Snakemake process; the tables are written; the start-up
    check switched the status command to squeue (no accounting) with one line."""
    overlay = _write(tmp_path / "reduced.yaml", REDUCED)
    t0 = time.monotonic()
    proc = run_study(tmp_path, slurm["profile"], overlay)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout[-5000:]
    jobs = submissions(proc.stdout)
    per_rule = pd.Series(list(jobs.values())).value_counts().to_dict()
    # (the smoke overlay's co-teaching delay is 0, so CoT's trials have no shared warm-up)
    assert per_rule == {"convert": 1, "noise_report": 1, "splits": 1, "plan": 1,
                        "tune_worker": 1, "train": 2, "predict": 2, "evaluate": 2}, per_rule
    for jobid, rule in jobs.items():
        rec = job_record(jobid)
        assert rec["JobState"] == "COMPLETED", (rule, rec["JobState"])
        gpu = rule in GPU_RULES
        assert rec["Partition"] == ("gpu" if gpu else "cpu"), (rule, rec["Partition"])
        assert ("gpu" in rec.get("TresPerJob", "")) == gpu, (rule, rec.get("TresPerJob"))
    assert "localrule select_best" in proc.stdout and "localrule report" in proc.stdout
    results = tmp_path / "results"
    assert (results / "tables" / "table1.md").stat().st_size > 0
    assert (results / "figures" / "training_curves.png").is_file()
    # the jobs' own logs say where they ran: a GPU job got the node's one GPU
    train_log = (results / "logs" / "train" / "Phantom" / "CoT" / "fold0.log").read_text()
    header = train_log.splitlines()[0]
    assert "SLURM_JOB_PARTITION=gpu" in header and "CUDA_VISIBLE_DEVICES=0" in header
    assert "querying them with squeue instead" in proc.stdout
    assert "invalid option" not in proc.stdout  # no raw error of the plugin's account guess
    print(f"\n[slurm smoke] {len(jobs)} sbatch jobs in {wall:.0f} s: {per_rule}")


def test_training_killed_by_its_time_limit_resumes_on_the_retry(slurm, tmp_path: Path) -> None:
    """A final training whose first attempt asks 1 minute is killed by SLURM (TIMEOUT) in the
    middle of its 150 epochs; the retry asks 2 minutes (the attempt-scaled runtime of
    nnrobustloss.cost; a third attempt 3, on a slow machine) and continues from
    checkpoint_latest: progress.csv holds every epoch once, and the moving average runs on
    across the restart as in one uninterrupted run.

    (That a continued training equals the uninterrupted one weight for weight is tested without
    a scheduler: tests/test_workflow.py, tests/test_trainers.py, tests/test_augmentation.py.)"""
    cfg = {"methods": ["Baseline"], "folds": [0], "tuning": {"enabled": False},
           "training": {"epochs": 150, "iterations_per_epoch": 10,
                        "val_iterations_per_epoch": 1},
           # estimated work 150 epochs x 7.9 s x 10/250 = 47.4 s, x 1.25 safety = 0.99 -> 1 min
           # on the first attempt, 2 on the second; no overhead. The real training takes about
           # 0.6 s per epoch on an idle 2-core machine (1:51 min for 150 epochs, measured), plus
           # its start-up, so the first attempt is killed in the middle.
           "cluster": {"job_overhead_minutes": 0, "safety_factor": 1.25,
                       "seconds_per_epoch": {"cpu": 7.9}}}
    overlay = _write(tmp_path / "timeout.yaml", cfg)
    target = "results/training/Phantom/Baseline/fold0/checkpoint_final.pth"
    proc = run_study(tmp_path, slurm["profile"], overlay, args=(target,))
    assert proc.returncode == 0, proc.stdout[-5000:]
    runs = [(j, job_record(j)) for j, rule in submissions(proc.stdout).items() if rule == "train"]
    states = [r["JobState"] for _, r in runs]
    assert states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    assert [r["TimeLimit"] for _, r in runs] == [f"00:0{i}:00" for i in range(1, len(runs) + 1)]
    # the job log (Snakemake keeps the last attempt's): it continued from the killed attempt's
    # checkpoint
    job_log = (tmp_path / "results" / "logs" / "train" / "Phantom" / "Baseline"
               / "fold0.log").read_text()
    assert f"SLURM_JOB_ID={runs[-1][0]}" in job_log.splitlines()[0]
    resumed = re.search(r"continuing \S+ from checkpoint_latest\.pth at epoch (\d+)", job_log)
    assert resumed is not None and 0 < int(resumed.group(1)) < 150, job_log[-3000:]
    out = tmp_path / "results" / "training" / "Phantom" / "Baseline" / "fold0"
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["epoch"]) == list(range(150))
    ema, value = progress["train_pseudo_dice_ema"], progress["train_pseudo_dice"]
    k = int(resumed.group(1))
    assert ema[k] == pytest.approx(0.9 * ema[k - 1] + 0.1 * value[k], abs=1e-12)


def test_killed_snakemake_continues_where_it_stood(slurm, tmp_path: Path) -> None:
    """SIGKILL of the Snakemake process while its training runs on the cluster, then the same
    command again (after --unlock) at once: the jobs finished before the kill are not redone,
    the training (unfinished for Snakemake) is resubmitted, the run completes, every epoch is in
    progress.csv once and nothing half-written is left.

    The killed Snakemake's job runs on; the new one is the training's second job. A training
    takes its folder's lock (one run per training), so the two never write the same folder at
    once: on a node with several GPUs the second waits for the first; on this node's one GPU
    SLURM starts it only after the first ended, and its Snakemake removes the outputs it is
    about to make before the training starts, so the training runs again."""
    cfg = {**REDUCED, "methods": ["Baseline"], "tuning": {"enabled": False},
           "training": {"epochs": 25, "iterations_per_epoch": 8, "val_iterations_per_epoch": 1}}
    overlay = _write(tmp_path / "kill.yaml", cfg)
    first, log = _start(tmp_path, slurm["profile"], overlay)
    progress = tmp_path / "results" / "training" / "Phantom" / "Baseline" / "fold0" / "progress.csv"
    _wait_for(lambda: progress.is_file() and len(progress.read_text().splitlines()) >= 4,
              first, log)
    first.send_signal(signal.SIGKILL)
    first.wait()
    jobid = _running_job(log, "train")
    assert job_record(jobid)["JobState"] in ("RUNNING", "COMPLETED")  # it outlives Snakemake
    done_before = set(submissions(log.read_text()).values())
    assert {"convert", "splits", "plan", "noise_report", "train"} <= done_before
    again = run_study(tmp_path, slurm["profile"], overlay, args=("--unlock",))
    assert again.returncode == 0, again.stdout[-3000:]
    again = run_study(tmp_path, slurm["profile"], overlay)
    assert again.returncode == 0, again.stdout[-5000:]
    resubmitted = submissions(again.stdout)
    rerun = pd.Series(list(resubmitted.values())).value_counts().to_dict()
    assert not {"convert", "splits", "plan", "noise_report"} & set(rerun), rerun
    assert rerun.get("train") == 1 and rerun.get("predict") == 1, rerun
    assert job_record(jobid)["JobState"] == "COMPLETED"
    second = next(j for j, r in resubmitted.items() if r == "train")
    first_end, second_start = job_record(jobid)["EndTime"], job_record(second)["StartTime"]
    assert first_end <= second_start  # never two trainings of one folder at once (one GPU)
    results = tmp_path / "results"
    assert not list(results.rglob(".tmp-*")), list(results.rglob(".tmp-*"))
    assert list(pd.read_csv(progress)["epoch"]) == list(range(25))
    assert (results / "tables" / "table1.md").is_file()


def _start(workdir: Path, profile: Path, overlay: Path, *targets: str) -> tuple[subprocess.Popen,
                                                                               Path]:
    """Start snakemake in the background (output in ``workdir/snakemake.log``)."""
    log = workdir / "snakemake.log"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--profile", str(profile), *FAST_POLLING, *targets, "--configfile",
           str(REPO / "config" / "config.yaml"), str(REPO / "config" / "smoke.yaml"),
           str(overlay)]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ, nnUNet_compile="false"))
    return proc, log


def _wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"snakemake ended early:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < end, f"timed out:\n{log.read_text()[-4000:]}"
        time.sleep(1)


def _epochs_logged(progress: Path, n: int):
    """A condition for :func:`_wait_for`: ``progress`` (a progress.csv) holds ``n`` epochs."""
    return lambda: progress.is_file() and len(progress.read_text().splitlines()) > n


def _running_job(log: Path, rule: str) -> str:
    """The SLURM job id of the (last) submitted job of ``rule``."""
    return [j for j, r in submissions(log.read_text()).items() if r == rule][-1]


def test_scancel_of_a_tuning_worker_loses_no_trial(slurm, tmp_path: Path) -> None:
    """scancel of a tuning worker in the middle of its second trial: Snakemake resubmits it, the
    retry continues the interrupted trial from its checkpoint, and the study completes its
    n_trials (every COMPLETE trial once)."""
    cfg = {"methods": ["APL2"], "folds": [0],
           "tuning": {"n_trials": 3, "epochs": 6, "iterations_per_epoch": 6}}
    overlay = _write(tmp_path / "scancel.yaml", cfg)
    study = tmp_path / "results" / "tuning" / "Phantom" / "APL2" / "fold0"
    proc, log = _start(tmp_path, slurm["profile"], overlay,
                       os.path.relpath(study / "best_params.json", tmp_path))

    _wait_for(_epochs_logged(study / "trials" / "trial1" / "progress.csv", 2), proc, log)
    jobid = _running_job(log, "tune_worker")
    subprocess.run(["scancel", jobid], check=True)
    assert proc.wait(timeout=1500) == 0, log.read_text()[-5000:]
    text = log.read_text()
    assert job_record(jobid)["JobState"] == "CANCELLED"
    assert len([r for r in submissions(text).values() if r == "tune_worker"]) == 2
    trials = pd.read_csv(study / "trials.csv")
    complete = trials[trials["state"] == "COMPLETE"]
    assert len(complete) == 3, trials
    worker_logs = (tmp_path / "results" / "logs" / "tune").rglob("worker0.log")
    assert any("continues interrupted trial 1" in p.read_text() for p in worker_logs)


def test_requeued_training_finishes_from_its_checkpoint(slurm, tmp_path: Path) -> None:
    """scontrol requeue of a running final training: SLURM restarts the same job id (Restarts=1),
    the training continues from checkpoint_latest and every epoch is in progress.csv once;
    Snakemake sees one submission."""
    cfg = {"methods": ["Baseline"], "folds": [0], "tuning": {"enabled": False},
           "training": {"epochs": 12, "iterations_per_epoch": 6, "val_iterations_per_epoch": 1}}
    overlay = _write(tmp_path / "requeue.yaml", cfg)
    out = tmp_path / "results" / "training" / "Phantom" / "Baseline" / "fold0"
    proc, log = _start(tmp_path, slurm["profile"], overlay,
                       os.path.relpath(out / "checkpoint_final.pth", tmp_path))

    _wait_for(_epochs_logged(out / "progress.csv", 3), proc, log)
    jobid = _running_job(log, "train")
    subprocess.run(["scontrol", "requeue", jobid], check=True)
    assert proc.wait(timeout=1500) == 0, log.read_text()[-5000:]
    assert [r for r in submissions(log.read_text()).values() if r == "train"] == ["train"]
    rec = job_record(jobid)
    assert rec["JobState"] == "COMPLETED" and rec["Restarts"] == "1", rec
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["epoch"]) == list(range(12))
    # the restarted job continued from the checkpoint its first run wrote
    job_log = (tmp_path / "results" / "logs" / "train" / "Phantom" / "Baseline"
               / "fold0.log").read_text()
    resumed = re.search(r"continuing \S+ from checkpoint_latest\.pth at epoch (\d+)", job_log)
    assert resumed is not None and 3 <= int(resumed.group(1)) < 12, job_log[-3000:]


def test_outputs_that_appear_late_are_waited_for(slurm, tmp_path: Path) -> None:
    """A shared file system can show a job's output seconds after the job wrote it. Here the
    test hides a training's checkpoint_final.pth the moment it appears and shows it again
    8 s later: Snakemake waits (the profile's latency-wait) instead of failing the job, and the
    run completes with the checkpoint in place."""
    cfg = {**REDUCED, "methods": ["Baseline"], "tuning": {"enabled": False},
           "training": {"epochs": 6, "iterations_per_epoch": 4, "val_iterations_per_epoch": 1}}
    overlay = _write(tmp_path / "late.yaml", cfg)
    final = tmp_path / "results" / "training" / "Phantom" / "Baseline" / "fold0" / "checkpoint_final.pth"
    hidden = final.with_name(".late-checkpoint")
    proc, log = _start(tmp_path, slurm["profile"], overlay, os.path.relpath(final, tmp_path))
    _wait_for(final.is_file, proc, log)
    os.replace(final, hidden)  # "not yet visible here"
    time.sleep(8)
    os.replace(hidden, final)
    assert proc.wait(timeout=900) == 0, log.read_text()[-5000:]
    jobid = _running_job(log, "train")
    assert job_record(jobid)["JobState"] == "COMPLETED"
    job_out = next((tmp_path / ".snakemake" / "slurm_logs").rglob(f"{jobid}.log")).read_text()
    assert "Waiting at most 120 seconds for missing files" in job_out, job_out[-3000:]
    assert final.stat().st_size > 0
