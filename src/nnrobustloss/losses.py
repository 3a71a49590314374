"""Robust loss terms and nnU-Net-compatible loss modules (DESIGN.md sections 3 and 6).

Notation: logits ``z`` of shape ``[B, K, *spatial]`` (float, any dtype), ``p = softmax(z)`` over
the K classes, integer target ``y`` of shape ``[B, 1, *spatial]`` (``[B, *spatial]`` is accepted
too), one-hot ``q``. Every per-voxel function returns a float32 tensor ``[B, *spatial]``
(float64 for float64 logits); the loss modules return a scalar and follow nnU-Net's loss call
``loss(logits, target)`` plus an optional keep-mask ``loss(logits, target, mask)`` and optional
precomputed per-voxel terms ``loss(logits, target, mask, per_voxel)``, so that nnU-Net's
``DeepSupervisionWrapper`` applies them per resolution with lists of masks (and per-voxel
terms) as further arguments.

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
    1e-7 = our ``ngce`` with DESIGN's w for their q (GCE(y) / sum_j GCE(j); the 1/w cancels).
    Their floor only guards autograd's derivative w p^(w-1), infinite at p = 0; our fused
    backward uses w p^w (delta - p), finite everywhere, so p^w = exp(w log_softmax(z)) is exact
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

Soft-target versions used by HRL (DESIGN.md section 3): ``soft_ce``, ``soft_rce`` =
-sum_k p_k log max(q_k, delta) and ``soft_ngce`` = (1 - sum_k q_k p_k^w) / (K - sum_k p_k^w);
with a one-hot q they equal the hard versions.

Numerics: every robust term is computed in float32 outside autocast; the Dice is nnU-Net's own
``MemoryEfficientSoftDiceLoss`` (the only nnU-Net import) and runs in the input dtype as in
nnU-Net. Masked losses (co-teaching): per-voxel terms are averaged over kept voxels only,
``sum(term * mask) / max(sum(mask), 1)``, and the Dice receives the mask as nnU-Net's
``loss_mask``; an all-ones mask takes exactly the unmasked code path, an empty one gives a finite
loss with zero gradients (for finite logits). Speed: the robust terms are fused autograd
functions with hand-derived gradients (see ``benchmarks/losses.py`` for their cost relative to
nnU-Net's ``DC_and_CE_loss``).
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
# The terms are computed by two fused autograd functions with hand-derived gradients (checked
# against autograd in float64 by the tests). With p = softmax(z), l = log p, u_k = w p_k^w and
# d p_k / d z_j = p_k (delta_jk - p_j), every gradient has the form
#     dT/dz_j = alpha p_j + beta u_j + gamma + [j = y] eta     (per-voxel coefficients),
# which costs a few passes over [B, K, *sp] instead of autograd's chain of intermediates, and
# keeps d(p^w)/dz = w p^w (delta - p) finite even where p underflows to 0 (autograd's
# w p^(w-1) dp is 0 * inf there, which is why the APL code floors p at 1e-7; we need no floor
# and compute p^w = exp(w log_softmax(z)) exactly).


def _gather(t: Tensor, y: Tensor) -> Tensor:
    return t.gather(1, y.unsqueeze(1)).squeeze(1)


def _at_least_float32(z: Tensor) -> Tensor:
    return z if z.dtype in (torch.float32, torch.float64) else z.float()


def _softmax_parts(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(p, z - max, log sum exp(z - max)) with one exp pass over ``z`` [B, K, *sp].

    log p = (z - max) - lse; cheaper than ``log_softmax`` followed by ``exp``. Temporaries are
    kept few and updated in place: on the CPU every fresh large tensor costs page faults.
    """
    zm = z - z.amax(1, keepdim=True)
    p = zm.exp()
    lse = p.sum(1, keepdim=True)
    p.div_(lse)
    return p, zm, lse.log_()


def _acc(acc: Tensor | None, t: Tensor, scale: float = 1.0) -> Tensor:
    """acc + scale * t, in place when acc exists (t is a fresh temporary)."""
    if acc is None:
        return t.mul_(scale) if scale != 1.0 else t
    return acc.add_(t, alpha=scale)


