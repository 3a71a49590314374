"""Resuming interrupted work (issue 10 item 3): a prediction job continues per case from its
staging folder, and a retried tuning trial continues from its interrupted trial's checkpoint.

Interruptions are real: an exception raised in the middle of the job (between two cases, or
from a trial's report after an epoch's checkpoint) and SIGKILLed worker processes. The real
nnU-Net tests train and predict the phantom task of tests/conftest.py on the CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnrobustloss import layout, prediction
from nnrobustloss.metrics import CALIBRATION_SUFFIX, CalibrationStats


class _Interrupted(Exception):
    """Stands for a wall-time kill in the middle of a job."""


@pytest.fixture(scope="module")
def phantom(request):
    """The phantom fixture's paths, a 1-epoch Baseline training of fold 0, and deterministic
    single-threaded CPU settings (restored afterwards)."""
    import torch

    from nnrobustloss.training import train

    try:
        info = request.getfixturevalue("preprocessed_phantom")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py provides no preprocessed_phantom fixture")
    old_env, old_threads = os.environ.get("nnUNet_n_proc_DA"), torch.get_num_threads()
    os.environ["nnUNet_n_proc_DA"] = "0"
    torch.set_num_threads(1)
    root = Path(info["results_dir"])
    model = train(info["preprocessed_dir"], "Baseline", 0,
                  layout.training_dir(root, "ResumeTest", "Baseline", 0), epochs=1,
                  iterations_per_epoch=2, val_iterations_per_epoch=1, device="cpu")
    yield {**info, "model": model}
    torch.set_num_threads(old_threads)
    if old_env is None:
        os.environ.pop("nnUNet_n_proc_DA", None)
    else:
        os.environ["nnUNet_n_proc_DA"] = old_env


def _cases(info: dict) -> list[str]:
    images = Path(info["raw_dir"]) / "imagesTr"
    return sorted(p.name.removesuffix("_0000.nii.gz") for p in images.glob("*_0000.nii.gz"))


def _predict(info: dict, out: Path, **kw):
    spec = prediction.CalibrationSpec(Path(info["reference_labels"]), {"organ": [1], "lesion": [2]})
    return prediction.predict_cases(info["model"], Path(info["raw_dir"]) / "imagesTr",
                                    _cases(info), out, mirroring=False, calibration=spec,
                                    device="cpu", **kw)


_PREDICT_CASE = prediction._predict_case


def _spy(monkeypatch, fail_at: int | None = None) -> list[str]:
    """Count the cases really predicted; raise _Interrupted before the ``fail_at``-th (0-based)."""
    real = _PREDICT_CASE
    seen: list[str] = []

    def spy(predictors, files, out_truncated, *args):
        if fail_at is not None and len(seen) == fail_at:
            raise _Interrupted
        seen.append(Path(out_truncated).name)
        return real(predictors, files, out_truncated, *args)

    monkeypatch.setattr(prediction, "_predict_case", spy)
    return seen


def _arrays(folder: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
    return seg, CalibrationStats.load(folder / f"{case}{CALIBRATION_SUFFIX}").counts


@pytest.mark.slow
def test_interrupted_prediction_resumes_per_case_and_equals_an_uninterrupted_run(
        phantom, tmp_path, monkeypatch):
    cases, k = _cases(phantom), 2
    assert len(cases) == 6
    _predict(phantom, tmp_path / "ref")

    out = tmp_path / "pred" / "fold0"
    staging = layout.partial_dir(out)
    assert staging == tmp_path / "pred" / "fold0.partial"
    _spy(monkeypatch, fail_at=k)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    assert not out.exists()  # the declared output appears only complete
    assert sorted(p.name for p in staging.iterdir() if p.is_dir()) == cases[:k]
    for case in cases[:k]:
        assert sorted(p.name for p in (staging / case).iterdir()) == sorted(
            [f"{case}.nii.gz", f"{case}{CALIBRATION_SUFFIX}"])
    inodes = {case: (staging / case / f"{case}.nii.gz").stat().st_ino for case in cases[:k]}
    # what a SIGKILL in the middle of a case leaves: a temporary folder of atomic_dir
    killed = staging / f".tmp-123-{cases[k]}-abcdefgh"
    (killed / cases[k]).mkdir(parents=True)

    seen = _spy(monkeypatch)
    assert _predict(phantom, out) == out
    assert seen == cases[k:]  # only the missing cases were predicted
    assert not staging.exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        n for c in cases for n in (f"{c}.nii.gz", f"{c}{CALIBRATION_SUFFIX}"))
    for case in cases:
        seg, counts = _arrays(out, case)
        ref_seg, ref_counts = _arrays(tmp_path / "ref", case)
        assert np.array_equal(seg, ref_seg), case
        assert np.array_equal(counts, ref_counts), case
    for case, ino in inodes.items():  # the cases of the first run are its files, not redone
        assert (out / f"{case}.nii.gz").stat().st_ino == ino


@pytest.mark.slow
def test_staged_cases_of_other_options_or_another_model_are_discarded(
        phantom, tmp_path, monkeypatch):
    cases = _cases(phantom)
    out = tmp_path / "fold0"
    _spy(monkeypatch, fail_at=3)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    seen = _spy(monkeypatch)
    _predict(phantom, out, tile_step_size=0.75)  # another option: every case again
    assert seen == cases

    _spy(monkeypatch, fail_at=1)
    with pytest.raises(_Interrupted):
        _predict(phantom, out)
    info = layout.partial_dir(out) / prediction.STAGING_INFO
    assert info.is_file()
    # a retrained model (another checkpoint_final.pth) makes the staged case stale too
    text = info.read_text()
    info.write_text(text.replace(text.split('"checkpoint_sha256": "')[1][:64], "0" * 64))
    seen = _spy(monkeypatch)
    _predict(phantom, out)
    assert seen == cases
