"""Snakemake adapter: link a fold's final training into the nnU-Net results tree."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_nnunet_results

# Guarded: nnU-Net's evaluation starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_nnunet_results(snakemake.params.settings, results_dir=snakemake.config["results_dir"])
