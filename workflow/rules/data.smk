# Data stage: conversion into nnU-Net raw datasets, the label-noise report, k-fold splits.
# Source paths are params checked at run time, so the DAG dry-runs without the data.


rule convert:
    output:
        manifest=str(layout.raw_manifest(RESULTS, "{task}")),
        reference=directory(str(layout.reference_labels_dir(RESULTS, "{task}"))),
    log:
        str(layout.task_log(RESULTS, "convert", "{task}")),
    benchmark:
        str(layout.task_benchmark(RESULTS, "convert", "{task}"))
    conda:
        f"../../{ENV}"
    params:
        settings=lambda w: stages.convert_params(config, w.task),
    script:
        "../scripts/convert.py"


rule noise_report:
    input:
        manifest=str(layout.raw_manifest(RESULTS, "{task}")),
    output:
        csv=str(layout.noise_csv(RESULTS, "{task}")),
    log:
        str(layout.task_log(RESULTS, "noise", "{task}")),
    benchmark:
        str(layout.task_benchmark(RESULTS, "noise", "{task}"))
    conda:
        f"../../{ENV}"
    params:
        settings=lambda w: stages.noise_params(config, w.task),
    script:
        "../scripts/noise_report.py"


rule splits:
    input:
        manifest=str(layout.raw_manifest(RESULTS, "{task}")),
    output:
        splits=str(layout.splits_json(RESULTS, "{task}")),
    log:
        str(layout.task_log(RESULTS, "splits", "{task}")),
    benchmark:
        str(layout.task_benchmark(RESULTS, "splits", "{task}"))
    conda:
        f"../../{ENV}"
    params:
        settings=lambda w: stages.splits_params(config, w.task),
    script:
        "../scripts/splits.py"
