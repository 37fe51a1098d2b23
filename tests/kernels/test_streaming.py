"""The streaming kernel: block-size independence, exact second derivatives, ``torch.func``,
inactive positions never read, empty axes, ``torch.compile(fullgraph=True)``."""

from __future__ import annotations

import itertools
import mmap

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.utils._python_dispatch import TorchDispatchMode

from mi_losses.functional import (
    gaussian_mixture_entropy,
    mutual_information_sub_batch,
    pairwise_square_mahalanobis_distance,
    square_mahalanobis_distance,
)
from mi_losses.kernels import memory, streaming
from mi_losses.kernels.directions import ALIGN_ROWS, Direction, block_rows
from mi_losses.kernels.memory import ADVISED_BYTES, FRESH_BYTES, HUGE_PAGE_BYTES, zeros
from mi_losses.kernels.streaming import columns
from mi_losses.kernels.vocabulary import Vocabulary, chunks
from mi_losses.options import KernelOptions

# Blocks of one component, blocks that divide nothing, one block for everything (then the
# reference path: all scores fit).
BLOCK_BYTES = [1, 700, 5_000, 2**30]


def _mi_inputs(b: int, s: int, e: int, seed: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(b, s, e, generator=g, dtype=dtype) + 3.0
    means = 0.1 * torch.randn(b, s, e, generator=g, dtype=dtype)
    stds = 0.4 + torch.rand(b, s, e, generator=g, dtype=dtype)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (means, stds, clean, noisy)]


def _mask(b: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, s, generator=g) < 0.6
    mask[0] = False  # a fully masked query
    mask[-1] = False  # a fully masked component
    mask[1, 0] = True
    return mask


def _value_and_grads(fn, inputs):
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    return value.detach(), [None if g is None else g.detach() for g in grads]


@pytest.mark.parametrize(
    ("rows", "per_block"),
    [(1000, 478), (1000, 64), (1000, 30), (1000, 10), (300, 1000), (130, 129), (0, 5)],
)
def test_block_rows_cover_the_rows_in_aligned_blocks(rows: int, per_block: int) -> None:
    blocks = block_rows(rows, 4, 4 * per_block)
    assert [i for block in blocks for i in range(*block)] == list(range(rows))
    sizes = {stop - start for start, stop in blocks[:-1]}  # the last one may be shorter
    assert all(size <= per_block for size in sizes)
    if per_block > ALIGN_ROWS and len(blocks) > 1:
        assert sizes == {per_block - per_block % ALIGN_ROWS}
    elif len(blocks) > 1:
        assert sizes == {per_block}


@pytest.mark.parametrize("queries", [8192, 100, 0])
def test_component_blocks_stay_below_fresh_pages_on_cpu(queries: int) -> None:
    """Each ``(m, block)`` matrix of a block stays below glibc's largest mmap threshold, however
    large the budget; the blocks cover every component."""
    n, e = 20_000, 2
    d = Direction(
        torch.zeros(queries, 1, e), None, *torch.zeros(3, n, 1, e),
        torch.ones(queries, 1, dtype=torch.bool), torch.ones(n, 1, dtype=torch.bool),
    )  # fmt: skip
    blocks = columns(d, torch.float32, 2**30)
    assert [i for block in blocks for i in range(*block)] == list(range(n))
    assert all(queries * (stop - start) * 4 < FRESH_BYTES for start, stop in blocks)
    if queries == 8192:
        assert len(blocks) > 1


