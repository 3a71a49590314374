"""Load a trained nnRobustLoss network into nnU-Net's stock ``nnUNetPredictor``.

nnU-Net's ``initialize_from_trained_model_folder`` expects ``<model>/fold_<k>/checkpoint_*.pth``
and looks the trainer class up by name inside the nnunetv2 package (or ``nnUNet_extTrainer``),
where our trainers do not live. Our output folder (``training/<Task>/<Method>/fold<k>/``) holds
the checkpoint next to the ``plans.json`` and ``dataset.json`` copies that nnU-Net writes at
the start of training, so :func:`build_predictor` does what that method does, explicitly: it
builds the network with the trainer class named in the checkpoint (found in the method
registry first; all our trainers use nnU-Net's own ``build_network_architecture``), loads the
weights and calls the predictor's ``manual_initialization``.

A checkpoint of any trainer holds peer A under nnU-Net's ``network_weights`` key, so the stock
predictor can also load it directly; co-teaching checkpoints add ``network_weights_peer_b``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import read_json
from nnrobustloss.layout import CHECKPOINT_FINAL
from nnrobustloss.trainers.identity import read_checkpoint
from nnrobustloss.trainers.loading import trainer_by_name

PEER_KEYS = {"A": "network_weights", "B": "network_weights_peer_b"}


def trainer_class_by_name(name: str) -> type:
    """The trainer class called ``name``: a registered method's
    (:func:`nnrobustloss.trainers.loading.trainer_by_name`), else nnU-Net's (searched in
    nnunetv2 as nnU-Net does)."""
    cls = trainer_by_name(name)
    if cls is not None:
        return cls
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    return recursive_find_trainer_class_by_name(name)


def load_checkpoint_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint on the CPU; InputDataError naming the file if it is missing or unreadable
    (:func:`nnrobustloss.trainers.identity.read_checkpoint`, the same check as every stage's)."""
    return read_checkpoint(path, "the train stage trains it again")


def build_predictor(output_dir: str | os.PathLike[str],
                    checkpoint_name: str = CHECKPOINT_FINAL,
                    peers: str = "A", device: torch.device | str = "cpu",
                    **predictor_kwargs: Any) -> nnUNetPredictor:
    """An initialised ``nnUNetPredictor`` for the network trained in ``output_dir``.

    ``peers``: "A" (the default, used for validation and inference), "B" (co-teaching peer B)
    or "both" (nnU-Net's multi-checkpoint ensembling over [A, B], which averages the two peers'
    **logits**; average softmax by predicting with "A" and "B" separately instead).
    ``predictor_kwargs`` go to ``nnUNetPredictor`` (tile_step_size, use_mirroring, ...).
    """
    out = Path(output_dir)
    ckpt = load_checkpoint_file(out / checkpoint_name)
    wanted = {"A": ["A"], "B": ["B"], "both": ["A", "B"]}.get(peers)
    if wanted is None:
        raise ValueError(f"peers={peers!r}: use 'A', 'B' or 'both'")
    for peer in wanted:
        if PEER_KEYS[peer] not in ckpt:
            raise InputDataError(f"{out / checkpoint_name}: has no peer {peer} "
                                 f"({PEER_KEYS[peer]}); only co-teaching methods have peer B.")
    plans = read_json(out / "plans.json")
    dataset_json = read_json(out / "dataset.json")
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(ckpt["init_args"]["configuration"])
    trainer_cls = trainer_class_by_name(ckpt["trainer_name"])
    network = trainer_cls.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        enable_deep_supervision=False,
    )
    parameters = [ckpt[PEER_KEYS[p]] for p in wanted]
    network.load_state_dict(parameters[0])
    dev = torch.device(device) if isinstance(device, str) else device
    predictor = nnUNetPredictor(device=dev, **predictor_kwargs)
    predictor.manual_initialization(network, plans_manager, configuration_manager, parameters,
                                    dataset_json, ckpt["trainer_name"],
                                    ckpt.get("inference_allowed_mirroring_axes"))
    return predictor
