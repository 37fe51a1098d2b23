"""The one-token Gaussian posterior against a direct float64 evaluation and the Bayes attacker."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.attacks.posterior import gaussian_token_log_posterior
from mi_losses.functional import bayes_token_attack


def direct(y, table, log_prior, means, stds):  # type: ignore[no-untyped-def]
    """``log p(v | y)`` by the formula, one row at a time, in float64."""
    y, table, means, stds = (t.double() for t in (y, table, means, stds))
    rows = []
    for v in range(table.shape[0]):
        z = (y - table[v] - means[v]) / stds[v]
        rows.append(
            log_prior[v].double()
            - 0.5 * z.square().sum(-1)
            - stds[v].log().sum()
            - 0.5 * table.shape[1] * math.log(2 * math.pi)
        )
    joint = torch.stack(rows, dim=-1)
    return joint - joint.logsumexp(-1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_direct_evaluation(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(11, 5, generator=generator) + 30.0  # far from the origin
    means = 0.1 * torch.randn(11, 5, generator=generator)
    stds = 0.2 + torch.rand(11, 5, generator=generator)
    log_prior = torch.randn(11, generator=generator)
    y = table[torch.randint(0, 11, (40,), generator=generator)] + torch.randn(40, 5) * 0.5
    found = gaussian_token_log_posterior(y.to(dtype), table, log_prior, means, stds)
    assert found.dtype == dtype
    tolerance = 1e-9 if dtype == torch.float64 else 1e-3
    assert torch.allclose(found.double(), direct(y, table, log_prior, means, stds), atol=tolerance)


def test_argmax_is_the_bayes_attackers_guess() -> None:
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(20, 6, generator=generator)
    stds = 0.5 + torch.rand(20, 6, generator=generator)
    prior = torch.rand(20, generator=generator) + 0.1
    y = torch.randn(1, 50, 6, generator=generator)
    means = torch.zeros(20, 6)
    posterior = gaussian_token_log_posterior(y[0], table, prior.log(), means, stds)
    assert torch.equal(
        posterior.argmax(-1), bayes_token_attack(means, stds, None, y, table, prior)[0]
    )


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="stds must have shape"):
        gaussian_token_log_posterior(
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.zeros(5),
            torch.zeros(5, 4),
            torch.ones(5, 3),
        )
    with pytest.raises(ValueError, match="log_prior"):
        gaussian_token_log_posterior(
            torch.randn(3, 4),
            torch.randn(5, 4),
            torch.zeros(4),
            torch.zeros(5, 4),
            torch.ones(5, 4),
        )
