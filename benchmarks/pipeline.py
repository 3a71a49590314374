"""Wall time of a pipeline run per stage, from Snakemake's per-job benchmark files.

Every rule writes ``<results>/benchmarks/<stage>/...tsv`` (Snakemake's ``benchmark:`` directive:
wall seconds, peak memory). This script sums them per rule and prints a Markdown table, plus the
share of job time spent inside training/tuning epochs; the run's total wall time (first job start
to last job end, parallel jobs overlapping) is passed in.

    /usr/bin/time -f %e snakemake --cores 2          # note the elapsed seconds
    python benchmarks/pipeline.py results --wall 1234 > benchmarks/results/pipeline.md
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import pandas as pd


def collect(results_dir: Path) -> pd.DataFrame:
    """One row per job: stage (first folder under benchmarks/), job path, seconds, max RSS MB."""
    rows = []
    root = results_dir / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        stage = tsv.relative_to(root).parts[0].removesuffix(".tsv")
        if stage == "tune":  # tune/<T>/<M>/fold<k>/{worker<i>,select_best}.tsv, tune/<T>/warmup/..
            parts = tsv.relative_to(root).parts
            stage = ("tune_warmup" if parts[2] == "warmup" else
                     "select_best" if tsv.stem == "select_best" else "tune_worker")
        rows.append({"stage": stage, "job": str(tsv.relative_to(root)),
                     "s": float(df["s"].iloc[0]), "max_rss_mb": float(df["max_rss"].iloc[0])})
    if not rows:
        raise SystemExit(f"no benchmark files under {root}; run the pipeline first")
    return pd.DataFrame(rows)


def epoch_seconds(results_dir: Path) -> dict[str, float]:
    """Seconds spent inside nnU-Net epochs (training iterations plus the epoch's validation
    iterations; ``epoch_seconds`` of every progress.csv), per stage: ``train`` (final
    trainings), ``tune_worker`` (every tuning trial) and ``tune_warmup`` (the shared warm-ups)."""
    sums = {"train": 0.0, "tune_worker": 0.0, "tune_warmup": 0.0}
    for stage, pattern in (("train", "training/*/*/fold*/progress.csv"),
                           ("tune_worker", "tuning/*/*/fold*/trials/*/progress.csv"),
                           ("tune_warmup", "tuning/*/warmup/fold*/seed*/progress.csv")):
        for csv in results_dir.glob(pattern):
            sums[stage] += float(pd.read_csv(csv)["epoch_seconds"].sum())
    return sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, nargs="?", default=Path("results"))
    parser.add_argument("--wall", type=float, help="measured wall time of the whole run (s)")
    args = parser.parse_args()
    jobs = collect(args.results_dir)
    order = ["convert", "noise", "splits", "plan", "tune_warmup", "tune_worker", "select_best",
             "train", "predict", "evaluate", "report"]
    summary = (jobs.groupby("stage")
               .agg(jobs=("s", "size"), total_s=("s", "sum"), mean_s=("s", "mean"),
                    max_s=("s", "max"), peak_rss_mb=("max_rss_mb", "max"))
               .reindex([s for s in order if s in set(jobs["stage"])]))
    print(f"Machine: {platform.processor() or platform.machine()}, "
          f"{__import__('os').cpu_count()} cores, no GPU unless stated.\n")
    print("| stage | jobs | sum of job wall times (s) | mean per job (s) | slowest job (s) | peak RSS (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for stage, r in summary.iterrows():
        print(f"| {stage} | {int(r.jobs)} | {r.total_s:.0f} | {r.mean_s:.1f} | {r.max_s:.1f} | "
              f"{r.peak_rss_mb:.0f} |")
    print(f"| **all** | {len(jobs)} | {jobs['s'].sum():.0f} | | | |")
    inside = epoch_seconds(args.results_dir)
    total = jobs["s"].sum()
    print("\nTime inside nnU-Net epochs (training iterations and the epoch's validation "
          "iterations, from progress.csv), the rest of a job being start-up (imports, trainer "
          "and data-loader construction), checkpoints and bookkeeping:\n")
    print("| stage | inside epochs (s) | share of the stage's job time |")
    print("| --- | ---: | ---: |")
    for stage, secs in inside.items():
        if stage in summary.index:
            print(f"| {stage} | {secs:.0f} | {secs / summary.loc[stage, 'total_s']:.0%} |")
    print(f"| **all jobs** | {sum(inside.values()):.0f} | {sum(inside.values()) / total:.0%} |")
    if args.wall:
        print(f"\nWall time of the whole run: {args.wall:.0f} s ({args.wall / 60:.1f} min) with "
              "`--cores 2` (jobs run two at a time, so it is about half the sum above).")


if __name__ == "__main__":
    main()
