"""``gaussian_mixture_entropy`` and its estimate against the float64 reference (docs/math.md#gaussian-mixture-entropy)."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.functional import gaussian_mixture_entropy, gaussian_mixture_entropy_estimate
from mi_losses.types import Estimate
from tests import reference as ref
from tests.helpers import (
    ENTROPY_ARG_ORDER,
    entropy_estimate,
    make_entropy_inputs,
    make_mask,
    tolerances,
)

# (M queries, N components, S, E)
SHAPES = [(2, 2, 1, 1), (3, 5, 3, 4), (6, 2, 5, 7), (4, 4, 2, 3)]
QUERY_PATTERNS = ("none", "full", "random", "int01", "empty_rows", "all_empty")
COMPONENT_PATTERNS = ("none", "random", "empty_rows", "all_empty")


def _masks(query_pattern: str, component_pattern: str, m: int, n: int, s: int, seed: int):
    query = make_mask(query_pattern, 2 * m, s, seed=seed)
    component = make_mask(component_pattern, 2 * n, s, seed=seed + 1)
    # "empty_rows" empties row 0 and row B/2 of the (2m, s) mask: keep both in the slice
    query = None if query is None else torch.cat([query[:1], query[m : 2 * m - 1]])
    component = None if component is None else component[n:]
    return query, component


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("component_pattern", COMPONENT_PATTERNS)
@pytest.mark.parametrize("query_pattern", QUERY_PATTERNS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, query_pattern, component_pattern, granularity, dtype) -> None:
    m, n, s, e = shape
    inputs = make_entropy_inputs(m, n, s, e, seed=m * 1000 + n * 100 + s * 10 + e, dtype=dtype)
    mask, component_mask = _masks(query_pattern, component_pattern, m, n, s, seed=e)
    losses: dict[str, torch.Tensor] = {}
    value = gaussian_mixture_entropy(
        *(inputs[k] for k in ENTROPY_ARG_ORDER),
        mask,
        losses,
        component_mask=component_mask,
        granularity=granularity,
    )
    expected = ref.gaussian_mixture_entropy(
        **inputs, mask=mask, component_mask=component_mask, granularity=granularity
    )
    tol = tolerances(dtype)
    assert value.dtype == dtype
    assert value.shape == ()
    torch.testing.assert_close(value.double(), expected.value.detach(), **tol)
    assert set(losses) == set(ref.ENTROPY_COMPONENT_KEYS)
    for key in ref.ENTROPY_COMPONENT_KEYS:
        torch.testing.assert_close(
            losses[key].double(), expected.components[key], **tol, msg=lambda m, k=key: f"{k}: {m}"
        )
        assert losses[key].shape == ()
        assert not losses[key].requires_grad

    estimate = entropy_estimate(
        *(inputs[k] for k in ENTROPY_ARG_ORDER),
        mask,
        component_mask=component_mask,
        granularity=granularity,
    )
    assert isinstance(estimate, Estimate)
    assert estimate.num_queries.dtype == torch.int64
    assert int(estimate.num_queries) == expected.num_queries
    torch.testing.assert_close(estimate.value, value, rtol=1e-6, atol=1e-7)
    assert set(estimate.components) == set(ref.ENTROPY_COMPONENT_KEYS)
    for key in ref.ENTROPY_COMPONENT_KEYS:
        torch.testing.assert_close(estimate.components[key], losses[key], rtol=1e-6, atol=1e-7)
        assert not estimate.components[key].requires_grad
        assert estimate.components[key].shape == ()
    if expected.num_queries == 0:
        assert value.item() == 0.0


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize(
    ("query_pattern", "component_pattern"),
    [("none", "none"), ("random", "random"), ("empty_rows", "empty_rows"), ("all_empty", "none")],
)
def test_gradients_match_reference(query_pattern, component_pattern, granularity) -> None:
    m, n, s, e = 4, 5, 3, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=41, requires_grad=True)
    mask, component_mask = _masks(query_pattern, component_pattern, m, n, s, seed=42)
    kwargs = {"component_mask": component_mask, "granularity": granularity}
    value = gaussian_mixture_entropy(*(inputs[k] for k in ENTROPY_ARG_ORDER), mask, **kwargs)
    expected = ref.gaussian_mixture_entropy(**inputs, mask=mask, **kwargs)
    assert value.requires_grad
    leaves = [inputs[k] for k in ENTROPY_ARG_ORDER]
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    expected_grads = torch.autograd.grad(expected.value, leaves, allow_unused=True)
    for name, got, want in zip(ENTROPY_ARG_ORDER, grads, expected_grads, strict=True):
        got = torch.zeros_like(inputs[name]) if got is None else got
        want = torch.zeros_like(inputs[name]) if want is None else want
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_components_sum_to_entropy(granularity) -> None:
    m, n, s, e = 5, 7, 4, 3
    inputs = make_entropy_inputs(m, n, s, e, seed=43)
    mask, component_mask = _masks("empty_rows", "random", m, n, s, seed=44)
    losses: dict[str, torch.Tensor] = {"unrelated": torch.tensor(3.0)}
    value = gaussian_mixture_entropy(
        *(inputs[k] for k in ENTROPY_ARG_ORDER),
        mask,
        losses,
        component_mask=component_mask,
        granularity=granularity,
    )
    assert losses["unrelated"].item() == 3.0
    total = sum(losses[k] for k in ref.ENTROPY_COMPONENT_KEYS)
    torch.testing.assert_close(total, value.detach(), rtol=1e-10, atol=1e-10)


def test_token_granularity_is_sequence_granularity_of_one_token_sequences() -> None:
    m, n, s, e = 4, 3, 3, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=45)
    mask, component_mask = _masks("random", "random", m, n, s, seed=46)
    token = gaussian_mixture_entropy(
        *(inputs[k] for k in ENTROPY_ARG_ORDER),
        mask,
        component_mask=component_mask,
        granularity="token",
    )
    flat = [inputs[k].reshape(-1, 1, e) for k in ENTROPY_ARG_ORDER]
    sequence = gaussian_mixture_entropy(
        *flat,
        mask.reshape(-1, 1),
        component_mask=component_mask.reshape(-1, 1),
        granularity="sequence",
    )
    torch.testing.assert_close(token, sequence, rtol=1e-10, atol=1e-10)


def test_mask_none_equals_all_true() -> None:
    m, n, s, e = 3, 4, 2, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=47)
    args = [inputs[k] for k in ENTROPY_ARG_ORDER]
    none = gaussian_mixture_entropy(*args, None)
    full = gaussian_mixture_entropy(
        *args,
        torch.ones(m, s, dtype=torch.bool),
        component_mask=torch.ones(n, s, dtype=torch.bool),
    )
    torch.testing.assert_close(none, full, rtol=1e-12, atol=1e-12)
    by_name = gaussian_mixture_entropy(**inputs, mask=None)
    torch.testing.assert_close(by_name, none)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_shift_and_scale(granularity) -> None:
    """A common shift leaves H unchanged; scaling all lengths by k adds |P| log k (no masks)."""
    m, n, s, e = 4, 6, 3, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=48)
    args = [inputs[k] for k in ENTROPY_ARG_ORDER]
    base = gaussian_mixture_entropy(*args, None, granularity=granularity)
    clean, y, means, stds = args
    shifted = gaussian_mixture_entropy(
        clean + 3.7, y + 3.7, means, stds, None, granularity=granularity
    )
    torch.testing.assert_close(shifted, base, rtol=1e-10, atol=1e-10)
    k = 2.5
    scaled = gaussian_mixture_entropy(
        k * clean, k * y, k * means, k * stds, None, granularity=granularity
    )
    elements = s * e if granularity == "sequence" else e
    torch.testing.assert_close(scaled, base + elements * math.log(k), rtol=1e-10, atol=1e-10)


def test_fully_masked_queries_give_zero_with_zero_gradient() -> None:
    m, n, s, e = 3, 4, 2, 2
    inputs = make_entropy_inputs(m, n, s, e, seed=49, requires_grad=True)
    losses: dict[str, torch.Tensor] = {}
    value = gaussian_mixture_entropy(
        *(inputs[k] for k in ENTROPY_ARG_ORDER), torch.zeros(m, s, dtype=torch.bool), losses
    )
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    for name in ENTROPY_ARG_ORDER:
        grad = inputs[name].grad
        assert grad is None or bool((grad == 0).all()), name
    for key in ref.ENTROPY_COMPONENT_KEYS:
        assert losses[key].item() == 0.0


def test_gaussian_samples_approach_closed_form_entropy() -> None:
    """Components x ~ N(0, s^2) with noise sigma, queries y ~ N(0, s^2 + sigma^2): H(Y)."""
    g = torch.Generator().manual_seed(50)
    s, sigma, n, e = 1.3, 0.4, 2048, 2
    clean = s * torch.randn(n, 1, e, generator=g, dtype=torch.float64)
    y = math.sqrt(s**2 + sigma**2) * torch.randn(n, 1, e, generator=g, dtype=torch.float64)
    estimate = gaussian_mixture_entropy_estimate(
        torch.zeros_like(clean), torch.full_like(clean, sigma), None, clean, y
    )
    closed = 0.5 * e * math.log(2 * math.pi * math.e * (s**2 + sigma**2))
    # per-query spread of -log p(y) is about sqrt(e / 2); the Jensen bias is O(1 / n)
    stderr = math.sqrt(e / 2) / math.sqrt(n)
    assert int(estimate.num_queries) == n
    assert estimate.value.item() > closed - 4 * stderr
    assert abs(estimate.value.item() - closed) < 4 * stderr + 0.02
