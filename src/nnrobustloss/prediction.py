"""The predict stage: nnU-Net sliding-window inference on the held-out cases of a fold.

Every case goes through nnU-Net's own steps, as ``nnUNetPredictor.predict_from_files_sequential``
does them: the plans' preprocessor, ``predict_logits_from_preprocessed_data`` (sliding window with
Gaussian weighting, test-time mirroring), ``convert_predicted_logits_to_segmentation_with_correct_shape``
(resampling to the image grid, softmax, uncropping) and the plans' image writer. The softmax is
computed only when something needs it: averaging co-teaching peers, saving probabilities, or
calibration, whose statistics (:func:`nnrobustloss.metrics.calibration.calibration_statistics`, a few kB per
case) are measured here against the reference labels while the probabilities are in memory, so
that full probability volumes (GBs for a CT case) are never written unless asked for.
A job is resumable per case: finished cases wait in ``<out>.partial/`` (see :func:`predict_cases`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnrobustloss import layout
from nnrobustloss.errors import InputDataError, OutputError
from nnrobustloss.fileio import (
    atomic_dir,
    read_image,
    read_json,
    remove_temporaries,
    verify_written_image,
    write_json,
)
from nnrobustloss.metrics.calibration import (
    CALIBRATION_SUFFIX,
    DEFAULT_BAND_MM,
    DEFAULT_BINS,
    calibration_statistics,
)
from nnrobustloss.metrics.evaluation import check_geometry


@dataclass(frozen=True)
class CalibrationSpec:
    """Calibration measured at prediction time: against ``reference_dir/<case>.nii.gz``, per
    region ``{name: [label values]}``, with ``n_bins`` equal-width bins and a band of
    ``band_mm`` mm (see :func:`nnrobustloss.metrics.calibration.calibration_statistics`)."""

    reference_dir: Path
    regions: Mapping[str, Sequence[int]]
    n_bins: int = DEFAULT_BINS
    band_mm: float = DEFAULT_BAND_MM


def predict_cases(training_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                  case_ids: Sequence[str], out_dir: str | os.PathLike[str], *,
                  mirroring: bool = True, tile_step_size: float = 0.5,
                  average_peers: bool = False, save_probabilities: bool = False,
                  calibration: CalibrationSpec | None = None, device: str = "auto",
                  method: str | None = None, fold: int | None = None,
                  replicate: int | None = None) -> Path:
    """Segment ``images_dir/<case>_0000.nii.gz`` for every case with the trained network.

    Uses nnU-Net's ``nnUNetPredictor`` (sliding window with Gaussian weighting, tile step
    ``tile_step_size``, test-time mirroring when ``mirroring``) loaded from
    ``training_dir/checkpoint_final.pth`` (peer A for co-teaching methods). With
    ``average_peers`` (co-teaching only) the segmentation is the argmax of the mean of the two
    peers' softmax outputs. Writes ``out_dir/<case>.nii.gz``; with ``save_probabilities`` also
    nnU-Net's ``<case>.npz`` (``probabilities``: float32 [classes, z, y, x], the softmax used for
    the segmentation) and ``<case>.pkl`` (its properties); with ``calibration`` the case's
    ``<case>_calibration.npz`` (:class:`nnrobustloss.metrics.calibration.CalibrationStats`). The folder
    appears only when every case is done.

    Resumable per case: each finished case is committed atomically to
    :func:`nnrobustloss.layout.partial_dir` (``<out_dir>.partial/<case>/``) first; a rerun after
    an interruption predicts only the cases missing there, provided the staging folder was made
    by the same ``checkpoint_final.pth`` (SHA-256) and options (else it is discarded). When all
    cases are staged they are linked into ``out_dir`` at once and the staging folder is removed.

    ``method``, ``fold`` and ``replicate`` (the pipeline gives them): the checkpoint must be a
    readable checkpoint of that method's training of that fold (and replicate), with the plans
    and settings recorded beside it (ConfigError naming it otherwise: another method's model
    never serves this one).
    """
    from nnrobustloss.trainers.inference import build_predictor
    from nnrobustloss.training import resolve_device

    training_dir, images_dir, out = Path(training_dir), Path(images_dir), Path(out_dir)
    checkpoint = training_dir / layout.CHECKPOINT_FINAL
    if not checkpoint.is_file():
        raise InputDataError(f"{checkpoint}: not found. Run the train stage for this method and "
                             "fold first.")
    if method is not None:
        _check_model(checkpoint, method, fold, replicate)
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
    staging = layout.partial_dir(out)
    _open_staging(staging, case_ids, {
        "checkpoint_sha256": _sha256(checkpoint), "mirroring": bool(mirroring),
        "tile_step_size": float(tile_step_size), "average_peers": bool(average_peers),
        "save_probabilities": bool(save_probabilities),
        "calibration": None if calibration is None else {
            "reference_dir": str(calibration.reference_dir.resolve()),
            "regions": {k: [int(v) for v in vs] for k, vs in calibration.regions.items()},
            "n_bins": int(calibration.n_bins), "band_mm": float(calibration.band_mm)}})
    expected = _case_file_names(read_json(training_dir / "dataset.json")["file_ending"],
                                save_probabilities, calibration is not None)
    todo = [(case, files) for case, files in zip(case_ids, inputs, strict=True)
            if not _staged(staging / case, case, expected)]
    dev = resolve_device(device)
    print(f"[predict] {len(todo)} of {len(case_ids)} cases with {training_dir} on {dev}"
          + (" (+ calibration statistics)" if calibration else "")
          + (f"; {len(case_ids) - len(todo)} finished earlier in {staging}"
             if len(todo) < len(case_ids) else ""), file=sys.stderr)
    if todo:
        kwargs = dict(tile_step_size=tile_step_size, use_mirroring=mirroring, verbose=False,
                      perform_everything_on_device=dev.type == "cuda", allow_tqdm=True)
        predictors = [build_predictor(training_dir, peers=peer, device=dev, **kwargs)
                      for peer in (("A", "B") if average_peers else ("A",))]
        for case, files in todo:
            shutil.rmtree(staging / case, ignore_errors=True)  # an incomplete one (see _staged)
            with atomic_dir(staging / case) as tmp:
                _predict_case(predictors, files, tmp / case, save_probabilities, calibration)
    remove_temporaries(out.parent, out.name)  # of an assembly killed earlier
    with atomic_dir(out) as tmp:
        for case in case_ids:
            for f in sorted((staging / case).iterdir()):
                _link_or_copy(f, tmp / f.name)
    shutil.rmtree(staging)
    return out


STAGING_INFO = "staging.json"


def _check_model(checkpoint: Path, method: str, fold: int | None,
                 replicate: int | None = None) -> None:
    """ConfigError/InputDataError naming ``checkpoint`` unless it is a readable final checkpoint
    of ``method``'s training of ``fold`` with the plans and settings of its folder."""
    from nnrobustloss.methods import get_method
    from nnrobustloss.trainers.identity import check_identity, read_checkpoint

    folder = checkpoint.parent
    redo = f"the train stage trains {method} again"
    ckpt = read_checkpoint(checkpoint, redo)
    settings = folder / "settings.json"
    plans = folder / "plans.json"
    conf = (ckpt.get("init_args") or {}).get("configuration", "3d_fullres")
    check_identity(ckpt, checkpoint, spec=get_method(method),
                   plans=read_json(plans) if plans.is_file() else None, configuration=conf,
                   fold=ckpt["init_args"]["fold"] if fold is None else fold,
                   settings=read_json(settings) if settings.is_file() else None,
                   replicate=replicate, todo=f"Delete {folder} and rerun; {redo}.")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _open_staging(staging: Path, case_ids: Sequence[str], info: dict[str, Any]) -> None:
    """Make ``staging`` hold only cases predicted with ``info`` (checkpoint hash and options):
    a staging folder of another model or other options is discarded; temporaries of cases
    killed while being written are removed."""
    info_file = staging / STAGING_INFO
    if staging.exists():
        old = read_json(info_file) if info_file.is_file() else None
        if old != info:
            print(f"[predict] {staging}: staged cases of another checkpoint or other options; "
                  "discarded", file=sys.stderr)
            shutil.rmtree(staging)
    if not info_file.is_file():
        staging.mkdir(parents=True, exist_ok=True)
        write_json(info_file, info)
    for case in case_ids:
        remove_temporaries(staging, case)


