"""nnU-Net trainers of the study, one per method (docs/methods.md).

| method | trainer |
| --- | --- |
| Baseline, BaselineRef | :class:`nnUNetTrainer_Baseline` (nnU-Net's CE + Dice) |
| APL1, APL2, SVLS | ``nnUNetTrainer_APL1``, ``nnUNetTrainer_APL2``, ``nnUNetTrainer_SVLS`` |
| CoT, CoT+ | ``nnUNetTrainer_CoT``, ``nnUNetTrainer_CoTPlus`` (two peers) |
| StoCoT, HRL | ``nnUNetTrainer_StoCoT``, ``nnUNetTrainer_HRL`` (two peers) |

All subclass :class:`RobustTrainer` (settings, explicit folders, progress.csv with the training
pseudo Dice, epoch callback, exact resumption; modules ``settings``, ``progress``, ``resume``).
The registry (:data:`nnrobustloss.methods.METHODS`) maps each method to its trainer. Build and
run them with :func:`nnrobustloss.training.train`; load a trained network for prediction with
:func:`nnrobustloss.trainers.inference.build_predictor`.
"""

from nnrobustloss.trainers.base import RobustTrainer
from nnrobustloss.trainers.coteaching import (
    CoTeachingTrainer,
    nnUNetTrainer_CoT,
    nnUNetTrainer_CoTPlus,
    nnUNetTrainer_HRL,
    nnUNetTrainer_StoCoT,
)
from nnrobustloss.trainers.settings import TrainerSettings
from nnrobustloss.trainers.single import (
    nnUNetTrainer_APL1,
    nnUNetTrainer_APL2,
    nnUNetTrainer_Baseline,
    nnUNetTrainer_SVLS,
)

__all__ = [
    "CoTeachingTrainer",
    "RobustTrainer",
    "TrainerSettings",
    "nnUNetTrainer_APL1",
    "nnUNetTrainer_APL2",
    "nnUNetTrainer_Baseline",
    "nnUNetTrainer_CoT",
    "nnUNetTrainer_CoTPlus",
    "nnUNetTrainer_HRL",
    "nnUNetTrainer_SVLS",
    "nnUNetTrainer_StoCoT",
]
