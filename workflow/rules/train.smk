# Final training with the best hyper-parameters; a rerun after a kill continues from
# checkpoint_latest.pth (nnU-Net writes it every epoch for our trainers).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=str(layout.training_checkpoint(RESULTS, "{task}", "{method}", "{fold}", REP)),
        progress=str(layout.progress_csv(RESULTS, "{task}", "{method}", "{fold}", REP)),
    log:
        str(layout.job_log(RESULTS, "train", "{task}", "{method}", "{fold}", REP)),
    benchmark:
        str(layout.job_benchmark(RESULTS, "train", "{task}", "{method}", "{fold}", REP))
    conda:
        f"../../{ENV}"
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "train", w.method, attempt),
    params:
        settings=lambda w: stages.train_params(
            config, w.task, w.method, int(w.fold), layout.replicate_of(w.replicate)
        ),
    script:
        "../scripts/train.py"
