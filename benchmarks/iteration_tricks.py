"""Speed tricks of the losses and the selection, measured on whole training iterations.

Usage::

    nice -n 10 python benchmarks/iteration_tricks.py [--workdir DIR] [--old-rev REV]
        [--repeats 41] [--resenc-repeats 3] [--resenc-net-patches 32x64x64 32x128x128]
        [--settings phantom resenc behaviour] > benchmarks/results/iteration_tricks.md

Compares the speed tricks of ``losses.py`` / ``selection.py`` at ``--old-rev`` (default
b253e29, the last commit with every trick) against the plain autograd formulas, through the real
trainers of every method (Baseline, APL1, APL2, SVLS, CoT, CoTPlus, StoCoT, HRL):

- ``old``: the package of ``--old-rev`` (its ``src/`` extracted with ``git archive``), as is;
- ``plain``: the same package with every trick swapped for its plain version: the module-level
  functions the trainers call (``losses._hard``, ``losses._soft``, ``losses.svls_targets``, ...)
  are replaced by adapters onto the plain functions of the working tree's ``losses.py`` /
  ``selection.py`` (loaded under other module names), so the trainers' own code runs;
- ``-<trick>``: ``old`` with that one trick swapped, for the trick's share of the iteration
  (a trick is measured for a method only when a dry-run step calls it);
- ``new``: the working tree's package, as is (in its own process).

Setting ``phantom``: the default config's Phantom (config/config.yaml: CPU plan patch 16x32x32,
batch 2, features 8-16-32), converted, split and preprocessed with the pipeline's stage functions
under ``--workdir``; per method the real trainer (``initialize``, ``on_train_start``), one batch
from its own data loader, then ``train_step(batch)`` timed: network forward, loss, backward,
clipping, SGD step and, for two-peer methods, selection (sequential peer updates, selection
active from epoch 0: delay 0, gradual 0, forget rate 0.1, Beta(2, 2), w 0.7, sigma 1).

Setting ``resenc``: the KiTS23 residual-encoder L plan (nnU-Net's ``nnUNetPlannerResEncL`` on
three real KiTS23 label maps with synthetic CT, fingerprint and plans only, no preprocessing):
batch 2, patch 32x384x384, 4 classes. (a) Measured: the loss + selection part of an iteration
at the full batch and patch with every deep-supervision level: the trainer's ``loss`` (single
network) or ``select`` + both peers' ``_peer_loss`` (two peers), forward + backward, on logits
3 * one-hot(label) + N(0, 1) noise (independent noise per peer) of real KiTS23 labels (a crop
of case_00021 / case_00402, one per sample). (b) Extrapolated: the network's forward + backward
and no-grad forward measured at ``--resenc-net-patch`` and scaled linearly by voxel count to the
full patch, plus the clipping + SGD step (independent of the patch). Iteration = network part
(x2 forward + backward, + one no-grad forward, x2 SGD steps for the sequential two-peer
schedule) + loss and selection part.

Setting ``behaviour`` (old vs new package, float rounding): each method's losses, logit
gradients (every level, both peers) and keep-masks on the ResEnc-L batch of (a), and one short
Phantom training per method and package with the default config's budget (fold 0, 20 epochs x
10 iterations, CPU, 1 thread, ``nnUNet_n_proc_DA=0``, default hyper-parameters) through the
pipeline's ``run_train``: the last row of each ``progress.csv``.

Clock: ``time.thread_time`` (CPU time of the calling thread; torch runs single-threaded with
``torch.set_num_threads(1)``), so other processes on a shared machine inflate it little. Every
variant of a method runs round-robin in each repeat (the first repeat is a warm-up, not
counted); the tables give medians, and the share of a trick is the median over repeats of
(time with the trick swapped - time of ``old``) in the same repeat, relative to ``old``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_KITS = REPO.parent / "shared" / "data" / "kits23_labels"
KITS_CASES = ("case_00021", "case_00402", "case_00289")
KITS_LABEL_CROPS = ("case_00021", "case_00402")  # one per sample of the batch
OLD_REV = "b253e29"
METHODS = ("Baseline", "APL1", "APL2", "SVLS", "CoT", "CoTPlus", "StoCoT", "HRL")
PARAMS: dict[str, dict[str, float]] = {
    "APL2": {"w": 0.7}, "SVLS": {"sigma": 1.0}, "CoT": {"forget_rate": 0.1},
    "CoTPlus": {"forget_rate": 0.1}, "StoCoT": {"a": 2.0, "b": 2.0},
    "HRL": {"a": 2.0, "b": 2.0, "w": 0.7, "sigma": 1.0}}
TWO_PEER = ("CoT", "CoTPlus", "StoCoT", "HRL")
TRAINED = METHODS
"""Methods of the short old-vs-new Phantom trainings (Baseline: nnU-Net's loss, a control)."""

# --------------------------------------------------------------------------------------------
# the tricks of --old-rev and their plain replacements
# --------------------------------------------------------------------------------------------

TRICKS: dict[str, str] = {
    "fused_hard": "losses._hard: _HardTerms, fused hard-label terms with hand-written gradients",
    "fused_soft": "losses._soft: _SoftTerms, fused soft-target terms with hand-written gradients",
    "svls_separable": "losses.svls_targets: separable three-tap passes instead of a convolution",
    "dice_onehot": "losses._dice_onehot: one-hot by comparison for nnU-Net's Dice",
    "masked_mean_dot": "losses._masked_mean: masked mean as a dot product",
    "masked_ce_ignore": "losses._masked_ce: masked CE via cross_entropy's ignore_index",
    "kth_bracket": "selection._kth_smallest: k-th smallest via a sampled bracket",
    "keep_no_sort": "selection._keep_smallest: kthvalue + ties instead of a stable sort",
}
"""Trick name -> what is swapped; ``_softmax_parts`` is part of both fused functions."""


def _load_as(name: str, path: Path) -> ModuleType:
    """Import the file ``path`` as module ``name`` (its own imports resolve as usual)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@functools.cache
def plain_replacements() -> dict[str, tuple[str, str, Callable[..., Any]]]:
    """Trick -> (module, attribute, plain function) for the package of --old-rev.

    The plain functions are the working tree's (``plain_losses``, ``plain_selection``), wrapped
    to the old internal signatures.
    """
    new = _load_as("plain_losses", REPO / "src" / "nnrobustloss" / "losses.py")
    new_sel = _load_as("plain_selection", REPO / "src" / "nnrobustloss" / "selection.py")

    def hard(logits: Any, target: Any, c_ce: float = 0.0, c_rce: float = 0.0,
             c_nce: float = 0.0, c_ngce: float = 0.0, c_gce: float = 0.0, w: float = 1.0,
             delta: float = 1e-4) -> Any:
        parts = [(c_ce, lambda: new.per_voxel_ce(logits, target)),
                 (c_rce, lambda: new.rce(logits, target, delta)),
                 (c_nce, lambda: new.nce(logits, target)),
                 (c_ngce, lambda: new.ngce(logits, target, w)),
                 (c_gce, lambda: new.gce(logits, target, w))]
        return _weighted_sum(parts)

    def soft(logits: Any, q: Any, c_ce: float = 0.0, c_rce: float = 0.0, c_ngce: float = 0.0,
             w: float = 1.0, delta: float = 1e-4) -> Any:
        parts = [(c_ce, lambda: new.soft_ce(logits, q)),
                 (c_rce, lambda: new.soft_rce(logits, q, delta)),
                 (c_ngce, lambda: new.soft_ngce(logits, q, w))]
        return _weighted_sum(parts)

    def masked_mean(per_voxel: Any, mask: Any) -> Any:
        # the old _Mask keeps the float mask as .dice
        m = None if mask is None else SimpleNamespace(weights=mask.dice, count=mask.count)
        return new._masked_mean(per_voxel, m)

    def masked_ce(logits: Any, y: Any, mask: Any) -> Any:
        return masked_mean(new.per_voxel_ce(logits, y), mask)

    return {
        "fused_hard": ("losses", "_hard", hard),
        "fused_soft": ("losses", "_soft", soft),
        "svls_separable": ("losses", "svls_targets", new.svls_targets),
        "dice_onehot": ("losses", "_dice_onehot", lambda logits, dice_target: dice_target),
        "masked_mean_dot": ("losses", "_masked_mean", masked_mean),
        "masked_ce_ignore": ("losses", "_masked_ce", masked_ce),
        "kth_bracket": ("selection", "_kth_smallest",
                        lambda flat, k: (flat.kthvalue(k).values, None)),
        "keep_no_sort": ("selection", "_keep_smallest", new_sel._keep_smallest),
    }


def _weighted_sum(parts: list[tuple[float, Callable[[], Any]]]) -> Any:
    total = None
    for c, term in parts:
        if c:
            t = term() if c == 1.0 else c * term()
            total = t if total is None else total + t
    return total


@contextlib.contextmanager
def swapped(replacements: dict[str, tuple[str, str, Callable[..., Any]]],
            names: list[str]) -> Iterator[None]:
    """Swap the named tricks of ``nnrobustloss.<module>`` for their replacements."""
    import nnrobustloss.losses
    import nnrobustloss.selection

    modules = {"losses": nnrobustloss.losses, "selection": nnrobustloss.selection}
    saved = []
    try:
        for name in names:
            mod, attr, fn = replacements[name]
            saved.append((modules[mod], attr, getattr(modules[mod], attr)))
            setattr(modules[mod], attr, fn)
        yield
    finally:
        for module, attr, fn in reversed(saved):
            setattr(module, attr, fn)


def tricks_on_path(step: Callable[[], None],
                   replacements: dict[str, tuple[str, str, Callable[..., Any]]]) -> list[str]:
    """The tricks that one call of ``step`` calls (counted by wrappers on the old functions)."""
    import nnrobustloss.losses
    import nnrobustloss.selection

    modules = {"losses": nnrobustloss.losses, "selection": nnrobustloss.selection}
    names = list(replacements)
    calls = dict.fromkeys(names, 0)
    wrapped = {}
    for name in names:
        mod, attr, _ = replacements[name]
        original = getattr(modules[mod], attr)

        def counter(*args: Any, _name: str = name, _f: Any = original, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _f(*args, **kwargs)

        wrapped[name] = (modules[mod], attr, original)
        setattr(modules[mod], attr, counter)
    try:
        step()
    finally:
        for module, attr, original in wrapped.values():
            setattr(module, attr, original)
    return [n for n in names if calls[n]]


def time_variants(step: Callable[[], None], variants: dict[str, list[str]],
                  replacements: dict[str, tuple[str, str, Callable[..., Any]]],
                  repeats: int) -> dict[str, list[float]]:
    """Thread CPU seconds of ``step`` per variant (tricks swapped), round-robin, warm-up first."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for rep in range(repeats + 1):
        for variant, names in variants.items():
            with swapped(replacements, names):
                t0 = time.thread_time()
                step()
                dt = time.thread_time() - t0
            if rep > 0:
                times[variant].append(dt)
    return times


def variants_for(step: Callable[[], None], package: str) -> tuple[dict[str, list[str]], dict]:
    """The variants of a method: old, plain, -trick for each trick on its path (old package);
    just ``new`` for the working tree's package."""
    if package == "new":
        return {"new": []}, {}
    replacements = plain_replacements()
    on_path = tricks_on_path(step, replacements)
    variants = {"old": [], "plain": list(TRICKS)}
    variants.update({f"-{t}": [t] for t in on_path})
    return variants, replacements


# --------------------------------------------------------------------------------------------
# data: the Phantom's preprocessed dataset and the KiTS23 ResEnc-L plans
# --------------------------------------------------------------------------------------------


def prepare_phantom(workdir: Path) -> Path:
    """Convert, split and preprocess the default config's Phantom; return its preprocessed dir."""
    from nnrobustloss import pipeline as P
    from nnrobustloss.config import load_config

    r = workdir / "phantom"
    cfg = load_config(REPO / "config" / "config.yaml",
                      overrides={"results_dir": str(r), "folds": [0], "device": "cpu"})
    task = "Phantom"
    if not (r / "preprocessed" / f"{task}.json").is_file():
        with contextlib.redirect_stdout(io.StringIO()):
            P.run_convert(P.convert_params(cfg, task), results_dir=r,
                          manifest=r / "raw" / f"{task}.json")
            P.run_splits(P.splits_params(cfg, task), results_dir=r,
                         out_json=r / "splits" / f"{task}.json")
            P.run_plan(P.plan_params(cfg, task), results_dir=r,
                       splits_json=r / "splits" / f"{task}.json",
                       manifest=r / "preprocessed" / f"{task}.json", num_processes=1)
    manifest = json.loads((r / "preprocessed" / f"{task}.json").read_text())
    return r / "preprocessed" / manifest["noisy"]


def prepare_resenc(workdir: Path) -> Path:
    """KiTS23 ResEnc-L plans (fingerprint + nnUNetPlannerResEncL, no preprocessing); returns the
    folder holding ``nnUNetPlans.json`` and ``dataset.json``."""
    from nnrobustloss import pipeline as P
    from nnrobustloss.config import load_config
    from nnrobustloss.datasets.synthetic_ct import write_synthetic_kits23
    from nnrobustloss.planning import nnunet_paths

    r = workdir / "kits23"
    cfg = load_config(REPO / "config" / "paper.yaml", REPO / "config" / "kits23_stages.yaml",
                      overrides={"results_dir": str(r)})
    task = "KiTS23"
    t = cfg["tasks"][task]
    name = f"Dataset{t['dataset_id']:03d}_{task}"
    out = r / "plans" / name
    if (out / "nnUNetPlans.json").is_file():
        return out
    source = r / "kits23_source"
    write_synthetic_kits23(SHARED_KITS, source, KITS_CASES, seed=cfg["seed"])
    cfg["tasks"][task]["sources"] = [{"type": "kits23", "path": str(source)}]
    with contextlib.redirect_stdout(io.StringIO()):
        if not (r / "raw" / f"{task}.json").is_file():
            P.run_convert(P.convert_params(cfg, task), results_dir=r,
                          manifest=r / "raw" / f"{task}.json")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (
            extract_fingerprints,
            plan_experiments,
        )
        with nnunet_paths(raw=r / "raw", preprocessed=r / "plans"):
            extract_fingerprints([t["dataset_id"]], num_processes=1, show_progress_bar=False)
            plan_experiments([t["dataset_id"]], "nnUNetPlannerResEncL",
                             overwrite_plans_name="nnUNetPlans")
    (out / "dataset.json").write_text((r / "raw" / name / "dataset.json").read_text())
    return out


# --------------------------------------------------------------------------------------------
# measurements (children)
# --------------------------------------------------------------------------------------------


def _trainer(pre: Path, method: str, out: Path) -> Any:
    import torch

    from nnrobustloss.fileio import read_json
    from nnrobustloss.trainers.loading import load_trainer_class
    from nnrobustloss.training import build_settings

    plans = read_json(pre / "nnUNetPlans.json")
    plans["continue_training"] = False
    cls = load_trainer_class(method)
    trainer = cls(plans, "3d_fullres", 0, read_json(pre / "dataset.json"), torch.device("cpu"))
    trainer.set_output_paths(out / method, pre)
    trainer.configure(build_settings(method, params=PARAMS.get(method), epochs=20,
                                     iterations_per_epoch=10, val_iterations_per_epoch=2,
                                     coteaching={"delay": 0, "gradual": 0}))
    return trainer


def child_phantom(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Whole train_step of each method's trainer on the Phantom."""
    import torch

    rows = []
    pre = Path(args.pre)
    with tempfile.TemporaryDirectory() as out:
        for method in args.methods:
            trainer = _trainer(pre, method, Path(out))
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.initialize()
                trainer.on_train_start()
                trainer.on_train_epoch_start()
            batch = next(trainer.dataloader_train)
            torch.manual_seed(0)

            def step(tr: Any = trainer, b: dict = batch) -> None:
                tr.train_step(b)

            variants, replacements = variants_for(step, args.package)
            times = time_variants(step, variants, replacements, args.repeats)
            rows += [{"setting": "phantom", "method": method, "variant": v, "seconds": s}
                     for v, s in times.items()]
            trainer._shutdown_dataloaders()
    return rows


def _kits_labels(patch: list[int]) -> Any:
    """[2, 1, *patch] int16 label crops of two real KiTS23 cases (around their kidneys)."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    crops = []
    for case in KITS_LABEL_CROPS:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(SHARED_KITS / case /
                                                        "segmentation.nii.gz")))
        arr = np.pad(arr, [(0, max(0, p - s)) for p, s in zip(patch, arr.shape, strict=True)])
        fg = np.argwhere(arr > 0).mean(0).astype(int)
        start = [int(np.clip(c - p // 2, 0, s - p)) for c, p, s in zip(fg, patch, arr.shape,
                                                                         strict=True)]
        crops.append(arr[tuple(slice(s, s + p) for s, p in zip(start, patch, strict=True))])
    return torch.from_numpy(np.stack(crops)[:, None].astype(np.int16))


def _resenc_batch(trainer: Any) -> tuple[list[Any], list[Any], list[Any]]:
    """Both peers' logits (leaves with grad) and the targets of every deep-supervision level:
    3 * one-hot(label) + N(0, 1) noise (seeded) on the real KiTS23 label crops."""
    import torch

    patch = list(trainer.configuration_manager.patch_size)
    k = trainer.label_manager.num_segmentation_heads
    labels = _kits_labels(patch)
    assert labels.shape[0] == trainer.configuration_manager.batch_size
    g = torch.Generator().manual_seed(0)
    targets, outs_a, outs_b = [], [], []
    for scale in trainer._get_deep_supervision_scales():
        st = [round(1 / s) for s in scale]
        t = labels[(..., *[slice(None, None, s) for s in st])].float()
        onehot = torch.nn.functional.one_hot(t[:, 0].long(), k).movedim(-1, 1).float()
        targets.append(t)
        for outs in (outs_a, outs_b):
            noise = torch.randn(onehot.shape, generator=g)
            outs.append((3 * onehot + noise).requires_grad_(True))
    return outs_a, outs_b, targets


def loss_and_selection(tr: Any, oa: list[Any], ob: list[Any],
                       tg: list[Any]) -> tuple[list[Any], list[Any]]:
    """The loss part of an iteration on given logits (gradients land in their ``.grad``):
    ``select`` and both peers' masked ``_peer_loss`` (two peers) or ``loss``, with backward.
    Returns the losses and, for two peers, the masks of every level (for A, then for B)."""
    for o in (*oa, *ob):
        o.grad = None
    if not hasattr(tr, "select"):
        loss = tr.loss(oa, tg)
        loss.backward()
        return [loss.detach()], []
    ma, mb = tr.select(oa, ob, tg, tr._level_weights(len(oa)))
    la = tr._peer_loss(oa, tg, ma)
    la.backward()
    lb = tr._peer_loss(ob, tg, mb)
    lb.backward()
    return [la.detach(), lb.detach()], [*ma, *mb]


def child_resenc_loss(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Loss + selection (forward + backward) at the full ResEnc-L batch and patch."""
    pre = Path(args.pre)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for method in args.methods:
            trainer = _trainer(pre, method, Path(out))
            trainer.loss = trainer._build_loss()
            outs_a, outs_b, targets = _resenc_batch(trainer)

            def step(tr: Any = trainer, oa: list = outs_a, ob: list = outs_b,
                     tg: list = targets) -> None:
                loss_and_selection(tr, oa, ob, tg)

            variants, replacements = variants_for(step, args.package)
            times = time_variants(step, variants, replacements, args.repeats)
            rows += [{"setting": "resenc_loss", "method": method, "variant": v, "seconds": s,
                      "shapes": [list(o.shape) for o in outs_a]} for v, s in times.items()]
            del outs_a, outs_b, targets
    return rows


def child_resenc_net(args: argparse.Namespace) -> list[dict[str, Any]]:
    """ResEnc-L network at a reduced patch: forward + backward, no-grad forward, clip + SGD."""
    import torch

    pre = Path(args.pre)
    with tempfile.TemporaryDirectory() as out:
        trainer = _trainer(pre, "Baseline", Path(out))
        full = list(trainer.configuration_manager.patch_size)
        batch = trainer.configuration_manager.batch_size
        # what initialize() builds (it also needs preprocessed data, absent here)
        net = trainer.build_network_architecture(
            trainer.plans_manager, trainer.configuration_manager, 1,
            trainer.label_manager.num_segmentation_heads, trainer.enable_deep_supervision)
        trainer.network = net
        opt, _ = trainer.configure_optimizers()
        net.train()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, *args.net_patch, generator=g)
        times: dict[str, list[float]] = {"fwd_bwd": [], "fwd_nograd": [], "clip_sgd": []}
        for rep in range(args.repeats + 1):
            opt.zero_grad(set_to_none=True)
            t0 = time.thread_time()
            outs = net(x)
            grads = [torch.randn(o.shape, generator=g) for o in outs]
            t1 = time.thread_time()
            torch.autograd.backward(outs, grads)
            t2 = time.thread_time()
            del outs
            torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
            opt.step()
            t3 = time.thread_time()
            with torch.no_grad():
                net(x)
            t4 = time.thread_time()
            if rep > 0:
                times["fwd_bwd"].append((t1 - t0) + (t2 - t1))
                times["clip_sgd"].append(t3 - t2)
                times["fwd_nograd"].append(t4 - t3)
        n_params = sum(p.numel() for p in net.parameters())
        arch = trainer.configuration_manager.network_arch_class_name
    return [{"setting": "resenc_net", "variant": k, "seconds": v, "net_patch": args.net_patch,
             "full_patch": full, "batch": batch, "params": n_params, "arch": arch}
            for k, v in times.items()]


def child_grads(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Save each method's losses, logit gradients and masks on the ResEnc-L batch (--out)."""
    import torch

    out_dir = Path(args.out) / args.package
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as out:
        for method in args.methods:
            trainer = _trainer(Path(args.pre), method, Path(out))
            trainer.loss = trainer._build_loss()
            outs_a, outs_b, targets = _resenc_batch(trainer)
            losses, masks = loss_and_selection(trainer, outs_a, outs_b, targets)
            grads = [o.grad for o in (*outs_a, *outs_b) if o.grad is not None]
            torch.save({"losses": losses, "grads": grads, "masks": masks},
                       out_dir / f"{method}.pt")
    return []


def child_train(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Short Phantom trainings (the default config's budget, fold 0, CPU) with this package."""
    from nnrobustloss import layout
    from nnrobustloss import pipeline as P
    from nnrobustloss.config import load_config
    from nnrobustloss.trainers.progress import read_progress_csv

    phantom = Path(args.pre)  # the Phantom's results folder (holding preprocessed/)
    root = Path(args.out) / args.package
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "preprocessed").exists():
        (root / "preprocessed").symlink_to(phantom / "preprocessed")
    cfg = load_config(REPO / "config" / "config.yaml",
                      overrides={"results_dir": str(root), "folds": [0], "device": "cpu"})
    rows = []
    for method in args.methods:
        t0 = time.thread_time()
        with contextlib.redirect_stdout(io.StringIO()):
            P.run_train(P.train_params(cfg, "Phantom", method, 0), results_dir=root,
                        device="cpu", threads=1)
        progress = read_progress_csv(layout.training_dir(root, "Phantom", method, 0) /
                                     "progress.csv")
        rows.append({"setting": "train", "method": method, "seconds": time.thread_time() - t0,
                     "last": progress[-1]})
    return rows


def child(args: argparse.Namespace) -> None:
    """Run one measurement in this process (package chosen by --src); print JSON rows."""
    sys.path.insert(0, args.src)
    os.environ["nnUNet_n_proc_DA"] = "0"
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    torch.set_num_threads(1)
    import nnrobustloss

    assert Path(nnrobustloss.__file__).resolve().is_relative_to(Path(args.src).resolve()), \
        nnrobustloss.__file__
    fn = {"phantom": child_phantom, "resenc_loss": child_resenc_loss,
          "resenc_net": child_resenc_net, "grads": child_grads, "train": child_train}[args.child]
    for row in fn(args):
        print("ROW " + json.dumps({**row, "package": args.package}), flush=True)


# --------------------------------------------------------------------------------------------
# parent: prepare, run the children, print the tables
# --------------------------------------------------------------------------------------------


def run_child(kind: str, package: str, src: Path, pre: Path, repeats: int = 1,
              net_patch: str = "0x0x0", out: Path | None = None,
              methods: tuple[str, ...] = METHODS) -> list[dict]:
    """Run ``--child kind`` in a fresh process with the package at ``src``; its JSON rows."""
    cmd = [sys.executable, __file__, "--child", kind, "--package", package, "--src", str(src),
           "--pre", str(pre), "--repeats", str(repeats), "--net-patch", *net_patch.split("x"),
           "--out", str(out), "--methods", *methods]
    print(f"[{time.strftime('%H:%M:%S')}] {kind} {package} ...", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        sys.exit(f"{kind} {package} failed:\n{res.stderr[-4000:]}")
    return [json.loads(line[4:]) for line in res.stdout.splitlines() if line.startswith("ROW ")]


def _med(x: list[float]) -> float:
    return statistics.median(x)


def _share(rows: dict[str, list[float]], variant: str, base: str = "old") -> float:
    """Median over repeats of (variant - base) in the same repeat, relative to median(base)."""
    return _med([v - b for v, b in zip(rows[variant], rows[base], strict=True)]) / _med(rows[base])


def _by_method(rows: list[dict], setting: str) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["setting"] == setting:
            out.setdefault(r["method"], {})[r["variant"]] = r["seconds"]
    return out


def phantom_tables(rows: list[dict]) -> str:
    m = _by_method(rows, "phantom")
    lines = ["| method | old ms | plain ms | plain / old | new package ms | new / old |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for method in METHODS:
        v = m[method]
        old, plain, new = _med(v["old"]), _med(v["plain"]), _med(v["new"])
        lines.append(f"| {method} | {1000 * old:.1f} | {1000 * plain:.1f} | "
                     f"{1 + _share(v, 'plain'):.3f} | {1000 * new:.1f} | {new / old:.3f} |")
    return "\n".join(lines) + "\n\n" + trick_table(m)


def trick_table(m: dict[str, dict[str, list[float]]],
                total: Callable[[str, float], float] | None = None) -> str:
    """Per trick and method: the iteration's change when that trick alone is swapped."""
    lines = ["| trick | " + " | ".join(METHODS) + " |",
             "| --- |" + " ---: |" * len(METHODS)]
    for trick in TRICKS:
        cells = []
        for method in METHODS:
            v = m[method]
            if f"-{trick}" not in v:
                cells.append("-")
                continue
            d = _med([a - b for a, b in zip(v[f"-{trick}"], v["old"], strict=True)])
            base = _med(v["old"]) if total is None else total(method, _med(v["old"]))
            cells.append(f"{100 * d / base:+.1f} %")
        lines.append(f"| {trick} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def resenc_tables(rows: list[dict]) -> str:
    nets = [r for r in rows if r["setting"] == "resenc_net"]
    patches = sorted({tuple(r["net_patch"]) for r in nets}, key=lambda p: p[0] * p[1] * p[2])
    per_patch = {p: {r["variant"]: r for r in nets if tuple(r["net_patch"]) == p} for p in patches}
    net = per_patch[patches[-1]]  # the largest reduced patch is scaled to the full patch
    r0 = net["fwd_bwd"]

    def voxels(patch: list[int] | tuple[int, ...]) -> int:
        return r0["batch"] * patch[0] * patch[1] * patch[2]

    scale = voxels(r0["full_patch"]) / voxels(r0["net_patch"])
    fb = _med(net["fwd_bwd"]["seconds"]) * scale
    ng = _med(net["fwd_nograd"]["seconds"]) * scale
    opt = _med(net["clip_sgd"]["seconds"])
    linearity = "; ".join(
        f"patch {list(p)}: forward + backward {_med(v['fwd_bwd']['seconds']):.2f} s = "
        f"{1e6 * _med(v['fwd_bwd']['seconds']) / voxels(p):.2f} us per voxel, no-grad forward "
        f"{1e6 * _med(v['fwd_nograd']['seconds']) / voxels(p):.2f} us per voxel, clipping + SGD "
        f"{_med(v['clip_sgd']['seconds']):.2f} s" for p, v in per_patch.items())

    def network(method: str) -> float:
        return 2 * fb + ng + 2 * opt if method in TWO_PEER else fb + opt

    m = _by_method(rows, "resenc_loss")
    shapes = next(r["shapes"] for r in rows if r["setting"] == "resenc_loss")
    lines = [f"{r0['arch'].rsplit('.', 1)[-1]}, {r0['params'] / 1e6:.1f} M parameters, batch "
             f"{r0['batch']}, full patch {r0['full_patch']}; logits per deep-supervision level "
             f"{shapes}.", "",
             f"Network, measured (median of the repeats): {linearity}.", "",
             f"Network at the full patch, EXTRAPOLATED from patch {r0['net_patch']} (batch "
             f"{r0['batch']}) by the voxel ratio {scale:.0f}: forward + backward {fb:.0f} s, no-grad "
             f"forward {ng:.0f} s; clipping + SGD step (measured, patch-independent) {opt:.2f} s. "
             "Single network: forward + backward + step; two peers (sequential): 2 x (forward + "
             "backward + step) + one no-grad forward.", "",
             "| method | network s (extrapolated) | loss + selection old s | plain s | plain / old "
             "(loss part) | new package s | iteration old s | iteration plain s | "
             "plain / old (iteration) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in METHODS:
        v = m[method]
        n = network(method)
        old, plain, new = _med(v["old"]), _med(v["plain"]), _med(v["new"])
        d = _med([a - b for a, b in zip(v["plain"], v["old"], strict=True)])
        lines.append(f"| {method} | {n:.0f} | {old:.2f} | {plain:.2f} | {1 + d / old:.3f} | "
                     f"{new:.2f} | {n + old:.0f} | {n + old + d:.0f} | {(n + old + d) / (n + old):.4f} |")
    lines += ["", "Share of each trick in the (extrapolated) iteration: the change of the "
              "iteration when that trick alone is swapped for its plain version (+: the plain "
              "version is slower):", "",
              trick_table(m, total=lambda method, loss_old: network(method) + loss_old), "",
              "The same, relative to the loss + selection part alone (measured):", "",
              trick_table(m)]
    return "\n".join(lines)


def grads_table(folder: Path) -> str:
    """Old vs new: loss values, logit gradients (all levels, both peers) and masks per method."""
    import torch

    lines = ["On the ResEnc-L batch of the loss measurement (every deep-supervision level; two "
             "peers: selection, then both masked losses):", "",
             "| method | loss old | loss new | max abs loss diff | max abs gradient diff | "
             "max abs gradient | mask voxels that differ |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method in METHODS:
        old = torch.load(folder / "old" / f"{method}.pt")
        new = torch.load(folder / "new" / f"{method}.pt")
        dl = max(abs(float(a) - float(b)) for a, b in zip(old["losses"], new["losses"],
                                                            strict=True))
        dg = max(float((a - b).abs().max()) for a, b in zip(old["grads"], new["grads"],
                                                           strict=True))
        gmax = max(float(a.abs().max()) for a in old["grads"])
        masks = [(a, b) for a, b in zip(old["masks"], new["masks"], strict=True) if a is not None]
        nm = sum(int((a != b).sum()) for a, b in masks)
        total = sum(a.numel() for a, _ in masks)
        mask_cell = f"{nm} of {total}" if masks else "-"
        lines.append(f"| {method} | {' / '.join(f'{float(x):.7f}' for x in old['losses'])} | "
                     f"{' / '.join(f'{float(x):.7f}' for x in new['losses'])} | {dl:.2e} | "
                     f"{dg:.2e} | {gmax:.2e} | {mask_cell} |")
    return "\n".join(lines)


def train_table(rows: list[dict]) -> str:
    """Old vs new: the last epoch of short Phantom trainings (progress.csv)."""
    keys = ("train_pseudo_dice_ema", "train_pseudo_dice", "train_loss", "val_loss",
            "val_pseudo_dice")
    by = {(r["package"], r["method"]): r["last"] for r in rows}
    lines = ["Phantom trainings with the default config's budget (fold 0, 20 epochs x 10 "
             "iterations, 2 validation iterations, CPU, 1 thread, nnUNet_n_proc_DA=0, seed 0, "
             "default hyper-parameters, co-teaching schedule 8 + 8 epochs): last epoch of "
             "progress.csv, old / new (difference):", "",
             "| method | " + " | ".join(keys) + " |", "| --- |" + " ---: |" * len(keys)]
    for method in TRAINED:
        o, n = by[("old", method)], by[("new", method)]
        cells = [f"{float(o[k]):.4f} / {float(n[k]):.4f} ({float(n[k]) - float(o[k]):+.1e})"
                 for k in keys]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(args: argparse.Namespace) -> str:
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    dirty = " + uncommitted changes" if _git("status", "--porcelain", "src") else ""
    return (f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"{ram:.0f} GiB, no GPU, shared with other jobs (load average "
            f"{os.getloadavg()[0]:.1f} at the start); torch {torch.__version__}, 1 thread, "
            f"thread CPU time. Old package: `{args.old_rev}` "
            f"({_git('rev-parse', '--short', args.old_rev)}); plain/new: the working tree at "
            f"{_git('rev-parse', '--short', 'HEAD')}{dirty}.")


def _git(*a: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True,
                          check=True).stdout.strip()


def main() -> None:
    """Parse arguments; as parent prepare the data, run the children and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "iteration_tricks")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--repeats", type=int, default=41)
    ap.add_argument("--resenc-repeats", type=int, default=3)
    ap.add_argument("--resenc-net-patches", nargs="+", default=["32x64x64", "32x128x128"],
                    help="reduced patches of the network measurement (the largest is scaled)")
    ap.add_argument("--settings", nargs="+", default=["phantom", "resenc", "behaviour"],
                    choices=["phantom", "resenc", "behaviour"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--package", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--pre", help=argparse.SUPPRESS)
    ap.add_argument("--net-patch", type=int, nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    old_src = workdir / f"src-{args.old_rev}"
    if not old_src.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=workdir))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_rev, "src"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        os.replace(tmp / "src", old_src)
        tmp.rmdir()
    new_src = REPO / "src"
    print(f"# Speed tricks of losses.py / selection.py on whole training iterations\n\n"
          f"{header(args)}\n\nCommand: `{' '.join(['python', *sys.argv])}`\n")
    rows: list[dict] = []
    if "phantom" in args.settings:
        pre = prepare_phantom(workdir)
        rows += run_child("phantom", "old", old_src, pre, args.repeats)
        rows += run_child("phantom", "new", new_src, pre, args.repeats)
        print("## Phantom, default config's CPU plan (patch 16x32x32, batch 2, features 8-16-32)"
              "\n\nWhole `train_step` (network forward, loss, backward, clipping, SGD step, "
              f"selection), median of {args.repeats} repeats:\n")
        print(phantom_tables(rows) + "\n", flush=True)
    if "resenc" in args.settings:
        pre = prepare_resenc(workdir)
        res = [row for patch in args.resenc_net_patches
               for row in run_child("resenc_net", "old", old_src, pre, args.resenc_repeats, patch)]
        res += run_child("resenc_loss", "old", old_src, pre, args.resenc_repeats)
        res += run_child("resenc_loss", "new", new_src, pre, args.resenc_repeats)
        rows += res
        print("## KiTS23 ResEnc-L plan on the CPU\n")
        print(resenc_tables(res) + "\n", flush=True)
    if "behaviour" in args.settings:
        kits = prepare_resenc(workdir)
        for package, src in (("old", old_src), ("new", new_src)):
            run_child("grads", package, src, kits, out=workdir / "grads")
        prepare_phantom(workdir)
        train_rows = []
        for package, src in (("old", old_src), ("new", new_src)):
            shutil.rmtree(workdir / "train" / package, ignore_errors=True)
            train_rows += run_child("train", package, src, workdir / "phantom",
                                    out=workdir / "train", methods=TRAINED)
        rows += train_rows
        print("## Behaviour: old vs new package (float rounding of the plain formulas)\n")
        print(grads_table(workdir / "grads") + "\n")
        print(train_table(train_rows) + "\n", flush=True)
    (workdir / "rows.json").write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
