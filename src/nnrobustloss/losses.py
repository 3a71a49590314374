"""Robust loss terms and nnU-Net-compatible loss modules (docs/methods.md).

Notation: logits ``z`` of shape ``[B, K, *spatial]`` (float, any dtype), ``p = softmax(z)`` over
the K classes, integer target ``y`` of shape ``[B, 1, *spatial]`` (``[B, *spatial]`` is accepted
too), one-hot ``q``. Every per-voxel function returns a float32 tensor ``[B, *spatial]``
(float64 for float64 logits); the loss modules return a scalar and follow nnU-Net's loss call
``loss(logits, target)`` plus an optional keep-mask ``loss(logits, target, mask)``, so that
nnU-Net's ``DeepSupervisionWrapper`` applies them per resolution with a list of masks as a
further argument.

Formulas and where they come from (checked against the authors' public code):

- Ma et al. 2020, "Normalized Loss Functions for Deep Learning with Noisy Labels", code
  HanxunH/Active-Passive-Losses ``loss.py``:
  * ``NormalizedCrossEntropy``: ``-sum(q * log_softmax) / -sum(log_softmax)`` = our ``nce``
    (CE(y) / sum_j CE(j) with CE(j) = -log p_j).
  * ``ReverseCrossEntropy``: ``-sum(p * log(clamp(q, 1e-4, 1)))``; clamping the one-hot at delta
    means log q_k = log(delta) for k != y and 0 for k = y, so RCE = -log(delta) * (1 - p_y),
    which is what ``rce`` computes (their ``clamp(p, 1e-7)`` changes the value by at most
    (K-1) * 1e-7 * 9.2 and is not copied).
  * ``NormalizedGeneralizedCrossEntropy``: ``(1 - p_y^q) / (K - sum_j p_j^q)`` with p clamped at
    1e-7 = our ``ngce`` with the w of docs/methods.md for their q (GCE(y) / sum_j GCE(j); the
    1/w cancels).
    Their floor only guards autograd's derivative w p^(w-1), infinite at p = 0; we compute
    p^w = exp(w log_softmax(z)), whose derivative w p^w (delta - p) is finite everywhere, exact
    and unfloored (values differ from theirs only where p < 1e-7).
- Zhang & Sabuncu 2018, "Generalized Cross Entropy Loss": L_q = (1 - p_y^q) / q = our ``gce``
  (the GCE class of the APL code computes the same, with the same 1e-7 floor).
- Islam & Glocker 2021, "Spatially Varying Label Smoothing", code mobarakol/SVLS ``svls.py``
  (``get_svls_filter_3d``): a 3x3x3 Gaussian exp(-d^2 / (2 sigma^2)) is normalised, its centre is
  replaced by the sum of the 26 neighbour weights (1 - centre) and the kernel is renormalised
  (they divide by ``neighbors_sum`` and later by the kernel sum, i.e. by 2 (1 - centre)), so the
  centre weight is exactly 1/2; the one-hot label is replicate-padded by 1 and convolved per class
  (depthwise conv). ``kernel="gaussian"`` is the plain normalised Gaussian of the seed paper's
  Eq. 7: its centre weight is large for small sigma (nearly no smoothing, e.g. 0.9999 at
  sigma 0.2) whereas the Islam kernel always moves half of the mass to the neighbours of a
  boundary voxel and sigma only shapes how that half is spread.

Soft-target versions used by HRL (docs/methods.md): ``soft_ce``, ``soft_rce`` =
-sum_k p_k log max(q_k, delta) and ``soft_ngce`` = (1 - sum_k q_k p_k^w) / (K - sum_k p_k^w);
with a one-hot q they equal the hard versions.

Numerics: every robust term is computed in float32 outside autocast; the Dice is nnU-Net's own
``MemoryEfficientSoftDiceLoss`` (the only nnU-Net import) and runs in the input dtype as in
nnU-Net. Masked losses (co-teaching): per-voxel terms are averaged over kept voxels only,
``sum(term * mask) / max(sum(mask), 1)``, and the Dice receives the mask as nnU-Net's
``loss_mask``; an all-ones mask takes exactly the unmasked code path, an empty one gives a finite
loss with zero gradients (for finite logits).

Speed: every term is its plain formula under autograd. The former speed tricks (fused
gradients, a separable SVLS filter, ...) each changed a whole training iteration by 3.1 % at
most on the Phantom's CPU plan and by 0.2 % at most for the KiTS23 ResEnc-L plan
(``benchmarks/iteration_tricks.py``, ``benchmarks/results/iteration_tricks.md``), and were
removed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from torch import Tensor, nn

from nnrobustloss.errors import ConfigError

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_SOFT_DICE_KWARGS",
    "SVLS_KERNELS",
    "APL1Loss",
    "APL2Loss",
    "CEDiceLoss",
    "HRLLoss",
    "GCELoss",
    "InvalidHyperParameter",
    "MaskedCompoundLoss",
    "SVLSLoss",
    "gce",
    "nce",
    "ngce",
    "per_voxel_ce",
    "rce",
    "soft_ce",
    "soft_ngce",
    "soft_rce",
    "svls_kernel",
    "svls_targets",
]

DEFAULT_DELTA = 1e-4
"""Ma et al.'s constant replacing the zeros of the one-hot target inside the log of RCE."""

