# The paper's tables and figure, from the metric, noise and trial CSVs alone.


rule report:
    input:
        metrics=all_metrics(),
        noise=expand(f"{R}/noise/{{task}}.csv", task=TASKS),
        trials=all_trials(),
        reliability=expand(
            f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}_reliability.csv",
            task=TASKS,
            method=METHODS,
            fold=FOLDS,
        ),
    output:
        report(
            multiext(f"{R}/tables/table1", ".csv", ".md", ".tex"),
            category="Tables",
            labels={"table": "Table 1"},
        ),
        report(
            multiext(f"{R}/tables/table2", ".csv", ".md", ".tex"),
            category="Tables",
            labels={"table": "Table 2"},
        ),
        report(
            multiext(f"{R}/tables/noise_levels", ".csv", ".md", ".tex"),
            category="Tables",
            labels={"table": "Noise levels"},
        ),
        report(
            multiext(f"{R}/figures/figure1", ".png", ".pdf"),
            category="Figures",
            labels={"figure": "Figure 1"},
        ),
        report(
            multiext(f"{R}/tables/table3", ".csv", ".md", ".tex"),
            category="Tables",
            labels={"table": "Table 3"},
        ),
        report(
            multiext(f"{R}/figures/figure2_reliability", ".png", ".pdf"),
            category="Figures",
            labels={"figure": "Figure 2"},
        ),
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
