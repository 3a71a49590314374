# The paper's tables and figures, from the metric, noise, trial and progress CSVs alone.


rule report:
    input:
        metrics=all_metrics(),
        noise=expand(f"{R}/noise/{{task}}.csv", task=TASKS),
        trials=all_trials(),
        progress=all_progress(),
        reliability=expand(
            f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}_reliability.csv",
            task=TASKS,
            method=METHODS,
            fold=FOLDS,
        ),
    output:
        report_outputs(),
    params:
        p=P.report_params(config),
    log:
        f"{R}/logs/report.log",
    benchmark:
        f"{R}/benchmarks/report.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/report.py"
