"""Snakemake adapter: noisy-vs-reference label agreement of every case (noise/<Task>.csv)."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_noise_report

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_noise_report(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                         out_csv=snakemake.output.csv)
