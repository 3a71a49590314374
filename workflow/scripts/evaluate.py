"""Snakemake adapter: metrics of a fold's predictions against the reference labels."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_evaluate

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_evaluate(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                     splits_json=snakemake.input.splits, pred_dir=snakemake.input.predictions,
                     out_csv=snakemake.output.csv, n_workers=snakemake.threads,
                     reliability_csv=snakemake.output.reliability)
