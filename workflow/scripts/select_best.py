"""Snakemake adapter: trials.csv and best_params.json of a complete study."""

from nnrobustloss.logs import logged
from nnrobustloss.pipeline import run_select_best

# Guarded: nnU-Net starts worker processes with 'spawn', which re-imports this file.
if __name__ == "__main__":
    with logged(snakemake.log[0]):
        run_select_best(snakemake.params.settings, results_dir=snakemake.config["results_dir"],
                        trials_csv=snakemake.output.trials, best_params_json=snakemake.output.best,
                        url_env=snakemake.config["tuning"]["postgresql_url_env"])
