"""``mutual_information_bounds``: InfoNCE lower and L1Out upper estimates from one pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mi_losses import keys
from mi_losses.functional import (
    mutual_information_bounds,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
)
from mi_losses.functional.bounds import bounds_estimates
from mi_losses.losses import SubBatchMutualInformation


def _inputs(b: int, s: int, e: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, s, e, generator=g, dtype=dtype)
    means = 0.1 * torch.randn(b, s, e, generator=g, dtype=dtype)
    stds = 0.3 + torch.rand(b, s, e, generator=g, dtype=dtype)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (means, stds, clean, noisy)]


def _reference(means, stds, clean, noisy, mask):
    """Direct float64 evaluation of MATH.md (sequence granularity, combined masks, one way)."""
    means, stds, clean, noisy = (t.detach().double() for t in (means, stds, clean, noisy))
    half = clean.shape[0] // 2
    lower, upper = [], []
    for i in range(half):
        ratios = []
        for j in range(half, 2 * half):
            active = mask[i] & mask[j]
            if not bool(active.any()):
                continue
            y, c_i, s_i = noisy[i][active], (clean + means)[i][active], stds[i][active]
            c_j, s_j = (clean + means)[j][active], stds[j][active]
            r = (
                s_j.log() - s_i.log() + 0.5 * ((y - c_j) / s_j) ** 2 - 0.5 * ((y - c_i) / s_i) ** 2
            ).sum()
            ratios.append(float(r))
        if not ratios:
            lower.append(None)
            upper.append(None)
            continue
        terms = [math.exp(-r) for r in ratios]
        upper.append(-math.log(sum(terms) / len(terms)))
        lower.append(-math.log((1.0 + sum(terms)) / (len(terms) + 1)))
    return lower, upper


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_float64_reference_per_query(seed) -> None:
    means, stds, clean, noisy = _inputs(8, 4, 3, seed)
    g = torch.Generator().manual_seed(100 + seed)
    mask = torch.rand(8, 4, generator=g) < 0.6
    mask[0] = False
    lower, upper = (
        e._replace(per_query=e.per_query.detach())
        for e in bounds_estimates(means, stds, mask, clean, noisy)
    )
    expected_lower, expected_upper = _reference(means, stds, clean, noisy, mask)
    for i, (lo, up) in enumerate(zip(expected_lower, expected_upper, strict=True)):
        if lo is None:
            assert lower.per_query[i] == 0 and upper.per_query[i] == 0
            continue
        assert abs(float(lower.per_query[i]) - lo) < 1e-10
        assert abs(float(upper.per_query[i]) - up) < 1e-10
        if up >= 0:
            assert float(lower.per_query[i]) <= float(upper.per_query[i]) + 1e-12
        count = int((mask[i].unsqueeze(0) & mask[4:]).any(-1).sum())
        assert float(lower.per_query[i]) <= math.log(count + 1) + 1e-12
    valid = [lo for lo in expected_lower if lo is not None]
    assert abs(float(lower.value) - sum(valid) / len(valid)) < 1e-10


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_upper_is_the_sub_batch_estimate_and_losses_get_both(granularity, symmetric) -> None:
    means, stds, clean, noisy = _inputs(6, 3, 2, seed=3)
    mask = torch.rand(6, 3, generator=torch.Generator().manual_seed(4)) < 0.7
    options = {"granularity": granularity, "symmetric": symmetric}
    losses: dict[str, torch.Tensor] = {}
    bounds = mutual_information_bounds(means, stds, mask, clean, noisy, True, losses, **options)
    expected_losses: dict[str, torch.Tensor] = {}
    upper = mutual_information_sub_batch(
        means, stds, mask, clean, noisy, True, expected_losses, **options
    )
    assert torch.equal(bounds.upper, upper)
    for key, value in expected_losses.items():
        assert torch.equal(losses[key], value)
    assert torch.equal(losses[keys.MUTUAL_INFORMATION_LOWER_BOUND], bounds.lower.detach())
    assert bounds.lower <= bounds.upper


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_second_derivatives(granularity) -> None:
    inputs = _inputs(4, 2, 2, seed=5)
    mask = torch.tensor([[True, False], [True, True], [True, True], [False, True]])

    def lower(means, stds, clean, noisy):
        return mutual_information_bounds(
            means, stds, mask, clean, noisy, granularity=granularity
        ).lower

    assert gradcheck(lower, inputs)
    assert gradgradcheck(lower, inputs)


def test_module_logs_the_lower_bound() -> None:
    means, stds, clean, noisy = (t.detach().float() for t in _inputs(6, 3, 2, seed=6))
    module = SubBatchMutualInformation(granularity="token", log_lower_bound=True)
    value = module(means, stds, None, clean, noisy)
    estimate = mutual_information_sub_batch_estimate(
        means, stds, None, clean, noisy, granularity="token"
    )
    assert torch.equal(value, estimate.value)
    lower = mutual_information_bounds(means, stds, None, clean, noisy, granularity="token").lower
    assert torch.equal(module.component_losses[keys.MUTUAL_INFORMATION_LOWER_BOUND], lower)
    plain = SubBatchMutualInformation()
    plain(means, stds, None, clean, noisy)
    assert keys.MUTUAL_INFORMATION_LOWER_BOUND not in plain.component_losses
    with pytest.raises(ValueError, match="log_lower_bound"):
        SubBatchMutualInformation(log_lower_bound="yes")  # type: ignore[arg-type]
