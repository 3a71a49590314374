"""Train one method on one fold of a preprocessed dataset (the ``train`` stage).

:func:`train` builds the method's trainer from the plans and ``dataset.json`` of the preprocessed
dataset, points it at explicit folders (no nnU-Net environment variables needed), applies the
settings, resumes from ``checkpoint_latest.pth`` when present and runs nnU-Net's training loop
with nnU-Net's data loading, augmentation, deep supervision, optimiser and checkpoints. The fold
split is nnU-Net's own ``do_split`` reading ``splits_final.json`` of the preprocessed dataset.
A finished run (``checkpoint_final.pth`` present, readable and written by a training with the
same settings, plans and fold) returns at once; to retrain, delete the output folder. The
pipeline's ``train`` stage (:func:`nnrobustloss.pipeline.run_train`, also behind
``nnrobustloss train``) maps the config onto :func:`train`.

Reproducibility: on the CPU a run is a deterministic function of its settings and of whether it
augments in-process (0 workers) or in seeded workers (any N >= 1 gives the same batches,
:mod:`nnrobustloss.trainers.augmentation`), and a run killed after epoch k and continued is
identical to one that never stopped (the checkpoint holds the RNG states; seeded workers
resume at the batch index where the run stood). CUDA kernels may be non-deterministic, so on a
GPU the same batches give statistically, not bitwise, equal trainings.

Adding a new loss
-----------------
A new method is a loss, one trainer class and one registry entry, plus its own test (README,
"Adding a loss"):

1. Write the per-resolution loss as an ``nn.Module`` with ``forward(logits, target, mask=None)``
   in :mod:`nnrobustloss.losses` (logits ``[B, K, *sp]``, integer target ``[B, 1, *sp]``; see
   ``MaskedCompoundLoss``, whose subclasses only implement ``terms``).
2. Subclass :class:`~nnrobustloss.trainers.base.RobustTrainer` (no ``__init__``: the base
   defines nnU-Net's) and build the loss in ``_build_loss``; hyper-parameters come from
   ``self.settings.params``, the method's config options from ``self.settings.options``::

       class nnUNetTrainer_MyLoss(RobustTrainer):
           def _build_loss(self):
               return self._wrap_deep_supervision(
                   MyLoss(self.settings.params["t"], soft_dice_kwargs=self._soft_dice_kwargs()))

   For a two-peer method subclass ``CoTeachingTrainer`` and implement ``select_level``.
3. Register it in :data:`nnrobustloss.methods.METHODS` with its search space and options:
   ``MethodSpec("MyLoss", "My loss", "nnrobustloss.trainers.single:nnUNetTrainer_MyLoss",
   search_space=(FloatParam("t", 0.1, 1.0),))`` (``peers=2`` for a two-peer method,
   ``options=(MethodOption(...), ...)`` for settings its trainer reads from the config). The
   config's ``methods`` then accepts ``MyLoss``; tuning, training (which passes the declared
   options without naming them), prediction, the cost plan and the report find everything
   they need in the registry.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nnrobustloss.errors import ConfigError, InputDataError
from nnrobustloss.fileio import read_json
from nnrobustloss.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST
from nnrobustloss.methods import METHODS, flat_options, get_method
from nnrobustloss.planning import nnunet_paths
from nnrobustloss.trainers.base import EpochCallback
from nnrobustloss.trainers.identity import check_identity, read_checkpoint, settings_diff
from nnrobustloss.trainers.loading import load_trainer_class
from nnrobustloss.trainers.resume import CHECKPOINT_KEY
from nnrobustloss.trainers.settings import TrainerSettings

NNUNET_DEFAULTS = {"epochs": 1000, "iterations_per_epoch": 250, "val_iterations_per_epoch": 50}


DEVICES = ("auto", "cpu", "cuda")
"""Values of the config key ``device`` (:func:`resolve_device`)."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu"/"cuda" as given (ConfigError without CUDA)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but PyTorch sees no CUDA device. Use device: auto or "
                              "cpu, or install a CUDA build of PyTorch.")
        return torch.device("cuda")
    raise ConfigError(f"device={device!r}: use one of {', '.join(DEVICES)}.")


