# Plan stage: nnU-Net fingerprint, planner and preprocessing of both datasets (identical plans);
# copies the task's splits into both as splits_final.json.


rule plan:
    input:
        manifest=str(layout.raw_manifest(RESULTS, "{task}")),
        splits=str(layout.splits_json(RESULTS, "{task}")),
    output:
        manifest=str(layout.preprocessed_manifest(RESULTS, "{task}")),
    log:
        str(layout.task_log(RESULTS, "plan", "{task}")),
    benchmark:
        str(layout.task_benchmark(RESULTS, "plan", "{task}"))
    conda:
        f"../../{ENV}"
    threads: config["planning"]["num_processes"]
    params:
        settings=lambda w: stages.plan_params(config, w.task),
    script:
        "../scripts/plan.py"
