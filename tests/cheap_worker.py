"""A tuning worker with a cheap objective, for tests/test_tuning.py and tests/test_resume.py.

One file for both ways a test runs it, so that they run exactly the same code: imported, its
:func:`make_objective` is the ``run_trial`` of in-process ``nnrobustloss.tuning.run_worker``
calls; as a script (:func:`run_killed_worker`) it is a worker process that SIGKILLs itself in
the middle of a trial, as a wall-time kill would.

The objective resumes like a training: ``checkpoint_latest.pth`` in the trial folder holds the
number of finished epochs, the epochs before it are reported again, and every epoch it really
runs is logged as ``<trial number> <epoch>`` to ``ran.txt`` in the trial folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna

KILL_EPOCH = 1
"""The epoch at whose start the killed trial dies (after epoch 0's checkpoint and report)."""


def quadratic(params: dict[str, float], epoch: int) -> float:
    """Deterministic objective: maximal at 1.0 for every parameter, rising with the epoch."""
    return -sum((v - 1.0) ** 2 for v in params.values()) - 0.5 / (epoch + 1)


def make_objective(epochs: int, kill_number: int = -1, marker: str | None = None):
    """A ``run_trial`` callable of ``epochs`` epochs; it SIGKILLs its own process at the start
    of epoch :data:`KILL_EPOCH` of trial ``kill_number`` unless ``marker`` exists (it creates
    the marker first, so only the first run dies). Prunes when the study's pruner says so."""

    def run(trial: optuna.Trial, params: dict[str, float], trial_dir: Path) -> float:
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "progress.csv").write_text("epoch\n")
        ckpt = trial_dir / "checkpoint_latest.pth"
        start = int(ckpt.read_text()) if ckpt.is_file() else 0
        for epoch in range(start):
            trial.report(quadratic(params, epoch), step=epoch)
        for epoch in range(start, epochs):
            if epoch == KILL_EPOCH and trial.number == kill_number and not Path(marker).exists():
                Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            with (trial_dir / "ran.txt").open("a") as f:
                f.write(f"{trial.number} {epoch}\n")
            ckpt.write_text(str(epoch + 1))
            trial.report(quadratic(params, epoch), step=epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quadratic(params, epochs - 1)

    return run


def run_killed_worker(worker: dict[str, Any], epochs: int, kill_number: int,
                      marker: str | os.PathLike[str]) -> subprocess.CompletedProcess:
    """Run ``run_worker(**worker)`` with :func:`make_objective` in a subprocess that kills
    itself in trial ``kill_number``; assert that it died of SIGKILL."""
    cfg = {"worker": worker, "epochs": epochs, "kill_number": kill_number, "marker": str(marker)}
    proc = subprocess.run([sys.executable, __file__, json.dumps(cfg)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


if __name__ == "__main__":
    from nnrobustloss.tuning import run_worker

    cfg = json.loads(sys.argv[1])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    run_worker(**cfg["worker"], run_trial=make_objective(cfg["epochs"], cfg["kill_number"],
                                                         cfg["marker"]))
