"""Snakemake adapter: the report stage's tables and figures."""

from pathlib import Path

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_report

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_report(snakemake.params.p, metrics_csvs=snakemake.input.metrics,
                   noise_csvs=snakemake.input.noise, trials_csvs=snakemake.input.trials,
                   reliability_csvs=snakemake.input.reliability,
                   progress_csvs=snakemake.input.progress,
                   # report_outputs() lists the tables first and the figures last
                   tables_dir=Path(snakemake.output[0]).parent,
                   figures_dir=Path(snakemake.output[-1]).parent)
