"""Single-network trainers: Baseline (also BaselineRef), APL1, APL2 and SVLS.

Each differs from ``nnUNetTrainer`` only in ``_build_loss`` (plus the shared
:class:`~nnrobustloss.trainers.base.RobustTrainerMixin`): the per-resolution loss of
:mod:`nnrobustloss.losses`, with nnU-Net's Dice settings, wrapped in nnU-Net's
``DeepSupervisionWrapper`` with nnU-Net's weights.
"""


import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnrobustloss.losses import APL1Loss, APL2Loss, SVLSLoss
from nnrobustloss.trainers.base import RobustTrainerMixin


class nnUNetTrainer_Baseline(RobustTrainerMixin, nnUNetTrainer):
    """nnU-Net's own CE + Dice loss (``DC_and_CE_loss``); serves Baseline and BaselineRef."""

    method_id = "Baseline"
    accepted_methods = ("Baseline", "BaselineRef")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)


class nnUNetTrainer_APL1(RobustTrainerMixin, nnUNetTrainer):
    """APL1: mean(RCE + NCE) + soft Dice per resolution."""

    method_id = "APL1"
    accepted_methods = ("APL1",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        return self._wrap_deep_supervision(APL1Loss(soft_dice_kwargs=self._soft_dice_kwargs()))


class nnUNetTrainer_APL2(RobustTrainerMixin, nnUNetTrainer):
    """APL2: mean(RCE + NGCE_w) + soft Dice per resolution; hyper-parameter ``w``."""

    method_id = "APL2"
    accepted_methods = ("APL2",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        w = self.settings.params["w"]
        return self._wrap_deep_supervision(APL2Loss(w, soft_dice_kwargs=self._soft_dice_kwargs()))


class nnUNetTrainer_SVLS(RobustTrainerMixin, nnUNetTrainer):
    """SVLS: CE + Dice on SVLS-smoothed targets of every resolution; hyper-parameter ``sigma``."""

    method_id = "SVLS"
    accepted_methods = ("SVLS",)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008
        super().__init__(plans, configuration, fold, dataset_json, device)

    def _build_loss(self) -> nn.Module:
        self._require_no_ignore_label()
        s = self.settings
        return self._wrap_deep_supervision(SVLSLoss(
            s.params["sigma"], kernel=s.svls_kernel, hard_dice=s.svls_hard_dice,
            soft_dice_kwargs=self._soft_dice_kwargs()))
