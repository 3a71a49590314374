# Evaluation against the reference labels of the held-out fold: Dice, ASD, surface Dice, and the
# calibration metrics with the fold's reliability-diagram bins (header only when calibration is off).


rule evaluate:
    input:
        predictions=str(layout.predictions_dir(RESULTS, "{task}", "{method}", "{fold}", REP)),
        splits=str(layout.splits_json(RESULTS, "{task}")),
    output:
        csv=str(layout.metrics_csv(RESULTS, "{task}", "{method}", "{fold}", REP)),
        reliability=str(layout.reliability_csv(RESULTS, "{task}", "{method}", "{fold}", REP)),
    log:
        str(layout.job_log(RESULTS, "evaluate", "{task}", "{method}", "{fold}", REP)),
    benchmark:
        str(layout.job_benchmark(RESULTS, "evaluate", "{task}", "{method}", "{fold}", REP))
    conda:
        f"../../{ENV}"
    threads: config["evaluation"]["n_workers"]
    params:
        settings=lambda w: stages.evaluate_params(
            config, w.task, w.method, int(w.fold), layout.replicate_of(w.replicate)
        ),
    script:
        "../scripts/evaluate.py"
