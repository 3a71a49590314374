"""Voxel selection of the co-teaching family: CoT, CoT+ and StoCoT (docs/methods.md).

Two peers A and B see the same mini-batch. Each peer computes a keep-mask from its own
predictions; its **partner** is then updated on the kept voxels only (masked per-voxel terms and
the mask as nnU-Net's Dice ``loss_mask``, see :mod:`nnrobustloss.losses`). An "instance" is a
voxel ranked over the whole mini-batch, separately at every deep-supervision level. Every mask
returned here is bool ``[B, 1, *spatial]``, the shape nnU-Net's ``loss_mask`` expects; it is
never broadcast against a ``[B, *spatial]`` loss (the public StoCoT segmentation code multiplies
a ``[B, 1, H, W]`` mask with a ``[B, H, W]`` loss, which mixes the samples of a batch).

References and what is deliberately not copied:

- Han et al. 2018 (Co-teaching, code bhanML/Co-teaching): keep the ``int((1 - R) N)`` smallest
  CE losses; their update divides a loss that is already a mean by ``num_remember`` again
  (double normalisation); here the partner's kept voxels are averaged once.
- Yu et al. 2019 (Co-teaching+, code xingruiyu/coteaching_plus ``loss.py``): before
  ``init_epoch`` plain co-teaching; afterwards each network ranks **its own** CE on the samples
  where the two networks' argmax predictions disagree and keeps ``int((1 - R) n_disagree)`` of
  them for its partner; with no disagreement all samples are used. Their code applies softmax
  to the logits and then ``F.cross_entropy`` (which applies log-softmax again): a double softmax
  that we do not copy; we rank the plain CE -log softmax(z)_y.
- de Vos et al. 2023 (StoCoT, code qurAI-amsterdam/stochastic-coteaching): keep a sample when
  the peer's softmax probability of the labelled class exceeds ``ramp * theta``, theta ~
  Beta(alpha, beta). Their segmentation code (``code_segmentation_cmr/losses.py``) draws a
  16x16 grid of thresholds per sample and tiles it periodically over the 128x128 image
  (``repeat(1, 1, 8, 8)``) to save sampling time: ``mode="tiled"`` reproduces that, with a 16^d
  grid tiled periodically over d spatial dims. They compare with ``>``; docs/methods.md says
  "at least", so we keep ``p >= ramp * theta`` (identical with probability one for ramp > 0).
  As their segmentation code, we neither clip theta to [0.01, 0.99] nor redraw when fewer than
  10% are kept (their classification code does both). Beta draws come from a ``torch.Generator``
  by inverse-CDF sampling (:func:`sample_beta`), so a seeded generator reproduces them exactly.

Use in a trainer, per deep-supervision level l (logits ``out_a[l]``, ``out_b[l]``, label map
``t[l]``, loss modules from :mod:`nnrobustloss.losses`; see
:mod:`nnrobustloss.trainers.coteaching`)::

    r = R * ramp(epoch, delay, gradual)             # nnrobustloss.schedule.ramp
    with torch.no_grad():
        keep_from_a = small_loss_mask(per_voxel_ce(out_a[l], t[l]), r)   # CoT: A's small loss
        # CoT+:   cot_plus_mask(per_voxel_ce(out_a[l], t[l]), out_a[l].argmax(1),
        #                       out_b[l].argmax(1), r, epoch, delay)
        # StoCoT: stocot_mask(label_probability(out_a[l], t[l]), ramp(...), a, b, generator)
    loss_b = loss(out_b[l], t[l], keep_from_a)                # B learns from A's selection

(``DeepSupervisionWrapper(loss, weights)(outs, targets, masks)`` does the sum over levels when
the three arguments are lists.)
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy import special
from torch import Tensor

from nnrobustloss.losses import InvalidHyperParameter

__all__ = [
    "BETA_TABLE",
    "STOCOT_MODES",
    "TILE",
    "cot_plus_mask",
    "label_probability",
    "sample_beta",
    "small_loss_mask",
    "stocot_mask",
    "stocot_thresholds",
]

STOCOT_MODES = ("random", "tiled")
BETA_TABLE = 65_536
"""Intervals of the tabulated Beta quantile function used by :func:`sample_beta`."""
TILE = 16
"""Side of the StoCoT threshold grid in ``mode="tiled"`` (de Vos et al.'s segmentation code)."""


def _check_rate(forget_rate: float) -> float:
    r = float(forget_rate)
    if not (0.0 <= r <= 1.0):
        raise InvalidHyperParameter(f"forget rate R={forget_rate!r} must lie in [0, 1] (search "
                                    "space [0, 0.1]); fix the method's params")
    return r


def _keep_smallest(flat: Tensor, n_keep: int) -> Tensor:
    """Bool mask of the ``n_keep`` smallest entries of 1-D ``flat``, ties broken by index
    (the first ``n_keep`` indices of a stable sort; a sort-free k-th value selection saved at
    most 1.3 % of a co-teaching iteration, ``benchmarks/results/iteration_tricks.md``)."""
    keep = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    keep[torch.sort(flat, stable=True).indices[:max(n_keep, 0)]] = True
    return keep


def small_loss_mask(per_voxel_loss: Tensor, forget_rate: float) -> Tensor:
    """Co-teaching selection: keep the ``floor((1 - R) N)`` voxels with the smallest loss.

    ``per_voxel_loss`` ``[B, *spatial]`` (finite; detached inside), ranked over the whole
    mini-batch, ``N = B * prod(spatial)``; ties broken by flat index (as a stable sort).
    ``forget_rate`` R in [0, 1] is the current rate R(e) = R * ramp(e). Returns bool
    ``[B, 1, *spatial]``.
    """
    r = _check_rate(forget_rate)
    loss = per_voxel_loss.detach()
    n = loss.numel()
    n_keep = math.floor((1.0 - r) * n)
    keep = _keep_smallest(loss.reshape(-1), n_keep)
    return keep.view(loss.shape).unsqueeze(1)


def _as_labels(pred: Tensor, shape: torch.Size) -> Tensor:
    """Argmax predictions ``[B, *sp]`` from labels ``[B, *sp]``/``[B, 1, *sp]`` or logits."""
    if pred.shape == shape:
        return pred
    if pred.ndim == len(shape) + 1 and pred.shape[0] == shape[0] and pred.shape[2:] == shape[1:]:
        if pred.shape[1] == 1 and not pred.is_floating_point():
            return pred[:, 0]
        return pred.argmax(1)  # logits or probabilities [B, K, *sp]
    raise ValueError(f"prediction shape {tuple(pred.shape)} does not match loss shape "
                     f"{tuple(shape)}")


def cot_plus_mask(per_voxel_loss: Tensor, pred_self: Tensor, pred_partner: Tensor,
                  forget_rate: float, epoch: int, delay: int) -> Tensor:
    """Co-teaching+ selection of one peer (Yu et al. 2019), bool ``[B, 1, *spatial]``.

    ``per_voxel_loss`` ``[B, *spatial]``: this peer's own CE against the noisy label (what is
    ranked); ``pred_self`` / ``pred_partner``: the two peers' argmax labels ``[B, *spatial]`` (or
    ``[B, 1, *spatial]`` integer, or ``[B, K, *spatial]`` logits/probabilities, argmax taken).
    Before ``epoch >= delay``: :func:`small_loss_mask`. Afterwards: among the ``n`` voxels where
    the argmax predictions disagree, keep the ``floor((1 - R) n)`` with the smallest loss (ties
    by index) and drop all agreeing voxels; if the peers agree everywhere, keep all voxels. The
    mask is for the partner's update.
    """
    r = _check_rate(forget_rate)
    if epoch < delay:
        return small_loss_mask(per_voxel_loss, r)
    loss = per_voxel_loss.detach()
    a = _as_labels(pred_self.detach(), loss.shape)
    b = _as_labels(pred_partner.detach(), loss.shape)
    disagree = a != b
    n_dis = int(torch.count_nonzero(disagree))
    if n_dis == 0:
        return torch.ones((loss.shape[0], 1, *loss.shape[1:]), dtype=torch.bool,
                          device=loss.device)
    # agreeing voxels rank last (+inf); since at most n_dis voxels are kept and the losses are
    # finite, only disagreeing voxels are kept, the smallest first, ties by index
    ranked = torch.where(disagree, loss, torch.full_like(loss, math.inf))
    keep = _keep_smallest(ranked.reshape(-1), math.floor((1.0 - r) * n_dis))
    return keep.view(loss.shape).unsqueeze(1)


def label_probability(logits: Tensor, target: Tensor) -> Tensor:
    """Softmax probability of the labelled class, float32 ``[B, *spatial]``, detached.

    ``logits`` ``[B, K, *spatial]``; ``target`` integer labels ``[B, 1, *spatial]`` (or
    ``[B, *spatial]``). Computed in float32 outside autocast. If the per-voxel CE of the same
    logits is at hand (``losses.per_voxel_ce``), ``exp(-ce)`` is the same quantity, cheaper.
    """
    if target.ndim == logits.ndim:
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)}")
    with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
        p = torch.softmax(logits.detach().float(), 1)
        return p.gather(1, target.long().unsqueeze(1)).squeeze(1)


