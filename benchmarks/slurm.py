"""The smoke study through the one-node SLURM cluster against the same DAG with ``--cores 2``.

Usage (as root; starts the cluster of tests/slurm/cluster.py when it is not running)::

    python benchmarks/slurm.py [--workdir /tmp/slurm-bench] [--out benchmarks/results/slurm.md]
        [--config EXTRA.yaml ...] [--array-jobs RULES]

Runs ``config/config.yaml`` + ``config/smoke.yaml`` (+ ``--config`` overlays) twice from an
empty results folder: once with ``--cores 2`` and once with ``--profile`` (profiles/slurm with
its memory and CPU requests scaled to the node, the status polling of the tests), and prints:
wall time of each, ``sbatch`` jobs per rule, and per SLURM job the queue wait (StartTime -
SubmitTime), the job's elapsed time, the rule's own run time (Snakemake's ``benchmark:`` file)
and their difference, the per-job overhead of running a rule as a cluster job (a Snakemake
process started in the job, status polling). ``--array-jobs`` submits those rules as SLURM
job arrays (the plugin's ``--slurm-array-jobs``) to count the ``sbatch`` calls it saves.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "slurm"))
import cluster  # noqa: E402

SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


def _snakemake(workdir: Path, configs: list[Path], args: list[str]) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory",
           str(workdir), "--configfile", str(REPO / "config" / "config.yaml"),
           str(REPO / "config" / "smoke.yaml"), *map(str, configs), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, env=dict(os.environ, nnUNet_compile="false"))
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir}:\n{proc.stdout[-4000:]}")
    return wall, proc.stdout


def _record(jobid: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", "-o", jobid], text=True,
                          capture_output=True).stdout
    return dict(kv.split("=", 1) for kv in text.split() if "=" in kv)


def _seconds(a: str, b: str) -> float:
    fmt = "%Y-%m-%dT%H:%M:%S"
    return (datetime.strptime(b, fmt) - datetime.strptime(a, fmt)).total_seconds()


def _rule_seconds(results: Path, rule: str, log: str) -> float | None:
    """Run time of the rule's own work: its Snakemake benchmark file (s column), found by the
    wildcards in the plugin's log path."""
    parts = Path(log).parts
    i = next(k for k, p in enumerate(parts) if p.startswith("rule_"))
    wildcards = parts[i + 1] if len(parts) > i + 2 else ""
    stage = {"noise_report": "noise", "tune_worker": "tune", "tune_warmup": "tune"}.get(rule, rule)
    candidates = list((results / "benchmarks" / stage).rglob("*.tsv"))
    if rule == "tune_worker":  # tune/ also holds select_best.tsv and the warm-ups' seed<s>.tsv
        candidates = [p for p in candidates if p.name.startswith("worker")]
    elif rule == "tune_warmup":
        candidates = [p for p in candidates if p.name.startswith("seed")]
    values = dict(kv.split("=", 1) for kv in wildcards.split("_") if "=" in kv) if "=" in \
        wildcards else {}
    for path in candidates:
        text = str(path)
        if all(v in text for v in values.values() if v) and path.stat().st_size:
            return float(pd.read_csv(path, sep="\t")["s"].iloc[0])
    return None


def main() -> None:
    """Run both, print (and write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/slurm-bench"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--config", type=Path, nargs="*", default=[])
    ap.add_argument("--array-jobs", default="")
    args = ap.parse_args()
    args.config = [p.resolve() for p in args.config]  # snakemake runs in the work folders
    info = cluster.start()
    shutil.rmtree(args.workdir, ignore_errors=True)
    local, slurm = args.workdir / "local", args.workdir / "slurm"
    local.mkdir(parents=True)
    slurm.mkdir()
    profile = cluster.scaled_profile(REPO / "profiles" / "slurm", args.workdir / "profile",
                                     cpus=1, mem_mb=1500)
    wall_local, out_local = _snakemake(local, args.config, ["--cores", "2"])
    extra = ["--slurm-array-jobs", args.array_jobs] if args.array_jobs else []
    wall_slurm, out_slurm = _snakemake(slurm, args.config, ["--profile", str(profile),
                                                           "--slurm-init-seconds-before-status-"
                                                           "checks", "5", *extra])
    rows = []
    for jobid, log in SUBMITTED.findall(out_slurm):
        rule = next(p[5:] for p in Path(log).parts if p.startswith("rule_"))
        rec = _record(jobid)
        elapsed = _seconds(rec["StartTime"], rec["EndTime"])
        own = _rule_seconds(slurm / "results", rule, log)
        rows.append({"rule": rule, "jobid": jobid, "partition": rec.get("Partition"),
                     "wait_s": _seconds(rec["SubmitTime"], rec["StartTime"]),
                     "elapsed_s": elapsed, "rule_s": own,
                     "overhead_s": elapsed - own if own is not None else None})
    df = pd.DataFrame(rows)
    per_rule = df.groupby("rule").agg(jobs=("jobid", "size"), partition=("partition", "first"),
                                      wait_s=("wait_s", "mean"), elapsed_s=("elapsed_s", "mean"),
                                      rule_s=("rule_s", "mean"),
                                      overhead_s=("overhead_s", "mean")).reset_index()
    options = " ".join(["--config", *map(str, args.config)] if args.config else []
                       + (["--array-jobs", args.array_jobs] if args.array_jobs else []))
    lines = [f"# The smoke study through SLURM vs --cores 2 ({info['host']}: {info['cpus']} "
             f"CPUs, 1 emulated GPU; slurm-wlm 22.05, no accounting)", "",
             f"Command: `python benchmarks/slurm.py {options}` ({time.strftime('%Y-%m-%d')})",
             "",
             "| run | wall (s) | cluster jobs |", "| --- | ---: | ---: |",
             f"| --cores 2 | {wall_local:.0f} | - |",
             f"| --profile (SLURM) | {wall_slurm:.0f} | {len(df)} sbatch jobs |", "",
             "Per rule (means over its jobs; overhead = SLURM elapsed - the rule's own run time "
             "from its benchmark file):", "",
             "| rule | jobs | partition | queue wait (s) | elapsed (s) | rule's own (s) | "
             "overhead (s) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in per_rule.itertuples():
        own = f"{r.rule_s:.1f}" if pd.notna(r.rule_s) else "-"
        over = f"{r.overhead_s:.1f}" if pd.notna(r.overhead_s) else "-"
        lines.append(f"| {r.rule} | {r.jobs} | {r.partition} | {r.wait_s:.1f} | "
                     f"{r.elapsed_s:.1f} | {own} | {over} |")
    local_rules = sorted(set(re.findall(r"localrule (\w+):", out_slurm)) - {"all"})
    lines += ["", f"Local rules (run in the Snakemake process, never submitted): "
              f"{', '.join(local_rules)}.",
              f"Mean overhead per job: {df['overhead_s'].mean():.1f} s; total queue wait "
              f"{df['wait_s'].sum():.0f} s (GPU jobs wait for the node's one GPU)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