def _case_file_names(file_ending: str, save_probabilities: bool,
                     calibration: bool) -> list[str]:
    """Suffixes of the files one case has (after its case id)."""
    return [file_ending] + ([".npz", ".pkl"] if save_probabilities else []) \
        + ([CALIBRATION_SUFFIX] if calibration else [])


def _staged(folder: Path, case: str, suffixes: Sequence[str]) -> bool:
    """Whether ``folder`` is a finished case: committed by :func:`atomic_dir` (so complete)
    and holding exactly the files these options write."""
    return folder.is_dir() and sorted(p.name for p in folder.iterdir()) == sorted(
        case + s for s in suffixes)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (the staged copy stays until the output is complete);
    copy where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
    try:
        plans.image_reader_writer_class().write_seg(seg, str(seg_file), props)
    except RuntimeError as e:  # SimpleITK's writer, when it notices
        raise OutputError(f"{seg_file}: cannot be written ({str(e).strip().splitlines()[-1]}); "
                          "check free space and permissions, then rerun.") from e
    verify_written_image(seg_file)  # the writer does not report a short write (a full disk)
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
    check_geometry(seg_file, ref_file, seg_img, ref_img)
    ref = sitk.GetArrayFromImage(ref_img)
    # nnU-Net returns the probabilities with the axes of the exported image array (z, y, x).
    if probs.shape[1:] != ref.shape or seg.shape != ref.shape:
        raise InputDataError(f"{seg_file}: probabilities {probs.shape} do not match the "
                             f"reference {ref_file} of shape {ref.shape}.")
    spacing = tuple(float(s) for s in ref_img.GetSpacing()[::-1])
    stats = calibration_statistics(probs, ref, seg, spacing, calibration.regions,
                                   calibration.n_bins, calibration.band_mm)
    stats.save(f"{out_truncated}{CALIBRATION_SUFFIX}")
