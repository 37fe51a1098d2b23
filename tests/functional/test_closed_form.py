"""Closed-form Gaussian entropy and Gaussian-channel MI against direct float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.functional import gaussian_channel_mutual_information, gaussian_differential_entropy


def test_gaussian_entropy_diagonal_and_full_agree_with_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    stds = 0.2 + torch.rand(3, 4, generator=g, dtype=torch.float64)
    expected = torch.tensor(
        [0.5 * math.log((2 * math.pi * math.e) ** 4 * float(torch.prod(s**2))) for s in stds],
        dtype=torch.float64,
    )
    torch.testing.assert_close(gaussian_differential_entropy(stds), expected)
    torch.testing.assert_close(
        gaussian_differential_entropy(covariance=torch.diag_embed(stds**2)), expected
    )
    a = torch.randn(5, 5, generator=g, dtype=torch.float64)
    covariance = a @ a.T + 0.5 * torch.eye(5, dtype=torch.float64)
    direct = 0.5 * math.log((2 * math.pi * math.e) ** 5 * float(torch.det(covariance)))
    assert math.isclose(
        float(gaussian_differential_entropy(covariance=covariance)), direct, rel_tol=1e-12
    )


def test_gaussian_entropy_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(1)
    stds = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    samples = stds * torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    log_density = (-0.5 * (samples / stds) ** 2 - stds.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    estimate, error = -log_density.mean(), log_density.std() / math.sqrt(samples.shape[0])
    assert abs(float(gaussian_differential_entropy(stds) - estimate)) < 4 * float(error)


def test_gaussian_channel_mutual_information_is_entropy_difference() -> None:
    g = torch.Generator().manual_seed(2)
    signal = torch.rand(2, 6, generator=g, dtype=torch.float64) * 3
    noise = 0.1 + torch.rand(2, 6, generator=g, dtype=torch.float64)
    expected = gaussian_differential_entropy(
        (signal**2 + noise**2).sqrt()
    ) - gaussian_differential_entropy(noise)
    torch.testing.assert_close(gaussian_channel_mutual_information(signal, noise), expected)
    broadcast = gaussian_channel_mutual_information(torch.ones(3), torch.tensor([1.0]))
    assert math.isclose(float(broadcast), 1.5 * math.log(2), rel_tol=1e-6)
    assert float(gaussian_channel_mutual_information(torch.zeros(3), torch.ones(3))) == 0.0


def test_gradcheck_and_gradgradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    stds = (0.3 + torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    a = torch.randn(3, 3, generator=g, dtype=torch.float64)
    covariance = (a @ a.T + torch.eye(3, dtype=torch.float64)).requires_grad_()
    noise = (0.5 + torch.rand(2, 3, generator=g, dtype=torch.float64)).requires_grad_()

    def full(c: torch.Tensor) -> torch.Tensor:
        return gaussian_differential_entropy(covariance=0.5 * (c + c.T))

    for fn, inputs in (
        (gaussian_differential_entropy, (stds,)),
        (full, (covariance,)),
        (gaussian_channel_mutual_information, (stds, noise)),
    ):
        assert torch.autograd.gradcheck(fn, inputs)
        assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gaussian_differential_entropy(), "exactly one"),
        (
            lambda: gaussian_differential_entropy(torch.ones(2), covariance=torch.eye(2)),
            "exactly one",
        ),
        (lambda: gaussian_differential_entropy(torch.tensor(1.0)), "stds must have at least 1"),
        (lambda: gaussian_differential_entropy(torch.zeros(2)), "stds must be finite and > 0"),
        (
            lambda: gaussian_differential_entropy(covariance=torch.ones(2, 3)),
            "covariance must have shape",
        ),
        (lambda: gaussian_differential_entropy(covariance=-torch.eye(2)), "positive definite"),
        (
            lambda: gaussian_channel_mutual_information(torch.ones(2), torch.ones(3)),
            "must broadcast",
        ),
        (
            lambda: gaussian_channel_mutual_information(torch.ones(2), torch.zeros(2)),
            "noise_stds must be finite and > 0",
        ),
        (
            lambda: gaussian_channel_mutual_information(torch.ones(2).long(), torch.ones(2)),
            "signal_stds must have a floating",
        ),
    ],
)
def test_bad_inputs(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
