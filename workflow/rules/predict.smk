# Sliding-window inference (nnUNetPredictor, test-time mirroring) on the held-out cases; with
# evaluation.calibration also each case's calibration statistics against the reference labels
# (<case>_calibration.npz, a few kB) while its softmax is in memory.
# Resumable per case: finished cases wait in <output>.partial/ (not an output, so a failed job
# keeps them) until every case is done.


rule predict:
    input:
        checkpoint=f"{R}/training/{{task}}/{{method}}/fold{{fold}}/checkpoint_final.pth",
        splits=f"{R}/splits/{{task}}.json",
        reference=f"{R}/reference/{{task}}",
    output:
        predictions=directory(f"{R}/predictions/{{task}}/{{method}}/fold{{fold}}"),
    params:
        p=lambda w: P.predict_params(config, w.task, w.method, int(w.fold)),
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "predict", w.method, attempt),
    log:
        f"{R}/logs/predict/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/predict/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/predict.py"
