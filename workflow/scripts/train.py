"""Snakemake adapter: final training of a (task, method, fold) with its best parameters."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_options, run_train

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_train(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                  best_params_json=snakemake.input.get("best"), threads=snakemake.threads,
                  **run_options(snakemake.config, "train"))
