# Helpers shared by the workflow: target lists and input functions.

import os
import re

from nnrobustloss.report.outputs import FIGURE_FORMATS, TABLE_FORMATS, report_stems

# Caption files of the report's entries (absolute: report() resolves relative paths against the
# folder of the file that is being parsed when it is called, which differs between callers).
CAPTIONS = os.path.join(workflow.basedir, "workflow", "report")

# The report's entry names (snakemake --report), per table/figure stem.
REPORT_LABELS = {
    "table1": "Table 1",
    "table2": "Table 2",
    "table3": "Table 3",
    "folds": "Per-fold results",
    "noise_levels": "Noise levels",
    "noise_sweep": "Noise sweep",
    "figure1": "Figure 1",
    "figure2_reliability": "Figure 2",
    "training_curves": "Training curves",
}


def report_outputs():
    """Every file of the report stage (nnrobustloss.report.outputs.report_stems knows which): the .html
    of each table and the .png of each figure are the report's entries, with a caption each."""
    tables, figures = report_stems(bool(stages.report_params(config)["sweep"]))
    tables_dir, figures_dir = layout.tables_dir(RESULTS), layout.figures_dir(RESULTS)
    files = []
    for stem in tables:
        files += [str(tables_dir / f"{stem}.{ext}") for ext in TABLE_FORMATS if ext != "html"]
        # (report( never starts a line: Snakemake and snakefmt would read the report: keyword)
        html, labels = str(tables_dir / f"{stem}.html"), {"table": REPORT_LABELS[stem]}
        files.append(report(html, caption=f"{CAPTIONS}/{stem}.rst", category="Tables", labels=labels))
    for stem in figures:
        files += [str(figures_dir / f"{stem}.{ext}") for ext in FIGURE_FORMATS if ext != "png"]
        png, labels = str(figures_dir / f"{stem}.png"), {"figure": REPORT_LABELS[stem]}
        caption = f"{CAPTIONS}/{stem}_figure.rst"
        files.append(report(png, caption=caption, category="Figures", labels=labels))
    return files


def per_training(path_of):
    """``path_of(RESULTS, task, method, fold, replicate)`` (a nnrobustloss.layout function) of
    every task x method x fold x replicate of the config."""
    return [
        str(path_of(RESULTS, t, m, f, r)) for t in TASKS for m in METHODS for f in FOLDS for r in REPLICATES
    ]


def per_study(path_of):
    """The same for the tuned methods only (those with an Optuna study)."""
    return [str(path_of(RESULTS, t, m, f)) for t in TASKS for m in TUNED for f in FOLDS]


def worker_markers(w):
    """Markers of a study's workers. Once the study's results exist, only the markers already
    written count, so that changing tuning.workers never reruns a finished study. The number of
    workers is nnrobustloss.cost.tuning_workers (tuning.workers: auto fits cluster.max_job_hours)."""
    study = layout.study_dir(RESULTS, w.task, w.method, w.fold)
    if layout.best_params_json(RESULTS, w.task, w.method, w.fold).exists():
        done = sorted(
            (str(p) for p in study.glob("worker*.done") if re.fullmatch(r"worker\d+\.done", p.name)),
            key=lambda p: int(re.search(r"(\d+)\.done$", p).group(1)),
        )
        if done:
            return done
    return [
        str(layout.worker_marker(RESULTS, w.task, w.method, w.fold, i))
        for i in range(tuning_workers(config, w.method))
    ]


def tune_worker_inputs(w):
    """A tuning worker needs the preprocessed data and, for CoT, CoT+ and StoCoT with
    tuning.shared_warmup on, the task x fold's shared warm-up checkpoint (tune_warmup)."""
    inputs = {"plans": str(layout.preprocessed_manifest(RESULTS, w.task))}
    warmup = stages.warmup_checkpoint(config, w.task, w.method, int(w.fold))
    if warmup is not None:
        inputs["warmup"] = str(warmup)
    return inputs


def train_inputs(w):
    """A final training needs the preprocessed data and, for tuned methods, the best parameters."""
    inputs = {"plans": str(layout.preprocessed_manifest(RESULTS, w.task))}
    if w.method in TUNED:
        inputs["best"] = str(layout.best_params_json(RESULTS, w.task, w.method, w.fold))
    return inputs


def nnunet_results_inputs(w):
    """A fold of the nnU-Net results tree needs replicate 0 of its training, its predictions,
    the reference labels and the preprocessed dataset (plans, dataset.json, fingerprint)."""
    p = stages.nnunet_results_params(config, w.dataset, w.trainer, int(w.fold))
    task, method, fold = p["task"], p["method"], p["fold"]
    return {
        "checkpoint": str(layout.training_checkpoint(RESULTS, task, method, fold)),
        "predictions": str(layout.predictions_dir(RESULTS, task, method, fold)),
        "reference": str(layout.reference_labels_dir(RESULTS, task)),
        "plans": str(layout.preprocessed_manifest(RESULTS, task)),
    }