def build_settings(method: str, params: Mapping[str, Any] | None = None,
                   epochs: int | None = None, iterations_per_epoch: int | None = None,
                   val_iterations_per_epoch: int | None = None,
                   options: Mapping[str, Any] | None = None, seed: int = 0,
                   **option_sections: Mapping[str, Any]) -> TrainerSettings:
    """:class:`TrainerSettings` (validated); None means nnU-Net's (or the paper's) default.

    ``options``: the method options, config-shaped (``{"<section>": {"<key>": value}}``) or
    by name (``{"<section>.<key>": value}``); a section may also be given as a keyword, as the
    config writes it (``<section>={"<key>": value}``). The settings hold the options that the
    method declares (``MethodSpec.options``), completed with their defaults; a key that no
    method declares raises ConfigError.
    """
    return TrainerSettings(
        method=method,
        params=dict(params or {}),
        num_epochs=NNUNET_DEFAULTS["epochs"] if epochs is None else epochs,
        num_iterations_per_epoch=NNUNET_DEFAULTS["iterations_per_epoch"]
        if iterations_per_epoch is None else iterations_per_epoch,
        num_val_iterations_per_epoch=NNUNET_DEFAULTS["val_iterations_per_epoch"]
        if val_iterations_per_epoch is None else val_iterations_per_epoch,
        options={**flat_options(options), **flat_options(option_sections)},
        seed=seed,
    )


def check_preprocessed(pre: str | os.PathLike[str], plans_identifier: str = "nnUNetPlans",
                       configuration: str = "3d_fullres", fold: int = 0) -> tuple[dict, dict]:
    """The plans and ``dataset.json`` of preprocessed dataset folder ``pre``, after checking
    that it exists (the plan stage ran), holds the configuration and that its
    ``splits_final.json`` defines ``fold``; InputDataError/ConfigError naming the file."""
    pre = Path(pre)
    if not pre.is_dir():
        raise InputDataError(f"{pre}: preprocessed dataset folder not found. Run the plan stage "
                             "first.")
    plans = read_json(pre / f"{plans_identifier}.json")
    dataset_json = read_json(pre / "dataset.json")
    if configuration not in plans.get("configurations", {}):
        raise ConfigError(f"{pre / (plans_identifier + '.json')}: no configuration "
                          f"{configuration!r} (has {', '.join(plans.get('configurations', {}))}).")
    splits = read_json(pre / "splits_final.json")
    if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < len(splits):
        # nnU-Net would silently invent a random 80:20 split for a missing fold
        raise ConfigError(f"fold {fold!r}: {pre / 'splits_final.json'} defines folds "
                          f"0..{len(splits) - 1}. Pick one of them or rerun the splits stage.")
    return plans, dataset_json


def _check_resume_settings(out: Path, settings: TrainerSettings) -> None:
    path = out / "settings.json"
    if not path.is_file():
        return
    old = read_json(path)
    if "options" not in old:  # written before the methods declared their options
        raise ConfigError(f"{path}: the unfinished run in {out} was started by an older "
                          "nnrobustloss (its settings have no 'options'); it cannot be "
                          f"continued by this version. Delete {out} to start over, or finish "
                          "it with the older version.")
    diff = settings_diff(old, settings.to_dict(), get_method(settings.method))
    if diff:
        raise ConfigError(f"{path}: the unfinished run in {out} used different settings "
                          f"({', '.join(diff)}). Delete {out} to start over with the new "
                          "settings, or rerun with the old ones.")


