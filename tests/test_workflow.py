"""The Snakemake workflow: schema, lint, dry runs of the paper's DAG, an end-to-end run of the
whole DAG on a tiny phantom config, partial reruns, and resuming a killed training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from nnrobustloss.methods import METHODS, default_study_methods

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "config" / "config.yaml"
OVERLAY = REPO / "config" / "smoke.yaml"
ALL_METHODS = default_study_methods()  # the default config lists no methods: the registry's
TUNED = [m for m in ALL_METHODS if METHODS[m].needs_tuning]
SMOKE_FOLDS = yaml.safe_load(OVERLAY.read_text())["folds"]  # the folds the smoke runs build


def snakemake(workdir: Path, *args: str, configfiles: tuple[Path, ...] = (DEFAULT, OVERLAY),
              check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run snakemake on the repository's Snakefile in ``workdir`` with ``configfiles`` (which
    replace the embedded default); returns the finished process (stdout and stderr merged)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--configfile", *map(str, configfiles), *args]
    env = dict(os.environ, nnUNet_compile="false")
    proc = subprocess.run(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a snakemake run or dry run as {rule: count}."""
    counts: dict[str, int] = {}
    block = output.split("Job stats:")[-1]
    for line in block.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_paper_dag_dry_runs_without_data(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", configfiles=(REPO / "config" / "paper.yaml",))
    counts = job_counts(proc.stdout)
    # 3 tasks x 9 methods x 3 folds; 6 tuned methods; tuning.workers: auto splits each study so
    # that a worker fits 24 h: 3 workers for APL2 and SVLS, 6 for the two-peer HRL, 4 for the
    # two-peer CoT, CoT+ and StoCoT, whose trials start from the shared warm-up (30 of 50 epochs)
    # (nnrobustloss.cost), so 9 x (2 x 3 + 6 + 3 x 4) = 216 worker jobs and 9 warm-ups.
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 81
    assert counts["select_best"] == 54 and counts["tune_worker"] == 216
    assert counts["tune_warmup"] == 9
    assert counts["convert"] == counts["plan"] == counts["splits"] == counts["noise_report"] == 3
    assert counts["report"] == 1


def test_replicates_multiply_final_trainings_not_tuning(tmp_path: Path) -> None:
    """training.replicates 3 on the default: 3 x 27 train, predict and evaluate jobs, with their
    own folders (fold<k>, fold<k>_rep1, fold<k>_rep2) and seeds, and the same 18 studies."""
    overlay = tmp_path / "rep3.yaml"
    overlay.write_text("training: {replicates: 3}\n")
    proc = snakemake(tmp_path, "-n", configfiles=(DEFAULT, overlay))
    counts = job_counts(proc.stdout)
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 81
    assert counts["tune_worker"] == counts["select_best"] == 18 and counts["report"] == 1
    trains = dry_run_jobs(proc.stdout, "train")
    outputs = {j["output"].split(", ")[0] for j in trains}
    for suffix in ("", "_rep1", "_rep2"):
        assert f"results/training/Phantom/APL2/fold1{suffix}/checkpoint_final.pth" in outputs
    assert not any("_rep0" in o or "_rep3" in o for o in outputs)
    # every replicate of a tuned method reads the one study's best parameters
    best = "results/tuning/Phantom/APL2/fold1/best_params.json"
    assert sum(best in j["input"] for j in trains) == 3


def test_paper_dag_dry_runs_with_slurm_profile(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm"),
                     configfiles=(REPO / "config" / "paper.yaml",))
    assert job_counts(proc.stdout)["train"] == 81


def test_bad_config_value_stops_with_the_key_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuning: {workers: 0}\n")
    proc = snakemake(tmp_path, "-n", configfiles=(DEFAULT, bad), check=False)
    assert proc.returncode != 0
    assert "tuning.workers" in proc.stdout and "minimum" in proc.stdout


def test_noise_sweep_dag_dry_runs(tmp_path: Path) -> None:
    sweep = REPO / "config" / "noise_sweep.yaml"
    proc = snakemake(tmp_path, "-n", configfiles=(DEFAULT, sweep))
    counts = job_counts(proc.stdout)
    # 4 levels, 5 methods, 3 folds, no tuning; one report with the sweep's table and figure
    assert counts["convert"] == counts["plan"] == counts["splits"] == 4
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 60
    assert "tune_worker" not in counts and counts["report"] == 1
    assert "results/noise_sweep/figures/noise_sweep.png" in proc.stdout
    assert "results/noise_sweep/tables/noise_sweep.html" in proc.stdout


def test_tuning_disabled_trains_with_defaults(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "-n", "--config", "tuning={'enabled': False}", check=False)
    if proc.returncode != 0:  # older Snakemake parses nested --config values differently
        off = tmp_path / "off.yaml"
        off.write_text("tuning: {enabled: false}\n")
        proc = snakemake(tmp_path, "-n", configfiles=(DEFAULT, OVERLAY, off))
    counts = job_counts(proc.stdout)
    assert counts["train"] == len(ALL_METHODS) * len(SMOKE_FOLDS)
    assert "tune_worker" not in counts and "select_best" not in counts


def dry_run_jobs(output: str, rule: str) -> list[dict[str, str]]:
    """The jobs of ``rule`` in a dry run's output: ``input``, ``output`` and ``wildcards``
    (as {name: value}) of each."""
    jobs = []
    for block in output.split(f"rule {rule}:\n")[1:]:
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block.split("\n\n")[0].split("[")[0],
                                 flags=re.M))
        fields["wildcards"] = dict(kv.split("=") for kv in fields["wildcards"].split(", "))
        jobs.append(fields)
    return jobs