class _Madvise:
    """A stand-in for libc that records ``madvise(start, length, advice)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []

    def madvise(self, start, length, advice) -> int:  # type: ignore[no-untyped-def]
        self.calls.append((start.value, length.value, advice))
        return 0


huge_pages = pytest.mark.skipif(
    not hasattr(mmap, "MADV_HUGEPAGE"), reason="madvise(MADV_HUGEPAGE) is Linux only"
)


@huge_pages
@pytest.mark.parametrize(
    "size", [ADVISED_BYTES - 4, ADVISED_BYTES, ADVISED_BYTES + 12, 3 * HUGE_PAGE_BYTES + 12]
)
def test_zeros_ask_for_huge_pages_within_themselves(size: int, monkeypatch) -> None:
    """Tensors of ``ADVISED_BYTES`` (two huge pages) or more are advised to huge pages on their
    whole 2 MiB pages (never past their own bytes), smaller ones not; all hold zeros."""
    libc = _Madvise()
    monkeypatch.setattr(memory, "_LIBC", [libc])
    t = zeros((size // 4,), torch.float32, torch.device("cpu"))
    assert torch.count_nonzero(t) == 0 and t.dtype == torch.float32
    if size < ADVISED_BYTES:
        assert libc.calls == []
        return
    ((start, length, advice),) = libc.calls
    assert advice == mmap.MADV_HUGEPAGE
    assert start % HUGE_PAGE_BYTES == 0 and length % HUGE_PAGE_BYTES == 0 and length > 0
    assert t.data_ptr() <= start and start + length <= t.data_ptr() + size
    assert t.data_ptr() + size - (start + length) < HUGE_PAGE_BYTES  # every whole page


@huge_pages
def test_gradient_buffers_ask_for_huge_pages(monkeypatch) -> None:
    """The streaming backward pass takes its three gradient buffers from :func:`zeros`: every
    one advised, the gradients are those of ``torch.zeros`` buffers."""
    inputs = _mi_inputs(4, 8, 20_000, seed=21)  # 5 MiB per float64 input: two whole pages
    mask = _mask(4, 8, seed=22)

    def fn(*inputs):
        return mutual_information_sub_batch(
            inputs[0], inputs[1], mask, inputs[2], inputs[3], kernel="streaming"
        )

    libc = _Madvise()
    monkeypatch.setattr(memory, "_LIBC", [libc])
    value, grads = _value_and_grads(fn, inputs)
    assert len(libc.calls) == 3  # queries, centres (x and mu), stds
    plain = lambda shape, dtype, device: torch.zeros(shape, dtype=dtype, device=device)  # noqa: E731
    monkeypatch.setattr(streaming, "zeros", plain)
    expected_value, expected = _value_and_grads(fn, inputs)
    assert len(libc.calls) == 3
    assert torch.equal(value, expected_value)
    for grad, want in zip(grads, expected, strict=True):
        assert torch.equal(grad, want)


@pytest.mark.parametrize(("queries", "size"), [(4096, 4096), (2048, 4096), (100, 5000), (0, 7)])
def test_vocabulary_chunks_stay_below_fresh_pages_on_cpu(queries: int, size: int) -> None:
    rows = 20_000
    vocabulary = Vocabulary(*torch.zeros(3, rows, 1), torch.zeros(rows), torch.ones(rows) > 0)
    bounds = chunks(torch.zeros(queries, 1), vocabulary, size)
    assert [i for chunk in bounds for i in range(*chunk)] == list(range(rows))
    assert all(stop - start <= size for start, stop in bounds)
    assert all(queries * (stop - start) * 4 < FRESH_BYTES for start, stop in bounds)
    if queries * size * 4 >= FRESH_BYTES:
        assert max(stop - start for start, stop in bounds) % ALIGN_ROWS == 0


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_mutual_information_does_not_depend_on_block_size(granularity, symmetric) -> None:
    b, s, e = 8, 5, 3
    inputs = _mi_inputs(b, s, e, seed=1)
    mask = _mask(b, s, seed=2)
    results = []
    for block_bytes in BLOCK_BYTES:

        def fn(means, stds, clean, noisy, block_bytes=block_bytes):
            return mutual_information_sub_batch(
                means,
                stds,
                mask,
                clean,
                noisy,
                granularity=granularity,
                symmetric=symmetric,
                kernel=KernelOptions(max_block_bytes=block_bytes),
            )

        results.append(_value_and_grads(fn, inputs))
    value, grads = results[-1]
    assert value != 0
    for other_value, other_grads in results[:-1]:
        torch.testing.assert_close(other_value, value, rtol=1e-12, atol=1e-12)
        for got, expected in zip(other_grads, grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_mixture_entropy_does_not_depend_on_block_size(granularity) -> None:
    inputs = _mi_inputs(6, 4, 3, seed=3)
    means, stds, clean, _ = inputs
    queries = torch.randn(7, 4, 3, dtype=torch.float64, requires_grad=True)
    mask, component_mask = _mask(7, 4, seed=4), _mask(6, 4, seed=5)
    results = []
    for block_bytes in BLOCK_BYTES:

        def fn(clean, queries, means, stds, block_bytes=block_bytes):
            return gaussian_mixture_entropy(
                clean,
                queries,
                means,
                stds,
                mask,
                component_mask=component_mask,
                granularity=granularity,
                kernel=KernelOptions(max_block_bytes=block_bytes),
            )

        results.append(_value_and_grads(fn, [clean, queries, means, stds]))
    for other_value, other_grads in results[:-1]:
        torch.testing.assert_close(other_value, results[-1][0], rtol=1e-12, atol=1e-12)
        for got, expected in zip(other_grads, results[-1][1], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


MI_FLAGS = list(itertools.product(["sequence", "token"], [False, True], [False, True]))


@pytest.mark.slow
@pytest.mark.parametrize(("granularity", "combine", "symmetric"), MI_FLAGS)
def test_mutual_information_second_derivatives(granularity, combine, symmetric) -> None:
    inputs = _mi_inputs(4, 2, 2, seed=6)
    mask = _mask(4, 2, seed=7)
    mask[2, 1] = True

    def fn(means, stds, clean, noisy):
        return mutual_information_sub_batch(
            means,
            stds,
            mask,
            clean,
            noisy,
            combine,
            granularity=granularity,
            symmetric=symmetric,
            kernel=KernelOptions(
                max_block_bytes=200 if symmetric else 2**27
            ),  # blocks of one row, or one block
        )

    assert gradcheck(fn, inputs)
    assert gradgradcheck(fn, inputs)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("masked", [False, True])
def test_mixture_entropy_second_derivatives(granularity, masked) -> None:
    means, stds, clean, _ = _mi_inputs(3, 3, 2, seed=8)
    queries = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    mask = _mask(4, 3, seed=9) if masked else None
    component_mask = _mask(3, 3, seed=10) if masked else None

    def fn(clean, queries, means, stds):
        return gaussian_mixture_entropy(
            clean,
            queries,
            means,
            stds,
            mask,
            component_mask=component_mask,
            granularity=granularity,
        )

    assert gradcheck(fn, (clean, queries, means, stds))
    assert gradgradcheck(fn, (clean, queries, means, stds))


def test_distances_second_derivatives() -> None:
    g = torch.Generator().manual_seed(11)
    queries = torch.randn(3, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    centres = torch.randn(5, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    stds = (0.5 + torch.rand(5, 2, 4, generator=g, dtype=torch.float64)).requires_grad_()
    query_mask = torch.tensor([[True, False], [True, True], [False, False]])

    def pairwise(q, c, s):
        return pairwise_square_mahalanobis_distance(q, c, s, query_mask)

    assert gradgradcheck(pairwise, (queries, centres, stds))
    (grad,) = torch.autograd.grad(
        pairwise(queries, centres, stds).sum(), queries, create_graph=True
    )
    assert grad.requires_grad

    def broadcast(x, y, s):
        return square_mahalanobis_distance(x, y, s, query_mask[:, :1].expand(3, 2))

    assert gradgradcheck(broadcast, (queries, centres[:3], stds[:3]))


def test_gradient_penalty_matches_float64_broadcast_reference() -> None:
    """Second derivative through ``create_graph=True`` against a direct broadcast formula."""
    means, stds, clean, noisy = _mi_inputs(6, 2, 3, seed=12)

    def reference(means, stds, clean, noisy):
        half = 3
        centres = clean + means
        y, c_q, s_q = noisy[:half], centres[:half], stds[:half]
        c, s = centres[half:], stds[half:]
        own = (0.5 * ((y - c_q) / s_q) ** 2 + s_q.log()).sum((-1, -2))
        other = (0.5 * ((y[:, None] - c[None]) / s[None]) ** 2 + s.log()[None]).sum((-1, -2))
        log_ratio = other - own[:, None]
        n = torch.tensor(float(half), dtype=torch.float64)
        return (n.log() - torch.logsumexp(-log_ratio, dim=-1)).mean()

    def penalty(fn):
        value = fn(means, stds, clean, noisy)
        (grad,) = torch.autograd.grad(value, noisy, create_graph=True)
        return torch.autograd.grad(grad.square().sum(), [means, stds, clean, noisy])

    got = penalty(lambda *a: mutual_information_sub_batch(a[0], a[1], None, a[2], a[3]))
    expected = penalty(reference)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-10)


def test_torch_func_grad_and_jacrev() -> None:
    means, stds, clean, noisy = (t.detach() for t in _mi_inputs(4, 3, 2, seed=13))
    mask = _mask(4, 3, seed=14)
    mask[2, 1] = True

    def fn(stds):
        return mutual_information_sub_batch(means, stds, mask, clean, noisy, granularity="token")

    leaf = stds.clone().requires_grad_()
    (expected,) = torch.autograd.grad(fn(leaf), leaf)
    torch.testing.assert_close(torch.func.grad(fn)(stds), expected)
    torch.testing.assert_close(torch.func.jacrev(fn)(stds), expected)
    hessian_row = torch.func.grad(lambda s: torch.func.grad(fn)(s)[1, 0, 0])(stds)
    (grad,) = torch.autograd.grad(fn(leaf), leaf, create_graph=True)
    (expected_row,) = torch.autograd.grad(grad[1, 0, 0], leaf)
    torch.testing.assert_close(hessian_row, expected_row)


@pytest.mark.parametrize(
    ("block_bytes", "chunk_bytes", "compiled", "padded"),
    [
        (None, streaming.CHUNK_BYTES, False, False),
        (256, streaming.CHUNK_BYTES, False, False),
        (256, 1, False, False),
        (None, 1, False, True),
        (None, 1, True, False),
        (256, 1, True, False),
        (None, 1, True, True),
    ],
    ids=[
        "one block", "blocks", "blocks, a row per chunk", "dense chunks",
        "compiled, a position per chunk", "compiled blocks, a row per chunk",
        "compiled dense chunks",
    ],
)  # fmt: skip
@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("fill", [float("nan"), float("inf"), 0.0, -1.0, 1e30, 1e-30])
def test_inactive_positions_are_never_read(
    granularity, fill, block_bytes, chunk_bytes, compiled, padded, monkeypatch
) -> None:
    """``padded``: sequences padded at their ends, so that some chunks of positions are
    active for every query and component (and skip the masks) and others are not."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", chunk_bytes)
    if chunk_bytes == 1:  # the query rows of the several-block path in chunks too
        monkeypatch.setattr(streaming, "FRESH_BYTES", 1)
    b, s, e = 6, 4, 3
    clean_inputs = _mi_inputs(b, s, e, seed=15)
    mask = (
        torch.arange(s) < torch.tensor([1, 4, 2, 4, 3, 1]).unsqueeze(1)
        if padded
        else _mask(b, s, seed=16)
    )
    inactive = ~mask.unsqueeze(-1)
    dirty_inputs = [torch.where(inactive, fill, t.detach()).requires_grad_() for t in clean_inputs]
    options = KernelOptions(
        kernel="streaming", max_block_bytes=block_bytes or 2**28, compiled_factors=compiled
    )

    def fn(*inputs):
        return mutual_information_sub_batch(
            inputs[0], inputs[1], mask, inputs[2], inputs[3], granularity=granularity,
            kernel=options,
        )  # fmt: skip

    value, grads = _value_and_grads(fn, clean_inputs)
    dirty_value, dirty_grads = _value_and_grads(fn, dirty_inputs)
    assert torch.equal(value, dirty_value)
    for grad, dirty in zip(grads, dirty_grads, strict=True):
        assert torch.equal(grad, dirty)
        assert torch.equal(
            dirty[inactive.expand_as(dirty)], torch.zeros_like(dirty[inactive.expand_as(dirty)])
        )


