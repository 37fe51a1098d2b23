"""Sanity of the reference itself: element loops, ``torch.distributions`` and closed forms.

These tests need nothing from ``mi_losses``; they make sure the reference the other tests
compare against cannot be silently wrong.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from tests import reference as ref
from tests.helpers import gaussian_channel_inputs, make_entropy_inputs, make_inputs, make_mask


def _log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def _log_density(y: torch.Tensor, centre: torch.Tensor, std: torch.Tensor) -> float:
    """``log N(y; centre, std^2)`` summed over the given elements, by ``torch.distributions``."""
    return float(Normal(centre, std).log_prob(y).sum())


def _sequence_samples(mask: torch.Tensor | None, n: int, s: int) -> list[torch.Tensor]:
    mask = ref.as_bool_mask(mask, (n, s))
    return [mask[i] for i in range(n)]


def test_square_mahalanobis_distance_matches_element_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 4, 2, generator=g, dtype=torch.float64)
    y = torch.randn(1, 5, 4, 2, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(1, 5, 4, 2, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 5, 4, generator=g) < 0.5
    got = ref.square_mahalanobis_distance(x, y, stds, mask)
    assert got.shape == (3, 5)
    for i in range(3):
        for j in range(5):
            expected = 0.0
            for s in range(4):
                if not mask[i, j, s]:
                    continue
                for e in range(2):
                    diff = float(x[i, 0, s, e] - y[0, j, s, e])
                    expected += 0.5 * (diff / float(stds[0, j, s, e])) ** 2
            assert got[i, j].item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_square_mahalanobis_distance_is_gaussian_exponent() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    stds = 0.3 + torch.rand(4, 3, 5, generator=g, dtype=torch.float64)
    got = ref.square_mahalanobis_distance(x, y, stds)
    log_p = Normal(y, stds).log_prob(x).sum(dim=(-2, -1))
    expected = -log_p - torch.log(stds).sum(dim=(-2, -1)) - 0.5 * 15 * ref.LOG_2PI
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_mask_broadcasts_against_leading_axes() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    stds = torch.ones(3, 4, 2, dtype=torch.float64)
    mask = torch.tensor([True, False, True, False])  # (S,), broadcast over the batch
    got = ref.square_mahalanobis_distance(x, torch.zeros(()), stds, mask)
    expected = 0.5 * (x[:, [0, 2]] ** 2).sum(dim=(-2, -1))
    torch.testing.assert_close(got, expected)


def _entropy_by_loops(inputs: dict, qmask, kmask, granularity: str) -> tuple[float, int]:
    clean, y = inputs["clean_embeddings"], inputs["transformed_embeddings"]
    means, stds = inputs["means"], inputs["stds"]
    m, s, _ = y.shape
    n = clean.shape[0]
    qmask = ref.as_bool_mask(qmask, (m, s))
    kmask = ref.as_bool_mask(kmask, (n, s))
    centres = clean + means
    if granularity == "token":
        queries = [y[i, t] for i in range(m) for t in range(s) if qmask[i, t]]
        comps = [(centres[j, t], stds[j, t]) for j in range(n) for t in range(s) if kmask[j, t]]
        per_query = [
            -_log_mean_exp([_log_density(q, c, sd) for c, sd in comps]) for q in queries if comps
        ]
    else:
        per_query = []
        for i in range(m):
            log_ps = []
            for j in range(n):
                both = qmask[i] & kmask[j]
                if both.any():
                    log_ps.append(_log_density(y[i, both], centres[j, both], stds[j, both]))
            if log_ps:
                per_query.append(-_log_mean_exp(log_ps))
    if not per_query:
        return 0.0, 0
    return sum(per_query) / len(per_query), len(per_query)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["none", "random", "empty_rows", "disjoint", "all_empty"])
@pytest.mark.parametrize("with_component_mask", [False, True])
def test_entropy_reference_matches_loops(granularity, pattern, with_component_mask) -> None:
    m, n, s, e = 4, 6, 3, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=3)
    full = make_mask(pattern, 2 * max(m, n), s, seed=4)
    qmask = None if full is None else full[:m]
    kmask = None
    if with_component_mask:
        kmask = make_mask("random" if full is None else pattern, 2 * n, s, seed=5)[n:]
    got = ref.gaussian_mixture_entropy(
        **inputs, mask=qmask, component_mask=kmask, granularity=granularity
    )
    expected, count = _entropy_by_loops(inputs, qmask, kmask, granularity)
    assert got.num_queries == count
    assert got.value.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    total = sum(got.components.values())
    assert total.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


def _mi_by_loops(inputs: dict, mask, combine: bool, granularity: str) -> tuple[float, int]:
    means, stds = inputs["means_tensor"], inputs["stds_tensor"]
    clean, y = inputs["clean_input_embeddings"], inputs["noisy_input_embeddings"]
    b, s, _ = means.shape
    half = b // 2
    mask = ref.as_bool_mask(mask, (b, s))
    kmask = mask if combine else torch.ones_like(mask)
    centres = clean + means
    per_query = []
    if granularity == "token":
        comps = [(j, t) for j in range(half, b) for t in range(s) if kmask[j, t]]
        for i in range(half):
            for t in range(s):
                if not mask[i, t] or not comps:
                    continue
                own = _log_density(y[i, t], centres[i, t], stds[i, t])
                log_ps = [_log_density(y[i, t], centres[j, u], stds[j, u]) for j, u in comps]
                # I_i = -log mean_j exp(-r_ij), r_ij = own - log p_j
                per_query.append(-_log_mean_exp([lp - own for lp in log_ps]))
    else:
        for i in range(half):
            neg_r = []
            for j in range(half, b):
                both = mask[i] & kmask[j]
                if not both.any():
                    continue
                own = _log_density(y[i, both], centres[i, both], stds[i, both])
                other = _log_density(y[i, both], centres[j, both], stds[j, both])
                neg_r.append(other - own)
            if neg_r:
                per_query.append(-_log_mean_exp(neg_r))
    if not per_query:
        return 0.0, 0
    return sum(per_query) / len(per_query), len(per_query)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize(
    "pattern", ["none", "random", "empty_rows", "disjoint", "first_half_empty", "all_empty"]
)
def test_mi_reference_matches_loops(granularity, combine, pattern) -> None:
    b, s, e = 6, 3, 2
    inputs = make_inputs(b, s, e, seed=6)
    mask = make_mask(pattern, b, s, seed=7)
    got = ref.mutual_information_sub_batch(
        noise_mask=mask,
        combine_noise_masks_for_mutual_information_sub_batches=combine,
        granularity=granularity,
        **inputs,
    )
    expected, count = _mi_by_loops(inputs, mask, combine, granularity)
    assert got.num_queries == count
    assert got.value.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("pattern", ["none", "random", "empty_rows", "disjoint"])
def test_mi_reference_component_identities(granularity, combine, symmetric, pattern) -> None:
    b, s, e = 6, 3, 2
    inputs = make_inputs(b, s, e, seed=8)
    got = ref.mutual_information_sub_batch(
        noise_mask=make_mask(pattern, b, s, seed=9),
        combine_noise_masks_for_mutual_information_sub_batches=combine,
        granularity=granularity,
        symmetric=symmetric,
        **inputs,
    )
    c = got.components
    close = {"rel": 1e-10, "abs": 1e-10}
    entropy = c[ref.MAHALANOBIS_KEY] + c[ref.LOG_CONSTANTS_KEY]
    assert entropy.item() == pytest.approx(c[ref.ENTROPY_KEY].item(), **close)
    assert (entropy + c[ref.STD_LOG_KEY]).item() == pytest.approx(got.value.item(), **close)
    assert c[ref.MI_KEY].item() == pytest.approx(got.value.item(), **close)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_mi_entropy_component_is_mixture_entropy_when_pairs_do_not_depend_on_j(
    granularity,
) -> None:
    b, s, e = 8, 3, 4
    inputs = make_inputs(b, s, e, seed=10)
    mask = make_mask("random", b, s, seed=11)
    # flag off: P(i, j) = query_mask_i for every j (in both granularities)
    got = ref.mutual_information_sub_batch(
        noise_mask=mask,
        combine_noise_masks_for_mutual_information_sub_batches=False,
        granularity=granularity,
        **inputs,
    )
    h = b // 2
    entropy = ref.gaussian_mixture_entropy(
        inputs["clean_input_embeddings"][h:],
        inputs["noisy_input_embeddings"][:h],
        inputs["means_tensor"][h:],
        inputs["stds_tensor"][h:],
        mask[:h],
        granularity=granularity,
    )
    assert got.components[ref.ENTROPY_KEY].item() == pytest.approx(entropy.value.item(), rel=1e-10)


def test_single_component_entropy_is_negative_log_density() -> None:
    inputs = make_entropy_inputs(5, 1, 3, 2, seed=12)
    got = ref.gaussian_mixture_entropy(**inputs)
    centre = inputs["clean_embeddings"][0] + inputs["means"][0]
    expected = -Normal(centre, inputs["stds"][0]).log_prob(inputs["transformed_embeddings"])
    assert got.value.item() == pytest.approx(expected.sum(dim=(-2, -1)).mean().item(), rel=1e-12)


def test_mixture_of_identical_components_is_that_gaussian() -> None:
    g = torch.Generator().manual_seed(13)
    centre = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)
    std = 0.5 + torch.rand(1, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    got = ref.gaussian_mixture_entropy(
        centre.expand(7, -1, -1), y, torch.zeros(7, 2, 3), std.expand(7, -1, -1)
    )
    expected = -Normal(centre, std).log_prob(y).sum(dim=(-2, -1)).mean()
    assert got.value.item() == pytest.approx(expected.item(), rel=1e-12)


def test_mixture_entropy_of_gaussian_samples_approaches_closed_form() -> None:
    # Components from x ~ N(0, s^2) with noise sigma; queries y ~ N(0, s^2 + sigma^2).
    g = torch.Generator().manual_seed(14)
    s, sigma, n = 1.3, 0.4, 2000
    clean = s * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    y = math.sqrt(s**2 + sigma**2) * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    got = ref.gaussian_mixture_entropy(clean, y, torch.zeros_like(clean), torch.full_like(y, sigma))
    closed = 0.5 * math.log(2 * math.pi * math.e * (s**2 + sigma**2))
    stderr = float(got.per_query.std()) / math.sqrt(n)
    assert abs(got.value.item() - closed) < 4 * stderr + 0.01


def test_reference_gaussian_channel_is_sandwiched_by_l1out_and_infonce() -> None:
    signal, noise, e = 1.0, 0.5, 1
    closed = 0.5 * e * math.log(1 + signal**2 / noise**2)
    l1out, nce = [], []
    for seed in range(2):
        inputs = gaussian_channel_inputs(1024, 1, e, signal, noise, seed)
        upper = ref.mutual_information_sub_batch(noise_mask=None, **inputs)
        lower = ref.mutual_information_sub_batch(noise_mask=None, info_nce=True, **inputs)
        assert lower.per_query.max().item() <= math.log(512 + 1) + 1e-12
        l1out.append(upper.per_query)
        nce.append(lower.per_query)
    upper_all, lower_all = torch.cat(l1out), torch.cat(nce)
    stderr = float(upper_all.std()) / math.sqrt(upper_all.numel())
    assert upper_all.mean().item() > closed - 3 * stderr
    assert lower_all.mean().item() < closed + 3 * stderr
    assert abs(upper_all.mean().item() - closed) < 4 * stderr + 0.01


def test_gaussian_entropy_log_loss_reference_is_negative_entropy() -> None:
    g = torch.Generator().manual_seed(15)
    stds = 0.2 + torch.rand(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, generator=g) < 0.5
    active = stds[mask]
    expected = -Normal(torch.zeros_like(active), active).entropy().mean()
    got = ref.gaussian_entropy_log_loss(stds, mask, eps=0.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["random", "first_half_empty"])
@pytest.mark.parametrize("combine", [True, False])
def test_symmetric_reference_averages_both_directions(granularity, pattern, combine) -> None:
    b, s, e = 6, 3, 2
    inputs = make_inputs(b, s, e, seed=16)
    mask = make_mask(pattern, b, s, seed=17)
    h = b // 2
    swap = torch.cat([torch.arange(h, b), torch.arange(h)])
    swapped = {k: v[swap] for k, v in inputs.items()}
    kwargs = {
        "granularity": granularity,
        "combine_noise_masks_for_mutual_information_sub_batches": combine,
    }
    one = ref.mutual_information_sub_batch(noise_mask=mask, **inputs, **kwargs)
    two = ref.mutual_information_sub_batch(noise_mask=mask[swap], **swapped, **kwargs)
    sym = ref.mutual_information_sub_batch(noise_mask=mask, symmetric=True, **inputs, **kwargs)
    sym_swapped = ref.mutual_information_sub_batch(
        noise_mask=mask[swap], symmetric=True, **swapped, **kwargs
    )
    valid = [r.value.item() for r in (one, two) if r.num_queries > 0]
    expected = sum(valid) / len(valid) if valid else 0.0
    assert sym.value.item() == pytest.approx(expected, rel=1e-12)
    assert sym_swapped.value.item() == pytest.approx(sym.value.item(), rel=1e-12)
    assert sym.num_queries == one.num_queries + two.num_queries


@pytest.mark.parametrize("offset", [1e3, 1e10, 1e30])
def test_reference_residual_is_exact_far_from_the_origin(offset: float) -> None:
    """``y - (x + mu)`` of the reference equals exact rational arithmetic on the inputs (the
    accuracy tests compare the estimators with it at offsets up to 1e30)."""
    from fractions import Fraction

    g = torch.Generator().manual_seed(17)
    x = offset + torch.randn(64, generator=g, dtype=torch.float64)
    mu = 0.3 * torch.randn(64, generator=g, dtype=torch.float64)
    y = x + mu + 1e-3 * torch.randn(64, generator=g, dtype=torch.float64)
    got = ref._residual(y, x, mu)
    exact = [
        float(Fraction(a) - Fraction(b) - Fraction(c))
        for a, b, c in zip(y.tolist(), x.tolist(), mu.tolist(), strict=True)
    ]
    assert got.tolist() == exact
