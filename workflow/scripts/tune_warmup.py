"""Snakemake adapter: the shared co-teaching warm-up of a task x fold's tuning trials."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_options, run_warmup

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_warmup(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                   checkpoint=snakemake.output.checkpoint, threads=snakemake.threads,
                   **run_options(snakemake.config, "warmup"))