def test_shared_warmup_is_one_job_per_task_and_fold_that_cot_workers_need(tmp_path: Path) -> None:
    paper = REPO / "config" / "paper.yaml"
    on = snakemake(tmp_path, "-n", configfiles=(paper,)).stdout
    warmups = {j["output"] for j in dry_run_jobs(on, "tune_warmup")}
    expected = {f"results/tuning/{t}/warmup/fold{f}/seed0/checkpoint_warmup.pth"
                for t in ("HIE", "Heart", "KiTS23") for f in range(3)}
    assert warmups == expected and job_counts(on)["tune_warmup"] == 9
    workers = dry_run_jobs(on, "tune_worker")
    assert len(workers) == 216  # auto workers: 4 per CoT, CoT+, StoCoT study (30-epoch trials)
    for job in workers:
        w = job["wildcards"]
        warm = f"results/tuning/{w['task']}/warmup/fold{w['fold']}/seed0/checkpoint_warmup.pth"
        shared = w["method"] in ("CoT", "CoTPlus", "StoCoT")
        assert (warm in job["input"].split(", ")) == shared, job
        assert ("warmup" in job["input"]) == shared, job
    off_file = tmp_path / "off.yaml"
    off_file.write_text("tuning: {shared_warmup: false}\n")
    off = snakemake(tmp_path, "-n", configfiles=(paper, off_file)).stdout
    counts = job_counts(off)
    # today's DAG: 50-epoch trials, 6 workers per CoT, CoT+, StoCoT study
    assert "tune_warmup" not in counts and counts["tune_worker"] == 270
    assert not any("warmup" in j["input"] for j in dry_run_jobs(off, "tune_worker"))


def test_report_html_has_one_captioned_entry_per_output(tmp_path: Path) -> None:
    """Each table and figure is one report entry (its .html / .png) with a caption file."""
    proc = snakemake(tmp_path, "-n", "--forceall", "-p", "--rerun-triggers", "mtime")
    assert proc.returncode == 0
    from nnrobustloss.report import report_stems

    tables, figures = report_stems(sweep=False)
    for stem in tables:
        assert (REPO / "workflow" / "report" / f"{stem}.rst").is_file(), stem
    for stem in figures:
        assert (REPO / "workflow" / "report" / f"{stem}_figure.rst").is_file(), stem
    assert (REPO / "workflow" / "report" / "workflow.rst").is_file()