class _HardTerms(torch.autograd.Function):
    """c_ce CE + c_rce RCE + c_nce NCE + c_ngce NGCE_w + c_gce GCE_w per voxel, hard labels.

    The forward also computes the per-voxel gradient coefficients (alpha, beta, gamma, eta of
    the section comment); the backward only scales them by the incoming gradient.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, y: Tensor, c_ce: float, c_rce: float, c_nce: float,
                c_ngce: float, c_gce: float, w: float, delta: float) -> Tensor:
        k = z.shape[1]
        p, zm, lse = _softmax_parts(z)
        lse = lse[:, 0]
        l_y = _gather(zm, y).sub_(lse)  # log p_y
        total = alpha = beta = gamma = eta = None
        if c_ce:  # CE = -l_y;  grad: c_ce (p_j - delta_jy), constant coefficients
            total = _acc(total, l_y.neg(), c_ce)
        if c_rce:  # RCE = A (1 - p_y);  grad: -A p_y (delta_jy - p_j)
            a_py = l_y.exp().mul_(-math.log(delta) * c_rce)
            total = _acc(total, a_py.neg().add_(-math.log(delta) * c_rce))
            eta = _acc(eta, a_py.neg())
            alpha = _acc(alpha, a_py)
        if c_nce:  # NCE = l_y / S;  grad: (delta_jy - p_j) / S - l_y (1 - K p_j) / S^2
            inv_s = zm.sum(1).sub_(lse, alpha=k).reciprocal_()  # 1 / sum_j log p_j
            nce_val = l_y * inv_s
            total = _acc(total, nce_val.clone(), c_nce)
            gamma = nce_val.mul_(inv_s).mul_(-c_nce)  # -l_y / S^2
            alpha = _acc(alpha, gamma * (-k) - inv_s * c_nce)
            eta = _acc(eta, inv_s, c_nce)
        if c_ngce or c_gce:
            pw_y = l_y.mul(w).exp_()
            if c_ngce:  # N / D;  grad: -u_y (delta_jy - p_j) / D + N (u_j - p_j U) / D^2
                pw = zm.sub_(lse.unsqueeze(1)).mul_(w).exp_()  # p^w = exp(w log p), in place
                d = pw.sum(1)  # sum_j p_j^w = K - D
                inv_d = d.neg().add_(k).reciprocal_()
                ngce_val = pw_y.neg().add_(1.0).mul_(inv_d)  # N / D
                total = _acc(total, ngce_val.clone(), c_ngce)
                u_y_d = pw_y * inv_d * (w * c_ngce)
                beta = ngce_val.mul_(inv_d).mul_(w * c_ngce)  # w N / D^2, on p^w
                alpha = _acc(alpha, u_y_d - beta * d)
                eta = _acc(eta, u_y_d, -1.0)
            if c_gce:  # (1 - p_y^w) / w;  grad: -p_y^w (delta_jy - p_j)
                total = _acc(total, pw_y.neg().add_(1.0), c_gce / w)
                alpha = _acc(alpha, pw_y.clone(), c_gce)
                eta = _acc(eta, pw_y.clone(), -c_gce)
        assert total is not None
        ctx.save_for_backward(p, pw if beta is not None else None, y, alpha, beta, gamma, eta)
        ctx.c_ce = c_ce
        return total

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        p, pw, y, alpha, beta, gamma, eta = ctx.saved_tensors
        c_ce = ctx.c_ce
        a = g * c_ce if alpha is None else (alpha + c_ce) * g if c_ce else alpha * g
        e = -c_ce * g if eta is None else (eta - c_ce) * g if c_ce else eta * g
        grad = p * a.unsqueeze(1)
        if beta is not None:
            grad.addcmul_(pw, (beta * g).unsqueeze(1))
        if gamma is not None:
            grad.add_((gamma * g).unsqueeze(1))
        grad.scatter_add_(1, y.unsqueeze(1), e.unsqueeze(1))
        return grad, None, None, None, None, None, None, None, None


class _SoftTerms(torch.autograd.Function):
    """c_ce soft CE + c_rce soft RCE + c_ngce soft NGCE_w per voxel, soft target q.

    Gradient: dT/dz_j = g (alpha p_j + A_j) with per-voxel alpha and a [B, K, *sp] tensor A,
    both computed in the forward.
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, q: Tensor, c_ce: float, c_rce: float, c_ngce: float,
                w: float, delta: float) -> Tensor:
        k = z.shape[1]
        p, zm, lse = _softmax_parts(z)
        logp = zm.sub_(lse)
        total = alpha = extra = None
        if c_ce:  # -sum q log p;  grad: p_j sum(q) - q_j  (the -q_j part in the backward)
            total = _acc(total, (q * logp).sum(1), -c_ce)
            alpha = _acc(alpha, q.sum(1), c_ce)
        if c_rce:  # R = sum p c, c = -log max(q, delta);  grad: p_j (c_j - R)
            pc = q.clamp_min(delta).log_().mul_(-1.0).mul_(p)
            r = pc.sum(1)
            total = _acc(total, r.clone(), c_rce)
            alpha = _acc(alpha, r, -c_rce)
            extra = _acc(extra, pc, c_rce)
        if c_ngce:  # N / D;  grad: p_j (QU/D - N U/D^2) + u_j (N/D^2 - q_j/D), u = w p^w
            pw = logp.mul_(w).exp_()
            inv_d = pw.sum(1).neg_().add_(k).reciprocal_()  # 1 / D
            n = (q * pw).sum(1).neg_().add_(1.0)  # N = 1 - sum q p^w
            ngce_val = n * inv_d
            total = _acc(total, ngce_val.clone(), c_ngce)
            # QU/D - N U/D^2 with QU = w (1 - N), U = w (K - D)
            a_ngce = (1.0 - n).mul_(inv_d).sub_(ngce_val * inv_d * (k - 1.0 / inv_d))
            alpha = _acc(alpha, a_ngce, w * c_ngce)
            coef = ngce_val.mul_(inv_d).unsqueeze(1) - inv_d.unsqueeze(1) * q  # N/D^2 - q_j/D
            extra = _acc(extra, coef.mul_(pw), w * c_ngce)
        assert total is not None and alpha is not None
        ctx.save_for_backward(p, alpha, extra, q if c_ce else None)
        ctx.c_ce = c_ce
        return total

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        p, alpha, extra, q = ctx.saved_tensors
        grad = p * alpha.unsqueeze(1)
        if extra is not None:
            grad.add_(extra)
        if q is not None:
            grad.sub_(q, alpha=ctx.c_ce)
        grad.mul_(g.unsqueeze(1))
        return grad, None, None, None, None, None, None


