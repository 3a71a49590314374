"""The predict stage: nnU-Net sliding-window inference on the held-out cases of a fold.

Every case goes through nnU-Net's own steps, as ``nnUNetPredictor.predict_from_files_sequential``
does them: the plans' preprocessor, ``predict_logits_from_preprocessed_data`` (sliding window with
Gaussian weighting, test-time mirroring), ``convert_predicted_logits_to_segmentation_with_correct_shape``
(resampling to the image grid, softmax, uncropping) and the plans' image writer. The softmax is
computed only when something needs it: averaging co-teaching peers, saving probabilities, or
calibration, whose statistics (:func:`nnrobustloss.metrics.calibration_statistics`, a few kB per
case) are measured here against the reference labels while the probabilities are in memory, so
that full probability volumes (GBs for a CT case) are never written unless asked for.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import atomic_dir, read_image
from nnrobustloss.metrics import (
    CALIBRATION_SUFFIX,
    DEFAULT_BAND_MM,
    DEFAULT_BINS,
    _check_geometry,
    calibration_statistics,
)


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration measured at prediction time: against ``reference_dir/<case>.nii.gz``, per
    region ``{name: [label values]}``, with ``n_bins`` equal-width bins and a band of
    ``band_mm`` mm (see :func:`nnrobustloss.metrics.calibration_statistics`)."""

    reference_dir: Path
    regions: Mapping[str, Sequence[int]]
    n_bins: int = DEFAULT_BINS
    band_mm: float = DEFAULT_BAND_MM


def predict_cases(training_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                  case_ids: Sequence[str], out_dir: str | os.PathLike[str], *,
                  mirroring: bool = True, tile_step_size: float = 0.5,
                  average_peers: bool = False, save_probabilities: bool = False,
                  calibration: CalibrationSpec | None = None, device: str = "auto") -> Path:
    """Segment ``images_dir/<case>_0000.nii.gz`` for every case with the trained network.

    Uses nnU-Net's ``nnUNetPredictor`` (sliding window with Gaussian weighting, tile step
    ``tile_step_size``, test-time mirroring when ``mirroring``) loaded from
    ``training_dir/checkpoint_final.pth`` (peer A for co-teaching methods). With
    ``average_peers`` (co-teaching only) the segmentation is the argmax of the mean of the two
    peers' softmax outputs. Writes ``out_dir/<case>.nii.gz``; with ``save_probabilities`` also
    nnU-Net's ``<case>.npz`` (``probabilities``: float32 [classes, z, y, x], the softmax used for
    the segmentation) and ``<case>.pkl`` (its properties); with ``calibration`` the case's
    ``<case>_calibration.npz`` (:class:`nnrobustloss.metrics.CalibrationStats`). The folder
    appears only when every case is done.
    """
    from nnrobustloss.trainers.inference import build_predictor
    from nnrobustloss.training import resolve_device

    training_dir, images_dir = Path(training_dir), Path(images_dir)
    if not (training_dir / "checkpoint_final.pth").is_file():
        raise InputDataError(f"{training_dir / 'checkpoint_final.pth'}: not found. Run the train "
                             "stage for this method and fold first.")
    inputs = []
    for case in case_ids:
        img = images_dir / f"{case}_0000.nii.gz"
        if not img.is_file():
            raise InputDataError(f"{img}: image of held-out case {case} not found.")
        if calibration is not None and not (calibration.reference_dir / f"{case}.nii.gz").is_file():
            raise InputDataError(f"{calibration.reference_dir / (case + '.nii.gz')}: reference "
                                 f"label of case {case} not found (needed for calibration). Run "
                                 "the convert stage first.")
        inputs.append([str(img)])
    dev = resolve_device(device)
    kwargs = dict(tile_step_size=tile_step_size, use_mirroring=mirroring, verbose=False,
                  perform_everything_on_device=dev.type == "cuda", allow_tqdm=True)
    print(f"[predict] {len(case_ids)} cases with {training_dir} on {dev}"
          + (" (+ calibration statistics)" if calibration else ""), file=sys.stderr)
    predictors = [build_predictor(training_dir, peers=peer, device=dev, **kwargs)
                  for peer in (("A", "B") if average_peers else ("A",))]
    with atomic_dir(out_dir) as tmp:
        for case, files in zip(case_ids, inputs, strict=True):
            _predict_case(predictors, files, tmp / case, save_probabilities, calibration)
    return Path(out_dir)


def _predict_case(predictors: Sequence[Any], files: list[str], out_truncated: Path,
                  save_probabilities: bool, calibration: CalibrationSpec | None) -> None:
    """One case: nnU-Net's preprocessing, logits of every predictor, export (see module doc)."""
    import torch
    from nnunetv2.inference.export_prediction import (
        convert_predicted_logits_to_segmentation_with_correct_shape,
    )

    first = predictors[0]
    plans, conf = first.plans_manager, first.configuration_manager
    preprocessor = conf.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case(files, None, plans, conf, first.dataset_json)
    data = torch.from_numpy(data)
    need_probabilities = len(predictors) > 1 or save_probabilities or calibration is not None
    seg, probs = None, None
    for predictor in predictors:
        logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
        out = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, plans, conf, predictor.label_manager, props,
            return_probabilities=need_probabilities)
        del logits
        if not need_probabilities:
            seg = out
        elif probs is None:
            seg, probs = out[0], np.asarray(out[1], dtype=np.float32)
        else:
            probs += out[1]
    if len(predictors) > 1:
        probs /= len(predictors)
        seg = first.label_manager.convert_probabilities_to_segmentation(probs).astype(seg.dtype)
    seg_file = Path(f"{out_truncated}{first.dataset_json['file_ending']}")
    plans.image_reader_writer_class().write_seg(seg, str(seg_file), props)
    if save_probabilities:
        np.savez_compressed(f"{out_truncated}.npz", probabilities=probs)
        with open(f"{out_truncated}.pkl", "wb") as fh:
            pickle.dump(props, fh)
    if calibration is not None:
        _write_calibration(probs, seg, seg_file, calibration, out_truncated)


def _write_calibration(probs: np.ndarray, seg: np.ndarray, seg_file: Path,
                       calibration: CalibrationSpec, out_truncated: Path) -> None:
    """Measure the case's calibration statistics against its reference labels and save them."""
    case = out_truncated.name
    ref_file = calibration.reference_dir / f"{case}.nii.gz"
    ref_img, seg_img = read_image(ref_file), read_image(seg_file)
    _check_geometry(seg_file, ref_file, seg_img, ref_img)
    ref = sitk.GetArrayFromImage(ref_img)
    # nnU-Net returns the probabilities with the axes of the exported image array (z, y, x).
    if probs.shape[1:] != ref.shape or seg.shape != ref.shape:
        raise InputDataError(f"{seg_file}: probabilities {probs.shape} do not match the "
                             f"reference {ref_file} of shape {ref.shape}.")
    spacing = tuple(float(s) for s in ref_img.GetSpacing()[::-1])
    stats = calibration_statistics(probs, ref, seg, spacing, calibration.regions,
                                   calibration.n_bins, calibration.band_mm)
    stats.save(f"{out_truncated}{CALIBRATION_SUFFIX}")
