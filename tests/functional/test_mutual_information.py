"""``mutual_information_sub_batch`` and its estimate against the float64 reference (docs/math.md#mutual-information)."""

from __future__ import annotations

import pytest
import torch

from mi_losses.functional import (
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
)
from mi_losses.types import Estimate
from tests import reference as ref
from tests.helpers import MASK_PATTERNS, MI_ARG_ORDER, make_inputs, make_mask, tolerances

SHAPES = [(2, 1, 1), (4, 3, 4), (6, 5, 7)]
FLAG = "combine_noise_masks_for_mutual_information_sub_batches"


def _call(inputs, mask, combine, granularity, symmetric, losses=None):
    return mutual_information_sub_batch(
        inputs["means_tensor"],
        inputs["stds_tensor"],
        mask,
        inputs["clean_input_embeddings"],
        inputs["noisy_input_embeddings"],
        combine,
        losses,
        granularity=granularity,
        symmetric=symmetric,
    )


def _reference(inputs, mask, combine, granularity, symmetric):
    return ref.mutual_information_sub_batch(
        noise_mask=mask,
        granularity=granularity,
        symmetric=symmetric,
        **{FLAG: combine},
        **inputs,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", MASK_PATTERNS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(shape, pattern, granularity, combine, symmetric, dtype) -> None:
    b, s, e = shape
    inputs = make_inputs(b, s, e, seed=b * 100 + s * 10 + e, dtype=dtype)
    mask = make_mask(pattern, b, s, seed=e)
    losses: dict[str, torch.Tensor] = {}
    value = _call(inputs, mask, combine, granularity, symmetric, losses)
    expected = _reference(inputs, mask, combine, granularity, symmetric)
    tol = tolerances(dtype)

    assert value.dtype == dtype
    assert value.shape == ()
    torch.testing.assert_close(value.double(), expected.value.detach(), **tol)
    assert set(losses) == set(ref.MI_COMPONENT_KEYS)
    for key in ref.MI_COMPONENT_KEYS:
        torch.testing.assert_close(
            losses[key].double(), expected.components[key], **tol, msg=lambda m, k=key: f"{k}: {m}"
        )

    estimate = mutual_information_sub_batch_estimate(
        inputs["means_tensor"],
        inputs["stds_tensor"],
        mask,
        inputs["clean_input_embeddings"],
        inputs["noisy_input_embeddings"],
        combine,
        granularity=granularity,
        symmetric=symmetric,
    )
    assert isinstance(estimate, Estimate)
    assert estimate.num_queries.dtype == torch.int64
    assert estimate.num_queries.shape == ()
    assert int(estimate.num_queries) == expected.num_queries
    torch.testing.assert_close(estimate.value, value, rtol=1e-6, atol=1e-7)
    assert set(estimate.components) == set(ref.MI_COMPONENT_KEYS)
    for key in ref.MI_COMPONENT_KEYS:
        torch.testing.assert_close(estimate.components[key], losses[key], rtol=1e-6, atol=1e-7)
        assert not estimate.components[key].requires_grad
        assert estimate.components[key].shape == ()
    if expected.num_queries == 0:
        assert value.item() == 0.0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("pattern", ["none", "random", "empty_rows", "disjoint", "all_empty"])
def test_gradients_match_reference(pattern, granularity, combine, symmetric) -> None:
    b, s, e = 6, 3, 4
    inputs = make_inputs(b, s, e, seed=21, requires_grad=True)
    mask = make_mask(pattern, b, s, seed=22)
    value = _call(inputs, mask, combine, granularity, symmetric)
    grads = torch.autograd.grad(value, [inputs[k] for k in MI_ARG_ORDER], allow_unused=True)
    expected = _reference(inputs, mask, combine, granularity, symmetric)
    expected_grads = torch.autograd.grad(
        expected.value, [inputs[k] for k in MI_ARG_ORDER], allow_unused=True
    )
    for name, got, want in zip(MI_ARG_ORDER, grads, expected_grads, strict=True):
        got = torch.zeros_like(inputs[name]) if got is None else got
        want = torch.zeros_like(inputs[name]) if want is None else want
        assert torch.isfinite(got).all(), name
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_component_identities(granularity, combine, symmetric) -> None:
    b, s, e = 6, 4, 3
    inputs = make_inputs(b, s, e, seed=23, requires_grad=True)
    mask = make_mask("empty_rows", b, s, seed=24)
    losses: dict[str, torch.Tensor] = {"unrelated": torch.tensor(7.0)}
    value = _call(inputs, mask, combine, granularity, symmetric, losses)
    assert losses["unrelated"].item() == 7.0  # updated in place, not replaced
    for key in ref.MI_COMPONENT_KEYS:
        component = losses[key]
        assert isinstance(component, torch.Tensor)
        assert component.shape == ()
        assert not component.requires_grad
        assert component.grad_fn is None
    assert value.requires_grad
    close = {"rtol": 1e-10, "atol": 1e-10}
    entropy = (
        losses["gaussian_mixture_mahalanobis_distance_loss"]
        + losses["gaussian_mixture_log_constants_and_determinant_loss"]
    )
    torch.testing.assert_close(entropy, losses["gaussian_mixture_entropy_loss"], **close)
    torch.testing.assert_close(
        losses["gaussian_mixture_entropy_loss"] + losses["std_log_loss"],
        losses["mutual_information_loss"],
        **close,
    )
    torch.testing.assert_close(losses["mutual_information_loss"], value.detach(), **close)


@pytest.mark.parametrize(
    ("granularity", "combine", "pattern"),
    [
        ("sequence", True, "none"),
        ("sequence", True, "full"),
        ("sequence", False, "random"),
        ("sequence", False, "empty_rows"),
        ("token", True, "random"),
        ("token", False, "random"),
        ("token", True, "empty_rows"),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_entropy_component_equals_mixture_entropy(granularity, combine, pattern, dtype) -> None:
    """Where P(i, j) does not depend on j, the entropy component is gaussian_mixture_entropy."""
    b, s, e = 8, 3, 4
    inputs = make_inputs(b, s, e, seed=25, dtype=dtype)
    mask = make_mask(pattern, b, s, seed=26)
    losses: dict[str, torch.Tensor] = {}
    _call(inputs, mask, combine, granularity, False, losses)
    h = b // 2
    query_mask = None if mask is None else mask[:h]
    component_mask = None if (mask is None or not combine) else mask[h:]
    entropy = gaussian_mixture_entropy(
        inputs["clean_input_embeddings"][h:],
        inputs["noisy_input_embeddings"][:h],
        inputs["means_tensor"][h:],
        inputs["stds_tensor"][h:],
        query_mask,
        component_mask=component_mask,
        granularity=granularity,
    )
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-4}
    torch.testing.assert_close(losses["gaussian_mixture_entropy_loss"], entropy.detach(), **tol)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_masked_positions_do_not_matter(granularity, symmetric) -> None:
    """With the flag on, P(i, j) lies inside both masks: inactive values are never read."""
    b, s, e = 6, 4, 3
    inputs = make_inputs(b, s, e, seed=27)
    mask = make_mask("empty_rows", b, s, seed=28)
    g = torch.Generator().manual_seed(29)
    inactive = ~mask.unsqueeze(-1)
    changed = {
        k: torch.where(inactive, v + 5.0 * torch.rand(v.shape, generator=g, dtype=v.dtype), v)
        for k, v in inputs.items()
    }
    before = _call(inputs, mask, True, granularity, symmetric)
    after = _call(changed, mask, True, granularity, symmetric)
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_permutations_within_halves_and_swapping_halves(granularity, combine, symmetric) -> None:
    b, s, e = 8, 3, 2
    inputs = make_inputs(b, s, e, seed=30)
    mask = make_mask("random", b, s, seed=31)
    h = b // 2
    g = torch.Generator().manual_seed(32)
    within = torch.cat([torch.randperm(h, generator=g), h + torch.randperm(h, generator=g)])
    before = _call(inputs, mask, combine, granularity, symmetric)
    after = _call(
        {k: v[within] for k, v in inputs.items()}, mask[within], combine, granularity, symmetric
    )
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)
    if symmetric:
        swap = torch.cat([torch.arange(h, b), torch.arange(h)])
        swapped = _call(
            {k: v[swap] for k, v in inputs.items()}, mask[swap], combine, granularity, True
        )
        torch.testing.assert_close(swapped, before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("combine", [True, False])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("pattern", ["none", "random", "empty_rows"])
def test_token_granularity_is_sequence_granularity_of_one_token_sequences(
    pattern, symmetric, combine
) -> None:
    """Tokens of (B, S, E) are the sequences of (B*S, 1, E), halves included (row-major)."""
    b, s, e = 6, 3, 4
    inputs = make_inputs(b, s, e, seed=33)
    mask = make_mask(pattern, b, s, seed=34)
    token = _call(inputs, mask, combine, "token", symmetric)
    flat = {k: v.reshape(b * s, 1, e) for k, v in inputs.items()}
    flat_mask = None if mask is None else mask.reshape(b * s, 1)
    sequence = _call(flat, flat_mask, combine, "sequence", symmetric)
    torch.testing.assert_close(token, sequence, rtol=1e-10, atol=1e-10)


def test_mask_none_equals_all_true_and_int_mask_equals_bool() -> None:
    b, s, e = 4, 3, 2
    inputs = make_inputs(b, s, e, seed=35)
    none = _call(inputs, None, True, "sequence", False)
    full = _call(inputs, torch.ones(b, s, dtype=torch.bool), True, "sequence", False)
    torch.testing.assert_close(none, full, rtol=1e-12, atol=1e-12)
    mask = make_mask("random", b, s, seed=36)
    as_bool = _call(inputs, mask, True, "sequence", False)
    for as_int in (mask.long(), mask.to(torch.uint8), mask.int()):
        torch.testing.assert_close(_call(inputs, as_int, True, "sequence", False), as_bool)


def test_default_arguments_are_sequence_with_combined_masks() -> None:
    b, s, e = 6, 3, 2
    inputs = make_inputs(b, s, e, seed=37)
    mask = make_mask("random", b, s, seed=38)
    value = mutual_information_sub_batch(
        inputs["means_tensor"],
        inputs["stds_tensor"],
        mask,
        inputs["clean_input_embeddings"],
        inputs["noisy_input_embeddings"],
    )
    expected = ref.mutual_information_sub_batch(noise_mask=mask, **inputs)
    torch.testing.assert_close(value, expected.value.detach(), rtol=1e-9, atol=1e-10)
    # keyword call with the reference argument names
    by_name = mutual_information_sub_batch(noise_mask=mask, **inputs, **{FLAG: True})
    torch.testing.assert_close(by_name, value)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_fully_masked_batch_gives_zero_with_zero_gradient(granularity, symmetric) -> None:
    b, s, e = 4, 3, 2
    inputs = make_inputs(b, s, e, seed=39, requires_grad=True)
    losses: dict[str, torch.Tensor] = {}
    mask = torch.zeros(b, s, dtype=torch.bool)
    value = _call(inputs, mask, True, granularity, symmetric, losses)
    assert value.item() == 0.0
    assert value.requires_grad
    value.backward()
    for name in MI_ARG_ORDER:
        grad = inputs[name].grad
        assert grad is None or bool((grad == 0).all()), name
    for key in ref.MI_COMPONENT_KEYS:
        assert torch.isfinite(losses[key]).all()
        assert losses[key].item() == 0.0


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_without_components_the_value_and_gradient_are_unchanged(granularity, symmetric) -> None:
    inputs = make_inputs(6, 3, 4, seed=90, requires_grad=True)
    mask = make_mask("random", 6, 3, seed=91)
    kwargs = {"granularity": granularity, "symmetric": symmetric}
    full = mutual_information_sub_batch_estimate(noise_mask=mask, **inputs, **kwargs)
    bare = mutual_information_sub_batch_estimate(
        noise_mask=mask, with_components=False, **inputs, **kwargs
    )
    assert bare.components == {}
    assert int(bare.num_queries) == int(full.num_queries)
    torch.testing.assert_close(bare.value, full.value, rtol=0, atol=0)
    grads_full = torch.autograd.grad(full.value, list(inputs.values()))
    grads_bare = torch.autograd.grad(bare.value, list(inputs.values()))
    for got, expected in zip(grads_bare, grads_full, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    losses: dict[str, torch.Tensor] = {}
    value = mutual_information_sub_batch(noise_mask=mask, losses=losses, **inputs, **kwargs)
    assert set(losses) == set(full.components)
    torch.testing.assert_close(value, full.value, rtol=0, atol=0)