DEFAULT_SOFT_DICE_KWARGS: dict[str, Any] = {
    "batch_dice": False,
    "do_bg": False,
    "smooth": 1e-5,
    "ddp": False,
}
"""nnU-Net's Dice settings (``nnUNetTrainer._build_loss``) with sample Dice and no DDP."""

SVLS_KERNELS = ("islam", "gaussian")


class InvalidHyperParameter(ConfigError, ValueError):
    """A loss or selection hyper-parameter is out of its range (a config or --params value)."""


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _labels(logits: Tensor, target: Tensor) -> Tensor:
    """Return the integer label map ``[B, *spatial]`` (int64) after checking shapes."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be [B, K, *spatial], got shape {tuple(logits.shape)}")
    if target.ndim == logits.ndim:
        if target.shape[1] != 1:
            raise ValueError(
                f"target must be a label map [B, 1, *spatial], got shape {tuple(target.shape)} "
                f"for logits {tuple(logits.shape)}")
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits "
                         f"{tuple(logits.shape)} (expected [B, 1, *spatial])")
    return target.long()


def _check_soft(logits: Tensor, soft_target: Tensor) -> None:
    if soft_target.shape != logits.shape:
        raise ValueError(f"soft target shape {tuple(soft_target.shape)} must equal logits shape "
                         f"{tuple(logits.shape)}")


def _check_w(w: float) -> float:
    w = float(w)
    if not (math.isfinite(w) and w > 0):
        raise InvalidHyperParameter(f"loss parameter w={w!r} is out of range: the (N)GCE "
                                    "exponent must be > 0 (search space (0, 1]); fix the "
                                    "method's params")
    return w


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not (0 < delta < 1):
        raise InvalidHyperParameter(f"RCE delta={delta!r} must lie in (0, 1) (Ma et al. use 1e-4)")
    return delta


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise InvalidHyperParameter(f"SVLS sigma={sigma!r} must be > 0 (search space [0.2, 2]); "
                                    "fix the method's params")
    return sigma


def _check_kernel(kind: str) -> str:
    if kind not in SVLS_KERNELS:
        raise InvalidHyperParameter(f"svls.kernel={kind!r} is unknown; use one of {SVLS_KERNELS}")
    return kind


def _no_autocast(t: Tensor) -> torch.autocast:
    """Context that disables autocast on ``t``'s device (robust terms run in float32)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


# --------------------------------------------------------------------------------------------
# per-voxel terms (float32, [B, *spatial])
# --------------------------------------------------------------------------------------------
#
# Each term is its docs/methods.md formula on log p = log_softmax(z) with plain autograd. p^w is
# exp(w log p): its derivative w p^w (delta - p) is finite (0) where p underflows to 0, whereas
# autograd of p ** w gives w p^(w-1) dp = inf * 0 = NaN there (why the APL code floors p at 1e-7).


def _gather(t: Tensor, y: Tensor) -> Tensor:
    return t.gather(1, y.unsqueeze(1)).squeeze(1)