def _check_beta_params(alpha: float, beta: float) -> tuple[float, float]:
    a, b = float(alpha), float(beta)
    if not (math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0):
        raise InvalidHyperParameter(f"StoCoT Beta parameters a={alpha!r}, b={beta!r} must be > 0 "
                                    "(search space [0.5, 8]); fix the method's params")
    return a, b


@functools.lru_cache(maxsize=32)
def _beta_quantiles(a: float, b: float) -> Tensor:
    """Beta(a, b) quantile function at u = i / BETA_TABLE, i = 0..BETA_TABLE (float64, CPU)."""
    u = np.linspace(0.0, 1.0, BETA_TABLE + 1)
    q = special.betaincinv(a, b, u)
    q[0], q[-1] = 0.0, 1.0
    return torch.from_numpy(np.maximum.accumulate(q))  # monotone despite solver rounding


def sample_beta(shape: tuple[int, ...] | torch.Size, alpha: float, beta: float,
                generator: torch.Generator) -> Tensor:
    """I.i.d. Beta(alpha, beta) draws of ``shape`` (float32, on the generator's device).

    Inverse-CDF sampling: u ~ U(0, 1) from ``torch.rand(shape, generator=generator)`` (one
    uniform per draw, in order), theta = Q(u) with Q the Beta quantile function tabulated at
    BETA_TABLE + 1 equally spaced u by ``scipy.special.betaincinv`` (cached per (alpha, beta))
    and interpolated linearly. The draws are a deterministic function of the generator state
    (``torch.distributions.Beta`` takes no generator), cost a few passes over the output, and
    their distribution differs from Beta(alpha, beta) by at most 1 / BETA_TABLE (1.5e-5) in
    Kolmogorov distance: the table is exact at its nodes and both quantile functions are
    monotone, so each lies between the same two nodes.
    """
    a, b = _check_beta_params(alpha, beta)
    device = generator.device
    table = _beta_quantiles(a, b).to(device=device, dtype=torch.float32)
    step = table[1:] - table[:-1]
    u = torch.rand(tuple(shape), generator=generator, device=device, dtype=torch.float32)
    pos = u.mul_(BETA_TABLE).reshape(-1)
    idx = pos.long().clamp_(max=BETA_TABLE - 1)
    frac = pos.sub_(idx)
    theta = table.index_select(0, idx).addcmul_(frac, step.index_select(0, idx))
    return theta.view(tuple(shape))


