# Evaluation against the reference labels of the held-out fold: Dice, ASD, surface Dice, and the
# calibration metrics with the fold's reliability-diagram bins (header only when calibration is off).


rule evaluate:
    input:
        predictions=str(layout.predictions_dir(RESULTS, "{task}", "{method}", "{fold}")),
        splits=str(layout.splits_json(RESULTS, "{task}")),
    output:
        csv=str(layout.metrics_csv(RESULTS, "{task}", "{method}", "{fold}")),
        reliability=str(layout.reliability_csv(RESULTS, "{task}", "{method}", "{fold}")),
    params:
        settings=lambda w: stages.evaluate_params(config, w.task, w.method, int(w.fold)),
    threads: config["evaluation"]["n_workers"]
    log:
        f"{RESULTS}/logs/evaluate/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/evaluate.py"