def _at_least_float32(z: Tensor) -> Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _log_p(logits: Tensor) -> Tensor:
    """log softmax over the classes in (at least) float32; call inside :func:`_no_autocast`."""
    return torch.log_softmax(_at_least_float32(logits), 1)


def _soft_q(logits: Tensor, soft_target: Tensor) -> Tensor:
    """The checked soft target in the dtype of the terms, without gradient."""
    _check_soft(logits, soft_target)
    return soft_target.detach().to(_at_least_float32(logits).dtype)


def per_voxel_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-voxel cross-entropy -log p_y, float32 ``[B, *spatial]`` (the small-loss ranking key).

    ``logits`` ``[B, K, *spatial]``; ``target`` integer labels ``[B, 1, *spatial]`` in [0, K).
    Differentiable; computed in (at least) float32 outside autocast.
    """
    y = _labels(logits, target)
    with _no_autocast(logits):
        return F.cross_entropy(_at_least_float32(logits), y, reduction="none")


def nce(logits: Tensor, target: Tensor) -> Tensor:
    """Normalized CE (Ma et al. 2020): CE(y) / sum_j CE(j), CE(j) = -log p_j; in (0, 1].

    Shapes as :func:`per_voxel_ce`; returns float32 ``[B, *spatial]``. Summed over all K
    candidate labels it is 1 at every voxel.
    """
    y = _labels(logits, target)
    with _no_autocast(logits):
        log_p = _log_p(logits)
        return _gather(log_p, y) / log_p.sum(1)


def rce(logits: Tensor, target: Tensor, delta: float = DEFAULT_DELTA) -> Tensor:
    """Reverse CE (Ma et al. 2020): -sum_k p_k log q_k with log 0 := log(delta).

    Equals -log(delta) * (1 - p_y), in [0, -log(delta)]. Shapes as :func:`per_voxel_ce`.
    """
    delta = _check_delta(delta)
    y = _labels(logits, target)
    with _no_autocast(logits):
        p_y = _gather(_log_p(logits), y).exp()
        return (1.0 - p_y) * -math.log(delta)


def gce(logits: Tensor, target: Tensor, w: float) -> Tensor:
    """Generalized CE (Zhang & Sabuncu 2018): (1 - p_y^w) / w, w > 0.

    Shapes as :func:`per_voxel_ce`; returns float32 ``[B, *spatial]`` in [0, 1/w].
    """
    w = _check_w(w)
    y = _labels(logits, target)
    with _no_autocast(logits):
        pw_y = (_gather(_log_p(logits), y) * w).exp()
        return (1.0 - pw_y) / w


def ngce(logits: Tensor, target: Tensor, w: float) -> Tensor:
    """Normalized GCE (Ma et al. 2020): GCE_w(y) / sum_j GCE_w(j) = (1 - p_y^w) / (K - sum p^w).

    w > 0 (paper search space (0, 1]). Shapes as :func:`per_voxel_ce`; returns float32
    ``[B, *spatial]`` in [0, 1]; finite with a finite gradient where p underflows to 0.
    """
    w = _check_w(w)
    y = _labels(logits, target)
    with _no_autocast(logits):
        pw = (_log_p(logits) * w).exp()
        return (1.0 - _gather(pw, y)) / (logits.shape[1] - pw.sum(1))


def soft_ce(logits: Tensor, soft_target: Tensor) -> Tensor:
    """CE against a soft target: -sum_k q_k log p_k; ``soft_target`` ``[B, K, *spatial]``.

    Returns float32 ``[B, *spatial]``; equals :func:`per_voxel_ce` for a one-hot target. The
    target gets no gradient.
    """
    with _no_autocast(logits):
        q = _soft_q(logits, soft_target)
        return -(q * _log_p(logits)).sum(1)


def soft_rce(logits: Tensor, soft_target: Tensor, delta: float = DEFAULT_DELTA) -> Tensor:
    """Soft reverse CE (HRL): -sum_k p_k log max(q_k, delta); ``soft_target`` ``[B, K, *sp]``.

    Returns float32 ``[B, *spatial]``; equals :func:`rce` for a one-hot target.
    """
    delta = _check_delta(delta)
    with _no_autocast(logits):
        q = _soft_q(logits, soft_target)
        p = torch.softmax(_at_least_float32(logits), 1)
        return -(p * q.clamp_min(delta).log()).sum(1)


def soft_ngce(logits: Tensor, soft_target: Tensor, w: float) -> Tensor:
    """Soft NGCE (HRL): (1 - sum_k q_k p_k^w) / (K - sum_k p_k^w).

    ``soft_target`` ``[B, K, *spatial]`` summing to 1 over K. Returns float32 ``[B, *spatial]``;
    equals :func:`ngce` for a one-hot target.
    """
    w = _check_w(w)
    with _no_autocast(logits):
        q = _soft_q(logits, soft_target)
        pw = (_log_p(logits) * w).exp()
        return (1.0 - (q * pw).sum(1)) / (logits.shape[1] - pw.sum(1))


# --------------------------------------------------------------------------------------------
# SVLS
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _svls_kernel_cpu(sigma: float, kind: str, ndim: int) -> Tensor:
    offsets = torch.arange(-1, 2, dtype=torch.float64)
    grids = torch.meshgrid(*([offsets] * ndim), indexing="ij")
    d2 = sum(g**2 for g in grids)
    kernel = torch.exp(-d2 / (2.0 * sigma**2))
    if kind == "islam":
        # Their order (normalise, centre := 1 - centre, renormalise) done on the unnormalised
        # Gaussian: the centre becomes the plain sum of the neighbour weights, avoiding the
        # cancellation in 1 - centre for small sigma; the result is the same kernel.
        centre = (1,) * ndim
        kernel[centre] = 0.0
        kernel[centre] = kernel.sum()
    return kernel / kernel.sum()


def svls_kernel(sigma: float, kind: str = "islam", ndim: int = 3) -> Tensor:
    """The SVLS smoothing kernel: float64 tensor of shape ``(3,) * ndim`` summing to 1.

    ``kind="islam"`` (Islam & Glocker 2021 code): normalised discrete Gaussian of spread
    ``sigma`` whose centre weight is replaced by the sum of the neighbour weights, renormalised
    (centre = 1/2). ``kind="gaussian"``: the plain normalised Gaussian (seed paper Eq. 7).
    ``ndim`` is 3 for 3D data, 2 for 2D data.
    """
    sigma = _check_sigma(sigma)
    kind = _check_kernel(kind)
    if ndim not in (2, 3):
        raise ValueError(f"SVLS kernels exist for 2D and 3D data, got ndim={ndim}")
    return _svls_kernel_cpu(sigma, kind, ndim).clone()


def svls_targets(target: Tensor, num_classes: int, sigma: float,
                 kernel: str = "islam") -> Tensor:
    """SVLS soft targets: the one-hot label convolved per class with :func:`svls_kernel`.

    ``target`` integer labels ``[B, 1, *spatial]`` (2 or 3 spatial dims) in [0, num_classes);
    returns float32 ``[B, num_classes, *spatial]``, non-negative and summing to 1 over classes
    (to float32 rounding), with replicate padding at the patch border (a depthwise convolution
    of the replicate-padded one-hot), so a voxel whose 3^d neighbourhood carries one label keeps
    the one-hot vector. No gradient (a target).
    """
    if target.ndim not in (4, 5) or target.shape[1] != 1:
        raise ValueError(f"target must be [B, 1, *spatial] with 2 or 3 spatial dims, got "
                         f"{tuple(target.shape)}")
    ndim = target.ndim - 2
    weights = svls_kernel(sigma, kernel, ndim).to(device=target.device, dtype=torch.float32)
    conv = F.conv3d if ndim == 3 else F.conv2d
    with torch.no_grad(), _no_autocast(target):
        onehot = F.one_hot(target[:, 0].long(), num_classes).movedim(-1, 1).to(torch.float32)
        padded = F.pad(onehot, (1, 1) * ndim, mode="replicate")
        return conv(padded, weights.expand(num_classes, 1, *weights.shape), groups=num_classes)


# --------------------------------------------------------------------------------------------
# loss modules
# --------------------------------------------------------------------------------------------


class _Mask:
    """A checked keep-mask: float32 0/1 ``weights`` ``[B, 1, *sp]`` (nnU-Net's Dice
    ``loss_mask``) and the number of kept voxels ``count``."""

    def __init__(self, mask: Tensor, logits: Tensor) -> None:
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if mask.ndim == logits.ndim - 1:
            mask = mask.unsqueeze(1)
        if tuple(mask.shape) != expected:
            # never broadcast a mask across samples or classes (a bug of the public code)
            raise ValueError(f"mask shape {tuple(mask.shape)} must be [B, 1, *spatial] = "
                             f"{expected}")
        self.count = int(torch.count_nonzero(mask))
        self.all = self.count == mask.numel()
        self.weights = (mask != 0).to(torch.float32)


def _prepare_mask(mask: Tensor | None, logits: Tensor) -> _Mask | None:
    """None for no mask or an all-ones mask (exactly the unmasked loss), else a :class:`_Mask`."""
    if mask is None:
        return None
    m = _Mask(mask, logits)
    return None if m.all else m


def _masked_mean(per_voxel: Tensor, mask: _Mask | None) -> Tensor:
    """Mean of ``[B, *sp]`` terms over voxels, or over kept voxels only: sum(term * m) /
    max(sum(m), 1) (an empty mask gives 0 with zero gradients for finite terms)."""
    if mask is None:
        return per_voxel.mean()
    return (per_voxel * mask.weights[:, 0]).sum() / max(mask.count, 1)


class MaskedCompoundLoss(nn.Module):
    """Base: mean of per-voxel terms (float32) + weight_dice x nnU-Net's soft Dice.

    Subclasses implement :meth:`terms`. ``forward(logits, target, mask=None) -> scalar`` with
    ``logits`` ``[B, K, *sp]``, ``target`` ``[B, 1, *sp]`` integer labels and an optional keep
    mask (bool/float ``[B, 1, *sp]``, nonzero = keep). Under nnU-Net's
    ``DeepSupervisionWrapper`` pass lists: ``ds(outputs, targets, masks)``.
    ``soft_dice_kwargs`` go to ``MemoryEfficientSoftDiceLoss`` on top of
    :data:`DEFAULT_SOFT_DICE_KWARGS`.
    """

    def __init__(self, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 weight_dice: float = 1.0) -> None:
        super().__init__()
        kwargs = dict(DEFAULT_SOFT_DICE_KWARGS)
        kwargs.update(soft_dice_kwargs or {})
        self.soft_dice_kwargs = kwargs
        self.weight_dice = weight_dice
        self.dc = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **kwargs)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Return (per-voxel robust terms float32 ``[B, *sp]``, the Dice target: the label map
        ``[B, 1, *sp]`` or a soft target ``[B, K, *sp]``)."""
        raise NotImplementedError

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar loss of one resolution; ``mask`` keeps voxels (see class docstring)."""
        _labels(logits, target)
        m = _prepare_mask(mask, logits)
        with _no_autocast(logits):
            per_voxel, dice_target = self.terms(logits, target)
            robust = _masked_mean(per_voxel, m)
        if self.weight_dice == 0:
            return robust
        dc = self.dc(logits, dice_target, loss_mask=None if m is None else m.weights)
        return robust + self.weight_dice * dc


class CEDiceLoss(MaskedCompoundLoss):
    """CE + Dice; equal to nnU-Net's ``DC_and_CE_loss`` (MemoryEfficientSoftDiceLoss) unmasked.

    With ``soft_dice_kwargs`` as ``nnUNetTrainer._build_loss`` sets them (batch_dice from the
    plans, smooth 1e-5, do_bg False), ``weight_ce = weight_dice = 1`` and ``mask`` None or all
    ones, the value and gradients are those of ``DC_and_CE_loss`` bit for bit (same operations in
    the same order). With a mask: :func:`per_voxel_ce` averaged over kept voxels, Dice with the
    mask as ``loss_mask``. Ignore labels are not supported.
    """

    def __init__(self, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 weight_ce: float = 1.0, weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.weight_ce = weight_ce

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar CE + Dice of one resolution, optionally restricted to the kept voxels."""
        y = _labels(logits, target)
        m = _prepare_mask(mask, logits)
        dc = (self.dc(logits, target, loss_mask=None if m is None else m.weights)
              if self.weight_dice != 0 else 0)
        if self.weight_ce == 0:
            ce: Tensor | int = 0
        elif m is None:
            # what RobustCrossEntropyLoss does (autocast runs cross_entropy in float32 anyway)
            ce = F.cross_entropy(logits, y)
        else:
            ce = _masked_mean(per_voxel_ce(logits, target), m)
        return self.weight_ce * ce + self.weight_dice * dc


