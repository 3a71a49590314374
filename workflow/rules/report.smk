# The paper's tables and figures, from the metric, noise, trial and progress CSVs alone.


rule report:
    input:
        metrics=per_training(layout.metrics_csv),
        noise=[str(layout.noise_csv(RESULTS, task)) for task in TASKS],
        trials=per_study(layout.trials_csv),
        progress=per_training(layout.progress_csv),
        reliability=per_training(layout.reliability_csv),
    output:
        report_outputs(),
    log:
        str(layout.stage_log(RESULTS, "report")),
    benchmark:
        str(layout.stage_benchmark(RESULTS, "report"))
    conda:
        f"../../{ENV}"
    params:
        settings=stages.report_params(config),
    script:
        "../scripts/report.py"
