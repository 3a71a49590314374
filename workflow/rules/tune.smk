# Tuning: one Optuna study per task x method x fold, run by tuning_workers() jobs (tune_worker), then
# select_best writes trials.csv and best_params.json once the study holds n_trials finished trials.
# The study's storage is a params value (never an output: Snakemake deletes the outputs of a
# failed job); tuning.workers is not a param, so changing it does not rerun finished studies.
# runtime (minutes) = the job's estimated work x cluster.safety_factor + overhead, x attempt,
# capped at cluster.max_job_hours (nnrobustloss.cost); select_best is a local rule (seconds).
# With tuning.shared_warmup, the workers of CoT, CoT+ and StoCoT start every trial from the one
# warm-up checkpoint of their task x fold (tune_warmup: the first coteaching.delay epochs).


rule tune_worker:
    input:
        unpack(tune_worker_inputs),
    output:
        marker=str(layout.worker_marker(RESULTS, "{task}", "{method}", "{fold}", "{worker}")),
    log:
        str(layout.tuning_log(RESULTS, "{task}", "{method}", "{fold}", "worker{worker}")),
    benchmark:
        str(layout.tuning_benchmark(RESULTS, "{task}", "{method}", "{fold}", "worker{worker}"))
    conda:
        f"../../{ENV}"
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "tune_worker", w.method, attempt),
    params:
        settings=lambda w: stages.tune_params(config, w.task, w.method, int(w.fold)),
    script:
        "../scripts/tune_worker.py"


rule select_best:
    input:
        workers=worker_markers,
    output:
        trials=str(layout.trials_csv(RESULTS, "{task}", "{method}", "{fold}")),
        best=str(layout.best_params_json(RESULTS, "{task}", "{method}", "{fold}")),
    log:
        str(layout.tuning_log(RESULTS, "{task}", "{method}", "{fold}", "select_best")),
    benchmark:
        str(layout.tuning_benchmark(RESULTS, "{task}", "{method}", "{fold}", "select_best"))
    conda:
        f"../../{ENV}"
    params:
        settings=lambda w: stages.tune_params(config, w.task, w.method, int(w.fold)),
    script:
        "../scripts/select_best.py"


rule tune_warmup:
    input:
        plans=str(layout.preprocessed_manifest(RESULTS, "{task}")),
    output:
        checkpoint=str(layout.warmup_checkpoint(RESULTS, "{task}", "{fold}", "{seed}")),
    log:
        str(layout.tuning_log(RESULTS, "{task}", "warmup", "{fold}", "seed{seed}")),
    benchmark:
        str(layout.tuning_benchmark(RESULTS, "{task}", "warmup", "{fold}", "seed{seed}"))
    wildcard_constraints:
        seed=r"\d+",
    conda:
        f"../../{ENV}"
    resources:
        runtime=lambda w, attempt: runtime_minutes(config, "tune_warmup", WARMUP_METHOD, attempt),
    params:
        settings=lambda w: stages.warmup_params(config, w.task, int(w.fold)),
    script:
        "../scripts/tune_warmup.py"