def stocot_thresholds(shape: tuple[int, ...] | torch.Size, alpha: float, beta: float,
                      generator: torch.Generator, mode: str = "random") -> Tensor:
    """The Beta(alpha, beta) thresholds theta for a ``[B, *spatial]`` probability map.

    ``mode="random"``: one i.i.d. draw per voxel. ``mode="tiled"``: per sample, a grid of
    ``min(16, size)`` draws along each spatial axis, tiled periodically over the patch (the
    authors' segmentation code). Returns float32 ``shape`` on the generator's device.
    """
    if mode not in STOCOT_MODES:
        raise InvalidHyperParameter(f"coteaching.stocot_thresholds={mode!r} is unknown; use one "
                                    f"of {STOCOT_MODES}")
    shape = tuple(shape)
    if mode == "random":
        return sample_beta(shape, alpha, beta, generator)
    b, spatial = shape[0], shape[1:]
    grid = tuple(min(TILE, s) for s in spatial)
    tile = sample_beta((b, *grid), alpha, beta, generator)
    reps = tuple(-(-s // g) for s, g in zip(spatial, grid, strict=True))
    tiled = tile.repeat(1, *reps)
    return tiled[(slice(None), *(slice(0, s) for s in spatial))]


def stocot_mask(prob_of_label: Tensor, ramp_value: float, alpha: float, beta: float,
                generator: torch.Generator, mode: str = "random") -> Tensor:
    """StoCoT selection (de Vos et al. 2023) from the peer's probability of the labelled class.

    ``prob_of_label`` ``[B, *spatial]`` in [0, 1] (:func:`label_probability` of the peer that
    selects), ``ramp_value`` = ramp(e) in [0, 1]. Keeps a voxel when
    ``prob_of_label >= ramp_value * theta``, theta from :func:`stocot_thresholds` with
    ``generator`` (which must live on ``prob_of_label``'s device). With ``ramp_value == 0`` all
    voxels are kept and no thresholds are drawn (the generator is not advanced), as in the
    authors' code. ``alpha``, ``beta`` and ``mode`` are checked where thresholds are drawn
    (:func:`stocot_thresholds`). Returns bool ``[B, 1, *spatial]``.
    """
    rv = float(ramp_value)
    if not (0.0 <= rv <= 1.0):
        raise ValueError(f"ramp_value={ramp_value!r} must lie in [0, 1]")
    p = prob_of_label.detach()
    if rv == 0.0:
        return torch.ones((p.shape[0], 1, *p.shape[1:]), dtype=torch.bool, device=p.device)
    theta = stocot_thresholds(p.shape, alpha, beta, generator, mode)
    return (p >= rv * theta.to(p.device)).unsqueeze(1)
