"""Two-peer trainers of the co-teaching family: CoT, CoT+, StoCoT and HRL (docs/methods.md).

Peers A (nnU-Net's ``self.network``) and B (``self.network_b``) see the same mini-batch. Each has
its own SGD optimiser and poly-LR schedule (built by nnU-Net's ``configure_optimizers``), its own
grad scaler (CUDA only) and its own gradient clipping. At every deep-supervision level with a
non-zero weight, the keep-mask for each peer comes from its **partner**, computed under
``no_grad`` from detached outputs:

- CoT: the partner keeps the floor((1 - R ramp(e)) N) voxels of the mini-batch with the smallest
  partner CE (:func:`~nnrobustloss.selection.small_loss_mask`).
- CoT+: the same rule among the voxels where the peers' argmax predictions disagree once
  e >= delay (:func:`~nnrobustloss.selection.cot_plus_mask`).
- StoCoT: keep where the partner's softmax probability of the label is >= ramp(e) theta,
  theta ~ Beta(a, b) from the trainer's seeded ``torch.Generator`` (mask for A drawn first,
  then for B); the generator state is checkpointed.
- HRL: StoCoT masks; each peer's loss is :class:`~nnrobustloss.losses.HRLLoss` (APL2 on SVLS
  targets) instead of CE + Dice.

Each peer's loss is nnU-Net's deep-supervision sum of the per-level masked loss (CE over kept
voxels, Dice with the mask as ``loss_mask``).

Options (``MethodSpec.options``, read from ``settings.options``): the schedule
``coteaching.delay``/``gradual``/``max_fraction``, scaled to the run's epochs when the settings
are applied (:func:`~nnrobustloss.schedule.run_schedule`); ``coteaching.peer_updates``; StoCoT
and HRL also ``coteaching.stocot_thresholds``, HRL ``svls.kernel`` and ``svls.hard_dice``.

Memory (``coteaching.peer_updates``): "sequential" (default) keeps one peer's forward graph at a
time: A's forward with grad, B's under ``no_grad``, both masks, A's update, then B's forward with
grad and B's update; the updates are the same as "joint" (both graphs at once, one forward
fewer; bitwise equal on the CPU, tests/test_trainers.py), at the cost of one extra forward of B.

``train_loss`` in progress.csv and nnU-Net's log is
peer A's loss; progress.csv also has both peers' losses, the kept voxel fraction of each peer at
full resolution, the share of each foreground class's voxels kept for peer A
(``kept_fraction_class<k>_peer_a``) and ramp(e). Validation and inference use peer A.
Checkpoints keep peer A under nnU-Net's keys and add ``network_weights_peer_b``, ``optimizer_state_peer_b``,
``grad_scaler_state_peer_b`` and ``selection_generator_state``.
"""


from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import GradScaler, Tensor, nn

from nnrobustloss.errors import ConfigError
from nnrobustloss.losses import CEDiceLoss, HRLLoss, per_voxel_ce
from nnrobustloss.schedule import ramp, run_schedule
from nnrobustloss.selection import (
    cot_plus_mask,
    label_probability,
    small_loss_mask,
    stocot_mask,
)
from nnrobustloss.trainers.base import RobustTrainer, unwrap
from nnrobustloss.trainers.progress import mean_or_nan

GENERATOR_SEED_OFFSET = 7919
"""The StoCoT generator is seeded with ``seed + 7919`` so that its stream differs from torch's
global stream seeded with ``seed``."""

Masks = list[Tensor | None]
StepResult = tuple[Tensor, Tensor, Tensor, Masks, Masks]
"""(peer A's full-resolution output, loss A, loss B, masks for A, masks for B) of one step."""


