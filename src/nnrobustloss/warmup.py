"""The shared warm-up of the co-teaching family's tuning trials (docs/tuning.md).

Before ``coteaching.delay`` epochs (the delay of a tuning trial, scaled by
:func:`nnrobustloss.schedule.scaled_schedule`) CoT, CoT+ and StoCoT train both peers with plain
CE + Dice on every voxel: ramp(e) = 0 gives CoT and CoT+ the forget rate 0 (all voxels kept) and
StoCoT the threshold 0 (all kept, and no threshold is drawn, so its generator is not advanced).
Both peers start from the same seeded initialisation in all three trainers and read the same
global RNG streams. Their first ``delay`` epochs are therefore the same for every method of the
three and every value of R, a and b; with the paper's schedule that is 20 of the 50 epochs of
each trial. One warm-up of those epochs per task x fold (and seed) is trained once with the CoT
trainer (:data:`WARMUP_METHOD`; any of the three gives the same checkpoint), checkpointed as
``tuning/<Task>/warmup/fold<k>/seed<s>/checkpoint_warmup.pth``, and every trial of the three
methods continues from it (``train(start_from=...)``) exactly as a training killed after epoch
``delay`` and resumed would: the checkpoint holds both peers, both optimisers, the progress
history and the RNG states. On the CPU with single-threaded augmentation such a trial equals the
same trial trained from scratch bit for bit (a test checks it); on CUDA both reproduce
statistically only, as any resumed training.

The warm-up runs with the trials' epoch count (the poly learning-rate schedule depends on it)
and stops after its last warm-up epoch. CoT+ differs from CoT from epoch ``delay`` on (its
selection is restricted to disagreeing voxels even at rate 0), so exactly ``delay`` epochs are
shared. HRL's loss depends on w and sigma from epoch 0: never shared.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnrobustloss.errors import ConfigError, NNRobustLossError
from nnrobustloss.layout import CHECKPOINT_LATEST, WARMUP_CHECKPOINT
from nnrobustloss.methods import get_method
from nnrobustloss.schedule import run_schedule

if TYPE_CHECKING:
    import torch



WARMUP_METHOD = "CoT"
"""The trainer that trains the shared warm-up (with its default forget rate, unused at ramp 0)."""


class _WarmupDone(Exception):
    """Raised by the epoch callback after the last warm-up epoch (its checkpoint is written)."""


def warmup_epochs(epochs: int, coteaching: Mapping[str, Any]) -> int:
    """Epochs of the shared warm-up of a tuning trial of ``epochs`` epochs with the config
    section ``coteaching`` ({delay, gradual, max_fraction}): the trial's scaled co-teaching
    delay, or 0 (nothing to share) when the delay is 0 or covers the whole trial.

    The delay is :func:`nnrobustloss.schedule.run_schedule`'s, as the trainers scale it
    (torch-free: the Snakefile and the cost plan call this).
    """
    return _warmup_of({f"coteaching.{k}": v for k, v in coteaching.items()}, int(epochs))


def _warmup_of(options: Mapping[str, Any], epochs: int) -> int:
    """:func:`warmup_epochs` from method options by name (``coteaching.delay``, ...)."""
    delay, _ = run_schedule(options, epochs)
    return delay if 0 < delay < epochs else 0


def config_warmup_epochs(config: Mapping[str, Any]) -> int:
    """:func:`warmup_epochs` of the validated ``config``'s tuning trials (``tuning.epochs``)."""
    return warmup_epochs(config["tuning"]["epochs"], config["coteaching"])


def uses_shared_warmup(config: Mapping[str, Any], method: str) -> bool:
    """Whether the tuning trials of ``method`` start from the shared warm-up under the validated
    ``config``: tuning on, ``tuning.shared_warmup`` on, a method that shares the warm-up (CoT,
    CoTPlus, StoCoT) and a non-zero warm-up (:func:`warmup_epochs`)."""
    tu = config["tuning"]
    return bool(tu["enabled"] and tu.get("shared_warmup", True)
                and get_method(method).shares_warmup
                and config_warmup_epochs(config) > 0)


def trial_epochs(config: Mapping[str, Any], method: str) -> int:
    """Epochs that one tuning trial of ``method`` trains under the validated ``config``:
    ``tuning.epochs``, less the shared warm-up's when the trial starts from it."""
    epochs = int(config["tuning"]["epochs"])
    if uses_shared_warmup(config, method):
        return epochs - config_warmup_epochs(config)
    return epochs


def _epochs_done(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False,
                          mmap=True)["current_epoch"])


def train_warmup(output_dir: str | os.PathLike[str], *, preprocessed_dataset_dir:
                 str | os.PathLike[str], fold: int, epochs: int, iterations_per_epoch: int,
                 val_iterations_per_epoch: int, options: Mapping[str, Any] | None = None,
                 seed: int = 0, device: str | torch.device = "auto",
                 configuration: str = "3d_fullres", plans_identifier: str = "nnUNetPlans",
                 augmentation_workers: int | str = "auto",
                 **option_sections: Mapping[str, Any]) -> Path:
    """Train the shared warm-up of tuning trials of ``epochs`` epochs into ``output_dir``; return
    ``<output_dir>/checkpoint_warmup.pth``.

    The arguments are those of the trials' :func:`nnrobustloss.training.train` (``options`` and
    ``option_sections`` too: the method options, e.g. ``coteaching={"delay": 20}``). Trains
    :func:`warmup_epochs` epochs with the :data:`WARMUP_METHOD` trainer and moves that epoch's
    ``checkpoint_latest.pth`` to ``checkpoint_warmup.pth`` in one rename (never half-written).
    Returns at once when the checkpoint exists; a killed warm-up continues from its latest
    checkpoint (ConfigError if that run used other settings). It checkpoints after every epoch
    (``checkpoint_minutes`` 0: its last epoch's checkpoint is the warm-up). ConfigError when there is no
    warm-up to train (delay 0 or not shorter than the trial).
    """
    from nnrobustloss.methods import flat_options
    from nnrobustloss.training import train

    flat = {**flat_options(options), **flat_options(option_sections)}
    n = _warmup_of(flat, int(epochs))
    if n == 0:
        raise ConfigError(f"coteaching.delay: a {epochs}-epoch tuning trial has no shared "
                          "warm-up (its scaled delay is 0 or the whole trial); set "
                          "tuning.shared_warmup: false or a delay between 1 and epochs - 1.")
    out = Path(output_dir)
    final, latest = out / WARMUP_CHECKPOINT, out / CHECKPOINT_LATEST
    if final.is_file():
        return final

    def stop(epoch: int, metrics: dict[str, Any]) -> None:
        if epoch + 1 >= n:
            raise _WarmupDone

    if not (latest.is_file() and _epochs_done(latest) >= n):
        try:
            train(preprocessed_dataset_dir, WARMUP_METHOD, fold, out, epochs=epochs,
                  iterations_per_epoch=iterations_per_epoch,
                  val_iterations_per_epoch=val_iterations_per_epoch, options=flat,
                  seed=seed, device=device, plans_identifier=plans_identifier,
                  configuration=configuration, epoch_callback=stop, continue_training=True,
                  augmentation_workers=augmentation_workers)
        except _WarmupDone:
            pass
    done = _epochs_done(latest) if latest.is_file() else 0
    if done != n:
        raise NNRobustLossError(f"{latest}: holds {done} epochs, the warm-up needs {n}. Delete "
                                f"{out} and rerun.")
    os.replace(latest, final)
    (out / "checkpoint_best.pth").unlink(missing_ok=True)  # nnU-Net's; unused, as large
    return final