def _hard(logits: Tensor, target: Tensor, c_ce: float = 0.0, c_rce: float = 0.0,
          c_nce: float = 0.0, c_ngce: float = 0.0, c_gce: float = 0.0, w: float = 1.0,
          delta: float = DEFAULT_DELTA) -> Tensor:
    y = _labels(logits, target)
    with _no_autocast(logits):
        return _HardTerms.apply(_at_least_float32(logits), y, c_ce, c_rce, c_nce, c_ngce, c_gce,
                                w, delta)


def _soft(logits: Tensor, soft_target: Tensor, c_ce: float = 0.0, c_rce: float = 0.0,
          c_ngce: float = 0.0, w: float = 1.0, delta: float = DEFAULT_DELTA) -> Tensor:
    _check_soft(logits, soft_target)
    with _no_autocast(logits):
        z = _at_least_float32(logits)
        q = soft_target.detach().to(z.dtype)
        return _SoftTerms.apply(z, q, c_ce, c_rce, c_ngce, w, delta)


def per_voxel_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-voxel cross-entropy -log p_y, float32 ``[B, *spatial]`` (the small-loss ranking key).

    ``logits`` ``[B, K, *spatial]``; ``target`` integer labels ``[B, 1, *spatial]`` in [0, K).
    Differentiable (fused gradient p - q, cheaper than ``F.cross_entropy(reduction="none")``
    followed by a masked mean); computed in (at least) float32 outside autocast.
    """
    return _hard(logits, target, c_ce=1.0)


def nce(logits: Tensor, target: Tensor) -> Tensor:
    """Normalized CE (Ma et al. 2020): CE(y) / sum_j CE(j), CE(j) = -log p_j; in (0, 1].

    Shapes as :func:`per_voxel_ce`; returns float32 ``[B, *spatial]``. Summed over all K
    candidate labels it is 1 at every voxel.
    """
    return _hard(logits, target, c_nce=1.0)


def rce(logits: Tensor, target: Tensor, delta: float = DEFAULT_DELTA) -> Tensor:
    """Reverse CE (Ma et al. 2020): -sum_k p_k log q_k with log 0 := log(delta).

    Equals -log(delta) * (1 - p_y), in [0, -log(delta)]. Shapes as :func:`per_voxel_ce`.
    """
    return _hard(logits, target, c_rce=1.0, delta=_check_delta(delta))


def gce(logits: Tensor, target: Tensor, w: float) -> Tensor:
    """Generalized CE (Zhang & Sabuncu 2018): (1 - p_y^w) / w, w > 0.

    Shapes as :func:`per_voxel_ce`; returns float32 ``[B, *spatial]`` in [0, 1/w].
    """
    return _hard(logits, target, c_gce=1.0, w=_check_w(w))


def ngce(logits: Tensor, target: Tensor, w: float) -> Tensor:
    """Normalized GCE (Ma et al. 2020): GCE_w(y) / sum_j GCE_w(j) = (1 - p_y^w) / (K - sum p^w).

    w > 0 (paper search space (0, 1]). Shapes as :func:`per_voxel_ce`; returns float32
    ``[B, *spatial]`` in [0, 1].
    """
    return _hard(logits, target, c_ngce=1.0, w=_check_w(w))


def soft_ce(logits: Tensor, soft_target: Tensor) -> Tensor:
    """CE against a soft target: -sum_k q_k log p_k; ``soft_target`` ``[B, K, *spatial]``.

    Returns float32 ``[B, *spatial]``; equals :func:`per_voxel_ce` for a one-hot target. The
    target gets no gradient.
    """
    return _soft(logits, soft_target, c_ce=1.0)


def soft_rce(logits: Tensor, soft_target: Tensor, delta: float = DEFAULT_DELTA) -> Tensor:
    """Soft reverse CE (HRL): -sum_k p_k log max(q_k, delta); ``soft_target`` ``[B, K, *sp]``.

    Returns float32 ``[B, *spatial]``; equals :func:`rce` for a one-hot target.
    """
    return _soft(logits, soft_target, c_rce=1.0, delta=_check_delta(delta))


def soft_ngce(logits: Tensor, soft_target: Tensor, w: float) -> Tensor:
    """Soft NGCE (HRL): (1 - sum_k q_k p_k^w) / (K - sum_k p_k^w).

    ``soft_target`` ``[B, K, *spatial]`` summing to 1 over K. Returns float32 ``[B, *spatial]``;
    equals :func:`ngce` for a one-hot target.
    """
    return _soft(logits, soft_target, c_ngce=1.0, w=_check_w(w))


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


def _neighbour_sum(u: Tensor, dim: int) -> Tensor:
    """u[i-1] + u[i+1] along ``dim`` with replicate padding (index clamped to the border)."""
    n = u.shape[dim]
    if n == 1:
        return u * 2.0
    out = torch.empty_like(u)
    out.narrow(dim, 1, n - 1).copy_(u.narrow(dim, 0, n - 1))
    out.narrow(dim, 0, 1).copy_(u.narrow(dim, 0, 1))
    out.narrow(dim, 0, n - 1).add_(u.narrow(dim, 1, n - 1))
    out.narrow(dim, n - 1, 1).add_(u.narrow(dim, n - 1, 1))
    return out


def svls_targets(target: Tensor, num_classes: int, sigma: float,
                 kernel: str = "islam") -> Tensor:
    """SVLS soft targets: the one-hot label convolved per class with :func:`svls_kernel`.

    ``target`` integer labels ``[B, 1, *spatial]`` (2 or 3 spatial dims) in [0, num_classes);
    returns float32 ``[B, num_classes, *spatial]`` summing to 1 over classes (to float32
    rounding), with replicate padding at the patch border, so a voxel whose 3^d neighbourhood
    carries one label keeps the one-hot vector. No gradient (a target).

    The 3^d Gaussian is separable, so it is applied as d three-tap passes. With e =
    exp(-1 / (2 sigma^2)) and the unnormalised 1-D kernel [e, 1, e], the neighbour part
    P = (prod_d (I + e S_d) - I) x (S_d: sum of the two neighbours along axis d) is accumulated
    axis by axis without cancellation; with W = (1 + 2e)^d - 1 the total neighbour weight,
    gaussian = (x + P) / (1 + W) and islam = (W x + P) / (2 W) (centre weight W / 2W = 1/2).
    Only classes 1..K-1 are convolved; class 0 gets 1 minus their sum (the convolution of a
    one-hot that sums to 1 with a kernel that sums to 1 sums to 1), clamped at 0 against
    rounding.
    """
    if target.ndim not in (4, 5) or target.shape[1] != 1:
        raise ValueError(f"target must be [B, 1, *spatial] with 2 or 3 spatial dims, got "
                         f"{tuple(target.shape)}")
    sigma = _check_sigma(sigma)
    kernel = _check_kernel(kernel)
    ndim = target.ndim - 2
    e = math.exp(-1.0 / (2.0 * sigma**2))
    w_sum = math.expm1(ndim * math.log1p(2.0 * e))  # (1 + 2e)^d - 1, accurate for tiny e
    with torch.no_grad(), _no_autocast(target):
        b, spatial = target.shape[0], target.shape[2:]
        out = torch.empty((b, num_classes, *spatial), device=target.device, dtype=torch.float32)
        if num_classes == 1:
            return out.fill_(1.0)
        # smooth classes 1..K-1; class 0 is the rest (the smoothed one-hot sums to 1)
        classes = torch.arange(1, num_classes, device=target.device).view(1, -1, *([1] * ndim))
        x = (target.long() == classes).to(torch.float32)  # one-hot of classes 1..K-1
        part: Tensor | None = None
        for dim in range(2, 2 + ndim):
            s = _neighbour_sum(x if part is None else x + part, dim)
            part = s.mul_(e) if part is None else part.add_(s, alpha=e)
        assert part is not None
        rest = out[:, 1:]
        if kernel == "gaussian":
            torch.add(part, x, out=rest).div_(1.0 + w_sum)
        else:
            torch.add(part, x, alpha=w_sum, out=rest).div_(2.0 * w_sum)
        torch.sum(rest, 1, out=out[:, 0]).neg_().add_(1.0).clamp_(min=0.0)
        return out


# --------------------------------------------------------------------------------------------
# loss modules
# --------------------------------------------------------------------------------------------


class _Mask:
    """A checked keep-mask: float32 0/1 ``[B, 1, *sp]`` (Dice ``loss_mask`` and weights of the
    per-voxel mean), bool ``[B, *sp]`` and the number of kept voxels."""

    def __init__(self, mask: Tensor, logits: Tensor) -> None:
        expected = (logits.shape[0], 1, *logits.shape[2:])
        if mask.ndim == logits.ndim - 1:
            mask = mask.unsqueeze(1)
        if tuple(mask.shape) != expected:
            # never broadcast a mask across samples or classes (a bug of the public code)
            raise ValueError(f"mask shape {tuple(mask.shape)} must be [B, 1, *spatial] = "
                             f"{expected}")
        keep = mask if mask.dtype == torch.bool else mask != 0
        self.keep = keep[:, 0]  # explicit [B, 1, *sp] -> [B, *sp], never a broadcast
        self.count = int(torch.count_nonzero(keep))
        self.all = self.count == keep.numel()
        self.dice = None if self.all else keep.to(torch.float32)


def _prepare_mask(mask: Tensor | None, logits: Tensor) -> _Mask | None:
    """None for no mask or an all-ones mask (exactly the unmasked loss), else a :class:`_Mask`."""
    if mask is None:
        return None
    m = _Mask(mask, logits)
    return None if m.all else m


def _dice_onehot(logits: Tensor, dice_target: Tensor) -> Tensor:
    """A label map ``[B, 1, *sp]`` as float32 one-hot ``[B, K, *sp]``; soft targets unchanged.

    nnU-Net's Dice takes a target of the logits' shape as the one-hot itself; building it by
    comparison is ~2x cheaper on the CPU than the zeros + scatter_ it does for a label map, and
    gives the same 0/1 values, hence bit-identical Dice values and gradients.
    """
    if dice_target.shape == logits.shape:
        return dice_target
    k = logits.shape[1]
    classes = torch.arange(k, device=logits.device).view(1, k, *([1] * (logits.ndim - 2)))
    return (dice_target.long() == classes).to(torch.float32)


def _check_per_voxel(per_voxel: Tensor, logits: Tensor) -> Tensor:
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(per_voxel.shape) != expected:
        raise ValueError(f"per_voxel shape {tuple(per_voxel.shape)} must be [B, *spatial] = "
                         f"{expected}")
    return per_voxel


def _masked_mean(per_voxel: Tensor, mask: _Mask | None) -> Tensor:
    """Mean over voxels, or over kept voxels only: sum(term * m) / max(sum(m), 1)."""
    if mask is None:
        return per_voxel.mean()
    # a dot product with the 0/1 mask: ~5x cheaper (forward + backward) than torch.where on the
    # CPU; the per-voxel terms are finite for finite logits, so 0 * term is 0
    weights = mask.dice.reshape(-1).to(per_voxel.dtype)
    return torch.dot(per_voxel.reshape(-1), weights) / max(mask.count, 1)


def _masked_ce(logits: Tensor, y: Tensor, mask: _Mask) -> Tensor:
    """Mean CE over kept voxels, via ``ignore_index`` on the dropped ones (one fused kernel)."""
    y_kept = torch.where(mask.keep, y, torch.full_like(y, -100))
    # an empty mask: 'sum' over no voxel is 0 with zero gradients ('mean' would be 0/0)
    reduction = "mean" if mask.count > 0 else "sum"
    with _no_autocast(logits):
        return F.cross_entropy(_at_least_float32(logits), y_kept, ignore_index=-100,
                               reduction=reduction)


class MaskedCompoundLoss(nn.Module):
    """Base: mean of per-voxel terms (float32) + weight_dice x nnU-Net's soft Dice.

    Subclasses implement :meth:`terms` (and :meth:`dice_target` if the Dice target is not the
    hard label). ``forward(logits, target, mask=None, per_voxel=None) -> scalar`` with
    ``logits`` ``[B, K, *sp]``, ``target`` ``[B, 1, *sp]`` integer labels, an optional keep mask
    (bool/float ``[B, 1, *sp]``, nonzero = keep) and optionally the already computed
    ``per_voxel_terms(logits, target)`` (with their graph) to avoid computing them twice, e.g.
    when a co-teaching peer ranks its own per-voxel loss and is trained on it. Under nnU-Net's
    ``DeepSupervisionWrapper`` pass lists: ``ds(outputs, targets, masks[, per_voxels])``.
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
        """Return (per-voxel robust terms float32 ``[B, *sp]``, the Dice target)."""
        raise NotImplementedError

    def dice_target(self, logits: Tensor, target: Tensor) -> Tensor:
        """The Dice target alone (the hard label unless a subclass smooths it)."""
        return target

    def per_voxel_terms(self, logits: Tensor, target: Tensor) -> Tensor:
        """The per-voxel sum of this loss's non-Dice terms, float32 ``[B, *spatial]``."""
        with _no_autocast(logits):
            return self.terms(logits, target)[0]

    @staticmethod
    def per_voxel_ce(logits: Tensor, target: Tensor) -> Tensor:
        """Per-voxel hard-label CE for small-loss ranking (see module-level per_voxel_ce)."""
        return per_voxel_ce(logits, target)

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None,
                per_voxel: Tensor | None = None) -> Tensor:
        """Scalar loss of one resolution; ``mask`` keeps voxels (see class docstring)."""
        _labels(logits, target)
        m = _prepare_mask(mask, logits)
        with _no_autocast(logits):
            if per_voxel is None:
                per_voxel, dice_target = self.terms(logits, target)
            else:
                per_voxel = _check_per_voxel(per_voxel, logits)
                dice_target = self.dice_target(logits, target)
            robust = _masked_mean(per_voxel, m)
        if self.weight_dice == 0:
            return robust
        dc = self.dc(logits, _dice_onehot(logits, dice_target),
                     loss_mask=None if m is None else m.dice)
        return robust + self.weight_dice * dc


