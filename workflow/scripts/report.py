"""Snakemake adapter: the report stage's tables and figures."""

from nnrobustloss import layout
from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_report

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    results = snakemake.config["results_dir"]
    with logged(snakemake.log[0]):
        run_report(snakemake.params.settings, results_dir=results,
                   metrics_csvs=snakemake.input.metrics,
                   noise_csvs=snakemake.input.noise, trials_csvs=snakemake.input.trials,
                   reliability_csvs=snakemake.input.reliability,
                   progress_csvs=snakemake.input.progress,
                   tables_dir=layout.tables_dir(results), figures_dir=layout.figures_dir(results))
