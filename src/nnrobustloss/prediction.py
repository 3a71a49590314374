"""The predict stage: nnU-Net sliding-window inference on the held-out cases of a fold."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnrobustloss.errors import InputDataError
from nnrobustloss.fileio import atomic_dir, read_image, write_image


def predict_cases(training_dir: str | os.PathLike[str], images_dir: str | os.PathLike[str],
                  case_ids: Sequence[str], out_dir: str | os.PathLike[str], *,
                  mirroring: bool = True, tile_step_size: float = 0.5,
                  average_peers: bool = False, save_probabilities: bool = False,
                  device: str = "auto") -> Path:
    """Segment ``images_dir/<case>_0000.nii.gz`` for every case with the trained network.

    Uses nnU-Net's ``nnUNetPredictor`` (sliding window with Gaussian weighting, tile step
    ``tile_step_size``, test-time mirroring when ``mirroring``) loaded from
    ``training_dir/checkpoint_final.pth`` (peer A for co-teaching methods). With
    ``average_peers`` (co-teaching only) the two peers' softmax outputs are averaged. Writes
    ``out_dir/<case>.nii.gz`` (and ``.npz`` probabilities when ``save_probabilities``); the folder
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
        inputs.append([str(img)])
    dev = resolve_device(device)
    kwargs = dict(tile_step_size=tile_step_size, use_mirroring=mirroring, verbose=False,
                  perform_everything_on_device=dev.type == "cuda", allow_tqdm=True)
    print(f"[predict] {len(case_ids)} cases with {training_dir} on {dev}", file=sys.stderr)
    with atomic_dir(out_dir) as tmp:
        peers = ("A", "B") if average_peers else ("A",)
        for peer in peers:
            predictor = build_predictor(training_dir, peers=peer, device=dev, **kwargs)
            target = tmp if peer == "A" else tmp / ".peerB"
            target.mkdir(exist_ok=True)
            predictor.predict_from_files_sequential(
                inputs, [str(target / c) for c in case_ids],
                save_probabilities=save_probabilities or average_peers, overwrite=True)
        if average_peers:
            _average_peer_softmax(tmp, tmp / ".peerB", case_ids, save_probabilities)
            shutil.rmtree(tmp / ".peerB")
    return Path(out_dir)


def _average_peer_softmax(dir_a: Path, dir_b: Path, case_ids: Sequence[str],
                          keep_probabilities: bool) -> None:
    """Replace A's segmentations by the argmax of the mean of A's and B's probabilities."""
    for case in case_ids:
        pa = np.load(dir_a / f"{case}.npz")["probabilities"]
        pb = np.load(dir_b / f"{case}.npz")["probabilities"]
        mean = (pa.astype(np.float32) + pb.astype(np.float32)) / 2
        seg_a = read_image(dir_a / f"{case}.nii.gz")
        # nnU-Net stores probabilities with the spatial axes of the exported image (z, y, x).
        labels = np.argmax(mean, axis=0).astype(np.uint8)
        if labels.shape != sitk.GetArrayViewFromImage(seg_a).shape:
            raise InputDataError(f"{dir_a / (case + '.npz')}: probability shape {labels.shape} "
                                 "does not match the segmentation; cannot average peers.")
        img = sitk.GetImageFromArray(labels)
        img.CopyInformation(seg_a)
        write_image(img, dir_a / f"{case}.nii.gz")
        if keep_probabilities:
            np.savez_compressed(dir_a / f"{case}.npz", probabilities=mean)
        else:
            (dir_a / f"{case}.npz").unlink()
            pkl = dir_a / f"{case}.pkl"
            if pkl.exists():
                pkl.unlink()
