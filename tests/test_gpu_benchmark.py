"""benchmarks/gpu.py runs end to end on the CPU with --tiny (the GPU check is ready to run)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_tiny_on_cpu(tmp_path):
    out_file = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "CUDA_VISIBLE_DEVICES": ""}  # the CPU path even on a GPU machine
    res = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--tiny", "--root",
         str(tmp_path / "work"), "--methods", "Baseline", "StoCoT", "--iterations", "2",
         "--out", str(out_file)],
        capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    assert out_file.read_text() == res.stdout
    rows = [line.split("|")[1:-1] for line in res.stdout.splitlines()
            if line.startswith("| ") and not line.startswith(("| method", "| ---"))]
    got = [(r[0].strip(), r[1].strip()) for r in rows]
    # the two-peer method once per peer schedule
    assert got == [("Baseline", "-"), ("StoCoT", "sequential"), ("StoCoT", "joint")]
    for r in rows:
        s_it, epoch_s, peak = float(r[2]), float(r[3]), float(r[4])
        assert 0 < s_it < epoch_s and math.isfinite(epoch_s) and peak >= 0
    assert "CPU (no CUDA device), tiny synthetic task (24x48x48 voxels)" in res.stdout
    assert "Prediction of one case (24x48x48, mirroring, Baseline)" in res.stdout
    for name in ("Baseline_-", "StoCoT_sequential", "StoCoT_joint"):
        assert (tmp_path / "work" / "train" / name / "checkpoint_final.pth").is_file()
    assert len(list((tmp_path / "work" / "pred").glob("*.nii.gz"))) == 1