def test_lint_is_clean(tmp_path: Path) -> None:
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The whole DAG on the tiny phantom config (every method, the SMOKE_FOLDS of 3)."""
    workdir = tmp_path_factory.mktemp("e2e")
    proc = snakemake(workdir, "--cores", "2")
    return workdir, proc.stdout


@pytest.mark.slow
def test_end_to_end_builds_every_output(e2e_run: tuple[Path, str]) -> None:
    workdir, out = e2e_run
    results = workdir / "results"
    counts = job_counts(out)
    assert counts["train"] == counts["predict"] == counts["evaluate"] == len(ALL_METHODS) * len(
        SMOKE_FOLDS)
    assert counts["tune_worker"] == counts["select_best"] == len(TUNED) * len(SMOKE_FOLDS)
    for name in ("table1", "table2", "noise_levels"):
        for ext in ("csv", "md", "tex", "html"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0
    for name in ("figure1", "training_curves"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 10_000
        assert (results / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    table1 = (results / "tables" / "table1.md").read_text()
    # 1-epoch trainings: the tables say that this is a smoke run and mark nothing
    assert table1.startswith("**SMOKE RUN: final trainings of 1 epochs x 2 iterations")
    assert "*" not in table1.split("| Method")[1].split("\n\n")[0]
    for name in ("Baseline", "Baseline (ref.)", "APL1", "APL2", "CoT", "CoT+", "StoCoT", "SVLS",
                 "HRL"):
        assert f"| {name} " in table1
    # Metrics: every held-out case of every fold, both classes, three metrics.
    splits = json.loads((results / "splits" / "Phantom.json").read_text())
    for method in ALL_METHODS:
        for fold in SMOKE_FOLDS:
            df = pd.read_csv(results / "metrics" / "Phantom" / method / f"fold{fold}.csv")
            assert set(df["case"]) == set(splits[fold]["val"])
            assert set(df["region"]) == {"organ", "lesion"}
            segmentation = df[df["metric"].isin(["dice", "asd", "surface_dice"])]
            assert len(segmentation) == len(splits[fold]["val"]) * 2 * 3
            # calibration (on by default): ece, mce, brier, nll within the band and over all
            assert len(df) - len(segmentation) == len(splits[fold]["val"]) * 2 * 8
            dice = df.loc[df["metric"] == "dice", "value"]
            assert dice.between(0, 1).all()
    # Tuning: one finished trial per study, its value the EMA of the trial's progress.csv.
    for method in TUNED:
        trials = pd.read_csv(results / "tuning" / "Phantom" / method / "fold0" / "trials.csv")
        assert list(trials["state"]) == ["COMPLETE"]
        best = json.loads((results / "tuning" / "Phantom" / method / "fold0" / "best_params.json")
                          .read_text())
        assert best["value"] == pytest.approx(float(trials["value"].iloc[0]))
        assert (results / "training" / "Phantom" / method / "fold0" / "progress.csv").is_file()


CUSTOM_TRAINER = """
from nnrobustloss.losses import CEDiceLoss
from nnrobustloss.trainers import RobustTrainer


class ScaledLoss(CEDiceLoss):
    def __init__(self, t, soft_dice_kwargs):
        super().__init__(soft_dice_kwargs)
        self.t = t

    def forward(self, logits, target):
        return self.t * super().forward(logits, target)


class nnUNetTrainer_MyScaled(RobustTrainer):
    def _build_loss(self):
        return self._wrap_deep_supervision(
            ScaledLoss(self.settings.params["t"], soft_dice_kwargs=self._soft_dice_kwargs()))
