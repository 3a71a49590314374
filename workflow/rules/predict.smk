# Sliding-window inference (nnUNetPredictor, test-time mirroring) on the held-out cases; with
# evaluation.calibration also each case's calibration statistics against the reference labels
# (<case>_calibration.npz, a few kB) while its softmax is in memory.
# Resumable per case: finished cases wait in <output>.partial/ (not an output, so a failed job
# keeps them) until every case is done.


rule predict:
    input:
        checkpoint=str(layout.training_checkpoint(RESULTS, "{task}", "{method}", "{fold}", REP)),
        splits=str(layout.splits_json(RESULTS, "{task}")),
        reference=str(layout.reference_labels_dir(RESULTS, "{task}")),
    output:
        predictions=directory(str(layout.predictions_dir(RESULTS, "{task}", "{method}", "{fold}", REP))),
    log:
        str(layout.job_log(RESULTS, "predict", "{task}", "{method}", "{fold}", REP)),
    benchmark:
        str(layout.job_benchmark(RESULTS, "predict", "{task}", "{method}", "{fold}", REP))
    conda:
        f"../../{ENV}"
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "predict", w.method, attempt),
    params:
        settings=lambda w: stages.predict_params(
            config, w.task, w.method, int(w.fold), layout.replicate_of(w.replicate)
        ),
    script:
        "../scripts/predict.py"