class APL1Loss(MaskedCompoundLoss):
    """APL1 (Ma et al. 2020 "NCE+RCE") + Dice: mean(RCE + NCE) + Dice against the hard label.

    ``APL1Loss()`` uses :data:`DEFAULT_SOFT_DICE_KWARGS`; ``delta`` is RCE's log-zero constant.
    """

    def __init__(self, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 delta: float = DEFAULT_DELTA, weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.delta = _check_delta(delta)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel RCE + NCE (one softmax) and the hard label as Dice target."""
        return rce(logits, target, self.delta) + nce(logits, target), target


class APL2Loss(MaskedCompoundLoss):
    """APL2 ("NGCE+RCE") + Dice: mean(RCE + NGCE_w) + Dice; ``w`` in (0, 1]."""

    def __init__(self, w: float, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 delta: float = DEFAULT_DELTA, weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.w = _check_w(w)
        self.delta = _check_delta(delta)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel RCE + NGCE (one softmax) and the hard label as Dice target."""
        return rce(logits, target, self.delta) + ngce(logits, target, self.w), target


class GCELoss(MaskedCompoundLoss):
    """GCE (Zhang & Sabuncu 2018) + Dice: mean(GCE_q) + Dice against the hard label; ``q`` in
    (0, 1] (q -> 0 gives CE, q = 1 the MAE 1 - p_y). The example method of README, "Adding a
    loss"."""

    def __init__(self, q: float, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.q = _check_w(q)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel GCE_q and the hard label as Dice target."""
        return gce(logits, target, self.q), target


class SVLSLoss(MaskedCompoundLoss):
    """SVLS (Islam & Glocker 2021): CE + Dice against the SVLS soft target of each resolution.

    ``sigma`` > 0 (search space [0.2, 2]); ``kernel`` "islam" or "gaussian" (see
    :func:`svls_kernel`); ``hard_dice=True`` takes the Dice against the hard label instead.
    """

    def __init__(self, sigma: float, kernel: str = "islam", hard_dice: bool = False,
                 soft_dice_kwargs: Mapping[str, Any] | None = None,
                 weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.sigma = _check_sigma(sigma)
        self.kernel = _check_kernel(kernel)
        self.hard_dice = bool(hard_dice)

    def _soft_target(self, logits: Tensor, target: Tensor) -> Tensor:
        _labels(logits, target)
        return svls_targets(target, logits.shape[1], self.sigma, self.kernel)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel soft CE and the Dice target (soft, or hard with ``hard_dice``)."""
        q = self._soft_target(logits, target)
        return soft_ce(logits, q), (target if self.hard_dice else q)


class HRLLoss(SVLSLoss):
    """HRL peer loss: mean(soft RCE + soft NGCE_w) + Dice on SVLS soft targets.

    ``w`` in (0, 1], ``sigma`` > 0, ``kernel`` and ``hard_dice`` as in :class:`SVLSLoss` (whose
    SVLS target it shares).
    """

    def __init__(self, w: float, sigma: float, kernel: str = "islam", hard_dice: bool = False,
                 soft_dice_kwargs: Mapping[str, Any] | None = None,
                 delta: float = DEFAULT_DELTA, weight_dice: float = 1.0) -> None:
        super().__init__(sigma, kernel, hard_dice, soft_dice_kwargs, weight_dice)
        self.w = _check_w(w)
        self.delta = _check_delta(delta)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel soft RCE + soft NGCE on the SVLS target, and the Dice target."""
        q = self._soft_target(logits, target)
        terms = soft_rce(logits, q, self.delta) + soft_ngce(logits, q, self.w)
        return terms, (target if self.hard_dice else q)
