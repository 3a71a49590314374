"""Loss benchmark: forward + backward time of each method's loss (not the network).

Prints a Markdown table of median times over repeats and their ratio to nnU-Net's
``DC_and_CE_loss`` measured in the same run (the Baseline), and, for the co-teaching family,
the selection overhead: both peers' ranking keys + the two masks + the two masked peer losses
(forward + backward), as a ratio to two Baseline losses. Methods are timed round-robin, so
machine load affects all of them alike.

Usage: python benchmarks/losses.py [--size 64] [--classes 3] [--batch 2] [--repeats 9]
Default size: 128^3 on CUDA, 64^3 on the CPU (single thread unless --threads).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from nnrobustloss.losses import APL1Loss, APL2Loss, CEDiceLoss, HRLLoss, SVLSLoss, per_voxel_ce
from nnrobustloss.selection import (
    cot_plus_mask,
    label_probability,
    predicted_labels,
    small_loss_mask,
    stocot_mask,
)

DICE = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=None, help="patch side (default 128 CUDA / 64 CPU)")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    size = args.size or (128 if device.type == "cuda" else 64)
    shape = (args.batch, args.classes, size, size, size)
    g = torch.Generator(device=device).manual_seed(0)
    za = torch.randn(shape, generator=g, device=device).requires_grad_(True)
    zb = torch.randn(shape, generator=g, device=device).requires_grad_(True)
    y = torch.randint(0, args.classes, (args.batch, 1, size, size, size), generator=g,
                      device=device)
    sel_gen = torch.Generator(device=device).manual_seed(1)

    baseline = DC_and_CE_loss(DICE, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                              dice_class=MemoryEfficientSoftDiceLoss)
    ce_dice = CEDiceLoss(DICE)
    hrl = HRLLoss(0.7, 1.0, soft_dice_kwargs=DICE)

    def single(loss: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            torch.autograd.grad(loss(za, y), za)
        return run

    Selection = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]

    def two_peers(loss: torch.nn.Module, select: Callable[[], Selection]) -> Callable[[], None]:
        def run() -> None:
            # each peer's selection is used by its partner; per-voxel terms reused if given
            mask_a, mask_b, pv_a, pv_b = select()
            la = loss(za, y, mask_b, pv_a)
            lb = loss(zb, y, mask_a, pv_b)
            torch.autograd.grad(la + lb, (za, zb))
        return run

    def cot() -> Selection:
        ce_a, ce_b = per_voxel_ce(za, y), per_voxel_ce(zb, y)  # ranked and trained on
        return (small_loss_mask(ce_a.detach(), 0.1), small_loss_mask(ce_b.detach(), 0.1),
                ce_a, ce_b)

    def cot_plus() -> Selection:
        ce_a, ce_b = per_voxel_ce(za, y), per_voxel_ce(zb, y)
        pa, pb = predicted_labels(za.detach()), predicted_labels(zb.detach())
        return (cot_plus_mask(ce_a.detach(), pa, pb, 0.1, 10, 0),
                cot_plus_mask(ce_b.detach(), pb, pa, 0.1, 10, 0), ce_a, ce_b)

    def stocot(mode: str) -> Callable[[], Selection]:
        def select() -> Selection:
            ce_a, ce_b = per_voxel_ce(za, y), per_voxel_ce(zb, y)
            prob_a, prob_b = torch.exp(-ce_a.detach()), torch.exp(-ce_b.detach())  # p of label
            return (stocot_mask(prob_a, 1.0, 2.0, 2.0, sel_gen, mode),
                    stocot_mask(prob_b, 1.0, 2.0, 2.0, sel_gen, mode), ce_a, ce_b)
        return select

    def hrl_select() -> Selection:
        return (stocot_mask(label_probability(za, y), 1.0, 2.0, 2.0, sel_gen),
                stocot_mask(label_probability(zb, y), 1.0, 2.0, 2.0, sel_gen), None, None)

    def two_baselines() -> None:
        torch.autograd.grad(baseline(za, y) + baseline(zb, y), (za, zb))

    cases: dict[str, Callable[[], None]] = {
        "Baseline (nnU-Net DC_and_CE_loss)": single(baseline),
        "CEDiceLoss (ours, unmasked)": single(ce_dice),
        "APL1": single(APL1Loss(DICE)),
        "APL2 (w=0.7)": single(APL2Loss(0.7, DICE)),
        "SVLS (sigma=1, islam)": single(SVLSLoss(1.0, soft_dice_kwargs=DICE)),
        "SVLS (sigma=1, gaussian)": single(SVLSLoss(1.0, "gaussian", soft_dice_kwargs=DICE)),
        "HRL peer loss (w=0.7, sigma=1)": single(hrl),
        "2 x Baseline": two_baselines,
        "CoT (R=0.1)": two_peers(ce_dice, cot),
        "CoT+ (R=0.1)": two_peers(ce_dice, cot_plus),
        "StoCoT (random)": two_peers(ce_dice, stocot("random")),
        "StoCoT (tiled)": two_peers(ce_dice, stocot("tiled")),
        "HRL (StoCoT random + HRL losses)": two_peers(hrl, hrl_select),
    }
    # CPU: CPU time of this thread (all work runs in it with one intra-op thread), which the
    # other processes of a shared machine do not inflate; CUDA: wall time after a sync.
    clock = time.perf_counter if device.type == "cuda" or args.threads > 1 else time.thread_time
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(args.repeats + 1):
        for name, fn in cases.items():
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            if rep > 0:  # the first round is a warm-up
                times[name].append(clock() - t0)

    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    base, base2 = med["Baseline (nnU-Net DC_and_CE_loss)"], med["2 x Baseline"]
    base_lo, base2_lo = low["Baseline (nnU-Net DC_and_CE_loss)"], low["2 x Baseline"]
    dev = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    what = "thread CPU time" if clock is time.thread_time else "wall time"
    print(f"# Loss benchmark: forward + backward, logits {list(shape)} float32 on {device.type} "
          f"({dev}), {args.threads} thread(s), {what}, median of {args.repeats} repeats")
    print(f"# torch {torch.__version__}; batch Dice; target: single losses <= 1.5x Baseline, "
          "co-teaching (masks + two masked losses) <= 1.5x two Baselines")
    print()
    print("| loss | median ms | ratio (median) | min ms | ratio (min) | reference |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name in cases:
        two = name in ("2 x Baseline",) or name.startswith(("CoT", "StoCoT", "HRL ("))
        ref, ref_lo, ref_name = ((base2, base2_lo, "2 x Baseline") if two
                                 else (base, base_lo, "Baseline"))
        print(f"| {name} | {1000 * med[name]:.1f} | {med[name] / ref:.2f} | "
              f"{1000 * low[name]:.1f} | {low[name] / ref_lo:.2f} | {ref_name} |")
    print()
    print("Co-teaching rows: both peers' per-voxel CE (kept and reused by the masked CE), the two "
          "masks, the two masked CE + Dice losses, one backward; HRL: label probabilities, "
          "StoCoT masks, two masked HRL losses. min: least-disturbed repeat on a shared machine.")


if __name__ == "__main__":
    main()
