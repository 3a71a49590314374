# Evaluation against the reference labels of the held-out fold: Dice, ASD, surface Dice, and the
# calibration metrics with the fold's reliability-diagram bins (header only when calibration is off).


rule evaluate:
    input:
        predictions=f"{R}/predictions/{{task}}/{{method}}/fold{{fold}}",
        splits=f"{R}/splits/{{task}}.json",
    output:
        csv=f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}.csv",
        reliability=f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}_reliability.csv",
    params:
        p=lambda w: P.evaluate_params(config, w.task, w.method, int(w.fold)),
    threads: config["evaluation"]["n_workers"]
    log:
        f"{R}/logs/evaluate/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/evaluate.py"
