"""Snakemake adapter: seeded k-fold splits of a task (splits/<Task>.json)."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_splits

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_splits(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                   out_json=snakemake.output.splits)
