# Sliding-window inference (nnUNetPredictor, test-time mirroring) on the held-out cases.


rule predict:
    input:
        checkpoint=f"{R}/training/{{task}}/{{method}}/fold{{fold}}/checkpoint_final.pth",
        splits=f"{R}/splits/{{task}}.json",
    output:
        predictions=directory(f"{R}/predictions/{{task}}/{{method}}/fold{{fold}}"),
    params:
        p=lambda w: P.predict_params(config, w.task, w.method, int(w.fold)),
    log:
        f"{R}/logs/predict/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/predict/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/predict.py"
