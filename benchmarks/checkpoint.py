"""Cost of the per-epoch checkpoint of a paper-sized network (what a resumable job pays).

Usage::

    python benchmarks/checkpoint.py [--folder DIR] [--repeats 3] [--threads 1]

Builds nnU-Net's ``ResidualEncoderUNet`` as the residual-encoder L plans configure it for a 3D
CT task such as KiTS23 (6 stages, 32..320 features, 1/3/4/6/6/6 encoder blocks, 3 classes + 1
input channel), gives its SGD optimiser momentum buffers with one step, and times writing and
reading the checkpoint dict that ``RobustTrainer.save_checkpoint`` writes every epoch
(network weights + optimiser state; two of each for the co-teaching methods), written
atomically with :func:`nnrobustloss.fileio.atomic_path` into ``--folder`` (default: a temporary
folder; pass a folder on the cluster's results file system to measure that). Prints a Markdown
table: size, seconds to save, seconds to load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnrobustloss.fileio import atomic_path

RESENC_L = dict(input_channels=1, n_stages=6, features_per_stage=(32, 64, 128, 256, 320, 320),
                conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 6,
                strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, n_blocks_per_stage=(1, 3, 4, 6, 6, 6),
                num_classes=4, n_conv_per_stage_decoder=(1, 1, 1, 1, 1), conv_bias=True,
                norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True)


def _peer() -> tuple[dict, dict, int]:
    """State dicts of one ResEnc L network and its SGD optimiser after one step (nnU-Net's
    settings: lr 0.01, momentum 0.99, Nesterov, weight decay 3e-5), and its parameter count."""
    net = ResidualEncoderUNet(**RESENC_L)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True,
                          weight_decay=3e-5)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return net.state_dict(), opt.state_dict(), sum(p.numel() for p in net.parameters())


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    """Parse arguments, time save and load for one and two peers, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weights, optim, n_params = _peer()
    weights_b, optim_b, _ = _peer()  # distinct tensors: torch.save stores shared ones once
    rows = []
    with tempfile.TemporaryDirectory(dir=args.folder) as d:
        path = Path(d) / "checkpoint_latest.pth"
        for label, ckpt in (("one network (Baseline, APL, SVLS)",
                             {"network_weights": weights, "optimizer_state": optim}),
                            ("two peers (CoT, CoT+, StoCoT, HRL)",
                             {"network_weights": weights, "optimizer_state": optim,
                              "network_weights_peer_b": weights_b,
                              "optimizer_state_peer_b": optim_b})):
            def save(ckpt=ckpt) -> None:
                with atomic_path(path) as tmp:
                    torch.save(ckpt, tmp)

            save_s = _time(save, args.repeats)
            size_mb = path.stat().st_size / 2**20
            load_s = _time(lambda: torch.load(path, map_location="cpu", weights_only=False),
                           args.repeats)
            rows.append((label, size_mb, save_s, load_s))
    print(f"# Per-epoch checkpoint of a residual-encoder L network ({n_params / 1e6:.1f} M "
          f"parameters), median of {args.repeats}\n")
    print("| checkpoint | size MB | save s | load s |")
    print("| --- | ---: | ---: | ---: |")
    for label, size_mb, save_s, load_s in rows:
        print(f"| {label} | {size_mb:.0f} | {save_s:.2f} | {load_s:.2f} |")


if __name__ == "__main__":
    main()
