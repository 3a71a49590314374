"""Tests of nnrobustloss.selection: ramp, CoT, CoT+ and StoCoT voxel selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from nnrobustloss.errors import ConfigError
from nnrobustloss.schedule import ramp
from nnrobustloss.selection import (
    cot_plus_mask,
    label_probability,
    sample_beta,
    small_loss_mask,
    stocot_mask,
    stocot_thresholds,
)

torch.set_num_threads(1)


def _reference_small_loss(loss: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Independent reference: stable sort, first n_keep indices."""
    flat = loss.reshape(-1)
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:n_keep]] = True
    return keep.view(loss.shape).unsqueeze(1)


# ------------------------------------------------------------------ ramp


def test_ramp_delay_then_linear_then_one():
    values = [ramp(e, 20, 20) for e in range(50)]
    assert values[:21] == [0.0] * 21
    assert values[30] == 0.5
    assert values[39] == pytest.approx(0.95)
    assert values[40:] == [1.0] * 10  # a 50-epoch trial reaches the full rate at epoch 40
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    # Han et al.: no delay, 10 gradual epochs
    assert [ramp(e, 0, 10) for e in (0, 5, 10, 11)] == [0.0, 0.5, 1.0, 1.0]
    # gradual 0 is a step
    assert [ramp(e, 3, 0) for e in (2, 3, 4)] == [0.0, 1.0, 1.0]
    with pytest.raises(ConfigError, match="delay"):
        ramp(0, -1, 5)


# ------------------------------------------------------------------ CoT


def test_cot_kept_fraction_follows_the_ramp_at_every_epoch():
    g = torch.Generator().manual_seed(0)
    loss = torch.rand((2, 5, 6, 7), generator=g)
    n = loss.numel()
    r_max = 0.1
    for epoch in range(50):
        r = r_max * ramp(epoch, 20, 20)
        mask = small_loss_mask(loss, r)
        assert mask.shape == (2, 1, 5, 6, 7) and mask.dtype == torch.bool
        assert int(mask.sum()) == math.floor((1 - r) * n)
        assert mask.sum().item() / n == math.floor((1 - r) * n) / n
    assert int(small_loss_mask(loss, 0.1).sum()) == 378  # floor(0.9 * 420)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.37, 0.5, 0.999, 1.0])
def test_small_loss_mask_keeps_smallest_with_stable_ties(rate):
    g = torch.Generator().manual_seed(1)
    loss = torch.randint(0, 5, (3, 4, 5, 6), generator=g).float()  # many ties
    mask = small_loss_mask(loss, rate)
    n_keep = math.floor((1 - rate) * loss.numel())
    assert torch.equal(mask, _reference_small_loss(loss, n_keep))
    if 0 < n_keep < loss.numel():
        assert loss[mask[:, 0]].max() <= loss[~mask[:, 0]].min()


def test_small_loss_mask_hand_example_with_ties():
    loss = torch.tensor([[3.0, 1.0, 2.0], [1.0, 0.0, 1.0]])  # flat: 3 1 2 1 0 1
    kept = [small_loss_mask(loss, r)[:, 0].reshape(-1).tolist() for r in (0.5, 1 / 3, 0.0)]
    # keep 3: the 0 and the first two 1s by flat index; keep 4: all three 1s; keep 6: all
    assert kept[0] == [False, True, False, True, True, False]
    assert kept[1] == [False, True, False, True, True, True]
    assert kept[2] == [True] * 6


def test_small_loss_is_ranked_over_the_whole_batch_not_per_sample():
    loss = torch.stack([torch.full((4, 4), 0.1), torch.full((4, 4), 2.0)])  # [2, 4, 4]
    mask = small_loss_mask(loss, 0.5)
    assert mask[0].all() and not mask[1].any()


def test_small_loss_mask_rejects_bad_rates():
    with pytest.raises(ConfigError, match="forget rate"):
        small_loss_mask(torch.rand(2, 3, 3), 1.5)


# ------------------------------------------------------------------ CoT+


