"""The shared base of every nnRobustLoss trainer (docs/methods.md).

``RobustTrainer`` subclasses nnU-Net's ``nnUNetTrainer`` and defines its ``__init__`` with
nnU-Net's signature, once: nnU-Net records ``inspect.signature(self.__init__)`` of the final
class, so the method trainers define no ``__init__`` of their own (nnU-Net's loss variants do
the same) and usually override only ``_build_loss``. It adds:

- **settings from outside** (:meth:`configure`, before ``initialize()``): a
  :class:`~nnrobustloss.trainers.settings.TrainerSettings` (hyper-parameters, epochs, iterations
  per epoch, co-teaching schedule, SVLS options, seed) for one of the registry's methods whose
  trainer is this class, and an optional ``epoch_callback(epoch, metrics)``. The settings are
  recorded as ``settings.json`` in the output folder.
- **explicit folders** (:meth:`set_output_paths`): output folder, preprocessed dataset folder and
  log file are set from arguments, not from nnU-Net's environment variables. When
  ``nnUNet_results`` is unset, construction uses a temporary folder that is removed here.
- **progress**: the training-set pseudo Dice and its EMA, with nnU-Net's losses, validation
  pseudo Dice, learning rate and epoch time, in ``progress.csv`` every epoch
  (:class:`~nnrobustloss.trainers.progress.ProgressRecorder`), passed to ``epoch_callback``; an
  exception raised by the callback stops training and propagates (after the epoch's
  checkpoint was written).
- **checkpoints for wall-time limits and exact resumption**
  (:mod:`nnrobustloss.trainers.resume`): ``checkpoint_latest.pth``, written atomically after
  every epoch or at most every ``checkpoint_minutes``, also holds the settings, the progress
  history and the RNG states, restored after the data loaders' warm-up so that a continued run
  equals one that never stopped. nnU-Net's ``checkpoint_best.pth`` is not written: nothing here
  uses it and it would double the checkpoint I/O (``benchmarks/checkpoint.py``).
- **reproducible augmentation workers** (:mod:`nnrobustloss.trainers.augmentation`): with
  ``augmentation_workers`` >= 1 (:meth:`configure`) nnU-Net's loaders run in seeded workers
  with a fixed batch order instead of nnU-Net's non-deterministic augmenter; 0 augments in
  this process (nnU-Net's single-threaded augmenter).
- torch.compile is off; nnU-Net's CPU path (no autocast, no grad scaler) is used on the CPU;
  ``perform_actual_validation`` is skipped (the pipeline predicts separately); nnU-Net's
  progress.png is redrawn every :data:`PROGRESS_PLOT_EVERY` epochs.

Region-based (sigmoid) datasets and cascades are not supported.
"""


import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from time import time
from typing import Any

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
    NonDetMultiThreadedAugmenter,
)
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnrobustloss.errors import ConfigError, NNRobustLossError, user_error
from nnrobustloss.fileio import write_json, write_torch
from nnrobustloss.methods import get_method, methods_of_trainer
from nnrobustloss.trainers.identity import IDENTITY_KEY, checkpoint_identity
from nnrobustloss.trainers.progress import ProgressRecorder
from nnrobustloss.trainers.resume import (
    CHECKPOINT_KEY,
    CheckpointSchedule,
    ResumeState,
    seed_everything,
)
from nnrobustloss.trainers.settings import TrainerSettings

EpochCallback = Callable[[int, dict[str, Any]], None]

#: nnU-Net's progress.png is redrawn every this many epochs (and after the last one).
PROGRESS_PLOT_EVERY = 10

GRAD_CLIP_NORM = 12.0  # nnU-Net's clip_grad_norm_ value


@contextlib.contextmanager
def _results_env_fallback() -> Iterator[str | None]:
    """Point ``nnUNet_results`` at a temporary folder while nnU-Net's __init__ runs, if unset.

    nnU-Net derives (and creates) its output folder from the variable during construction; the
    real folder is set afterwards by :meth:`RobustTrainer.set_output_paths`.
    """
    if os.environ.get("nnUNet_results") is not None:
        yield None
        return
    tmp = tempfile.mkdtemp(prefix="nnrobustloss-init-")
    os.environ["nnUNet_results"] = tmp
    try:
        yield tmp
    finally:
        os.environ.pop("nnUNet_results", None)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    mod = module.module if hasattr(module, "module") and not isinstance(module, OptimizedModule) \
        else module
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


