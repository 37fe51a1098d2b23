"""Closed-form ground truths (docs/math.md#ground-truths-used-by-the-tests): Gaussian channel,
mixture bounds, invariances.
"""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.functional import (
    gaussian_entropy_log_loss,
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
)
from tests import reference as ref
from tests.helpers import gaussian_channel_inputs, make_inputs, make_mask


def _closed_form(dims: int, signal: float, noise: float) -> float:
    return 0.5 * dims * math.log(1.0 + signal**2 / noise**2)


def _mean_and_stderr(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return t.mean().item(), t.std().item() / math.sqrt(len(values))


@pytest.mark.parametrize(
    ("granularity", "b", "s", "e", "masked"),
    [
        ("sequence", 1024, 1, 1, False),
        ("sequence", 1024, 1, 2, False),
        ("token", 64, 32, 2, True),  # ~600 query tokens against ~600 component tokens
    ],
)
def test_gaussian_channel_low_dimension_is_close(granularity, b, s, e, masked) -> None:
    """E[L1Out] - I ~ (exp(2 I) - 1) / (2 N) (delta method; E_y E_x[p(y|x)^2] / p(y)^2 =
    (1 + snr)^d = exp(2 I)); with N ~ 1000 components that is < 0.02 nats here."""
    signal, noise, seeds = 1.0, 0.5, 6
    dims = e if granularity == "token" else s * e
    closed = _closed_form(dims, signal, noise)
    values, components = [], []
    for seed in range(seeds):
        inputs = gaussian_channel_inputs(b, s, e, signal, noise, seed)
        mask = make_mask("random", b, s, seed=seed) if masked else None
        estimate = mutual_information_sub_batch_estimate(
            noise_mask=mask, granularity=granularity, **inputs
        )
        values.append(estimate.value.item())
        components.append(int(estimate.num_queries))
    mean, stderr = _mean_and_stderr(values)
    n_components = min(components)  # about the number of components too (halves are equal)
    bias = (math.exp(2 * closed) - 1) / (2 * n_components)
    assert mean > closed - 4 * stderr
    assert mean < closed + 2 * bias + 4 * stderr
    assert abs(mean - closed) < 0.1 * closed  # the brief's "close", implied by the two above


@pytest.mark.parametrize(
    ("s", "e", "signal", "noise"),
    [(1, 4, 1.0, 1.0), (2, 3, 1.0, 0.7), (3, 2, 0.5, 1.0)],
)
def test_gaussian_channel_upper_bound_in_expectation(s, e, signal, noise) -> None:
    closed = _closed_form(s * e, signal, noise)
    values = [
        mutual_information_sub_batch(
            noise_mask=None, **gaussian_channel_inputs(256, s, e, signal, noise, seed)
        ).item()
        for seed in range(10)
    ]
    mean, stderr = _mean_and_stderr(values)
    assert mean > closed - 3 * stderr


def test_gaussian_channel_high_dimension_little_noise_is_far_above() -> None:
    """With 32 dimensions and snr 100, r_ij ~ |x_i - x_j|^2 / (2 sigma^2) ~ 3200 >> I ~ 74."""
    s, e, signal, noise = 4, 8, 1.0, 0.1
    closed = _closed_form(s * e, signal, noise)
    values, nce = [], []
    for seed in range(3):
        inputs = gaussian_channel_inputs(64, s, e, signal, noise, seed)
        values.append(mutual_information_sub_batch(noise_mask=None, **inputs).item())
        info_nce = ref.mutual_information_sub_batch(noise_mask=None, info_nce=True, **inputs)
        nce.append(info_nce.value.item())
        # the InfoNCE estimate never exceeds log(|V_i| + 1)
        assert info_nce.per_query.max().item() <= math.log(32 + 1) + 1e-12
    assert min(values) > 2 * closed
    # the lower bound saturates at log(|V| + 1) = 3.5, far below I
    assert max(nce) < closed


def test_infonce_below_and_l1out_above_on_average() -> None:
    """Sandwich on a low-dimensional channel: InfoNCE (reference) <= I <= L1Out (implementation)."""
    s, e, signal, noise = 1, 2, 1.0, 0.5
    closed = _closed_form(s * e, signal, noise)
    upper, lower = [], []
    for seed in range(6):
        inputs = gaussian_channel_inputs(256, s, e, signal, noise, seed)
        upper.append(mutual_information_sub_batch(noise_mask=None, **inputs).item())
        info_nce = ref.mutual_information_sub_batch(noise_mask=None, info_nce=True, **inputs)
        assert info_nce.per_query.max().item() <= math.log(128 + 1) + 1e-12
        lower.append(info_nce.value.item())
    upper_mean, upper_err = _mean_and_stderr(upper)
    lower_mean, lower_err = _mean_and_stderr(lower)
    assert lower_mean < closed + 3 * lower_err
    assert upper_mean > closed - 3 * upper_err
    assert lower_mean < upper_mean


def test_std_log_loss_is_minus_conditional_entropy() -> None:
    """std_log_loss = mean_i log N(y_i; c_i, sigma_i): in expectation -|P| times the per-element
    entropy, i.e. |P| * gaussian_entropy_log_loss(stds of the queries)."""
    b, s, e = 512, 2, 4
    inputs = make_inputs(b, s, e, seed=100, std_range=(0.2, 2.0))
    losses: dict[str, torch.Tensor] = {}
    mutual_information_sub_batch(noise_mask=None, losses=losses, **inputs)
    per_element = gaussian_entropy_log_loss(inputs["stds_tensor"][: b // 2])
    # 0.5 * eps^2 has variance 0.5: the mean over 256 queries of a sum of 8 such terms
    stderr = math.sqrt(0.5 * s * e / (b // 2))
    assert abs(losses["std_log_loss"].item() - s * e * per_element.item()) < 4 * stderr


def _kl(mu_i, s_i, mu_j, s_j) -> torch.Tensor:
    return (torch.log(s_j / s_i) + (s_i**2 + (mu_i - mu_j) ** 2) / (2 * s_j**2) - 0.5).sum(-1)


def _bhattacharyya(mu_i, s_i, mu_j, s_j) -> torch.Tensor:
    var = 0.5 * (s_i**2 + s_j**2)
    return ((mu_i - mu_j) ** 2 / (8 * var) + 0.5 * torch.log(var / (s_i * s_j))).sum(-1)


def _kolchinsky_tracey(centres, stds, distance) -> float:
    """H_D = sum_i c_i H(p_i) - sum_i c_i log sum_j c_j exp(-D(p_i || p_j)), c_i = 1/n."""
    n = centres.shape[0]
    own = 0.5 * torch.log(2 * math.pi * math.e * stds**2).sum(-1)
    d = distance(centres[:, None], stds[:, None], centres[None], stds[None])
    log_mix = torch.logsumexp(-d, dim=1) - math.log(n)
    return (own.mean() - log_mix.mean()).item()


def test_mixture_entropy_between_kolchinsky_tracey_bounds() -> None:
    """Queries drawn from the mixture the components define: the estimate is unbiased for the
    mixture entropy, which lies between the Bhattacharyya (lower) and KL (upper) bounds."""
    g = torch.Generator().manual_seed(101)
    n, e, chunks, per_chunk = 8, 2, 10, 500
    centres = 1.5 * torch.randn(n, e, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(n, e, generator=g, dtype=torch.float64)
    lower = _kolchinsky_tracey(centres, stds, _bhattacharyya)
    upper = _kolchinsky_tracey(centres, stds, _kl)
    assert lower < upper
    values = []
    for _ in range(chunks):
        pick = torch.randint(0, n, (per_chunk,), generator=g)
        y = centres[pick] + stds[pick] * torch.randn(per_chunk, e, generator=g, dtype=torch.float64)
        value = gaussian_mixture_entropy(
            centres.unsqueeze(1),
            y.unsqueeze(1),
            torch.zeros(n, 1, e, dtype=torch.float64),
            stds.unsqueeze(1),
            None,
        )
        values.append(value.item())
    mean, stderr = _mean_and_stderr(values)
    assert lower - 4 * stderr < mean < upper + 4 * stderr


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("combine", [True, False])
def test_mi_shift_and_scale_invariance(combine, granularity, symmetric) -> None:
    b, s, e = 8, 3, 4
    inputs = make_inputs(b, s, e, seed=102)
    mask = make_mask("empty_rows", b, s, seed=103)
    kwargs = {
        "noise_mask": mask,
        "granularity": granularity,
        "symmetric": symmetric,
        "combine_noise_masks_for_mutual_information_sub_batches": combine,
    }
    base = mutual_information_sub_batch(**inputs, **kwargs)
    # common to every sample: per (s, e) for sequences, per e for tokens (any position)
    shift_shape = (s, e) if granularity == "sequence" else (e,)
    shift = 0.7 * torch.randn(shift_shape, generator=torch.Generator().manual_seed(104))
    shifted = dict(inputs)
    shifted["clean_input_embeddings"] = inputs["clean_input_embeddings"] + shift
    shifted["noisy_input_embeddings"] = inputs["noisy_input_embeddings"] + shift
    torch.testing.assert_close(
        mutual_information_sub_batch(**shifted, **kwargs), base, rtol=1e-10, atol=1e-10
    )
    scaled = {k: 3.3 * v for k, v in inputs.items()}
    torch.testing.assert_close(
        mutual_information_sub_batch(**scaled, **kwargs), base, rtol=1e-10, atol=1e-10
    )
