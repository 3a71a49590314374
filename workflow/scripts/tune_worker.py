"""Snakemake adapter: one worker's quota of trials of an Optuna study."""

from nnrobustloss.cost import tuning_workers
from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_options, run_tune_worker

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_tune_worker(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                        worker=int(snakemake.wildcards.worker),
                        workers=tuning_workers(snakemake.config, snakemake.wildcards.method),
                        marker=snakemake.output.marker, warmup=snakemake.input.get("warmup"),
                        url_env=snakemake.config["tuning"]["postgresql_url_env"],
                        threads=snakemake.threads, **run_options(snakemake.config, "tune"))
