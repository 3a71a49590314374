# The nnU-Net results tree: each final training (replicate 0) and its predictions linked as
# nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration>/fold_<k>/ for stock nnU-Net tools;
# the fold's validation/summary.json is nnU-Net's summary against the reference labels.


rule nnunet_results:
    input:
        unpack(nnunet_results_inputs),
    output:
        summary=str(
            layout.nnunet_summary_json(RESULTS, "{dataset}", "{trainer}", PLANS, CONFIGURATION, "{fold}")
        ),
    log:
        str(layout.job_log(RESULTS, "nnunet_results", "{dataset}", "{trainer}", "{fold}")),
    wildcard_constraints:
        dataset=r"Dataset\d+_\w+",
        trainer=r"\w+",
    conda:
        f"../../{ENV}"
    params:
        settings=lambda w: stages.nnunet_results_params(config, w.dataset, w.trainer, int(w.fold)),
    script:
        "../scripts/nnunet_results.py"
