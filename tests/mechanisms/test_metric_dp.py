"""Metric-DP mechanisms: sampling matches the definitions, channels and posteriors are exact."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from mi_losses.mechanisms import (
    channel_mutual_information,
    laplace_channel_log_probabilities,
    laplace_release,
    release_log_posterior,
    sample_multivariate_laplace,
    santext_log_probabilities,
    santext_release,
)


def test_laplace_radius_is_gamma_and_direction_uniform() -> None:
    dim, epsilon = 6, 2.5
    z = sample_multivariate_laplace(20000, dim, epsilon, generator=torch.Generator().manual_seed(0))
    radius = z.double().norm(dim=-1).numpy()
    # Radius ~ Gamma(shape=dim, scale=1/epsilon): the density exp(-eps r) r^(dim-1) in polar form.
    assert stats.kstest(radius, stats.gamma(a=dim, scale=1 / epsilon).cdf).pvalue > 1e-3
    direction = z.double() / z.double().norm(dim=-1, keepdim=True)
    assert direction.mean(0).abs().max() < 0.03
    second_moment = direction.T @ direction / direction.shape[0]
    assert torch.allclose(second_moment, torch.eye(dim, dtype=torch.float64) / dim, atol=0.01)


def test_one_dimensional_laplace_is_the_laplace_distribution() -> None:
    z = sample_multivariate_laplace(20000, 1, 3.0, generator=torch.Generator().manual_seed(1))
    assert (
        stats.kstest(z.double().squeeze(-1).numpy(), stats.laplace(scale=1 / 3.0).cdf).pvalue > 1e-3
    )


def test_laplace_release_is_the_nearest_row_to_the_moved_embedding() -> None:
    generator = torch.Generator().manual_seed(2)
    table = torch.randn(30, 5, generator=generator)
    output = torch.randn(12, 5, generator=generator)
    tokens = torch.randint(0, 30, (4, 7), generator=generator)
    released = laplace_release(
        tokens, table, 3.0, output, generator=torch.Generator().manual_seed(9)
    )
    noise = sample_multivariate_laplace(28, 5, 3.0, generator=torch.Generator().manual_seed(9))
    moved = table[tokens.reshape(-1)].double() + noise.double()
    expected = torch.cdist(moved, output.double()).argmin(-1).reshape(4, 7)
    assert torch.equal(released, expected)


def test_laplace_channel_estimate_is_a_distribution_near_identity_at_large_epsilon() -> None:
    table = torch.eye(6) * 3.0
    log_channel = laplace_channel_log_probabilities(
        table, 1000.0, num_samples=64, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(log_channel.exp().sum(-1), torch.ones(6), atol=1e-5)
    assert bool((log_channel.exp().diagonal() > 0.99).all())


def test_santext_probabilities_match_a_direct_computation() -> None:
    generator = torch.Generator().manual_seed(3)
    table, output, epsilon = torch.randn(7, 4, generator=generator), torch.randn(5, 4), 1.7
    log_channel = santext_log_probabilities(table, output, epsilon)
    for x in range(7):
        weights = [math.exp(-epsilon * float((table[x] - output[y]).norm()) / 2) for y in range(5)]
        expected = torch.tensor(weights, dtype=torch.float64) / sum(weights)
        assert torch.allclose(log_channel[x].double().exp(), expected, atol=1e-6)


def test_santext_release_frequencies_follow_the_channel() -> None:
    table = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    log_channel = santext_log_probabilities(table, table, 2.0)
    tokens = torch.full((20000,), 1)
    released = santext_release(tokens, log_channel, generator=torch.Generator().manual_seed(5))
    frequencies = torch.bincount(released, minlength=4).double() / tokens.shape[0]
    assert torch.allclose(frequencies, log_channel[1].double().exp(), atol=0.015)


def test_release_posterior_is_bayes_rule() -> None:
    log_channel = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]]).log()
    prior = torch.tensor([0.5, 0.3, 0.2])
    posterior = release_log_posterior(torch.tensor([1, 0]), log_channel, prior.log()).exp()
    joint = prior.unsqueeze(-1) * log_channel.exp()
    assert torch.allclose(posterior[0], joint[:, 1] / joint[:, 1].sum())
    assert torch.allclose(posterior[1], joint[:, 0] / joint[:, 0].sum())
    with pytest.raises(ValueError, match="log_prior"):
        release_log_posterior(torch.tensor([0]), log_channel, prior[:2].log())


def test_channel_mutual_information_limits() -> None:
    prior = torch.tensor([0.5, 0.25, 0.25])
    identity = torch.eye(3).clamp_min(1e-30).log()
    entropy = -float((prior * prior.log()).sum())
    assert channel_mutual_information(identity, prior) == pytest.approx(entropy, abs=1e-6)
    constant = torch.full((3, 4), 0.25).log()
    assert channel_mutual_information(constant, prior) == pytest.approx(0.0, abs=1e-9)


def test_bad_epsilon_is_rejected() -> None:
    with pytest.raises(ValueError, match="epsilon"):
        sample_multivariate_laplace(3, 2, 0.0)
    with pytest.raises(ValueError, match="epsilon"):
        santext_log_probabilities(torch.eye(2), torch.eye(2), -1.0)
