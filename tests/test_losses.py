"""Tests of nnrobustloss.losses: formulas against hand-computed values, nnU-Net equivalence,
masked semantics, SVLS kernels and targets, deep supervision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnrobustloss.errors import ConfigError
from nnrobustloss.losses import (
    APL1Loss,
    APL2Loss,
    CEDiceLoss,
    HRLLoss,
    InvalidHyperParameter,
    SVLSLoss,
    gce,
    nce,
    ngce,
    per_voxel_ce,
    rce,
    soft_ce,
    soft_ngce,
    soft_rce,
    svls_kernel,
    svls_targets,
)

torch.set_num_threads(1)

LOG_DELTA = math.log(1e-4)


def _logits_from_probs(*probs: tuple[float, ...]) -> torch.Tensor:
    """Logits [1, K, n, 1] whose softmax over K is the given probability vectors (n voxels)."""
    p = torch.tensor(probs, dtype=torch.float64).T  # [K, n]
    return p.log().to(torch.float32)[None, :, :, None]


P1 = (0.5, 0.3, 0.2)
P2 = (0.1, 0.6, 0.3)
Z = _logits_from_probs(P1, P2)  # [1, 3, 2, 1]
Y = torch.tensor([0, 2]).view(1, 1, 2, 1)  # voxel 1 labelled 0, voxel 2 labelled 2


def _nnunet_dc_ce(batch_dice: bool) -> DC_and_CE_loss:
    # exactly as nnUNetTrainer._build_loss configures it (no regions, no ignore label)
    return DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False},
                          {}, weight_ce=1, weight_dice=1, ignore_label=None,
                          dice_class=MemoryEfficientSoftDiceLoss)


def _kwargs(batch_dice: bool) -> dict:
    return {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}


def _batch(shape=(2, 3, 6, 5, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    b, k, *sp = shape
    z = (2 * torch.randn(shape, generator=g)).requires_grad_(True)
    y = torch.randint(0, k, (b, 1, *sp), generator=g)
    return z, y


# ------------------------------------------------------------------ per-voxel formulas


def test_ce_nce_rce_hand_values():
    ce = per_voxel_ce(Z, Y)
    assert ce.shape == (1, 2, 1) and ce.dtype == torch.float32
    assert ce[0, :, 0].tolist() == pytest.approx([-math.log(0.5), -math.log(0.3)], rel=1e-6)

    n = nce(Z, Y)[0, :, 0].tolist()
    exp1 = math.log(0.5) / (math.log(0.5) + math.log(0.3) + math.log(0.2))
    exp2 = math.log(0.3) / (math.log(0.1) + math.log(0.6) + math.log(0.3))
    assert n == pytest.approx([exp1, exp2], rel=1e-6)

    r = rce(Z, Y)[0, :, 0].tolist()
    # -sum_k p_k log q_k with log q_k = log(1e-4) off the label
    assert r == pytest.approx([-(0.3 + 0.2) * LOG_DELTA, -(0.1 + 0.6) * LOG_DELTA], rel=1e-6)
    r2 = rce(Z, Y, delta=1e-2)[0, 0, 0].item()
    assert r2 == pytest.approx(-0.5 * math.log(1e-2), rel=1e-6)


@pytest.mark.parametrize("w", [0.3, 0.7, 1.0])
def test_gce_ngce_hand_values(w):
    g = gce(Z, Y, w)[0, :, 0].tolist()
    assert g == pytest.approx([(1 - 0.5**w) / w, (1 - 0.3**w) / w], rel=1e-5)

    ng = ngce(Z, Y, w)[0, :, 0].tolist()
    # NGCE = GCE(y) / sum_j GCE(j)
    exp1 = (1 - 0.5**w) / sum(1 - p**w for p in P1)
    exp2 = (1 - 0.3**w) / sum(1 - p**w for p in P2)
    assert ng == pytest.approx([exp1, exp2], rel=1e-5)


def test_nce_and_ngce_sum_to_one_over_candidate_labels():
    z, _ = _batch((2, 4, 3, 3, 3))
    k = z.shape[1]
    labels = [torch.full((2, 1, 3, 3, 3), j) for j in range(k)]
    total_nce = sum(nce(z, t) for t in labels)
    total_ngce = sum(ngce(z, t, 0.6) for t in labels)
    assert torch.allclose(total_nce, torch.ones_like(total_nce), atol=1e-5)
    assert torch.allclose(total_ngce, torch.ones_like(total_ngce), atol=1e-5)


def test_soft_versions_hand_values():
    q = torch.tensor([[0.6, 0.4, 0.0], [0.0, 0.25, 0.75]]).T[None, :, :, None]  # [1, 3, 2, 1]
    sce = soft_ce(Z, q)[0, :, 0].tolist()
    assert sce == pytest.approx([-(0.6 * math.log(0.5) + 0.4 * math.log(0.3)),
                                 -(0.25 * math.log(0.6) + 0.75 * math.log(0.3))], rel=1e-6)
    srce = soft_rce(Z, q)[0, :, 0].tolist()
    assert srce == pytest.approx([-(0.5 * math.log(0.6) + 0.3 * math.log(0.4) + 0.2 * LOG_DELTA),
                                  -(0.1 * LOG_DELTA + 0.6 * math.log(0.25)
                                    + 0.3 * math.log(0.75))], rel=1e-6)
    w = 0.5
    sng = soft_ngce(Z, q, w)[0, :, 0].tolist()
    exp1 = (1 - (0.6 * 0.5**w + 0.4 * 0.3**w)) / (3 - sum(p**w for p in P1))
    exp2 = (1 - (0.25 * 0.6**w + 0.75 * 0.3**w)) / (3 - sum(p**w for p in P2))
    assert sng == pytest.approx([exp1, exp2], rel=1e-5)


def test_soft_versions_equal_hard_versions_for_one_hot_targets():
    z, y = _batch((2, 3, 4, 5, 3))
    q = F.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    assert torch.allclose(soft_ce(z, q), per_voxel_ce(z, y), rtol=1e-6, atol=1e-6)
    assert torch.allclose(soft_rce(z, q), rce(z, y), rtol=1e-5, atol=1e-5)
    assert torch.equal(soft_ngce(z, q, 0.4), ngce(z, y, 0.4))


def _naive_terms(z, y, q, w, delta=1e-4):
    """Plain autograd versions of every formula, straight from docs/methods.md."""
    p = torch.softmax(z, 1)
    logp = torch.log_softmax(z, 1)
    k = z.shape[1]
    onehot = F.one_hot(y[:, 0], k).movedim(-1, 1).to(z.dtype)
    ce_j = -logp
    gce_j = (1 - p**w) / w
    return {
        "nce": lambda: nce(z, y) - ((onehot * ce_j).sum(1) / ce_j.sum(1)),
        "rce": lambda: rce(z, y, delta) - (-(p * torch.log(onehot.clamp_min(delta))).sum(1)),
        "gce": lambda: gce(z, y, w) - (onehot * gce_j).sum(1),
        "ngce": lambda: ngce(z, y, w) - ((onehot * gce_j).sum(1) / gce_j.sum(1)),
        "soft_ce": lambda: soft_ce(z, q) - (-(q * logp).sum(1)),
        "soft_rce": lambda: soft_rce(z, q, delta) - (-(p * q.clamp_min(delta).log()).sum(1)),
        "soft_ngce": lambda: soft_ngce(z, q, w) - ((1 - (q * p**w).sum(1)) / (k - (p**w).sum(1))),
    }


@pytest.mark.parametrize("name", ["nce", "rce", "gce", "ngce", "soft_ce", "soft_rce", "soft_ngce"])
@pytest.mark.parametrize("w", [0.3, 1.0])
def test_gradients_equal_autograd_of_an_independent_formulation(name, w):
    # in float64: value and gradient of each term minus its formulation with one-hot sums and
    # p ** w (_naive_terms) are 0; gradcheck compares the gradient with finite differences
    g = torch.Generator().manual_seed(4)
    z = (2 * torch.randn((2, 4, 3, 2, 2), generator=g, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, 4, (2, 1, 3, 2, 2), generator=g)
    q = torch.softmax(3 * torch.randn((2, 4, 3, 2, 2), generator=g, dtype=torch.float64), 1)
    q[0, :, 0] = F.one_hot(y[0, 0, 0], 4).movedim(-1, 0).double()  # soft and one-hot voxels
    diff = _naive_terms(z, y, q, w)[name]()
    assert diff.abs().max().item() < 1e-12
    weights = torch.rand(diff.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((diff * weights).sum(), z)
    assert grad.abs().max().item() < 1e-12
    term = {"nce": lambda t: nce(t, y), "rce": lambda t: rce(t, y),
            "gce": lambda t: gce(t, y, w), "ngce": lambda t: ngce(t, y, w),
            "soft_ce": lambda t: soft_ce(t, q), "soft_rce": lambda t: soft_rce(t, q),
            "soft_ngce": lambda t: soft_ngce(t, q, w)}[name]
    assert torch.autograd.gradcheck(lambda t: term(t).mul(weights).sum(), (z.detach().clone()
                                                                          .requires_grad_(),))


def _hand_gradients(p: list[float], y: int, q: list[float], w: float) -> dict[str, list[float]]:
    """dT/dz_i of every term at one voxel, from the derivatives by hand: with
    dp_k/dz_i = p_k (delta_ik - p_i), d log p_k / dz_i = delta_ik - p_i."""
    k, a = len(p), -math.log(1e-4)
    d = [float(i == y) for i in range(k)]
    s = sum(math.log(pj) for pj in p)  # sum_j log p_j
    pw = [pj**w for pj in p]
    u = sum(pw)
    n_h, d_h = 1 - pw[y], k - u  # NGCE = n_h / d_h
    n_s = 1 - sum(qj * pwj for qj, pwj in zip(q, pw, strict=True))  # soft NGCE = n_s / d_h
    c = [-math.log(max(qj, 1e-4)) for qj in q]
    r = sum(pj * cj for pj, cj in zip(p, c, strict=True))  # soft RCE
    qpw = 1 - n_s
    return {
        "ce": [p[i] - d[i] for i in range(k)],
        "rce": [-a * p[y] * (d[i] - p[i]) for i in range(k)],
        "nce": [(d[i] - p[i]) / s - math.log(p[y]) * (1 - k * p[i]) / s**2 for i in range(k)],
        "gce": [-pw[y] * (d[i] - p[i]) for i in range(k)],
        "ngce": [-w * pw[y] * (d[i] - p[i]) / d_h + n_h * w * (pw[i] - p[i] * u) / d_h**2
                 for i in range(k)],
        "soft_ce": [p[i] * sum(q) - q[i] for i in range(k)],
        "soft_rce": [p[i] * (c[i] - r) for i in range(k)],
        "soft_ngce": [-w * (q[i] * pw[i] - p[i] * qpw) / d_h + n_s * w * (pw[i] - p[i] * u) / d_h**2
                      for i in range(k)],
    }


@pytest.mark.parametrize("w", [0.3, 1.0])
def test_gradients_equal_hand_derived_gradients(w):
    z = torch.tensor((P1, P2), dtype=torch.float64).T.log()[None, :, :, None].requires_grad_(True)
    qs = ([0.6, 0.4, 0.0], [0.0, 0.25, 0.75])
    q = torch.tensor(qs, dtype=torch.float64).T[None, :, :, None]
    terms = {"ce": per_voxel_ce(z, Y), "rce": rce(z, Y), "nce": nce(z, Y), "gce": gce(z, Y, w),
             "ngce": ngce(z, Y, w), "soft_ce": soft_ce(z, q), "soft_rce": soft_rce(z, q),
             "soft_ngce": soft_ngce(z, q, w)}
    for v, (p, label) in enumerate(((P1, 0), (P2, 2))):
        expected = _hand_gradients(list(p), label, qs[v], w)
        for name, term in terms.items():
            (grad,) = torch.autograd.grad(term[0, v, 0], z, retain_graph=True)
            assert grad[0, :, v, 0].tolist() == pytest.approx(expected[name], rel=1e-9, abs=1e-12)
            assert grad[0, :, 1 - v].abs().max().item() == 0.0  # nothing leaks to the other voxel


def test_gradients_are_finite_for_saturated_logits():
    # p of the label underflows to 0 in float32: p**w would have an infinite derivative
    z = torch.tensor([[200.0, -200.0, 0.0], [0.0, 0.0, 0.0]]).T[None, :, :, None]
    z.requires_grad_(True)
    y = torch.tensor([1, 2]).view(1, 1, 2, 1)
    assert torch.softmax(z, 1)[0, 1, 0, 0].item() == 0.0  # p_y is exactly 0 at the first voxel
    q = F.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    (g_ngce,) = torch.autograd.grad(ngce(z, y, 0.3).sum(), z)
    # there d NGCE / dz_i = -w p_y^w (delta_iy - p_i) / D + N w (p_i^w - p_i U) / D^2 with
    # p_y^w = 0, N = 1, p = (1, 0, 0), p^w = (1, 0, e^-60), U = 1 + e^-60, D = 2: finite, |.| < 1e-26
    assert torch.isfinite(g_ngce).all() and g_ngce[..., 0, :].abs().max().item() < 1e-26
    assert g_ngce[0, 2, 0, 0].item() == pytest.approx(0.3 * math.exp(-60) / 4, rel=1e-5)
    for term in (nce(z, y), rce(z, y), gce(z, y, 0.3), ngce(z, y, 0.3), soft_ngce(z, q, 0.3),
                 soft_rce(z, q), soft_ce(z, q)):
        (grad,) = torch.autograd.grad(term.sum(), z)
        assert torch.isfinite(term).all() and torch.isfinite(grad).all()


def test_terms_run_in_float32_under_autocast():
    z, y = _batch((2, 3, 4, 4, 4))
    zb = z.detach().to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = [nce(zb, y), rce(zb, y), ngce(zb, y, 0.5), per_voxel_ce(zb, y)]
    ref = [nce(zb.float(), y), rce(zb.float(), y), ngce(zb.float(), y, 0.5),
           per_voxel_ce(zb.float(), y)]
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == torch.float32
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["APL1", "APL2", "SVLS", "HRL", "CEDice"])
def test_modules_under_cpu_autocast_give_finite_float32_gradients(name):
    loss = _modules()[name]
    z, y = _batch((2, 3, 6, 5, 4))
    zb = z.detach().to(torch.bfloat16).requires_grad_(True)
    m = torch.rand((2, 1, 6, 5, 4), generator=torch.Generator().manual_seed(9)) < 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        val = loss(zb, y, m)
    (g,) = torch.autograd.grad(val, zb)
    assert torch.isfinite(val) and torch.isfinite(g).all()
    # the robust terms themselves are float32: close to the float32 loss of the same logits
    assert val.item() == pytest.approx(loss(zb.detach().float(), y, m).item(), abs=0.05)


def test_shape_and_parameter_errors():
    z, y = _batch((2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="target"):
        nce(z, y[:, :, :2])
    with pytest.raises(InvalidHyperParameter):
        APL2Loss(0.0)
    with pytest.raises(ConfigError, match="sigma"):
        SVLSLoss(-1.0)
    with pytest.raises(ValueError, match="kernel"):
        svls_kernel(1.0, "box")
    with pytest.raises(ValueError, match="mask"):
        APL1Loss()(z, y, torch.ones(1, 1, 4, 4, 4))  # a mask broadcast over samples
    with pytest.raises(ValueError, match="mask"):
        CEDiceLoss()(z, y, torch.ones(2, 3, 4, 4, 4))


# ------------------------------------------------------------------ SVLS


def _sums(ndim: int, sigma: float) -> float:
    # S = sum over the 3^ndim offsets of exp(-d^2 / (2 sigma^2)), counted by squared distance
    counts = {2: {0: 1, 1: 4, 2: 4}, 3: {0: 1, 1: 6, 2: 12, 3: 8}}[ndim]
    return sum(c * math.exp(-d2 / (2 * sigma**2)) for d2, c in counts.items())


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("sigma", [0.2, 0.7, 1.0, 2.0])
def test_svls_kernels_hand_values(ndim, sigma):
    s = _sums(ndim, sigma)
    k = svls_kernel(sigma, "islam", ndim)
    assert k.shape == (3,) * ndim
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert k[(1,) * ndim].item() == pytest.approx(0.5, abs=1e-12)
    face = (1,) * (ndim - 1) + (0,)
    corner = (0,) * ndim
    # neighbour weight g / S, centre (S - 1) / S, renormalised by 2 (S - 1) / S
    assert k[face].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)) / (2 * (s - 1)), rel=1e-9)
    assert k[corner].item() == pytest.approx(
        math.exp(-ndim / (2 * sigma**2)) / (2 * (s - 1)), rel=1e-9)

    g = svls_kernel(sigma, "gaussian", ndim)
    assert g.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert g[(1,) * ndim].item() == pytest.approx(1 / s, rel=1e-9)
    assert g[face].item() == pytest.approx(math.exp(-1 / (2 * sigma**2)) / s, rel=1e-9)


def test_svls_targets_hand_values_2d_with_replicate_padding():
    sigma = 1.0
    s = _sums(2, sigma)
    face = math.exp(-0.5) / (2 * (s - 1))
    diag = math.exp(-1.0) / (2 * (s - 1))
    y = torch.zeros(1, 1, 3, 3, dtype=torch.long)
    y[0, 0, 1, 1] = 1
    q = svls_targets(y, 2, sigma)
    assert q.shape == (1, 2, 3, 3) and q.dtype == torch.float32
    assert q[0, 1, 1, 1].item() == pytest.approx(0.5, abs=1e-6)
    assert q[0, 1, 0, 1].item() == pytest.approx(face, abs=1e-6)
    assert q[0, 1, 0, 0].item() == pytest.approx(diag, abs=1e-6)
    # a label in the image corner: replicate padding repeats it into 3 of the 8 neighbours
    y = torch.zeros(1, 1, 3, 3, dtype=torch.long)
    y[0, 0, 0, 0] = 1
    q = svls_targets(y, 2, sigma)
    assert q[0, 1, 0, 0].item() == pytest.approx(0.5 + 2 * face + diag, abs=1e-6)
    assert torch.allclose(q.sum(1), torch.ones(1, 3, 3), atol=1e-6)


@pytest.mark.parametrize("kernel", ["islam", "gaussian"])
@pytest.mark.parametrize("sigma", [0.2, 1.0, 2.0])
def test_svls_targets_equal_a_replicate_padded_convolution_with_the_kernel(kernel, sigma):
    g = torch.Generator().manual_seed(8)
    for shape in [(2, 1, 5, 6, 7), (2, 1, 1, 4, 3), (3, 1, 6, 5)]:
        y = torch.randint(0, 3, shape, generator=g)
        ndim = len(shape) - 2
        onehot = F.one_hot(y[:, 0], 3).movedim(-1, 1).double()
        k = svls_kernel(sigma, kernel, ndim)
        conv = F.conv3d if ndim == 3 else F.conv2d
        ref = conv(F.pad(onehot, (1, 1) * ndim, mode="replicate"),
                   k.expand(3, 1, *k.shape).contiguous(), groups=3)
        assert torch.allclose(svls_targets(y, 3, sigma, kernel).double(), ref, atol=1e-6)


@pytest.mark.parametrize("kernel", ["islam", "gaussian"])
def test_svls_targets_sum_to_one_and_uniform_regions_stay_one_hot(kernel):
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 4, (2, 1, 5, 6, 7), generator=g)
    q = svls_targets(y, 4, 0.8, kernel)
    assert q.shape == (2, 4, 5, 6, 7)
    assert torch.allclose(q.sum(1), torch.ones(2, 5, 6, 7), atol=1e-6)
    assert (q >= 0).all()
    # a label map with one class everywhere but one far-away voxel
    y = torch.full((1, 1, 6, 6, 6), 2)
    y[0, 0, 5, 5, 5] = 0
    q = svls_targets(y, 3, 0.8, kernel)
    onehot = F.one_hot(y[:, 0], 3).movedim(-1, 1).float()
    assert torch.allclose(q[..., :4, :4, :4], onehot[..., :4, :4, :4], atol=1e-6)
    assert q[0, 2, 5, 5, 5] > 0 and q[0, 0, 4, 4, 4] > 0  # the boundary is smoothed


# ------------------------------------------------------------------ modules vs nnU-Net


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 4), (3, 4, 7, 9)])
def test_ce_dice_equals_nnunet_exactly_unmasked_and_all_ones(batch_dice, shape):
    z, y = _batch(shape)
    ref = _nnunet_dc_ce(batch_dice)(z, y)
    (g_ref,) = torch.autograd.grad(ref, z)
    mine = CEDiceLoss(_kwargs(batch_dice))
    ones = torch.ones((shape[0], 1, *shape[2:]))
    for mask in (None, ones, ones.bool()):
        val = mine(z, y, mask)
        (g,) = torch.autograd.grad(val, z)
        assert torch.equal(val, ref)
        assert torch.equal(g, g_ref)


def test_ce_dice_masked_matches_independent_computation():
    z, y = _batch((2, 3, 6, 5, 4))
    g = torch.Generator().manual_seed(1)
    m = torch.rand((2, 1, 6, 5, 4), generator=g) < 0.6
    for batch_dice in (False, True):
        val = CEDiceLoss(_kwargs(batch_dice))(z, y, m)
        ce = F.cross_entropy(z, y[:, 0], reduction="none")[m[:, 0]].mean()
        dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, **_kwargs(batch_dice))(
            z, y, loss_mask=m.float())
        assert val.item() == pytest.approx((ce + dice).item(), rel=1e-6)


def test_masks_are_per_sample():
    z, y = _batch((2, 3, 6, 5, 4))
    m = torch.zeros(2, 1, 6, 5, 4, dtype=torch.bool)
    m[0] = True  # keep sample 0 only
    loss = CEDiceLoss(weight_dice=0)
    assert loss(z, y, m).item() == pytest.approx(
        F.cross_entropy(z[:1], y[:1, 0]).item(), rel=1e-6)
    apl = APL1Loss(weight_dice=0)
    assert apl(z, y, m).item() == pytest.approx(
        (rce(z[:1], y[:1]) + nce(z[:1], y[:1])).mean().item(), rel=1e-6)
    # sample Dice: sample 1 has no kept voxel and contributes the constant -1 only
    dice = CEDiceLoss(weight_ce=0)(z, y, m)
    dice0 = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, **_kwargs(False))(z[:1], y[:1])
    assert dice.item() == pytest.approx((dice0.item() - 1.0) / 2, rel=1e-6)


def _modules():
    return {
        "CEDice": CEDiceLoss(),
        "APL1": APL1Loss(),
        "APL2": APL2Loss(0.5),
        "SVLS": SVLSLoss(1.0),
        "SVLS_gauss_hard": SVLSLoss(0.5, kernel="gaussian", hard_dice=True),
        "HRL": HRLLoss(0.5, 1.0),
    }


@pytest.mark.parametrize("name", list(_modules()))
@pytest.mark.parametrize("batch_dice", [False, True])
def test_empty_mask_gives_finite_loss_and_zero_gradients(name, batch_dice):
    loss = _modules()[name]
    loss.dc.batch_dice = batch_dice
    z, y = _batch((2, 3, 6, 5, 4))
    val = loss(z, y, torch.zeros(2, 1, 6, 5, 4))
    (g,) = torch.autograd.grad(val, z)
    assert torch.isfinite(val)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("name", list(_modules()))
def test_all_ones_mask_equals_unmasked_and_gradients_finite(name):
    loss = _modules()[name]
    z, y = _batch((2, 3, 6, 5, 4))
    a = loss(z, y)
    (ga,) = torch.autograd.grad(a, z)
    b = loss(z, y, torch.ones(2, 1, 6, 5, 4, dtype=torch.bool))
    (gb,) = torch.autograd.grad(b, z)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert torch.isfinite(ga).all() and ga.abs().sum() > 0


def test_robust_modules_are_their_formulas_plus_nnunet_dice():
    z, y = _batch((2, 3, 6, 5, 4))
    dice = MemoryEfficientSoftDiceLoss(softmax_helper_dim1, **_kwargs(False))
    hard = dice(z, y)
    q = svls_targets(y, 3, 0.9)
    qg = svls_targets(y, 3, 0.9, "gaussian")
    cases = [
        (APL1Loss(), (rce(z, y) + nce(z, y)).mean() + hard),
        (APL2Loss(0.6), (rce(z, y) + ngce(z, y, 0.6)).mean() + hard),
        (SVLSLoss(0.9), soft_ce(z, q).mean() + dice(z, q)),
        (SVLSLoss(0.9, kernel="gaussian", hard_dice=True), soft_ce(z, qg).mean() + hard),
        (HRLLoss(0.6, 0.9), (soft_rce(z, q) + soft_ngce(z, q, 0.6)).mean() + dice(z, q)),
    ]
    for module, expected in cases:
        assert module(z, y).item() == pytest.approx(expected.item(), rel=1e-6)


def test_default_constructors_use_nnunet_dice_settings():
    for module in (APL1Loss(), APL2Loss(0.5), SVLSLoss(1.0)):
        assert module.dc.batch_dice is False and module.dc.do_bg is False
        assert module.dc.smooth == 1e-5 and module.dc.ddp is False
    assert CEDiceLoss({"batch_dice": True}).dc.batch_dice is True


def test_svls_on_a_uniform_patch_is_ce_dice():
    z, _ = _batch((2, 3, 4, 4, 4))
    y = torch.ones(2, 1, 4, 4, 4, dtype=torch.long)
    assert SVLSLoss(1.0)(z, y).item() == pytest.approx(CEDiceLoss()(z, y).item(), rel=1e-6)


def test_deep_supervision_wrapper_with_mask_lists():
    weights = [1.0, 0.5, 0.25]
    shapes = [(2, 3, 8, 8, 8), (2, 3, 4, 4, 4), (2, 3, 2, 2, 2)]
    outs, tgts = zip(*(_batch(s, seed=i) for i, s in enumerate(shapes)), strict=True)
    g = torch.Generator().manual_seed(5)
    masks = [torch.rand((2, 1, *s[2:]), generator=g) < 0.7 for s in shapes]
    for loss in (APL1Loss(), HRLLoss(0.5, 1.0), CEDiceLoss()):
        ds = DeepSupervisionWrapper(loss, weights)
        val = ds(list(outs), list(tgts), masks)
        expected = sum(w * loss(o, t, m) for w, o, t, m in zip(weights, outs, tgts, masks,
                                                                strict=True))
        assert val.item() == pytest.approx(expected.item(), rel=1e-6)
    # all-ones masks under the wrapper: exactly nnU-Net's wrapped Baseline loss
    ref = DeepSupervisionWrapper(_nnunet_dc_ce(True), weights)(list(outs), list(tgts))
    ones = [torch.ones((2, 1, *s[2:]), dtype=torch.bool) for s in shapes]
    mine = DeepSupervisionWrapper(CEDiceLoss(_kwargs(True)), weights)(list(outs), list(tgts), ones)
    assert torch.equal(mine, ref)
