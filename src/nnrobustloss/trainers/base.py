"""The shared mixin of every nnRobustLoss trainer (DESIGN.md section 3).

``RobustTrainerMixin`` sits in front of ``nnUNetTrainer`` in the MRO and adds:

- **settings from outside** (:meth:`configure`, before ``initialize()``): hyper-parameters,
  epochs, iterations per epoch, co-teaching schedule, SVLS options, seed, an optional
  ``epoch_callback(epoch, metrics)``. The settings are recorded as ``settings.json`` in the
  output folder.
- **checkpoints for wall-time limits**: ``checkpoint_latest.pth`` after every epoch, or, with
  ``checkpoint_minutes`` > 0, after the first epoch that ends at least that long after the
  previous one (or the start); it is not a setting (it never changes a result, the checkpoint
  holds the RNG states). nnU-Net's ``checkpoint_best.pth`` is not written: nothing here uses it
  and it would double the checkpoint I/O (``benchmarks/checkpoint.py``).
- **explicit folders** (:meth:`set_output_paths`): output folder, preprocessed dataset folder and
  log file are set from arguments, not from nnU-Net's environment variables. When
  ``nnUNet_results`` is unset, construction uses a temporary folder that is removed here.
- **training-set pseudo Dice** and its EMA (see :mod:`nnrobustloss.trainers.progress`), written
  with nnU-Net's own losses, validation pseudo Dice, learning rate and epoch time to
  ``progress.csv`` every epoch and passed to ``epoch_callback``; an exception raised by the
  callback stops training and propagates (after the epoch's checkpoint was written).
- **exact resumption**: the checkpoint (written atomically) also holds the progress history, the
  settings and the RNG states (python ``random``, NumPy global, torch CPU and CUDA). They are
  restored after the data loaders were built and warmed up, so that a run continued from
  ``checkpoint_latest.pth`` draws the same batches as one that never stopped. This is exact with
  ``nnUNet_n_proc_DA=0`` (single-threaded augmentation reads only the global RNGs); nnU-Net's
  multi-process augmenter seeds its workers from the OS, so with workers the continuation is
  statistically, not bitwise, the same.
- torch.compile is off; nnU-Net's CPU path (no autocast, no grad scaler) is used on the CPU;
  ``perform_actual_validation`` is skipped (the pipeline predicts separately).

Region-based (sigmoid) datasets and cascades are not supported.
"""


import contextlib
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
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
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast, nn
from torch._dynamo import OptimizedModule

from nnrobustloss.errors import ConfigError
from nnrobustloss.fileio import atomic_path, write_json
from nnrobustloss.methods import resolve_params
from nnrobustloss.trainers.progress import (
    confusion_counts,
    ema_update,
    mean_or_nan,
    pseudo_dice,
    write_progress_csv,
)

EpochCallback = Callable[[int, dict[str, Any]], None]

#: nnU-Net's progress.png is redrawn every this many epochs (and after the last one).
PROGRESS_PLOT_EVERY = 10

STOCOT_THRESHOLD_MODES = ("random", "tiled")
PEER_UPDATE_MODES = ("sequential", "joint")
SVLS_KERNEL_NAMES = ("islam", "gaussian")
GRAD_CLIP_NORM = 12.0  # nnU-Net's clip_grad_norm_ value
CHECKPOINT_KEY = "nnrobustloss"


