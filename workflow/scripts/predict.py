"""Snakemake adapter: sliding-window inference on the held-out cases of a fold."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_options, run_predict

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_predict(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                    splits_json=snakemake.input.splits, out_dir=snakemake.output.predictions,
                    threads=snakemake.threads, **run_options(snakemake.config, "predict"))