def _check_start_checkpoint(path: Path, settings: TrainerSettings, plans: Mapping[str, Any],
                            configuration: str, fold: int) -> list[dict[str, Any]]:
    """Check that checkpoint ``path`` (the shared warm-up) can start this run; return its
    progress rows.

    The run must be of a method that shares the warm-up, the checkpoint's settings must equal
    this run's except method, hyper-parameters and the options only one of the two methods
    reads, and it must not have trained past the run's warm-up
    (:func:`nnrobustloss.schedule.shared_epochs`, where the hyper-parameters start to matter).
    ConfigError otherwise.
    """
    from nnrobustloss.schedule import shared_epochs

    spec = get_method(settings.method)
    if not spec.shares_warmup:
        raise ConfigError(f"{path}: method {spec.id} cannot start from a shared warm-up (only "
                          "CoT, CoTPlus and StoCoT train hyper-parameter-free before the delay).")
    if not path.is_file():
        raise InputDataError(f"{path}: the shared warm-up checkpoint is missing. Run its "
                             "tune_warmup job first (snakemake builds it).")
    redo = "its tune_warmup job trains the warm-up again"
    ckpt = read_checkpoint(path, redo)
    extra = ckpt.get(CHECKPOINT_KEY)
    if not extra or "network_weights_peer_b" not in ckpt:
        raise ConfigError(f"{path}: not a checkpoint of a co-teaching trainer of nnRobustLoss. "
                          f"Delete it and rerun; {redo}.")
    check_identity(ckpt, path, spec=spec, plans=plans, configuration=configuration, fold=fold,
                   settings=settings.to_dict(), ignore=("method", "params"),
                   shared_options_only=True,
                   methods=tuple(m.id for m in METHODS.values() if m.shares_warmup),
                   todo=f"Delete it and rerun; {redo}.")
    limit = shared_epochs(settings)
    if int(ckpt["current_epoch"]) > limit:
        raise ConfigError(f"{path}: the warm-up ran {ckpt['current_epoch']} epochs, past this "
                          f"run's shared warm-up ({limit} epochs), where the method's "
                          "hyper-parameters matter. Delete it and rerun its tune_warmup job.")
    return [dict(r) for r in extra["progress_history"]]


