"""Snakemake adapter: nnU-Net planning and preprocessing of a task's two datasets."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_plan

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_plan(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                 splits_json=snakemake.input.splits, manifest=snakemake.output.manifest,
                 num_processes=snakemake.threads)