def test_cot_plus_before_delay_is_plain_cot():
    g = torch.Generator().manual_seed(2)
    loss = torch.rand((2, 6, 6), generator=g)
    a = torch.randint(0, 3, (2, 6, 6), generator=g)
    b = torch.randint(0, 3, (2, 6, 6), generator=g)
    assert torch.equal(cot_plus_mask(loss, a, b, 0.2, epoch=4, delay=5),
                       small_loss_mask(loss, 0.2))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_cot_plus_keeps_only_disagreeing_small_loss_voxels(rate):
    g = torch.Generator().manual_seed(3)
    loss = torch.randint(0, 4, (2, 5, 6, 7), generator=g).float()
    a = torch.randint(0, 3, (2, 5, 6, 7), generator=g)
    b = torch.where(torch.rand((2, 5, 6, 7), generator=g) < 0.3, (a + 1) % 3, a)
    disagree = a != b
    n_dis = int(disagree.sum())
    assert 0 < n_dis < a.numel()
    mask = cot_plus_mask(loss, a, b, rate, epoch=10, delay=5)
    assert mask.shape == (2, 1, 5, 6, 7)
    kept = mask[:, 0]
    assert not (kept & ~disagree).any()  # never an agreeing voxel
    n_keep = math.floor((1 - rate) * n_dis)
    assert int(kept.sum()) == n_keep
    # the kept ones are the smallest disagreeing losses, ties by flat index
    idx = disagree.reshape(-1).nonzero().squeeze(1)
    sub = loss.reshape(-1)[idx]
    order = torch.sort(sub, stable=True).indices[:n_keep]
    expected = torch.zeros(a.numel(), dtype=torch.bool)
    expected[idx[order]] = True
    assert torch.equal(kept.reshape(-1), expected)
    # predictions given as logits [B, K, *sp] or labels [B, 1, *sp] give the same mask
    logits_a = torch.nn.functional.one_hot(a, 3).movedim(-1, 1).float()
    assert torch.equal(cot_plus_mask(loss, logits_a, b.unsqueeze(1), rate, 10, 5), mask)


def test_cot_plus_without_disagreement_keeps_everything():
    loss = torch.rand(2, 4, 4)
    a = torch.zeros(2, 4, 4, dtype=torch.long)
    mask = cot_plus_mask(loss, a, a.clone(), 0.1, epoch=10, delay=5)
    assert mask.shape == (2, 1, 4, 4) and mask.all()


# ------------------------------------------------------------------ StoCoT


def test_label_probability_hand_values():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]).T  # [3 classes, 2 voxels]
    logits = probs.log()[None, :, :, None].requires_grad_(True)  # [1, 3, 2, 1]
    target = torch.tensor([1, 2]).view(1, 1, 2, 1)
    p = label_probability(logits, target)
    assert p.shape == (1, 2, 1) and not p.requires_grad
    assert p[0, :, 0].tolist() == pytest.approx([0.3, 0.3], rel=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0.5, 0.5), (2.0, 5.0), (8.0, 0.7), (1.0, 1.0)])
def test_sample_beta_has_the_beta_distribution(a, b):
    g = torch.Generator().manual_seed(11)
    x = sample_beta((50_000,), a, b, g)
    assert x.dtype == torch.float32 and ((x >= 0) & (x <= 1)).all()
    ks = stats.kstest(x.double().numpy(), stats.beta(a, b).cdf)
    assert ks.pvalue > 1e-3
    assert x.mean().item() == pytest.approx(a / (a + b), abs=0.01)


@pytest.mark.parametrize(("a", "b"), [(0.5, 8.0), (8.0, 0.5), (2.0, 2.0)])
def test_sample_beta_is_the_beta_quantile_of_the_generators_uniforms(a, b):
    # independent computation: the same uniforms u; the draw must lie between scipy's exact
    # quantiles at the two table nodes around u (up to float32 rounding), so its CDF is within
    # 1/65536 of u
    x = sample_beta((20_000,), a, b, torch.Generator().manual_seed(12)).double().numpy()
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(12)).double().numpy()
    node = np.floor(u * 65_536)
    lo = special.betaincinv(a, b, node / 65_536)
    hi = special.betaincinv(a, b, (node + 1) / 65_536)
    assert (x >= lo - 1e-7).all() and (x <= hi + 1e-7).all()
    exact = special.betaincinv(a, b, u)
    assert np.abs(x - exact).mean() < 1e-4


def test_sample_beta_is_deterministic_per_seed():
    x1 = sample_beta((1000,), 2.0, 3.0, torch.Generator().manual_seed(5))
    x2 = sample_beta((1000,), 2.0, 3.0, torch.Generator().manual_seed(5))
    x3 = sample_beta((1000,), 2.0, 3.0, torch.Generator().manual_seed(6))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)


@pytest.mark.parametrize("mode", ["random", "tiled"])
@pytest.mark.parametrize("ramp_value", [0.3, 1.0])
def test_stocot_mask_follows_its_rule(mode, ramp_value):
    g = torch.Generator().manual_seed(7)
    prob = torch.rand((2, 20, 18, 17), generator=g)
    mask = stocot_mask(prob, ramp_value, 4.0, 2.0, torch.Generator().manual_seed(42), mode)
    theta = stocot_thresholds(prob.shape, 4.0, 2.0, torch.Generator().manual_seed(42), mode)
    assert mask.shape == (2, 1, 20, 18, 17) and mask.dtype == torch.bool
    assert torch.equal(mask[:, 0], prob >= ramp_value * theta)
    assert 0 < int(mask.sum()) < prob.numel()


def test_stocot_kept_fraction_matches_the_beta_cdf():
    # constant p: P(p >= r theta) = BetaCDF(p / r)
    a, b, p, r = 3.0, 2.0, 0.4, 0.8
    prob = torch.full((4, 32, 32, 32), p)
    mask = stocot_mask(prob, r, a, b, torch.Generator().manual_seed(0))
    n = prob.numel()
    expected = stats.beta(a, b).cdf(p / r)
    assert mask.float().mean().item() == pytest.approx(expected, abs=4 * math.sqrt(0.25 / n))


