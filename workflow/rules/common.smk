# Helpers shared by the workflow: target lists and input functions.

import os

from nnrobustloss.report import FIGURE_FORMATS, TABLE_FORMATS, report_stems

# Caption files of the report's entries (absolute: report() resolves relative paths against the
# folder of the file that is being parsed when it is called, which differs between callers).
CAPTIONS = os.path.join(workflow.basedir, "workflow", "report")

# The report's entry names (snakemake --report), per table/figure stem.
REPORT_LABELS = {
    "table1": "Table 1",
    "table2": "Table 2",
    "table3": "Table 3",
    "noise_levels": "Noise levels",
    "noise_sweep": "Noise sweep",
    "figure1": "Figure 1",
    "figure2_reliability": "Figure 2",
    "training_curves": "Training curves",
}


def report_outputs():
    """Every file of the report stage (nnrobustloss.report.report_stems knows which): the .html
    of each table and the .png of each figure are the report's entries, with a caption each."""
    tables, figures = report_stems(bool(P.report_params(config)["sweep"]))
    files = []
    for stem in tables:
        files += [f"{R}/tables/{stem}.{ext}" for ext in TABLE_FORMATS if ext != "html"]
        files.append(report(f"{R}/tables/{stem}.html", caption=f"{CAPTIONS}/{stem}.rst",
                            category="Tables", labels={"table": REPORT_LABELS[stem]}))
    for stem in figures:
        files += [f"{R}/figures/{stem}.{ext}" for ext in FIGURE_FORMATS if ext != "png"]
        files.append(report(f"{R}/figures/{stem}.png", caption=f"{CAPTIONS}/{stem}_figure.rst",
                            category="Figures", labels={"figure": REPORT_LABELS[stem]}))
    return files


def study_root(w):
    return f"{R}/tuning/{w.task}/{w.method}/fold{w.fold}"


def worker_markers(w):
    """Markers of a study's workers. Once the study's results exist, only the markers already
    written count, so that changing tuning.workers never reruns a finished study. The number of
    workers is nnrobustloss.cost.tuning_workers (tuning.workers: auto fits cluster.max_job_hours)."""
    root = study_root(w)
    if os.path.exists(f"{root}/best_params.json"):
        done = [f"{root}/worker{i}.done" for i in range(64) if os.path.exists(f"{root}/worker{i}.done")]
        if done:
            return done
    return [f"{root}/worker{i}.done" for i in range(tuning_workers(config, w.method))]


def tune_worker_inputs(w):
    """A tuning worker needs the preprocessed data and, for CoT, CoT+ and StoCoT with
    tuning.shared_warmup on, the task x fold's shared warm-up checkpoint (tune_warmup)."""
    inputs = {"plans": f"{R}/preprocessed/{w.task}.json"}
    warmup = P.warmup_checkpoint(config, w.task, w.method, int(w.fold))
    if warmup is not None:
        inputs["warmup"] = str(warmup)
    return inputs


def train_inputs(w):
    """A final training needs the preprocessed data and, for tuned methods, the best parameters."""
    inputs = {"plans": f"{R}/preprocessed/{w.task}.json"}
    if w.method in TUNED:
        inputs["best"] = f"{R}/tuning/{w.task}/{w.method}/fold{w.fold}/best_params.json"
    return inputs


def all_metrics():
    return expand(f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}.csv", task=TASKS, method=METHODS, fold=FOLDS)


def all_progress():
    return expand(f"{R}/training/{{task}}/{{method}}/fold{{fold}}/progress.csv", task=TASKS, method=METHODS, fold=FOLDS)


def all_trials():
    return expand(f"{R}/tuning/{{task}}/{{method}}/fold{{fold}}/trials.csv", task=TASKS, method=TUNED, fold=FOLDS)
