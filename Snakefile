# nnRobustLoss: do robust losses still help a strong nnU-Net baseline under label noise?
# Entry point: loads the config, validates it against the schema, includes one rule file per stage.
#   snakemake --cores 2                                   # the bundled phantom task
#   snakemake --profile profiles/slurm --configfile config/paper.yaml   # the paper's study

import os
import sys

from snakemake.utils import min_version

# Snakemake 8 brought the executor plugins (profiles/slurm) and the settings API used here.
min_version("8.0")

# Rule jobs (in the conda env of envs/nnrobustloss.yaml, too) import the package from this
# workflow's src/: no install of a relative path, and the code always matches the workflow.
SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)
# (set, not read: the linter's envvars check is about variables a workflow requires)
os.environ.update(PYTHONPATH=os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p))

from nnrobustloss import layout
from nnrobustloss import pipeline as stages
from nnrobustloss.config import validate_config
from nnrobustloss.cost import check_fits, runtime_minutes, tuned_methods, tuning_workers
from nnrobustloss.slurm_checks import check_slurm_run
from nnrobustloss.warmup import WARMUP_METHOD

# The embedded default; --configfile replaces it (pass it first to extend it instead).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


config = validate_config(config)
check_fits(config)  # warns about GPU jobs longer than cluster.max_job_hours
# Rules read paths from nnrobustloss.layout (with wildcard placeholders such as "{task}"), the
# settings of a job from nnrobustloss.pipeline ("stages": <stage>_params(config, ...), passed to
# the job's script as params.settings) and nothing else from the package.
RESULTS = config["results_dir"]
TASKS = list(config["tasks"])
METHODS = list(config["methods"])
FOLDS = list(config["folds"])
# Replicates of every final training (training.replicates, distinct seeds; tuning is shared).
REPLICATES = list(range(config["training"]["replicates"]))
# The replicate wildcard's value is a folder suffix: "" for replicate 0, "_rep<r>" otherwise.
REP = layout.REPLICATE_WILDCARD
# Methods with Optuna studies (none when tuning.enabled is false: registry defaults instead).
TUNED = tuned_methods(config)
ENV = "envs/nnrobustloss.yaml"
# The nnU-Net results tree's model folders: <Trainer>__<PLANS>__<CONFIGURATION>.
PLANS = stages.PLANS_IDENTIFIER
CONFIGURATION = config["planning"]["configuration"]


# --software-deployment-method apptainer: every job runs in this image (envs/nnrobustloss.def).
container: config["container"]


wildcard_constraints:
    task="|".join(TASKS),
    method="|".join(METHODS),
    fold=r"\d+",
    worker=r"\d+",
    replicate=layout.REPLICATE_SUFFIX_PATTERN,


# snakemake --report report.html: the study description and one captioned entry per table/figure.
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/nnunet.smk"
include: "workflow/rules/report.smk"


# On SLURM: a status command that can answer and no raw account-guess errors, checked before the
# first submission (nnrobustloss.slurm_checks; nothing happens with other executors).
onstart:
    check_slurm_run(workflow, lambda line: print(line, file=sys.stderr))


# Seconds-long rules run in the Snakemake process, not as cluster jobs.
localrules:
    all,
    data,
    select_best,
    nnunet_results,
    report,


rule all:
    input:
        report_outputs(),
        [str(p) for p in stages.nnunet_targets(config)],


rule data:
    """The data stage only: raw datasets, noise reports, splits and preprocessed data."""
    input:
        [str(layout.preprocessed_manifest(RESULTS, task)) for task in TASKS],
        [str(layout.noise_csv(RESULTS, task)) for task in TASKS],
