# Final training with the best hyper-parameters; a rerun after a kill continues from
# checkpoint_latest.pth (nnU-Net writes it every epoch for our trainers).


rule train:
    input:
        unpack(train_inputs),
    output:
        checkpoint=f"{R}/training/{{task}}/{{method}}/fold{{fold}}/checkpoint_final.pth",
        progress=f"{R}/training/{{task}}/{{method}}/fold{{fold}}/progress.csv",
    params:
        p=lambda w: P.train_params(config, w.task, w.method, int(w.fold)),
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "train", w.method, attempt),
    log:
        f"{R}/logs/train/{{task}}/{{method}}/fold{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{task}}/{{method}}/fold{{fold}}.tsv",
    conda:
        f"../../{ENV}"
    script:
        "../scripts/train.py"