def train(preprocessed_dataset_dir: str | os.PathLike[str], method: str, fold: int,
          output_dir: str | os.PathLike[str], params: Mapping[str, Any] | None = None,
          epochs: int | None = None, iterations_per_epoch: int | None = None,
          val_iterations_per_epoch: int | None = None,
          options: Mapping[str, Any] | None = None,
          seed: int = 0, device: str | torch.device = "auto",
          plans_identifier: str = "nnUNetPlans", configuration: str = "3d_fullres",
          epoch_callback: EpochCallback | None = None,
          continue_training: bool = True, checkpoint_minutes: float = 0.0,
          start_from: str | os.PathLike[str] | None = None,
          augmentation_workers: int | str = "auto",
          run_keys: Mapping[str, Any] | None = None,
          **option_sections: Mapping[str, Any]) -> Path:
    """Train ``method`` on ``fold`` of ``preprocessed_dataset_dir``; return ``output_dir``.

    ``preprocessed_dataset_dir``: nnU-Net preprocessed dataset folder (``<plans_identifier>.json``,
    ``dataset.json``, ``splits_final.json``, the configuration's data). ``params``: the method's
    hyper-parameters (missing ones take :func:`nnrobustloss.methods.default_params`). Epoch and
    iteration counts default to nnU-Net's (1000, 250, 50). ``options``: the method's options
    (``MethodSpec.options``; config sections ``{"<section>": {"<key>": value}}`` or
    ``<section>.<key>`` names), also accepted as keywords named by their section, as the config
    writes them; missing ones take their
    declared defaults (see :func:`build_settings`).
    ``epoch_callback(epoch, metrics)`` runs after every epoch's checkpoint; ``metrics`` is the
    progress.csv row (``train_pseudo_dice_ema`` is the tuning objective); an exception it raises
    stops training and propagates. Returns at once when ``checkpoint_final.pth`` exists and was
    trained with these settings (ConfigError naming it otherwise: a finished model is never
    silently kept for other settings); resumes from ``checkpoint_latest.pth`` when
    ``continue_training`` (else starts over) after checking that it is readable and of this
    training (:mod:`nnrobustloss.trainers.identity`).
    ``checkpoint_latest.pth`` is written after every epoch, or with ``checkpoint_minutes`` > 0 at
    most once per that many minutes (less I/O, more epochs lost to a kill; results unchanged).
    ``augmentation_workers``: seeded augmentation worker processes (0: in this process; "auto":
    nnU-Net's count on CUDA, ``nnUNet_n_proc_DA`` or 0 on the CPU; see
    :mod:`nnrobustloss.trainers.augmentation`: any N >= 1 gives the same batches).

    ``run_keys``: the task (and replicate) that name the run in ``progress.csv``, whose first
    columns are ``task, method, fold`` and then these keys' others (e.g. ``replicate``).

    ``start_from``: a shared warm-up checkpoint (:mod:`nnrobustloss.warmup`) to start from when
    there is nothing to resume: the run continues it exactly as a resumed run would, so that it
    equals the same run trained from scratch; ``epoch_callback`` is first called for each of its
    epochs (a pruner sees every epoch). Only for CoT, CoTPlus and StoCoT, and only a checkpoint
    of the same settings (except method and params) that stopped at or before the co-teaching
    delay; ConfigError otherwise.
    """
    spec = get_method(method)
    if not checkpoint_minutes >= 0:
        raise ConfigError(f"checkpoint_minutes={checkpoint_minutes!r}: must be >= 0 (0: every "
                          "epoch).")
    out = Path(output_dir)
    pre = Path(preprocessed_dataset_dir)
    settings = build_settings(spec.id, params, epochs, iterations_per_epoch,
                              val_iterations_per_epoch, options, seed, **option_sections)
    plans, dataset_json = check_preprocessed(pre, plans_identifier, configuration, fold)
    final, latest = out / CHECKPOINT_FINAL, out / CHECKPOINT_LATEST
    if final.is_file():  # done, if it is this training
        n = settings.num_epochs
        redo = f"all {n} epochs are trained again" if n > 1 else "its one epoch is trained again"
        check_identity(read_checkpoint(final, redo), final, spec=spec, plans=plans,
                       configuration=configuration, fold=fold, settings=settings.to_dict(),
                       replicate=(run_keys or {}).get("replicate"),
                       todo=f"The finished model is kept: delete {out} and rerun to train this "
                            f"one ({redo}), or rerun with the settings it was trained with.")
        return out
    resume = continue_training and latest.is_file()
    start = Path(start_from) if start_from is not None and not resume else None
    if resume:
        _check_resume_settings(out, settings)
        redo = "the training starts again from epoch 0"
        check_identity(read_checkpoint(latest, redo), latest, spec=spec, plans=plans,
                       configuration=configuration, fold=fold, settings=settings.to_dict(),
                       replicate=(run_keys or {}).get("replicate"),
                       todo=f"Delete it and rerun; {redo}.")
    warmup_rows = _check_start_checkpoint(start, settings, plans, configuration, fold) \
        if start is not None else []
    trainer_cls = load_trainer_class(spec)
    plans["continue_training"] = resume  # nnU-Net 2.8.1 pops this key in __init__
    # nnU-Net's __init__ creates $nnUNet_results/<dataset>/<trainer>.../fold_<k> and its log
    # there: point the variable at a scratch folder meanwhile, so that nothing lands under a
    # user's exported nnUNet_results (set_output_paths moves the log to the output folder).
    with tempfile.TemporaryDirectory(prefix="nnrobustloss-init-") as scratch, \
            nnunet_paths(results=scratch):
        trainer = trainer_cls(plans=plans, configuration=configuration, fold=fold,
                              dataset_json=dataset_json, device=resolve_device(device))
        trainer.set_output_paths(out, pre)
    trainer.configure(settings, epoch_callback, checkpoint_minutes=float(checkpoint_minutes),
                      augmentation_workers=augmentation_workers, run_keys=run_keys)
    if resume:
        trainer.load_checkpoint(str(latest))
        print(f"[train] continuing {out} from {latest.name} at epoch {trainer.current_epoch}",
              file=sys.stderr, flush=True)
    elif start is not None:
        trainer.load_checkpoint(str(start))
        for row in warmup_rows if epoch_callback is not None else ():
            epoch_callback(int(row["epoch"]), dict(row))
    trainer.run_training()
    return out


def parse_params(text: str | None) -> dict[str, Any]:
    """``--params`` value: a JSON object, or the path of a JSON file holding one (a tuning
    ``best_params.json`` gives its ``params``)."""
    if text is None or text == "":
        return {}
    p = Path(text)
    if not text.lstrip().startswith("{") and p.is_file():
        obj = read_json(p)
    else:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--params {text!r}: not a JSON object or an existing JSON file "
                              f"({e}). Example: --params '{{\"w\": 0.5}}'.") from e
    if not isinstance(obj, dict):
        raise ConfigError(f"--params {text!r}: must be a JSON object such as {{\"w\": 0.5}}.")
    if isinstance(obj.get("params"), dict):  # a tuning best_params.json
        return dict(obj["params"])
    return obj