def test_stocot_ramp_zero_keeps_everything_without_drawing():
    g = torch.Generator().manual_seed(3)
    state = g.get_state()
    mask = stocot_mask(torch.zeros(2, 4, 4), 0.0, 2.0, 2.0, g)
    assert mask.all() and mask.shape == (2, 1, 4, 4)
    assert torch.equal(g.get_state(), state)


def test_stocot_is_deterministic_per_seed_and_generator_advances():
    prob = torch.rand(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    m1 = [stocot_mask(prob, 1.0, 2.0, 2.0, g1) for _ in range(2)]
    m2 = [stocot_mask(prob, 1.0, 2.0, 2.0, g2) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(m1, m2, strict=True))
    assert not torch.equal(m1[0], m1[1])  # fresh thresholds at every step


def test_tiled_thresholds_repeat_a_16_grid_per_sample():
    theta = stocot_thresholds((2, 40, 33, 8), 2.0, 2.0, torch.Generator().manual_seed(1), "tiled")
    assert theta.shape == (2, 40, 33, 8)
    assert torch.equal(theta[:, 16:32], theta[:, :16])
    assert torch.equal(theta[:, :, 16:32], theta[:, :, :16])
    assert torch.equal(theta[:, 32:40, 32], theta[:, :8, 0])
    assert not torch.equal(theta[0], theta[1])
    # the 16 x 16 x 8 grid itself holds distinct draws
    assert np.unique(theta[0, :16, :16, :].numpy()).size == 16 * 16 * 8
    with pytest.raises(ConfigError, match="stocot_thresholds"):
        stocot_thresholds((1, 4, 4), 2.0, 2.0, torch.Generator(), "grid")


# --- the co-teaching schedule of a run (scaled_schedule) ------------------------------------

@pytest.mark.parametrize(("epochs", "expected"), [
    (50, (20, 20)),    # the paper's tuning trial: selection from epoch 20, full rate at 40
    (200, (20, 20)),   # the paper's final training keeps its absolute 20 + 20
    (30, (12, 12)),    # the phantom default's final training: floor(0.4 * 30) = 12
    (5, (2, 2)),       # the phantom default's tuning trial
    (1, (0, 0)),       # a smoke run
    (51, (20, 20)),
])
def test_scaled_schedule_reproduces_the_paper_and_keeps_its_proportions(epochs, expected):
    from nnrobustloss.schedule import scaled_schedule

    assert scaled_schedule(20, 20, epochs) == expected


def test_scaled_schedule_never_lengthens_and_checks_its_arguments():
    from nnrobustloss.schedule import ramp, scaled_schedule

    assert scaled_schedule(3, 1, 100) == (3, 1)          # shorter than the cap: unchanged
    assert scaled_schedule(20, 20, 30, max_fraction=0.2) == (6, 6)
    assert scaled_schedule(20, 20, 30, max_fraction=1.0) == (20, 20)
    d, g = scaled_schedule(20, 20, 30)
    # selection starts after 40 % of the run and reaches the full rate at 80 %
    assert [ramp(e, d, g) for e in (11, 12, 18, 24, 29)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ConfigError, match="max_fraction"):
        scaled_schedule(20, 20, 30, max_fraction=0.0)
    with pytest.raises(ConfigError, match="epochs"):
        scaled_schedule(20, 20, 0)


def test_run_schedule_scales_the_options_to_the_run():
    """The co-teaching trainers' schedule: the settings' options scaled to the run's epochs."""
    from nnrobustloss.schedule import run_schedule
    from nnrobustloss.training import build_settings

    s = build_settings("StoCoT", epochs=30, coteaching={"delay": 20, "gradual": 20})
    assert run_schedule(s.options, s.num_epochs) == (12, 12)  # floor(0.4 * 30)
    s = build_settings("StoCoT", epochs=200, coteaching={"delay": 20, "gradual": 20,
                                                         "max_fraction": 0.4})
    assert run_schedule(s.options, s.num_epochs) == (20, 20)
    s = build_settings("CoT", epochs=10, coteaching={"delay": 3, "gradual": 9,
                                                     "max_fraction": 0.5})
    assert run_schedule(s.options, s.num_epochs) == (3, 5)
    assert run_schedule({}, 50) == (20, 20)  # the paper's defaults
    with pytest.raises(ConfigError, match="max_fraction"):
        build_settings("CoT", epochs=10, coteaching={"max_fraction": 2})


def test_schema_default_of_max_fraction_is_the_selection_constant():
    """The config schema and scaled_schedule share one default (0.4, the paper's 20 of 50)."""
    from nnrobustloss.config import config_schema
    from nnrobustloss.schedule import MAX_SCHEDULE_FRACTION

    props = config_schema()["properties"]["coteaching"]["properties"]
    assert props["max_fraction"]["default"] == MAX_SCHEDULE_FRACTION == 0.4
