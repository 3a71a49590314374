# Data stage: conversion into nnU-Net raw datasets, the label-noise report, k-fold splits.
# Source paths are params checked at run time, so the DAG dry-runs without the data.


rule convert:
    output:
        manifest=f"{R}/raw/{{task}}.json",
        reference=directory(f"{R}/reference/{{task}}"),
    params:
        p=lambda w: P.convert_params(config, w.task),
    log:
        f"{R}/logs/convert/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/convert/{{task}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/convert.py"


rule noise_report:
    input:
        manifest=f"{R}/raw/{{task}}.json",
    output:
        csv=f"{R}/noise/{{task}}.csv",
    params:
        p=lambda w: P.noise_params(config, w.task),
    log:
        f"{R}/logs/noise/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/noise/{{task}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/noise_report.py"


rule splits:
    input:
        manifest=f"{R}/raw/{{task}}.json",
    output:
        splits=f"{R}/splits/{{task}}.json",
    params:
        p=lambda w: P.splits_params(config, w.task),
    log:
        f"{R}/logs/splits/{{task}}.log",
    benchmark:
        f"{R}/benchmarks/splits/{{task}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/splits.py"
