"""Does a method learn the phantom's lesion? Per-epoch training Dice of one final training.

Usage (from a folder whose ``results/`` holds the default run's preprocessed Phantom data, e.g.
after ``snakemake --cores 2 --until plan``)::

    python benchmarks/lesion_collapse.py NAME METHOD FOLD [seed=S] [epochs=E] [lr=X] [warmup=W]

Trains METHOD on FOLD of the default config's Phantom task (its final-training budget, the
method's default hyper-parameters) on the CPU into ``/tmp/lesion_collapse/NAME`` and prints the
training pseudo Dice of the organ and the lesion at every second epoch (``progress.csv``).
``seed`` replaces the config's seed; ``epochs`` the number of epochs; ``lr`` nnU-Net's initial
learning rate (0.01); ``warmup`` a linear learning-rate ramp over the first W epochs before
nnU-Net's poly schedule (``lr`` and ``warmup`` patch nnU-Net for this experiment only; the
pipeline has neither option). Results: ``benchmarks/results/lesion_collapse.md``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml


def _patch_learning_rate(lr: float | None, warmup: int) -> None:
    """Experiment-only changes of nnU-Net's optimiser schedule (see the module docstring)."""
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    if lr is not None:
        init = nnUNetTrainer.__init__

        def patched_init(self: Any, *a: Any, **k: Any) -> None:
            init(self, *a, **k)
            self.initial_lr = lr

        nnUNetTrainer.__init__ = patched_init  # type: ignore[method-assign]
    if warmup > 0:
        def step(self: Any, current_step: int | None = None) -> None:
            if current_step is None or current_step == -1:
                current_step = self.ctr
                self.ctr += 1
            if current_step < warmup:
                new_lr = self.initial_lr * (current_step + 1) / (warmup + 1)
            else:
                frac = (current_step - warmup) / (self.max_steps - warmup)
                new_lr = self.initial_lr * (1 - frac) ** self.exponent
            for group in self.optimizer.param_groups:
                group["lr"] = new_lr
            self._last_lr = [new_lr]

        PolyLRScheduler.step = step  # type: ignore[method-assign]


def main() -> None:
    """Train one variant and print its per-epoch organ and lesion training Dice."""
    from nnrobustloss import pipeline
    from nnrobustloss.config import validate_config
    from nnrobustloss.training import train

    name, method, fold = sys.argv[1], sys.argv[2], int(sys.argv[3])
    opts = dict(a.split("=", 1) for a in sys.argv[4:])
    cfg = validate_config(yaml.safe_load(Path("config/config.yaml").read_text()))
    kw = pipeline.train_kwargs(pipeline.train_params(cfg, "Phantom", method, fold), "results")
    kw["seed"] = int(opts.get("seed", kw["seed"]))
    kw["epochs"] = int(opts.get("epochs", kw["epochs"]))
    _patch_learning_rate(float(opts["lr"]) if "lr" in opts else None, int(opts.get("warmup", 0)))
    pipeline.limit_cpu_threads("cpu", 1)  # augmentation: in-process on the CPU ("auto")
    out = Path("/tmp/lesion_collapse") / name
    params = json.loads(opts["params"]) if "params" in opts else None
    train(output_dir=out, params=params, device="cpu", continue_training=False, **kw)
    d = pd.read_csv(out / "progress.csv")
    for label, col in (("organ", "train_dice_class1"), ("lesion", "train_dice_class2")):
        print(name, label, d[col].round(2).tolist()[::2], flush=True)


if __name__ == "__main__":
    main()
