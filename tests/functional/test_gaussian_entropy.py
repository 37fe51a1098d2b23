"""``gaussian_entropy_log_loss``: the negative per-element entropy of the noise."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from mi_losses.functional import gaussian_entropy_log_loss
from tests import reference as ref
from tests.helpers import make_mask

# The implementation adds a tiny eps (~1e-12) inside the log: with stds >= 0.05 that moves the
# value by < 1e-10.
EPS_TOL = {"rtol": 1e-9, "atol": 1e-9}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pattern", ["none", "full", "random", "int01", "empty_rows"])
@pytest.mark.parametrize("shape", [(2, 1, 1), (4, 3, 4), (6, 5, 7)], ids=str)
def test_matches_reference(shape, pattern, dtype) -> None:
    b, s, e = shape
    g = torch.Generator().manual_seed(b + s + e)
    stds = (0.05 + 2.0 * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
    mask = make_mask(pattern, b, s, seed=e)
    got = gaussian_entropy_log_loss(stds, mask)
    assert got.dtype == dtype
    assert got.shape == ()
    expected = ref.gaussian_entropy_log_loss(stds, mask)
    tol = EPS_TOL if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(got.double(), expected, **tol)


def test_closed_form_gaussian_entropy() -> None:
    """-H / d with H = 0.5 log((2 pi e)^d det Sigma) over the d active elements."""
    g = torch.Generator().manual_seed(60)
    stds = 0.1 + torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    active = stds[mask]  # (d/5, 5)
    d = active.numel()
    variances = active.flatten() ** 2
    entropy = 0.5 * (d * math.log(2 * math.pi * math.e) + torch.log(variances).sum().item())
    got = gaussian_entropy_log_loss(stds, mask)
    assert got.item() == pytest.approx(-entropy / d, rel=1e-9)
    # and the same through torch.distributions
    assert got.item() == pytest.approx(-Normal(0.0, active).entropy().mean().item(), rel=1e-9)


def test_constant_stds() -> None:
    stds = torch.full((2, 3, 4), 0.25, dtype=torch.float64)
    expected = -math.log(0.25) - 0.5 * math.log(2 * math.pi * math.e)
    assert gaussian_entropy_log_loss(stds).item() == pytest.approx(expected, rel=1e-9)


def test_gradient() -> None:
    g = torch.Generator().manual_seed(61)
    stds = (0.2 + torch.rand(4, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    mask = make_mask("empty_rows", 4, 3, seed=62)
    assert torch.autograd.gradcheck(lambda s: gaussian_entropy_log_loss(s, mask), (stds,))
    gaussian_entropy_log_loss(stds, mask).backward()
    active = mask.unsqueeze(-1).expand_as(stds)
    expected = torch.where(active, -1.0 / (stds.detach() * active.sum()), 0.0)
    torch.testing.assert_close(stds.grad, expected, rtol=1e-9, atol=1e-12)


def test_fully_masked_is_finite_with_finite_gradient() -> None:
    stds = (0.5 + torch.rand(2, 3, 4, dtype=torch.float64)).requires_grad_()
    got = gaussian_entropy_log_loss(stds, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.isfinite(got)
    got.backward()
    assert stds.grad is None or bool(torch.isfinite(stds.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype) -> None:
    g = torch.Generator().manual_seed(63)
    stds = (0.2 + torch.rand(4, 3, 5, generator=g)).to(dtype)
    mask = make_mask("random", 4, 3, seed=64)
    got = gaussian_entropy_log_loss(stds, mask)
    assert got.dtype == dtype
    expected = gaussian_entropy_log_loss(stds.float(), mask)
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)