@dataclass
class TrainerSettings:
    """Everything set from outside a trainer; recorded as ``settings.json``.

    ``params`` are the method's hyper-parameters (completed with defaults and range-checked
    against the registry's search space); epochs and iterations are counts >= 1; ``delay`` and
    ``gradual`` are epochs >= 0 of the co-teaching ramp; ``stocot_thresholds`` is "random" or
    "tiled"; ``coteaching_peer_updates`` is "sequential" (one peer's graph in memory at a time) or
    "joint" (both graphs at once; one forward fewer), two schedules of the same updates;
    ``svls_kernel`` is "islam" or "gaussian"; ``seed`` seeds python, NumPy, torch and the
    StoCoT generator.
    """

    method: str
    params: dict[str, float] = field(default_factory=dict)
    num_epochs: int = 1000
    num_iterations_per_epoch: int = 250
    num_val_iterations_per_epoch: int = 50
    coteaching_delay: int = 20
    coteaching_gradual: int = 20
    stocot_thresholds: str = "random"
    coteaching_peer_updates: str = "sequential"
    svls_kernel: str = "islam"
    svls_hard_dice: bool = False
    seed: int = 0

    def validated(self) -> "TrainerSettings":
        """Return a copy with params resolved; ConfigError naming the key for a bad value."""
        for key in ("num_epochs", "num_iterations_per_epoch", "num_val_iterations_per_epoch"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"training setting {key}={v!r}: must be an integer >= 1.")
        for key in ("coteaching_delay", "coteaching_gradual"):
            v = getattr(self, key)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"coteaching.{key.split('_')[1]}={v!r}: must be an integer >= 0.")
        if self.stocot_thresholds not in STOCOT_THRESHOLD_MODES:
            raise ConfigError(f"coteaching.stocot_thresholds={self.stocot_thresholds!r}: use one "
                              f"of {', '.join(STOCOT_THRESHOLD_MODES)}.")
        if self.coteaching_peer_updates not in PEER_UPDATE_MODES:
            raise ConfigError(f"coteaching.peer_updates={self.coteaching_peer_updates!r}: use one "
                              f"of {', '.join(PEER_UPDATE_MODES)}.")
        if self.svls_kernel not in SVLS_KERNEL_NAMES:
            raise ConfigError(f"svls.kernel={self.svls_kernel!r}: use one of "
                              f"{', '.join(SVLS_KERNEL_NAMES)}.")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise ConfigError(f"seed={self.seed!r}: must be an integer.")
        params = resolve_params(self.method, self.params)
        return TrainerSettings(**{**asdict(self), "params": params,
                                  "num_epochs": int(self.num_epochs),
                                  "num_iterations_per_epoch": int(self.num_iterations_per_epoch),
                                  "num_val_iterations_per_epoch":
                                      int(self.num_val_iterations_per_epoch),
                                  "coteaching_delay": int(self.coteaching_delay),
                                  "coteaching_gradual": int(self.coteaching_gradual),
                                  "svls_hard_dice": bool(self.svls_hard_dice),
                                  "seed": int(self.seed)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return asdict(self)


@contextlib.contextmanager
def _results_env_fallback() -> Iterator[str | None]:
    """Point ``nnUNet_results`` at a temporary folder while nnU-Net's __init__ runs, if unset.

    nnU-Net derives (and creates) its output folder from the variable during construction; the
    real folder is set afterwards by :meth:`RobustTrainerMixin.set_output_paths`.
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


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states a training step reads: python, NumPy, torch CPU (and CUDA)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (tensors may sit on any device)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    """Seed python ``random``, NumPy's global RNG and torch (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module behind DDP / torch.compile wrappers."""
    mod = module.module if hasattr(module, "module") and not isinstance(module, OptimizedModule) \
        else module
    return mod._orig_mod if isinstance(mod, OptimizedModule) else mod


class RobustTrainerMixin:
    """Mixin for ``nnUNetTrainer`` subclasses; see the module docstring.

    Subclasses set ``method_id`` (a registry id) and usually override ``_build_loss``.
    """

    method_id: str = "Baseline"
    accepted_methods: tuple[str, ...] = ("Baseline",)

    # attributes provided by nnUNetTrainer (declared for type checkers)
    network: nn.Module
    optimizer: torch.optim.Optimizer
    grad_scaler: Any
    device: torch.device
    current_epoch: int
    num_epochs: int
    logger: Any
    label_manager: Any
    configuration_manager: Any
    output_folder: str
    output_folder_base: str
    log_file: str
    was_initialized: bool
    enable_deep_supervision: bool
    is_ddp: bool

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008 (nnU-Net's signature)
        with _results_env_fallback() as tmp:
            super().__init__(plans, configuration, fold, dataset_json, device)  # type: ignore[call-arg]
        self._tmp_results_dir = tmp
        if self.label_manager.has_regions:
            raise ConfigError("dataset.json defines regions (sigmoid training): nnRobustLoss "
                              "trainers support only plain label maps. Remove 'regions_class_order'"
                              " and use integer labels.")
        self.save_every = 1
        self.checkpoint_minutes = 0.0
        self._last_checkpoint = time()
        self.settings = TrainerSettings(method=self.method_id).validated()
        self._apply_settings()
        self.epoch_callback: EpochCallback | None = None
        self.progress_history: list[dict[str, Any]] = []
        self._pd_counts: np.ndarray | None = None
        self._epoch_extras: dict[str, Any] = {}
        self._pending_rng_state: dict[str, Any] | None = None
        # nnU-Net redraws its 30 x 54 inch progress.png after every epoch (seconds on a CPU,
        # more than a whole phantom epoch); redraw every PROGRESS_PLOT_EVERY epochs and at the end.
        self._plot_progress_png = self.logger.plot_progress_png  # type: ignore[attr-defined]
        self.logger.plot_progress_png = self._plot_progress_throttled  # type: ignore[attr-defined]

    def _plot_progress_throttled(self, output_folder: str) -> None:
        epoch = self.current_epoch  # type: ignore[attr-defined]
        if (epoch + 1) % PROGRESS_PLOT_EVERY == 0 or epoch >= self.num_epochs - 1:  # type: ignore[attr-defined]
            self._plot_progress_png(output_folder)

    # ------------------------------------------------------------------ settings and paths
    def configure(self, settings: TrainerSettings,
                  epoch_callback: EpochCallback | None = None) -> None:
        """Apply ``settings`` (validated) and seed every RNG; must precede ``initialize()``."""
        if self.was_initialized:
            raise RuntimeError("configure() must be called before initialize()")
        if settings.method not in self.accepted_methods:
            raise ConfigError(f"trainer {type(self).__name__} trains method(s) "
                              f"{', '.join(self.accepted_methods)}, not {settings.method!r}.")
        self.settings = settings.validated()
        self.epoch_callback = epoch_callback
        self._apply_settings()
        seed_everything(self.settings.seed)

    def _apply_settings(self) -> None:
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

    def _soft_dice_kwargs(self) -> dict[str, Any]:
        """nnU-Net's Dice settings exactly as ``nnUNetTrainer._build_loss`` passes them."""
        return {"batch_dice": self.configuration_manager.batch_dice, "smooth": 1e-5,
                "do_bg": False, "ddp": self.is_ddp}

    def _deep_supervision_weights(self) -> np.ndarray:
        """nnU-Net's deep-supervision weights: 1/2^i, lowest level 0, normalised to sum 1."""
        scales = self._get_deep_supervision_scales()  # type: ignore[attr-defined]
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
        counts = confusion_counts(out0, tgt0, self.label_manager.ignore_label)
        self._pd_counts = counts if self._pd_counts is None else self._pd_counts + counts

    def train_step(self, batch: dict) -> dict:
        """nnU-Net's train step (autocast on CUDA, grad scaler, clipping) + pseudo Dice counts."""
        data, target = self._batch_to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            output = self.network(data)
            del data
            loss = self.loss(output, target)  # type: ignore[attr-defined]
        self._optimizer_step(loss, self.network, self.optimizer, self.grad_scaler)
        self._accumulate_pseudo_dice(output, target)
        return {"loss": loss.detach().cpu().numpy()}

    def on_train_epoch_start(self) -> None:
        """nnU-Net's epoch start (LR step, logging) and a reset of the pseudo-Dice counts."""
        super().on_train_epoch_start()  # type: ignore[misc]
        self._pd_counts = None
        self._epoch_extras = {}

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """Log the train loss (nnU-Net) and compute the epoch's training pseudo Dice."""
        super().on_train_epoch_end(train_outputs)  # type: ignore[misc]
        k = self.label_manager.num_segmentation_heads
        counts = self._pd_counts if self._pd_counts is not None \
            else np.zeros((3, k - 1), dtype=np.int64)
        value, per_class = pseudo_dice(counts)
        self._epoch_extras["train_pseudo_dice"] = value
        for label, d in zip(self.label_manager.foreground_labels, per_class, strict=False):
            self._epoch_extras[f"train_dice_class{label}"] = d

    def _progress_row(self, epoch: int) -> dict[str, Any]:
        lg = self.logger
        previous = self.progress_history[-1]["train_pseudo_dice_ema"] \
            if self.progress_history else None
        value = self._epoch_extras.get("train_pseudo_dice", float("nan"))
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": float(lg.get_value("train_losses", step=-1)),
            "val_loss": float(lg.get_value("val_losses", step=-1)),
            "val_pseudo_dice": float(lg.get_value("mean_fg_dice", step=-1)),
            "val_pseudo_dice_ema": float(lg.get_value("ema_fg_dice", step=-1)),
            "train_pseudo_dice": value,
            "train_pseudo_dice_ema": ema_update(previous, value),
            "lr": float(lg.get_value("lrs", step=-1)),
            "epoch_seconds": time() - float(lg.get_value("epoch_start_timestamps", step=-1)),
        }
        row.update({k: v for k, v in self._epoch_extras.items() if k != "train_pseudo_dice"})
        return row

    @property
    def progress_csv(self) -> Path:
        """``progress.csv`` in the output folder."""
        return Path(self.output_folder) / "progress.csv"

    @property
    def train_pseudo_dice_ema(self) -> float:
        """EMA of the training pseudo Dice after the last finished epoch (NaN before any)."""
        return float(self.progress_history[-1]["train_pseudo_dice_ema"]) \
            if self.progress_history else float("nan")

    def on_epoch_end(self) -> None:
        """Record the progress row, write progress.csv, let nnU-Net checkpoint, then call back."""
        epoch = self.current_epoch
        row = self._progress_row(epoch)
        self.progress_history = [r for r in self.progress_history if r["epoch"] < epoch] + [row]
        write_progress_csv(self.progress_csv, self.progress_history)
        self.print_to_log_file(  # type: ignore[attr-defined]
            f"train pseudo Dice {row['train_pseudo_dice']:.4f} "
            f"(EMA {row['train_pseudo_dice_ema']:.4f})")
        if time() - self._last_checkpoint >= 60.0 * self.checkpoint_minutes:
            self.save_every = 1  # nnU-Net writes checkpoint_latest when (epoch + 1) % save_every == 0
            self._last_checkpoint = time()
        else:
            self.save_every = 2**62
        super().on_epoch_end()  # type: ignore[misc]
        if self.epoch_callback is not None:
            self.epoch_callback(epoch, dict(row))

    def on_train_start(self) -> None:
        """nnU-Net's start (data loaders, plans copy), settings.json, then the restored RNGs."""
        super().on_train_start()  # type: ignore[misc]
        self._last_checkpoint = time()
        write_json(Path(self.output_folder) / "settings.json", self.settings.to_dict())
        if self.progress_history:
            write_progress_csv(self.progress_csv, self.progress_history)
        if self._pending_rng_state is not None:
            # after the loaders' warm-up batch, exactly where the interrupted run stood
            restore_rng_state(self._pending_rng_state)
            self._pending_rng_state = None

    def run_training(self) -> None:
        """nnU-Net's loop; on any exception the data-loader workers are shut down first."""
        try:
            super().run_training()  # type: ignore[misc]
        except BaseException:
            self._shutdown_dataloaders()
            raise

    def _shutdown_dataloaders(self) -> None:
        old_stdout = sys.stdout
        with open(os.devnull, "w") as f:
            sys.stdout = f
            try:
                for dl in (self.dataloader_train, self.dataloader_val):  # type: ignore[attr-defined]
                    if isinstance(dl, (NonDetMultiThreadedAugmenter, MultiThreadedAugmenter)):
                        dl._finish()
            finally:
                sys.stdout = old_stdout

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Skipped: the pipeline's predict stage predicts the held-out cases itself."""
        self.print_to_log_file("perform_actual_validation skipped (nnRobustLoss predicts "  # type: ignore[attr-defined]
                               "separately)")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        """Keys added to nnU-Net's checkpoint dict (subclasses extend)."""
        return {CHECKPOINT_KEY: {
            "settings": self.settings.to_dict(),
            "progress_history": [dict(r) for r in self.progress_history],
            "rng_state": capture_rng_state(),
        }}

    def _load_checkpoint_extras(self, checkpoint: Mapping[str, Any]) -> None:
        extra = checkpoint.get(CHECKPOINT_KEY)
        if extra is None:
            return
        self.progress_history = [dict(r) for r in extra.get("progress_history", [])]
        self._pending_rng_state = extra.get("rng_state")

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint dict plus :meth:`_checkpoint_extras`, written atomically."""
        if self.local_rank != 0:  # type: ignore[attr-defined]
            return
        if self.disable_checkpointing:  # type: ignore[attr-defined]
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")  # type: ignore[attr-defined]
            return
        if Path(filename).name == "checkpoint_best.pth":
            return  # unused (prediction loads checkpoint_final); see the module docstring
        checkpoint = {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict()
            if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,  # type: ignore[attr-defined]
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,  # type: ignore[attr-defined]
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,  # type: ignore[attr-defined]
        }
        checkpoint.update(self._checkpoint_extras())
        with atomic_path(filename) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, filename_or_checkpoint: str | os.PathLike[str] | dict) -> None:
        """nnU-Net's load (peer A, optimiser, logger, epoch) plus the extras of this package."""
        if isinstance(filename_or_checkpoint, dict):
            checkpoint = filename_or_checkpoint
            with tempfile.TemporaryDirectory() as d:  # nnU-Net's loader only accepts a path
                path = os.path.join(d, "checkpoint.pth")
                torch.save(checkpoint, path)
                super().load_checkpoint(path)  # type: ignore[misc]
        else:
            path = str(filename_or_checkpoint)
            super().load_checkpoint(path)  # type: ignore[misc]
            checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        self._load_checkpoint_extras(checkpoint)


__all__ = [
    "RobustTrainerMixin",
    "TrainerSettings",
    "capture_rng_state",
    "mean_or_nan",
    "restore_rng_state",
    "seed_everything",
]
