"""``torch.compile`` smoke tests: compiled functions match eager, values and gradients.

``aot_eager`` traces forward and backward through AOTAutograd (what inductor would compile)
without invoking a C++ compiler; one case also runs the default inductor backend forward.
"""

from __future__ import annotations

import pytest
import torch

from mi_losses.functional import (
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
    pairwise_square_mahalanobis_distance,
)
from tests.helpers import MI_ARG_ORDER, make_entropy_inputs, make_inputs, make_mask


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_mutual_information_compiled_matches_eager(granularity) -> None:
    b, s, e = 6, 3, 4
    mask = make_mask("empty_rows", b, s, seed=110)
    eager_inputs = make_inputs(b, s, e, seed=111, dtype=torch.float32, requires_grad=True)
    compiled_inputs = make_inputs(b, s, e, seed=111, dtype=torch.float32, requires_grad=True)

    def fn(**inputs):
        return mutual_information_sub_batch(
            noise_mask=mask, granularity=granularity, symmetric=True, **inputs
        )

    eager = fn(**eager_inputs)
    compiled = torch.compile(fn, backend="aot_eager")(**compiled_inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    eager.backward()
    compiled.backward()
    for name in MI_ARG_ORDER:
        torch.testing.assert_close(
            compiled_inputs[name].grad, eager_inputs[name].grad, rtol=1e-5, atol=1e-6
        )


def test_mixture_entropy_compiled_matches_eager() -> None:
    inputs = make_entropy_inputs(3, 5, 2, 4, seed=112, dtype=torch.float32)
    mask = make_mask("random", 3, 2, seed=113)

    def fn(clean_embeddings, transformed_embeddings, means, stds):
        return gaussian_mixture_entropy(
            clean_embeddings, transformed_embeddings, means, stds, mask, granularity="token"
        )

    eager = fn(**inputs)
    compiled = torch.compile(fn, backend="aot_eager")(**inputs)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_inductor_forward_matches_eager() -> None:
    g = torch.Generator().manual_seed(114)
    queries = torch.randn(4, 3, 5, generator=g)
    centres = torch.randn(6, 3, 5, generator=g)
    stds = 0.5 + torch.rand(6, 3, 5, generator=g)
    query_mask = torch.rand(4, 3, generator=g) < 0.6
    eager = pairwise_square_mahalanobis_distance(queries, centres, stds, query_mask)
    compiled = torch.compile(pairwise_square_mahalanobis_distance)(
        queries, centres, stds, query_mask
    )
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