class MatrixProducts(TorchDispatchMode):
    """The shapes of the operands of every matrix product."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.shapes += [tuple(t.shape) for t in args if isinstance(t, torch.Tensor)]
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("symmetric", [False, True])
def test_blocks_multiply_active_tokens_only(symmetric: bool) -> None:
    """At token granularity the blocks gather the tokens with an active position: no matrix
    product, forward or backward, has a row or column per padding token."""
    b, s, e = 6, 8, 5
    inputs = _mi_inputs(b, s, e, seed=21, dtype=torch.float32)
    mask = torch.arange(s) < torch.tensor([8, 6, 3, 7, 5, 2]).unsqueeze(1)
    active = {int(mask[:3].sum()), int(mask[3:].sum())}  # 17 and 14 of 24 tokens per half
    with MatrixProducts() as products:
        value = mutual_information_sub_batch(
            *inputs[:2], mask, *inputs[2:], granularity="token", symmetric=symmetric,
            kernel=KernelOptions(kernel="streaming", max_block_bytes=2048),
        )  # fmt: skip
        torch.autograd.grad(value, inputs)
    sizes = {size for shape in products.shapes for size in shape}
    assert len(products.shapes) > 10 and sizes & active  # the active queries
    assert max(sizes) <= max(active)  # never b // 2 * s = 24 rows


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("shape", [(4, 0, 3), (4, 3, 0)], ids=["S=0", "E=0"])
def test_empty_axes_give_zero_with_zero_gradients(granularity, shape) -> None:
    inputs = _mi_inputs(*shape, seed=17)
    value = mutual_information_sub_batch(
        inputs[0], inputs[1], None, inputs[2], inputs[3], granularity=granularity
    )
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    if shape[2] == 0 and granularity == "sequence":
        assert value == 0  # every pair compares no feature: all ratios are 1
    assert torch.isfinite(value)
    for grad in grads:
        assert grad is None or grad.numel() == 0


def test_mixture_entropy_without_components_is_zero() -> None:
    means, stds, clean, _ = _mi_inputs(0, 3, 2, seed=18)
    queries = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    value = gaussian_mixture_entropy(clean, queries, means, stds, None)
    assert value == 0
    (grad,) = torch.autograd.grad(value, queries)
    assert torch.equal(grad, torch.zeros_like(queries))


@pytest.mark.slow
def test_compile_fullgraph_without_validation() -> None:
    torch._dynamo.reset()
    means, stds, clean, noisy = _mi_inputs(4, 3, 2, seed=19, dtype=torch.float32)
    mask = _mask(4, 3, seed=20)
    mask[2, 1] = True

    def fn(means, stds, clean, noisy):
        return mutual_information_sub_batch(
            means, stds, mask, clean, noisy, granularity="token", validate_args=False,
            kernel=KernelOptions(accuracy_check=False),  # the fallback is a graph break
        )  # fmt: skip

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    value = compiled(means, stds, clean, noisy)
    expected = fn(means, stds, clean, noisy)
    torch.testing.assert_close(value, expected)
    inputs = (means, stds, clean, noisy)
    for got, want in zip(
        torch.autograd.grad(value, inputs), torch.autograd.grad(expected, inputs), strict=True
    ):
        torch.testing.assert_close(got, want)
    torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize(("granularity", "budget"), [("sequence", 2**28), ("token", 300)])
def test_compile_fullgraph_with_chunks_and_blocks(granularity, budget, monkeypatch, fresh_dynamo):
    """``kernel="streaming"`` compiles whole where eager would read the host: several chunks
    of positions (the dense-chunk flags) and several blocks of components (the active rows).
    Compiled, every chunk masks and every row takes part; values and gradients are eager's."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1)
    inputs = _mi_inputs(6, 4, 3, seed=23, dtype=torch.float32)
    mask = torch.arange(4) < torch.tensor([1, 4, 2, 4, 4, 3]).unsqueeze(1)  # padded ends
    options = KernelOptions(kernel="streaming", max_block_bytes=budget, accuracy_check=False)

    def fn(*inputs):
        return mutual_information_sub_batch(
            inputs[0], inputs[1], mask, inputs[2], inputs[3], granularity=granularity,
            validate_args=False, kernel=options,
        )  # fmt: skip

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    value, grads = _value_and_grads(compiled, inputs)
    expected, expected_grads = _value_and_grads(fn, inputs)
    torch.testing.assert_close(value, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
