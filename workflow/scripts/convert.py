"""Snakemake adapter: a task's sources -> its noisy and reference nnU-Net raw datasets."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_convert

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_convert(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                    manifest=snakemake.output.manifest)
