"""Square Mahalanobis distances, broadcast and pairwise, against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from mi_losses.functional import pairwise_square_mahalanobis_distance, square_mahalanobis_distance
from tests import reference as ref


def _randn(*shape: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _stds(*shape: int, g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    return (0.5 + torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)


# (x shape, y shape, stds shape, mask shape or None, expected result shape)
BROADCAST_CASES = [
    ((4, 3, 5), (4, 3, 5), (4, 3, 5), None, (4,)),
    ((4, 3, 5), (4, 3, 5), (4, 3, 5), (4, 3), (4,)),
    ((3, 1, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4), (3, 5, 2), (3, 5)),
    ((3, 1, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4), (3, 1, 2), (3, 5)),
    ((3, 1, 2, 4), (1, 5, 2, 4), (1, 5, 2, 4), None, (3, 5)),
    ((6, 2, 3), (2, 3), (1, 3), (2,), (6,)),  # y, stds and mask broadcast over the batch
    ((2, 1, 1), (2, 1, 1), (2, 1, 1), (2, 1), (2,)),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", BROADCAST_CASES, ids=str)
def test_square_mahalanobis_distance_matches_reference(case, dtype) -> None:
    x_shape, y_shape, s_shape, m_shape, out_shape = case
    g = torch.Generator().manual_seed(len(x_shape) * 10 + x_shape[0])
    x = _randn(*x_shape, g=g, dtype=dtype)
    y = _randn(*y_shape, g=g, dtype=dtype)
    stds = _stds(*s_shape, g=g, dtype=dtype)
    mask = None if m_shape is None else torch.rand(m_shape, generator=g) < 0.6
    got = square_mahalanobis_distance(x, y, stds, mask)
    expected = ref.square_mahalanobis_distance(x, y, stds, mask)
    assert got.shape == out_shape
    assert got.dtype == dtype
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=rtol)


def test_square_mahalanobis_distance_has_the_half() -> None:
    x = torch.tensor([[[3.0, 0.0]]], dtype=torch.float64)
    got = square_mahalanobis_distance(x, torch.zeros_like(x), torch.full_like(x, 2.0))
    assert got.item() == pytest.approx(0.5 * (3.0 / 2.0) ** 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masks", ["none", "query", "component", "both", "empty_row"], ids=str)
@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (5, 4, 3, 6), (3, 7, 5, 2)], ids=str)
def test_pairwise_equals_broadcast(shape, masks, dtype) -> None:
    m, n, s, e = shape
    g = torch.Generator().manual_seed(m * 100 + n * 10 + s)
    queries = _randn(m, s, e, g=g, dtype=dtype)
    centres = _randn(n, s, e, g=g, dtype=dtype)
    stds = _stds(n, s, e, g=g, dtype=dtype)
    query_mask = torch.rand(m, s, generator=g) < 0.6 if masks in ("query", "both") else None
    component_mask = torch.rand(n, s, generator=g) < 0.6 if masks in ("component", "both") else None
    if masks == "empty_row":
        query_mask = torch.ones(m, s, dtype=torch.bool)
        query_mask[0] = False
        component_mask = torch.ones(n, s, dtype=torch.bool)
        component_mask[-1] = False
    got = pairwise_square_mahalanobis_distance(queries, centres, stds, query_mask, component_mask)
    assert got.shape == (m, n)
    assert got.dtype == dtype
    q = torch.ones(m, s, dtype=torch.bool) if query_mask is None else query_mask
    c = torch.ones(n, s, dtype=torch.bool) if component_mask is None else component_mask
    broadcast = square_mahalanobis_distance(
        queries[:, None], centres[None], stds[None], q[:, None, :] & c[None, :, :]
    )
    expected = ref.pairwise_square_mahalanobis_distance(
        queries, centres, stds, query_mask, component_mask
    )
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, broadcast, rtol=rtol, atol=rtol)
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=rtol)
    if masks == "empty_row":
        assert bool((got[0] == 0).all())
        assert bool((got[:, -1] == 0).all())


@pytest.mark.parametrize("regime", ["common_offset", "large_spread"])
@pytest.mark.parametrize("masked", [False, True])
def test_pairwise_float32_hard_regime(regime, masked) -> None:
    """Centres ~100x the stds: float32 must still agree with float64 to 1e-4 relative."""
    m, n, s, e = 24, 20, 6, 16
    g = torch.Generator().manual_seed(7 if regime == "common_offset" else 8)
    if regime == "common_offset":
        queries = 100.0 + torch.randn(m, s, e, generator=g, dtype=torch.float64)
        centres = 100.0 + torch.randn(n, s, e, generator=g, dtype=torch.float64)
    else:
        centres = 100.0 * torch.randn(n, s, e, generator=g, dtype=torch.float64)
        queries = 100.0 * torch.randn(m, s, e, generator=g, dtype=torch.float64)
        queries[:n] = centres[:m] + torch.randn(min(m, n), s, e, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(n, s, e, generator=g, dtype=torch.float64)
    query_mask = torch.rand(m, s, generator=g) < 0.7 if masked else None
    component_mask = torch.rand(n, s, generator=g) < 0.7 if masked else None
    q32, c32, s32 = queries.float(), centres.float(), stds.float()
    got = pairwise_square_mahalanobis_distance(q32, c32, s32, query_mask, component_mask)
    assert got.dtype == torch.float32
    # the reference evaluates the float32 inputs exactly, in float64
    expected = ref.pairwise_square_mahalanobis_distance(q32, c32, s32, query_mask, component_mask)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    broadcast = square_mahalanobis_distance(
        q32[:, None],
        c32[None],
        s32[None],
        None if not masked else query_mask[:, None, :] & component_mask[None, :, :],
    )
    torch.testing.assert_close(broadcast.double(), expected, rtol=1e-4, atol=1e-6)


def test_gradcheck_distances() -> None:
    g = torch.Generator().manual_seed(9)
    queries = torch.randn(3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    centres = torch.randn(4, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    stds = (0.5 + torch.rand(4, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    query_mask = torch.tensor([[True, False, True], [False, False, False], [True, True, True]])
    component_mask = torch.rand(4, 3, generator=g) < 0.6
    assert torch.autograd.gradcheck(
        lambda q, c, s: pairwise_square_mahalanobis_distance(q, c, s, query_mask, component_mask),
        (queries, centres, stds),
    )
    x = torch.randn(3, 3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    s3 = (0.5 + torch.rand(3, 3, 2, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, s: square_mahalanobis_distance(a, b, s, query_mask),
        (x, queries, s3),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_distances(dtype) -> None:
    g = torch.Generator().manual_seed(10)
    queries = torch.randn(4, 3, 5, generator=g).to(dtype)
    centres = torch.randn(6, 3, 5, generator=g).to(dtype)
    stds = (0.5 + torch.rand(6, 3, 5, generator=g)).to(dtype)
    query_mask = torch.rand(4, 3, generator=g) < 0.6
    got = pairwise_square_mahalanobis_distance(queries, centres, stds, query_mask)
    assert got.dtype == dtype
    expected = pairwise_square_mahalanobis_distance(
        queries.float(), centres.float(), stds.float(), query_mask
    )
    torch.testing.assert_close(got.float(), expected, rtol=1e-2, atol=1e-2)
    broadcast = square_mahalanobis_distance(queries[:, None], centres[None], stds[None])
    assert broadcast.dtype == dtype
    torch.testing.assert_close(
        broadcast.float(),
        square_mahalanobis_distance(
            queries[:, None].float(), centres[None].float(), stds[None].float()
        ),
        rtol=1e-2,
        atol=1e-2,
    )


@pytest.mark.parametrize("std", [1.0, 0.01])
@pytest.mark.parametrize("offset_over_std", [0.0, 10.0, 100.0])
@pytest.mark.parametrize("spread_over_std", [0.01, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("shape", [(8, 8, 1, 1), (16, 12, 4, 16), (40, 40, 2, 64)], ids=str)
def test_pairwise_float32_regime_scan(shape, spread_over_std, offset_over_std, std) -> None:
    """|c| up to ~100 sigma, half of the queries next to a centre (near-zero distances):
    float32 within 1e-4 relative of the float64 evaluation, or 1e-4 nats absolute."""
    m, n, s, e = shape
    g = torch.Generator().manual_seed(int(offset_over_std) + int(100 * spread_over_std) + e)
    offset, spread = offset_over_std * std, spread_over_std * std
    queries = offset + spread * torch.randn(m, s, e, generator=g, dtype=torch.float64)
    centres = offset + spread * torch.randn(n, s, e, generator=g, dtype=torch.float64)
    near = min(m, n)
    queries[:near] = centres[:near] + std * torch.randn(
        near, s, e, generator=g, dtype=torch.float64
    )
    stds = std * (0.5 + torch.rand(n, s, e, generator=g, dtype=torch.float64))
    q32, c32, s32 = queries.float(), centres.float(), stds.float()
    got = pairwise_square_mahalanobis_distance(q32, c32, s32)
    expected = ref.pairwise_square_mahalanobis_distance(q32, c32, s32)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
