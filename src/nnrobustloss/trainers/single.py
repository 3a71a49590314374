"""Single-network trainers: Baseline (also BaselineRef), APL1, APL2, SVLS and the example GCE.

Each differs from the shared :class:`~nnrobustloss.trainers.base.RobustTrainer` only in
``_build_loss`` (the Baseline not even there): the per-resolution loss of
:mod:`nnrobustloss.losses`, with nnU-Net's Dice settings, wrapped in nnU-Net's
``DeepSupervisionWrapper`` with nnU-Net's weights.
"""


from torch import nn

from nnrobustloss.losses import APL1Loss, APL2Loss, GCELoss, SVLSLoss
from nnrobustloss.trainers.base import RobustTrainer


class nnUNetTrainer_Baseline(RobustTrainer):
    """nnU-Net's own CE + Dice loss (``DC_and_CE_loss``); serves Baseline and BaselineRef."""


class nnUNetTrainer_APL1(RobustTrainer):
    """APL1: mean(RCE + NCE) + soft Dice per resolution."""

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        return self._wrap_deep_supervision(APL1Loss(soft_dice_kwargs=self._soft_dice_kwargs()))


class nnUNetTrainer_APL2(RobustTrainer):
    """APL2: mean(RCE + NGCE_w) + soft Dice per resolution; hyper-parameter ``w``."""

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        w = self.settings.params["w"]
        return self._wrap_deep_supervision(APL2Loss(w, soft_dice_kwargs=self._soft_dice_kwargs()))


class nnUNetTrainer_SVLS(RobustTrainer):
    """SVLS: CE + Dice on SVLS-smoothed targets of every resolution; hyper-parameter ``sigma``,
    options ``svls.kernel`` and ``svls.hard_dice``."""

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        s = self.settings
        return self._wrap_deep_supervision(SVLSLoss(
            s.params["sigma"], kernel=s.options["svls.kernel"], hard_dice=s.options["svls.hard_dice"],
            soft_dice_kwargs=self._soft_dice_kwargs()))


class nnUNetTrainer_GCE(RobustTrainer):
    """GCE: mean(GCE_q) + soft Dice per resolution; hyper-parameter ``q`` (the example method of
    README, "Adding a loss": not in the default study)."""

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        q = self.settings.params["q"]
        return self._wrap_deep_supervision(GCELoss(q, soft_dice_kwargs=self._soft_dice_kwargs()))
