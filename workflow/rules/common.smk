# Helpers shared by the workflow: target lists and input functions.

import os


def report_outputs():
    """Every file of the report stage."""
    return multiext(f"{R}/tables/table1", ".csv", ".md", ".tex") + multiext(
        f"{R}/tables/table2", ".csv", ".md", ".tex"
    ) + multiext(f"{R}/tables/noise_levels", ".csv", ".md", ".tex") + multiext(
        f"{R}/figures/figure1", ".png", ".pdf"
    ) + multiext(f"{R}/tables/table3", ".csv", ".md", ".tex") + multiext(
        f"{R}/figures/figure2_reliability", ".png", ".pdf"
    )


def study_root(w):
    return f"{R}/tuning/{w.task}/{w.method}/fold{w.fold}"


def worker_markers(w):
    """Markers of a study's workers. Once the study's results exist, only the markers already
    written count, so that changing tuning.workers never reruns a finished study."""
    root = study_root(w)
    if os.path.exists(f"{root}/best_params.json"):
        done = [f"{root}/worker{i}.done" for i in range(64) if os.path.exists(f"{root}/worker{i}.done")]
        if done:
            return done
    return [f"{root}/worker{i}.done" for i in range(config["tuning"]["workers"])]


def train_inputs(w):
    """A final training needs the preprocessed data and, for tuned methods, the best parameters."""
    inputs = {"plans": f"{R}/preprocessed/{w.task}.json"}
    if get_method(w.method).needs_tuning:
        inputs["best"] = f"{R}/tuning/{w.task}/{w.method}/fold{w.fold}/best_params.json"
    return inputs


def all_metrics():
    return expand(f"{R}/metrics/{{task}}/{{method}}/fold{{fold}}.csv", task=TASKS, method=METHODS, fold=FOLDS)


def all_trials():
    return expand(f"{R}/tuning/{{task}}/{{method}}/fold{{fold}}/trials.csv", task=TASKS, method=TUNED, fold=FOLDS)