class CoTeachingTrainer(RobustTrainer):
    """Base of the two-peer trainers; subclasses implement :meth:`select_level`."""

    network_b: nn.Module | None = None
    optimizer_b: torch.optim.Optimizer | None = None
    lr_scheduler_b: Any = None
    schedule: tuple[int, int] = (0, 0)
    """(delay, gradual) of this run: the options' schedule scaled to its epochs."""

    def _apply_settings(self) -> None:
        """As the base, plus the co-teaching schedule of this run (:attr:`schedule`), peer B's
        grad scaler (CUDA only) and the selection generator, seeded with ``seed + 7919``."""
        super()._apply_settings()
        self.schedule = run_schedule(self.settings.options, self.settings.num_epochs)
        if self.is_ddp:
            raise ConfigError("co-teaching trainers do not support DDP (multi-GPU) training; "
                              "train on one device.")
        self.grad_scaler_b = GradScaler("cuda") if self.device.type == "cuda" else None
        self.selection_generator = torch.Generator(device=self.device)
        self.selection_generator.manual_seed(self.settings.seed + GENERATOR_SEED_OFFSET)

    # ------------------------------------------------------------------ setup
    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        return self._wrap_deep_supervision(CEDiceLoss(soft_dice_kwargs=self._soft_dice_kwargs()))

    def initialize(self) -> None:
        """nnU-Net's initialize (peer A, its optimiser, the loss), then peer B and its optimiser."""
        super().initialize()
        net_a = self.network
        # peer B: same architecture, its own random initialisation (torch's global RNG)
        self.network_b = self.build_network_architecture(
            self.plans_manager, self.configuration_manager, self.num_input_channels,
            self.label_manager.num_segmentation_heads, self.enable_deep_supervision,
        ).to(self.device)
        # nnU-Net's configure_optimizers reads self.network: let it build B's optimiser too
        self.network = self.network_b
        try:
            self.optimizer_b, self.lr_scheduler_b = self.configure_optimizers()
        finally:
            self.network = net_a

    def on_train_start(self) -> None:
        """nnU-Net's start, with deep supervision switched on in both peers."""
        super().on_train_start()
        unwrap(self.network_b).decoder.deep_supervision = self.enable_deep_supervision

    def on_train_epoch_start(self) -> None:
        """Both peers to train mode, both LR schedules stepped to the current epoch."""
        super().on_train_epoch_start()
        self.network_b.train()
        self.lr_scheduler_b.step(self.current_epoch)

    # ------------------------------------------------------------------ selection
    def ramp_value(self) -> float:
        """ramp(e) of the current epoch with this run's delay and gradual epochs."""
        return ramp(self.current_epoch, *self.schedule)

    def select_level(self, logits_a: Tensor, logits_b: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        """(mask for A's update, mask for B's update) of one level; bool ``[B, 1, *sp]``."""
        raise NotImplementedError

    def select(self, out_a: Sequence[Tensor], out_b: Sequence[Tensor],
               target: Sequence[Tensor], weights: Sequence[float]) -> tuple[Masks, Masks]:
        """Masks for every level with a non-zero deep-supervision weight (None elsewhere)."""
        masks_a: Masks = []
        masks_b: Masks = []
        with torch.no_grad():
            for la, lb, t, w in zip(out_a, out_b, target, weights, strict=True):
                if w == 0:
                    masks_a.append(None)
                    masks_b.append(None)
                    continue
                ma, mb = self.select_level(la.detach(), lb.detach(), t)
                masks_a.append(ma)
                masks_b.append(mb)
        return masks_a, masks_b

    # ------------------------------------------------------------------ training
    def _level_weights(self, n_levels: int) -> list[float]:
        wf = getattr(self.loss, "weight_factors", None)
        return list(wf) if wf is not None else [1.0] * n_levels

    def _peer_loss(self, output: Sequence[Tensor], target: Sequence[Tensor],
                   masks: Masks) -> Tensor:
        if self.enable_deep_supervision:
            return self.loss(list(output), list(target), masks)
        return self.loss(output[0], target[0], masks[0])

    def train_step(self, batch: dict) -> dict:
        """One co-teaching step: partner masks from both peers' outputs, two masked updates.

        ``coteaching.peer_updates`` chooses the schedule of the same updates (see
        :meth:`_sequential_step` and :meth:`_joint_step`).
        """
        data, target = self._batch_to_device(batch)
        targets = target if isinstance(target, list) else [target]
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_b.zero_grad(set_to_none=True)
        step = self._joint_step if self.settings.options["coteaching.peer_updates"] == "joint" \
            else self._sequential_step
        out_a0, loss_a, loss_b, masks_a, masks_b = step(data, targets)
        self._accumulate_pseudo_dice([out_a0], targets)
        return {
            "loss": loss_a.detach().cpu().numpy(),
            "loss_b": float(loss_b.detach().cpu()),
            "kept_a": _kept_fraction(masks_a[0]),
            "kept_b": _kept_fraction(masks_b[0]),
            "kept_a_per_class": _kept_counts_per_class(masks_a[0], targets[0],
                                                       self.label_manager.foreground_labels),
        }

    def _joint_step(self, data: Tensor, targets: list[Tensor]) -> StepResult:
        """Both forwards with grad, then A's and B's update: both graphs are alive at once."""
        with self._autocast():
            outs_a = _as_list(self.network(data))
            outs_b = _as_list(self.network_b(data))
        masks_a, masks_b = self.select(outs_a, outs_b, targets, self._level_weights(len(outs_a)))
        with self._autocast():
            loss_a = self._peer_loss(outs_a, targets, masks_a)
            loss_b = self._peer_loss(outs_b, targets, masks_b)
        self._optimizer_step(loss_a, self.network, self.optimizer, self.grad_scaler)
        self._optimizer_step(loss_b, self.network_b, self.optimizer_b, self.grad_scaler_b)
        return outs_a[0].detach(), loss_a, loss_b, masks_a, masks_b

    def _sequential_step(self, data: Tensor, targets: list[Tensor]) -> StepResult:
        """The joint step's updates with one peer's graph in memory at a time.

        B's outputs for the masks come from a ``no_grad`` forward: nnU-Net's networks have no
        dropout and instance norm without running statistics, so a forward changes no state and
        draws no random numbers, and B's later forward with grad gives the same outputs. Both
        masks are drawn (in the joint step's order) before A's update, so B's mask is chosen by A's
        outputs before A's step. A's gradients are released after its step (the next step
        zeroes them anyway). Cost: one extra forward of B.
        """
        with self._autocast():  # separate autocast regions: no cast weights cached across modes
            outs_a = _as_list(self.network(data))
        with torch.no_grad(), self._autocast():
            outs_b = _as_list(self.network_b(data))
        masks_a, masks_b = self.select(outs_a, outs_b, targets, self._level_weights(len(outs_a)))
        del outs_b
        with self._autocast():
            loss_a = self._peer_loss(outs_a, targets, masks_a)
        self._optimizer_step(loss_a, self.network, self.optimizer, self.grad_scaler)
        out_a0 = outs_a[0].detach()
        del outs_a
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outs_b = _as_list(self.network_b(data))
            loss_b = self._peer_loss(outs_b, targets, masks_b)
        del outs_b
        self._optimizer_step(loss_b, self.network_b, self.optimizer_b, self.grad_scaler_b)
        return out_a0, loss_a.detach(), loss_b.detach(), masks_a, masks_b

    def on_train_epoch_end(self, train_outputs: list[dict]) -> None:
        """The base class's bookkeeping plus per-peer losses, kept fractions and ramp(e)."""
        super().on_train_epoch_end(train_outputs)
        self.progress.extras.update({
            "train_loss_peer_a": mean_or_nan(float(o["loss"]) for o in train_outputs),
            "train_loss_peer_b": mean_or_nan(o["loss_b"] for o in train_outputs),
            "kept_fraction_peer_a": mean_or_nan(o["kept_a"] for o in train_outputs),
            "kept_fraction_peer_b": mean_or_nan(o["kept_b"] for o in train_outputs),
            "ramp": self.ramp_value(),
        })
        kept = np.sum([o["kept_a_per_class"] for o in train_outputs], axis=0)
        for label, (n_kept, n_total) in zip(self.label_manager.foreground_labels, kept,
                                            strict=True):
            self.progress.extras[f"kept_fraction_class{label}_peer_a"] = \
                float(n_kept / n_total) if n_total else float("nan")

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_extras(self) -> dict[str, Any]:
        extras = super()._checkpoint_extras()
        extras.update({
            "network_weights_peer_b": unwrap(self.network_b).state_dict(),
            "optimizer_state_peer_b": self.optimizer_b.state_dict(),
            "grad_scaler_state_peer_b": self.grad_scaler_b.state_dict()
            if self.grad_scaler_b is not None else None,
            "selection_generator_state": self.selection_generator.get_state(),
        })
        return extras

    def _load_checkpoint_extras(self, checkpoint: Mapping[str, Any]) -> None:
        super()._load_checkpoint_extras(checkpoint)
        if "network_weights_peer_b" not in checkpoint:
            raise ConfigError("checkpoint has no peer B (network_weights_peer_b): it was not "
                              "written by a co-teaching trainer; cannot continue "
                              f"{type(self).__name__}.")
        unwrap(self.network_b).load_state_dict(checkpoint["network_weights_peer_b"])
        self.optimizer_b.load_state_dict(checkpoint["optimizer_state_peer_b"])
        scaler_state = checkpoint.get("grad_scaler_state_peer_b")
        if self.grad_scaler_b is not None and scaler_state is not None:
            self.grad_scaler_b.load_state_dict(scaler_state)
        if checkpoint.get("selection_generator_state") is not None:
            self.selection_generator.set_state(checkpoint["selection_generator_state"].cpu())


def _as_list(output: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """A network's output as a list of levels (one entry without deep supervision)."""
    return list(output) if isinstance(output, (list, tuple)) else [output]


def _kept_fraction(mask: Tensor | None) -> float:
    return 1.0 if mask is None else float(mask.float().mean().cpu())


def _kept_counts_per_class(mask: Tensor | None, target: Tensor,
                           labels: Sequence[int]) -> np.ndarray:
    """[n_labels, 2] int: (kept, total) voxels of each label in the full-resolution ``target``
    ``[B, 1, *sp]`` under the keep-``mask`` ``[B, 1, *sp]`` (None: all kept)."""
    out = np.zeros((len(labels), 2), dtype=np.int64)
    for i, label in enumerate(labels):
        is_label = target == label
        out[i, 1] = int(is_label.sum())
        out[i, 0] = out[i, 1] if mask is None else int((is_label & mask).sum())
    return out


class nnUNetTrainer_CoT(CoTeachingTrainer):
    """Co-teaching (Han et al. 2018): the partner's small-loss voxels; parameter ``forget_rate``."""


    def forget_rate(self) -> float:
        """R(e) = R * ramp(e)."""
        return self.settings.params["forget_rate"] * self.ramp_value()

    def select_level(self, logits_a: Tensor, logits_b: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        r = self.forget_rate()
        mask_a = small_loss_mask(per_voxel_ce(logits_b, target), r)  # B chooses for A
        mask_b = small_loss_mask(per_voxel_ce(logits_a, target), r)  # A chooses for B
        return mask_a, mask_b


class nnUNetTrainer_CoTPlus(nnUNetTrainer_CoT):
    """Co-teaching+ (Yu et al. 2019): small-loss voxels among the disagreeing ones after delay."""


    def select_level(self, logits_a: Tensor, logits_b: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        r = self.forget_rate()
        e, delay = self.current_epoch, self.schedule[0]
        pred_a, pred_b = logits_a.argmax(1), logits_b.argmax(1)
        mask_a = cot_plus_mask(per_voxel_ce(logits_b, target), pred_b, pred_a, r, e, delay)
        mask_b = cot_plus_mask(per_voxel_ce(logits_a, target), pred_a, pred_b, r, e, delay)
        return mask_a, mask_b


class nnUNetTrainer_StoCoT(CoTeachingTrainer):
    """Stochastic co-teaching (de Vos et al. 2023); hyper-parameters ``a``, ``b`` of Beta(a, b)."""


    def select_level(self, logits_a: Tensor, logits_b: Tensor,
                     target: Tensor) -> tuple[Tensor, Tensor]:
        s = self.settings
        rv = self.ramp_value()
        a, b = s.params["a"], s.params["b"]
        g, mode = self.selection_generator, s.options["coteaching.stocot_thresholds"]
        mask_a = stocot_mask(label_probability(logits_b, target), rv, a, b, g, mode)
        mask_b = stocot_mask(label_probability(logits_a, target), rv, a, b, g, mode)
        return mask_a, mask_b


class nnUNetTrainer_HRL(nnUNetTrainer_StoCoT):
    """HRL: StoCoT peers, each trained with APL2 on SVLS soft targets (``a, b, w, sigma``)."""


    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        s = self.settings
        return self._wrap_deep_supervision(HRLLoss(
            s.params["w"], s.params["sigma"], kernel=s.options["svls.kernel"],
            hard_dice=s.options["svls.hard_dice"],
            soft_dice_kwargs=self._soft_dice_kwargs()))


__all__ = [
    "CoTeachingTrainer",
    "nnUNetTrainer_CoT",
    "nnUNetTrainer_CoTPlus",
    "nnUNetTrainer_HRL",
    "nnUNetTrainer_StoCoT",
]
