"""The sbatch lines of the paper's run, one job per rule, through the real SLURM executor plugin
and a fake SLURM (sbatch/sacct/squeue/scontrol/sinfo that log their arguments).

For each cluster rule the script lays out that job's inputs in a scratch results folder (empty
files: nothing is computed), runs ``snakemake --profile profiles/slurm --configfile
config/paper.yaml --allowed-rules RULE TARGET``, and the fake ``sacct`` reports every job as
FAILED, so the profile's ``retries: 2`` resubmits it with attempt 2 and 3 (a growing runtime).
Local rules (``select_best``, ``report``) must run without any sbatch call.

    python benchmarks/slurm_submission.py [benchmarks/results/slurm_submission.txt]
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
R = "results"
TASK, METHOD = "HIE", "HRL"  # a tuned two-peer method: the longest jobs
WORKERS = 6  # tuning.workers: auto for HRL in paper.yaml (nnrobustloss.cost.tuning_workers)

# rule -> (target, inputs that must exist); one job each, on separate folds so that no target is
# another job's input.
JOBS: dict[str, tuple[str, list[str]]] = {
    "convert": (f"{R}/raw/KiTS23.json", []),
    "noise_report": (f"{R}/noise/{TASK}.csv", [f"{R}/raw/{TASK}.json"]),
    "splits": (f"{R}/splits/{TASK}.json", [f"{R}/raw/{TASK}.json"]),
    "plan": (f"{R}/preprocessed/Heart.json", [f"{R}/raw/Heart.json", f"{R}/splits/Heart.json"]),
    "tune_worker": (f"{R}/tuning/{TASK}/{METHOD}/fold0/worker0.done",
                    [f"{R}/preprocessed/{TASK}.json"]),
    "select_best": (f"{R}/tuning/{TASK}/{METHOD}/fold1/best_params.json",
                    [f"{R}/tuning/{TASK}/{METHOD}/fold1/worker{i}.done" for i in range(WORKERS)]),
    "train": (f"{R}/training/{TASK}/{METHOD}/fold0/checkpoint_final.pth",
              [f"{R}/preprocessed/{TASK}.json", f"{R}/tuning/{TASK}/{METHOD}/fold0/best_params.json"]),
    "predict": (f"{R}/predictions/{TASK}/{METHOD}/fold1",
                [f"{R}/training/{TASK}/{METHOD}/fold1/checkpoint_final.pth",
                 f"{R}/splits/{TASK}.json", f"{R}/reference/{TASK}/"]),
    "evaluate": (f"{R}/metrics/{TASK}/{METHOD}/fold2.csv",
                 [f"{R}/predictions/{TASK}/{METHOD}/fold2/", f"{R}/splits/{TASK}.json"]),
}
LOCAL = ("select_best",)

FAKE = {
    # sbatch --parsable ...: log the call, print a job id
    "sbatch": """
        n = len(LOG.read_text().splitlines()) if LOG.exists() else 0
        with LOG.open("a") as f:
            f.write(" ".join(["sbatch", *sys.argv[1:]]).replace("\\n", " ") + "\\n")
        print(1000 + n)
    """,
    # the status query: every job submitted so far has FAILED; anything else (the plugin's
    # account guess) prints nothing
    "sacct": """
        with CALLS.open("a") as f:
            f.write(repr(sys.argv) + "\\n")
        if any(a.startswith("--format=JobIdRaw") for a in sys.argv):
            n = len(LOG.read_text().splitlines()) if LOG.exists() else 0
            for i in range(n):
                print(f"{1000 + i}|FAILED")
    """,
    "squeue": "pass",
    "sinfo": "pass",
    "sacctmgr": "pass",
    "sshare": "pass",
    "scontrol": 'print("MinJobAge = 300 sec")',
}


def fake_slurm(bindir: Path, log: Path, calls: Path) -> None:
    """Write the fake SLURM commands into ``bindir``."""
    for name, body in FAKE.items():
        path = bindir / name
        path.write_text(f"#!{sys.executable}\nimport sys\nfrom pathlib import Path\n"
                        f"LOG = Path({str(log)!r})\nCALLS = Path({str(calls)!r})\n"
                        + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def submit(rule: str, workdir: Path, env: dict[str, str], log: Path) -> tuple[list[str], str]:
    """Run the profile on one job of ``rule``; its sbatch lines and snakemake's output."""
    target, inputs = JOBS[rule]
    for rel in inputs:
        p = workdir / rel
        if rel.endswith("/"):
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch()
    before = len(log.read_text().splitlines()) if log.exists() else 0
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--profile", str(REPO / "profiles" / "slurm"), "--configfile",
           str(REPO / "config" / "paper.yaml"), "--allowed-rules", rule,
           "--slurm-init-seconds-before-status-checks", "1",
           "--seconds-between-status-checks", "1", "--latency-wait", "1", target]
    proc = subprocess.run(cmd, cwd=workdir, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=900)
    lines = log.read_text().splitlines()[before:] if log.exists() else []
    return lines, proc.stdout


def shorten(line: str, workdir: Path) -> str:
    """An sbatch line without the scratch folder and the wrapped snakemake command."""
    line = line.replace(str(workdir), "<workdir>")
    line = re.sub(r"--job-name [0-9a-f-]{36}", "--job-name <run-uuid>", line)
    return re.sub(r' --wrap=.*$', ' --wrap="<snakemake job command>"', line)


def main(out: str = "benchmarks/results/slurm_submission.txt") -> int:
    """Submit one job per rule to the fake SLURM; write the sbatch lines to ``out``."""
    with tempfile.TemporaryDirectory(prefix="fake-slurm-") as tmp:
        tmpdir = Path(tmp)
        bindir, workdir = tmpdir / "bin", tmpdir / "work"
        bindir.mkdir()
        workdir.mkdir()
        log, calls = tmpdir / "sbatch.log", tmpdir / "sacct.calls"
        fake_slurm(bindir, log, calls)
        env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
        report = ["# sbatch lines of the paper's run (config/paper.yaml, profiles/slurm), one job per "
                  "rule", "# fake SLURM: every job FAILED, so retries: 2 resubmits it (attempt 2, 3)",
                  f"# command: python benchmarks/slurm_submission.py {out}", ""]
        ok = True
        for rule in JOBS:
            lines, output = submit(rule, workdir, env, log)
            report.append(f"## {rule} ({JOBS[rule][0].removeprefix(R + '/')})")
            if rule in LOCAL:
                local = f"localrule {rule}:" in output
                ok &= local and not lines
                report.append(f"local rule: {'ran in the Snakemake process' if local else 'NOT local'}"
                              f", {len(lines)} sbatch call(s)")
            else:
                ok &= len(lines) == 3
                report += [f"attempt {i + 1}: {shorten(s, workdir)}" for i, s in enumerate(lines)]
                if not lines:
                    report.append("no sbatch call; snakemake said:\n" + output[-3000:])
            report.append("")
        account = [c for c in calls.read_text().splitlines() if "Account" in c] if calls.exists() else []
        report.append("## the plugin's account guess (slurm_account unset), as sacct received it")
        report += [re.sub(r"'[^']*/bin/sacct'", "'sacct'", a) for a in account[:1]] \
            or ["(no account query)"]
    text = "\n".join(report) + "\n"
    Path(out).write_text(text, encoding="utf-8")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
