"""Training writes only into its own output folder: never under a user's exported nnUNet_results
(nnU-Net's trainer creates ``$nnUNet_results/<dataset>/<trainer>__<plans>__<config>/fold_<k>``
while it is constructed), and the variable is left as the user set it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nnrobustloss.training import train


@pytest.mark.slow
@pytest.mark.parametrize("exported", [True, False])
def test_training_leaves_nothing_under_nnunet_results(preprocessed_phantom, tmp_path, monkeypatch,
                                                      exported):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    user = tmp_path / "my_nnUNet_results"
    user.mkdir()
    (user / "Dataset001_Mine").mkdir()  # the user's own models stay as they are
    if exported:
        monkeypatch.setenv("nnUNet_results", str(user))
    else:
        monkeypatch.delenv("nnUNet_results", raising=False)
    out = train(preprocessed_phantom["preprocessed_dir"], "Baseline", 0, tmp_path / "run",
                epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1)
    assert (out / "checkpoint_final.pth").is_file()
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == ["Dataset001_Mine"]
    assert os.environ.get("nnUNet_results") == (str(user) if exported else None)
    # the training log is in the output folder
    assert list(Path(out).glob("training_log_*.txt"))
