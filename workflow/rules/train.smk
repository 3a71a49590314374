# Final training with the best hyper-parameters; a rerun after a kill continues from
# checkpoint_latest.pth (nnU-Net writes it every epoch for our trainers).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=str(layout.training_checkpoint(RESULTS, "{task}", "{method}", "{fold}")),
        progress=str(layout.progress_csv(RESULTS, "{task}", "{method}", "{fold}")),
    params:
        settings=lambda w: stages.train_params(config, w.task, w.method, int(w.fold)),
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "train", w.method, attempt),
    log:
        f"{RESULTS}/logs/train/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/train.py"