class CEDiceLoss(MaskedCompoundLoss):
    """CE + Dice; equal to nnU-Net's ``DC_and_CE_loss`` (MemoryEfficientSoftDiceLoss) unmasked.

    With ``soft_dice_kwargs`` as ``nnUNetTrainer._build_loss`` sets them (batch_dice from the
    plans, smooth 1e-5, do_bg False), ``weight_ce = weight_dice = 1`` and ``mask`` None or all
    ones, the value and gradients are those of ``DC_and_CE_loss`` bit for bit (same operations in
    the same order; a given ``per_voxel`` is then not used). With a mask: CE averaged over kept
    voxels (from ``per_voxel`` = :func:`per_voxel_ce` if given), Dice with the mask as
    ``loss_mask``. Ignore labels are not supported.
    """

    def __init__(self, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 weight_ce: float = 1.0, weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.weight_ce = weight_ce

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel CE and the hard label as Dice target."""
        return per_voxel_ce(logits, target), target

    def forward(self, logits: Tensor, target: Tensor, mask: Tensor | None = None,
                per_voxel: Tensor | None = None) -> Tensor:
        """Scalar CE + Dice of one resolution, optionally restricted to the kept voxels."""
        y = _labels(logits, target)
        m = _prepare_mask(mask, logits)
        dice_mask = None if m is None else m.dice
        dc = (self.dc(logits, _dice_onehot(logits, target), loss_mask=dice_mask)
              if self.weight_dice != 0 else 0)
        if self.weight_ce == 0:
            ce: Tensor | int = 0
        elif m is None:
            # what RobustCrossEntropyLoss does (autocast runs cross_entropy in float32 anyway)
            ce = F.cross_entropy(logits, y)
        elif per_voxel is not None:
            ce = _masked_mean(_check_per_voxel(per_voxel, logits), m)
        else:
            ce = _masked_ce(logits, y, m)
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
        return _hard(logits, target, c_rce=1.0, c_nce=1.0, delta=self.delta), target


class APL2Loss(MaskedCompoundLoss):
    """APL2 ("NGCE+RCE") + Dice: mean(RCE + NGCE_w) + Dice; ``w`` in (0, 1]."""

    def __init__(self, w: float, soft_dice_kwargs: Mapping[str, Any] | None = None,
                 delta: float = DEFAULT_DELTA, weight_dice: float = 1.0) -> None:
        super().__init__(soft_dice_kwargs, weight_dice)
        self.w = _check_w(w)
        self.delta = _check_delta(delta)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel RCE + NGCE (one softmax) and the hard label as Dice target."""
        return _hard(logits, target, c_rce=1.0, c_ngce=1.0, w=self.w, delta=self.delta), target


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

    def dice_target(self, logits: Tensor, target: Tensor) -> Tensor:
        """The SVLS soft target, or the hard label with ``hard_dice``."""
        if self.hard_dice:
            return target
        return svls_targets(target, logits.shape[1], self.sigma, self.kernel)

    def terms(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Per-voxel soft CE and the Dice target (soft, or hard with ``hard_dice``)."""
        _labels(logits, target)
        q = svls_targets(target, logits.shape[1], self.sigma, self.kernel)
        return _soft(logits, q, c_ce=1.0), (target if self.hard_dice else q)


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
        _labels(logits, target)
        q = svls_targets(target, logits.shape[1], self.sigma, self.kernel)
        terms = _soft(logits, q, c_rce=1.0, c_ngce=1.0, w=self.w, delta=self.delta)
        return terms, (target if self.hard_dice else q)