class RobustTrainer(nnUNetTrainer):
    """Base of the method trainers; see the module docstring. Subclasses usually override only
    ``_build_loss``; the registry (:data:`nnrobustloss.methods.METHODS`) says which methods a
    trainer class trains."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008 (nnU-Net's signature)
        with _results_env_fallback() as tmp:
            super().__init__(plans, configuration, fold, dataset_json, device)
        self._tmp_results_dir = tmp
        if self.label_manager.has_regions:
            raise ConfigError("dataset.json defines regions (sigmoid training): nnRobustLoss "
                              "trainers support only plain label maps. Remove 'regions_class_order'"
                              " and use integer labels.")
        methods = methods_of_trainer(type(self))
        if not methods:
            raise ConfigError(f"trainer {type(self).__name__} is not the trainer of any method of "
                              "the registry; add a MethodSpec for it to "
                              "nnrobustloss.methods.METHODS.")
        self.checkpoints = CheckpointSchedule()
        self.progress = ProgressRecorder()
        self.resume_state = ResumeState()
        self.epoch_callback: EpochCallback | None = None
        self.augmentation_workers = 0
        self.settings = TrainerSettings(method=methods[0])
        self._apply_settings()
        # nnU-Net redraws its 30 x 54 inch progress.png after every epoch (seconds on a CPU,
        # more than a whole phantom epoch); redraw every PROGRESS_PLOT_EVERY epochs and at the end.
        self._plot_progress_png = self.logger.plot_progress_png
        self.logger.plot_progress_png = self._plot_progress_throttled

    def _plot_progress_throttled(self, output_folder: str) -> None:
        epoch = self.current_epoch
        if (epoch + 1) % PROGRESS_PLOT_EVERY == 0 or epoch >= self.num_epochs - 1:
            png = Path(output_folder) / "progress.png"
            try:
                self._plot_progress_png(output_folder)
            except OSError as e:  # nnU-Net writes it in place: never leave a cut one
                png.unlink(missing_ok=True)
                raise user_error(OSError(e.errno, e.strerror, str(png))) from e

    # ------------------------------------------------------------------ settings and paths
    def configure(self, settings: TrainerSettings,
                  epoch_callback: EpochCallback | None = None,
                  checkpoint_minutes: float = 0.0,
                  augmentation_workers: int | str = 0,
                  run_keys: Mapping[str, Any] | None = None) -> None:
        """Apply ``settings`` and seed every RNG; must precede ``initialize()``.

        The settings' method must be one that the registry trains with this class.
        ``checkpoint_minutes``: write ``checkpoint_latest.pth`` after every epoch (0) or at most
        once per that many minutes (never a result setting). ``augmentation_workers``: seeded
        augmentation worker processes (0: in this process; "auto": see
        :func:`nnrobustloss.trainers.augmentation.resolve_workers`). ``run_keys``: what else
        names the run in ``progress.csv`` besides its method and fold (``task``,
        ``replicate``), written as its first columns."""
        from nnrobustloss.trainers.augmentation import resolve_workers

        if self.was_initialized:
            raise RuntimeError("configure() must be called before initialize()")
        trainer = get_method(settings.method).trainer_name
        if trainer != type(self).__name__:
            raise ConfigError(f"trainer {type(self).__name__} trains method(s) "
                              f"{', '.join(methods_of_trainer(type(self)))}, not "
                              f"{settings.method!r} (the registry's trainer of {settings.method} "
                              f"is {trainer}).")
        self.settings = settings
        keys = dict(run_keys or {})
        self.progress.keys = {"task": keys.pop("task", ""), "method": settings.method,
                              "fold": self.fold, **keys}
        self.epoch_callback = epoch_callback
        self.checkpoints = CheckpointSchedule(checkpoint_minutes)
        self.augmentation_workers = resolve_workers(augmentation_workers, self.device.type)
        self._apply_settings()
        seed_everything(self.settings.seed)

    def _apply_settings(self) -> None:
        """Copy the settings into nnU-Net's attributes (subclasses extend)."""
        s = self.settings
        self.num_epochs = s.num_epochs
        self.num_iterations_per_epoch = s.num_iterations_per_epoch
        self.num_val_iterations_per_epoch = s.num_val_iterations_per_epoch
        self.save_every = 1

    def set_output_paths(self, output_dir: str | os.PathLike[str],
                         preprocessed_dataset_dir: str | os.PathLike[str]) -> None:
        """Point every folder nnU-Net derives from its environment at explicit paths.

        ``output_dir`` receives checkpoints, logs, ``progress.csv`` and the plans/dataset.json
        copies (it is both nnU-Net's ``output_folder`` and ``output_folder_base``);
        ``preprocessed_dataset_dir`` is the preprocessed dataset (holding the plans,
        ``splits_final.json`` and the configuration's data folder).
        """
        if self.was_initialized:
            raise RuntimeError("set_output_paths() must be called before initialize()")
        if getattr(self, "is_cascaded", False):
            raise ConfigError(f"configuration {self.configuration_name!r} is a cascade stage; "
                              "nnRobustLoss trains only single-stage configurations.")
        out = Path(output_dir).resolve()
        out.mkdir(parents=True, exist_ok=True)
        pre = Path(preprocessed_dataset_dir).resolve()
        old_log = Path(self.log_file) if self.log_file else None
        self.output_folder_base = str(out)
        self.output_folder = str(out)
        self.preprocessed_dataset_folder_base = str(pre)
        self.preprocessed_dataset_folder = join(str(pre),
                                                self.configuration_manager.data_identifier)
        self.folder_with_segs_from_previous_stage = None
        self.logger.output_folder = str(out)
        new_log = out / (old_log.name if old_log else "training_log.txt")
        if old_log is not None and old_log.is_file() and old_log != new_log:
            with new_log.open("a", encoding="utf-8") as f:
                f.write(old_log.read_text(encoding="utf-8"))
        self.log_file = str(new_log)
        if self._tmp_results_dir is not None:
            shutil.rmtree(self._tmp_results_dir, ignore_errors=True)
            self._tmp_results_dir = None

    # ------------------------------------------------------------------ nnU-Net overrides
    def _do_i_compile(self) -> bool:
        """torch.compile is always off (reproducibility; nnU-Net's CPU path has it off too)."""
        return False

    def get_dataloaders(self) -> tuple[Any, Any]:
        """nnU-Net's loaders and transforms; augmented in this process (0 workers) or by
        :attr:`augmentation_workers` seeded workers whose batches are numbered from where this
        run stands (``current_epoch`` x iterations: a continued run reads the batches of the
        run that never stopped; see :mod:`nnrobustloss.trainers.augmentation`)."""
        from nnrobustloss.trainers.augmentation import seeded_augmenter

        # nnU-Net builds single-threaded augmenters (and draws their warm-up batch) when
        # nnUNet_n_proc_DA is 0: its loaders and transforms, nothing copied from its code.
        previous = os.environ.get("nnUNet_n_proc_DA")
        os.environ["nnUNet_n_proc_DA"] = "0"
        try:
            single_train, single_val = super().get_dataloaders()
        finally:
            if previous is None:
                os.environ.pop("nnUNet_n_proc_DA", None)
            else:
                os.environ["nnUNet_n_proc_DA"] = previous
        n = self.augmentation_workers
        if n == 0:
            return single_train, single_val
        pin = self.device.type == "cuda"
        train = seeded_augmenter(single_train.data_loader, self.settings.seed, "train", n,
                                 self.current_epoch * self.num_iterations_per_epoch, pin)
        val = seeded_augmenter(single_val.data_loader, self.settings.seed, "val",
                               max(1, n // 2),
                               self.current_epoch * self.num_val_iterations_per_epoch, pin)
        _ = next(train)  # nnU-Net's warm-up batch, as its own loaders do
        _ = next(val)
        return train, val

    def _soft_dice_kwargs(self) -> dict[str, Any]:
        """nnU-Net's Dice settings exactly as ``nnUNetTrainer._build_loss`` passes them."""
        return {"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                "do_bg": False, "ddp": self.is_ddp}

    def _deep_supervision_weights(self) -> np.ndarray:
        """nnU-Net's deep-supervision weights: 1/2^i, lowest level 0, normalised to sum 1."""
        scales = self._get_deep_supervision_scales()
        weights = np.array([1 / (2 ** i) for i in range(len(scales))])
        weights[-1] = 1e-6 if self.is_ddp else 0  # nnU-Net: DDP without compile
        return weights / weights.sum()

    def _wrap_deep_supervision(self, loss: nn.Module) -> nn.Module:
        """Wrap a per-resolution loss as ``nnUNetTrainer._build_loss`` does."""
        if self.enable_deep_supervision:
            return DeepSupervisionWrapper(loss, self._deep_supervision_weights())
        return loss

    def _require_no_ignore_label(self) -> None:
        if self.label_manager.has_ignore_label:
            raise ConfigError(f"dataset.json declares an 'ignore' label: method "
                              f"{self.settings.method} does not support ignore labels. Remove it "
                              "or use the Baseline.")

    def _autocast(self) -> Any:
        """nnU-Net's autocast rule: only on CUDA."""
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" \
            else dummy_context()

    def _batch_to_device(self, batch: dict) -> tuple[torch.Tensor, Any]:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        if isinstance(target, list):
            target = [t.to(self.device, non_blocking=True) for t in target]
        else:
            target = target.to(self.device, non_blocking=True)
        return data, target

    @staticmethod
    def _optimizer_step(loss: torch.Tensor, network: nn.Module, optimizer: torch.optim.Optimizer,
                        grad_scaler: Any) -> None:
        """Backward, clip to norm 12 and step, with the grad scaler when there is one (nnU-Net)."""
        if grad_scaler is not None:
            grad_scaler.scale(loss).backward()
            grad_scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP_NORM)
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), GRAD_CLIP_NORM)
            optimizer.step()

    def _accumulate_pseudo_dice(self, output: Any, target: Any) -> None:
        """Add this step's full-resolution (tp, fp, fn) to the epoch's counts."""
        out0 = output[0] if isinstance(output, (list, tuple)) else output
        tgt0 = target[0] if isinstance(target, (list, tuple)) else target
        self.progress.add_step(out0, tgt0, self.label_manager.ignore_label)

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train step (autocast on CUDA, grad scaler, clipping) + pseudo Dice counts."""
        data, target = self._batch_to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            del data
            loss = self.loss(output, target)
        self._optimizer_step(loss, self.network, self.optimizer, self.grad_scaler)
        self._accumulate_pseudo_dice(output, target)
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_start(self) -> None:
        """nnU-Net's epoch start (LR step, logging) and a fresh epoch of progress."""
        super().on_train_epoch_start()
        self.progress.start_epoch()

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """Log the train loss (nnU-Net) and compute the epoch's training pseudo Dice; stop with
        one line when the loss is NaN or infinite (before this epoch's checkpoint)."""
        losses = np.array([np.mean(o["loss"]) for o in train_outputs], dtype=float)
        if not np.all(np.isfinite(losses)):
            raise NNRobustLossError(
                f"{self.output_folder}: the {self.settings.method} loss became NaN or infinite in "
                f"epoch {self.current_epoch} (fold {self.fold}); training stopped before writing a "
                f"model. Likely cause: hyper-parameters the loss cannot train with "
                f"({self.settings.params or 'none'}) or plans that cannot train (fewer than 3 "
                "stages); fix them, delete this folder and rerun.")
        super().on_train_epoch_end(train_outputs)
        self.progress.finish_epoch(self.label_manager.foreground_labels)

    def _logged_values(self) -> dict[str, float]:
        """nnU-Net's logged values of the epoch that just ended (for the progress row)."""
        lg = self.logger
        return {"train_loss": lg.get_value("train_losses", step=-1),
                "val_loss": lg.get_value("val_losses", step=-1),
                "val_pseudo_dice": lg.get_value("mean_fg_dice", step=-1),
                "val_pseudo_dice_ema": lg.get_value("ema_fg_dice", step=-1),
                "lr": lg.get_value("lrs", step=-1),
                "epoch_seconds": time() - float(lg.get_value("epoch_start_timestamps", step=-1))}

    @property
    def progress_csv(self) -> Path:
        """``progress.csv`` in the output folder."""
        return Path(self.output_folder) / "progress.csv"

    def on_epoch_end(self) -> None:
        """Record the progress row, write progress.csv, let nnU-Net checkpoint, then call back."""
        epoch = self.current_epoch
        row = self.progress.record(epoch, self._logged_values(), self.progress_csv)
        self.print_to_log_file(
            f"train pseudo Dice {row['train_pseudo_dice']:.4f} "
            f"(EMA {row['train_pseudo_dice_ema']:.4f})")
        # nnU-Net writes checkpoint_latest when (epoch + 1) % save_every == 0
        self.save_every = 1 if self.checkpoints.due() else 2**62
        super().on_epoch_end()
        if self.epoch_callback is not None:
            self.epoch_callback(epoch, dict(row))

    def on_train_start(self) -> None:
        """nnU-Net's start (data loaders, plans copy), settings.json, then the restored RNGs."""
        super().on_train_start()
        self.checkpoints.start()
        write_json(Path(self.output_folder) / "settings.json", self.settings.to_dict())
        if self.progress.history:
            self.progress.write(self.progress_csv)
        # after the loaders' warm-up batch, exactly where the interrupted run stood
        self.resume_state.restore_pending()

    def run_training(self) -> None:
        """nnU-Net's loop; on any exception the data-loader workers are shut down first."""
        try:
            super().run_training()
        except BaseException:
            self._shutdown_dataloaders()
            raise

    def _shutdown_dataloaders(self) -> None:
        old_stdout = sys.stdout
        with open(os.devnull, "w") as f:
            sys.stdout = f
            try:
                for dl in (self.dataloader_train, self.dataloader_val):
                    if isinstance(dl, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                        dl._finish()
            finally:
                sys.stdout = old_stdout

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Skipped: the pipeline's predict stage predicts the held-out cases itself."""
        self.print_to_log_file("perform_actual_validation skipped (nnRobustLoss predicts "
                               "separately)")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        """Keys added to nnU-Net's checkpoint dict (subclasses extend)."""
        extras = self.resume_state.extras(self.settings.to_dict(), self.progress.history)
        init = self.my_init_kwargs
        extras[CHECKPOINT_KEY][IDENTITY_KEY] = checkpoint_identity(
            type(self).__name__, self.settings.to_dict(), init["plans"], init["configuration"],
            init["fold"], self.progress.keys.get("replicate"))
        return extras

    def _load_checkpoint_extras(self, checkpoint: Mapping[str, Any]) -> None:
        history = self.resume_state.load(checkpoint)
        if history is not None:
            self.progress.history = history

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint dict plus :meth:`_checkpoint_extras`, written atomically."""
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        if Path(filename).name == "checkpoint_best.pth":
            return  # unused (prediction loads checkpoint_final); see the module docstring
        checkpoint = {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict()
            if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
        }
        checkpoint.update(self._checkpoint_extras())
        write_torch(checkpoint, filename)

    def load_checkpoint(self, filename_or_checkpoint: str | os.PathLike[str] | dict) -> None:
        """nnU-Net's load (peer A, optimiser, logger, epoch) plus the extras of this package."""
        if isinstance(filename_or_checkpoint, dict):
            checkpoint = filename_or_checkpoint
            with tempfile.TemporaryDirectory() as d:  # nnU-Net's loader only accepts a path
                path = os.path.join(d, "checkpoint.pth")
                torch.save(checkpoint, path)
                super().load_checkpoint(path)
            self._load_checkpoint_extras(checkpoint)
            return
        path = str(filename_or_checkpoint)
        try:
            super().load_checkpoint(path)
            checkpoint = torch.load(path, map_location=self.device, weights_only=False)
            self._load_checkpoint_extras(checkpoint)
        except (RuntimeError, KeyError, ValueError) as e:  # a network or optimiser of another shape
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"{path}: its weights do not fit this training's network ({first}). "
                              "Delete it and rerun (the training starts again from epoch 0).") \
                from e


__all__ = ["RobustTrainer", "unwrap"]
