# Plan stage: nnU-Net fingerprint, planner and preprocessing of both datasets (identical plans);
# copies the task's splits into both as splits_final.json.


rule plan:
    input:
        manifest=f"{R}/raw/{{task}}.json",
        splits=f"{R}/splits/{{task}}.json",
    output:
        manifest=f"{R}/preprocessed/{{task}}.json",
    params:
        p=lambda w: P.plan_params(config, w.task),
    threads: config["planning"]["num_processes"]
    log:
        f"{R}/logs/plan/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/plan/{{task}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/plan.py"