"""
CUSTOM_OVERLAY = """
methods: [Baseline, TopK10, MyScaled]
folds: [0]
custom_methods:
  TopK10:
    trainer: nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerTopkLoss:nnUNetTrainerTopk10Loss
    display: TopK 10 %
  MyScaled:
    trainer: my_trainer.py:nnUNetTrainer_MyScaled
    display: My scaled loss
    search_space: {t: {type: float, low: 0.5, high: 1.0}}
"""


@pytest.mark.slow
def test_custom_methods_run_through_every_stage(tmp_path: Path) -> None:
    """Both routes of custom_methods on the smoke config: nnU-Net's own TopK trainer named only
    in an overlay, and a RobustTrainer subclass in a user's file (relative to the working
    directory) with a search space, tuned by Optuna."""
    (tmp_path / "my_trainer.py").write_text(CUSTOM_TRAINER)
    overlay = tmp_path / "custom.yaml"
    overlay.write_text(CUSTOM_OVERLAY)
    out = snakemake(tmp_path, "--cores", "2", configfiles=(DEFAULT, OVERLAY, overlay)).stdout
    counts = job_counts(out)
    assert counts["train"] == counts["predict"] == counts["evaluate"] == 3
    assert counts["tune_worker"] == counts["select_best"] == 1  # MyScaled only
    results = tmp_path / "results"
    table1 = (results / "tables" / "table1.md").read_text()
    assert "| TopK 10 % " in table1 and "| My scaled loss " in table1
    metrics = pd.read_csv(results / "metrics" / "Phantom" / "TopK10" / "fold0.csv")
    assert set(metrics["metric"]) >= {"dice", "asd"} and metrics["value"].notna().any()
    progress = pd.read_csv(results / "training" / "Phantom" / "TopK10" / "fold0" /
                           "progress.csv")
    assert {"train_pseudo_dice", "train_pseudo_dice_ema"} <= set(progress.columns)
    ckpt = torch.load(results / "training" / "Phantom" / "TopK10" / "fold0" /
                      "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "nnUNetTrainerTopk10Loss"
    best = json.loads((results / "tuning" / "Phantom" / "MyScaled" / "fold0" /
                       "best_params.json").read_text())["params"]
    settings = json.loads((results / "training" / "Phantom" / "MyScaled" / "fold0" /
                           "settings.json").read_text())
    assert settings["params"] == best and 0.5 <= best["t"] <= 1.0
    tree = results / "nnUNet_results" / "Dataset501_Phantom"
    for trainer in ("nnUNetTrainerTopk10Loss", "nnUNetTrainer_MyScaled"):
        assert (tree / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0" /
                "checkpoint_final.pth").is_symlink()


@pytest.mark.slow
def test_snakemake_report_has_one_captioned_entry_per_table_and_figure(e2e_run) -> None:
    workdir, _ = e2e_run
    html_path = workdir / "report.html"
    snakemake(workdir, "--report", str(html_path))
    html = html_path.read_text()
    from nnrobustloss.report import report_stems

    tables, figures = report_stems(sweep=False)
    # an entry's path appears beyond the rule's output list; the other formats only there
    for stem in tables:
        assert html.count(f"tables/{stem}.html") > 1, stem
        assert html.count(f"tables/{stem}.md") == html.count(f"tables/{stem}.tex") == 1, stem
    for stem in figures:
        assert html.count(f"figures/{stem}.png") > 1, stem
        assert html.count(f"figures/{stem}.pdf") == 1, stem
    for rst in (REPO / "workflow" / "report").glob("*.rst"):
        first_words = " ".join(rst.read_text().split()[:6])
        if not rst.stem.startswith("noise_sweep"):  # no sweep in this run
            assert first_words in html, rst.name  # every caption and the description are used
    assert "nnRobustLoss asks whether" in html and "1 epochs" in html


@pytest.mark.slow
def test_nothing_left_to_do_and_workers_change_reruns_nothing(e2e_run: tuple[Path, str]) -> None:
    workdir, _ = e2e_run
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    # tuning.workers is not result-relevant: finished studies stay finished.
    assert "Nothing to be done" in snakemake(workdir, "-n", "--config", "device=cpu").stdout
    more = workdir / "workers.yaml"
    more.write_text("tuning: {workers: 2}\n")
    assert "Nothing to be done" in snakemake(workdir, "-n", configfiles=(DEFAULT, OVERLAY, more)).stdout


@pytest.mark.slow
def test_rerun_one_method_and_fold(e2e_run: tuple[Path, str]) -> None:
    workdir, _ = e2e_run
    proc = snakemake(workdir, "-n", "--forcerun", "train", "--config", "methods=[APL2]",
                     "folds=[1]")
    counts = job_counts(proc.stdout)
    assert counts == {"train": 1, "predict": 1, "evaluate": 1, "nnunet_results": 1, "report": 1,
                      "all": 1}
    assert "fold=1" in proc.stdout and "method=APL2" in proc.stdout
    only_tables = job_counts(snakemake(workdir, "-n", "--forcerun", "report").stdout)
    assert only_tables == {"report": 1, "all": 1}


@pytest.mark.slow
def test_killed_training_continues_from_its_checkpoint(tmp_path: Path) -> None:
    epochs_total = 8
    longer = tmp_path / "longer.yaml"
    longer.write_text(f"training: {{epochs: {epochs_total}, iterations_per_epoch: 2, "
                      "val_iterations_per_epoch: 1}\n")
    target = "results/training/Phantom/Baseline/fold0/checkpoint_final.pth"
    snakemake(tmp_path, "--cores", "2", "results/preprocessed/Phantom.json")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(DEFAULT), str(OVERLAY), str(longer), "--cores", "1",
           target]
    log = tmp_path / "killed_run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    progress = tmp_path / "results" / "training" / "Phantom" / "Baseline" / "fold0" / "progress.csv"
    ckpt = progress.with_name("checkpoint_latest.pth")
    deadline = time.time() + 600
    try:
        # checkpoint_latest.pth exists from the end of epoch 0 until training ends, so waiting
        # for it and epoch 1's row leaves several epochs in which to kill (no race on mtimes).
        while time.time() < deadline:
            if (ckpt.is_file() and progress.is_file()
                    and len(progress.read_text().strip().splitlines()) >= 3):
                break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed:\n"
                            + log.read_text()[-3000:])
            time.sleep(0.2)
        else:
            pytest.fail("training did not reach epoch 2 in time:\n" + log.read_text()[-3000:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # like a SLURM job hitting its time limit
        proc.wait()
    assert not (tmp_path / target).exists()
    assert ckpt.is_file(), "the kill came after training had ended"
    # the checkpoint is written atomically: whatever epoch the kill hit, it is a whole one
    resume_epoch = torch.load(ckpt, map_location="cpu", weights_only=False)["current_epoch"]
    assert 1 <= resume_epoch < epochs_total
    # Snakemake itself was killed too: release its lock, as a user would, then rerun.
    snakemake(tmp_path, "--unlock", configfiles=(DEFAULT, OVERLAY, longer))
    snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", target,
              configfiles=(DEFAULT, OVERLAY, longer))
    rows = pd.read_csv(progress)
    assert list(rows["epoch"]) == list(range(epochs_total))
    # nnU-Net writes one training_log_<start time>.txt per start: the first run trained the
    # epochs before the checkpoint (and was killed later); the rerun started at the checkpoint.
    logs = sorted(progress.parent.glob("training_log_*.txt"))
    assert len(logs) == 2
    epochs = [[int(e) for e in re.findall(r": Epoch (\d+)\s*$", f.read_text(), flags=re.M)]
              for f in logs]
    assert epochs[0][:resume_epoch] == list(range(resume_epoch))
    assert epochs[1] == list(range(resume_epoch, epochs_total))
