"""Every path of the kernel equals the reference path, and the reference path equals a direct
float64 evaluation: values, statistics and every gradient, on every mask and flag.

The Triton path's cases are in ``triton_cases.py``: :func:`test_triton_under_the_interpreter`
runs them in a subprocess with ``TRITON_INTERPRET=1`` (read when ``triton`` is first imported).
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from mi_losses.kernels import Plan, make_plan, stream, streaming
from mi_losses.kernels.compiled import compiled
from mi_losses.kernels.dispatch import choose
from mi_losses.kernels.factors import Sides
from mi_losses.options import KernelOptions

# (granularity, own term, two directions, masks, gathered component rows)
MATRIX = list(
    itertools.product(
        ["sequence", "token"], [True, False], [False, True], ["none", "random"], [0, 3]
    )
)


def _inputs(rows: int, s: int, e: int, extra: int, seed: int, dtype: torch.dtype, scale=1.0):
    """Queries ``(rows, S, E)``; components (and own terms) ``(rows + extra, S, E)``."""
    g = torch.Generator().manual_seed(seed)
    n = rows + extra
    clean = (torch.randn(n, s, e, generator=g, dtype=torch.float64) + 2.0) * scale
    means = 0.1 * torch.randn(n, s, e, generator=g, dtype=torch.float64) * scale
    stds = (0.5 + torch.rand(n, s, e, generator=g, dtype=torch.float64)) * scale
    noisy = (
        clean[:rows]
        + means[:rows]
        + stds[:rows] * torch.randn(rows, s, e, generator=g, dtype=torch.float64)
    )
    return [t.to(dtype).requires_grad_() for t in (noisy, clean, means, stds)]


def _masks(rows: int, n: int, s: int, pattern: str, seed: int):
    if pattern == "none":
        return torch.ones(rows, s, dtype=torch.bool), torch.ones(n, s, dtype=torch.bool)
    g = torch.Generator().manual_seed(seed)
    if pattern == "padded":  # sequences of 2 to S positions: the first two active everywhere
        lengths = torch.randint(2, s + 1, (rows + n,), generator=g)
        lengths[0] = 2
        mask = torch.arange(s) < lengths.unsqueeze(1)
        return mask[:rows], mask[rows:]
    query_mask = torch.rand(rows, s, generator=g) < 0.6
    component_mask = torch.rand(n, s, generator=g) < 0.6
    query_mask[0] = False  # a query without positions
    component_mask[-1] = False  # a component without positions
    return query_mask, component_mask


def _problem(granularity, with_own, symmetric, pattern, extra, dtype=torch.float64, size=(8, 3, 4)):
    """Token granularity: every token a sample (masks on ``(rows, 1)``)."""
    (rows, s, e), seed = size, 0
    if granularity == "token":
        rows, s, extra = rows * s, 1, extra * s
    tensors = _inputs(rows, s, e, extra, seed, dtype)
    masks = _masks(rows, rows + extra, s, pattern, seed + 1)
    half = rows // 2
    directions = [(0, half, half, rows + extra)]
    if symmetric:
        directions.append((half, rows, 0, half))
    return tensors, masks, directions


def _run(tensors, masks, directions, with_own, options: KernelOptions, dtype=None):
    dtype = dtype or torch.promote_types(tensors[0].dtype, torch.float32)
    plan = make_plan(directions, with_own=with_own, dtype=dtype, options=options)
    result = stream(*tensors, *masks, plan)
    lse = result.log_sum_exp
    # A weighted sum of the finite values: every query's gradient is tested.
    weights = torch.linspace(0.5, 1.5, lse.shape[0], dtype=lse.dtype)
    total = torch.where(torch.isfinite(lse), lse, 0.0) @ weights
    grads = torch.autograd.grad(total, tensors, allow_unused=True)
    return [t.detach() for t in result], [
        torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors, strict=True)
    ]


def _naive(tensors, masks, directions, with_own):
    """``logsumexp_{j in V_i} z_ij`` in float64 by broadcasting (docs/math.md, slow, obvious)."""
    noisy, clean, means, stds = (t.double() for t in tensors)  # differentiable
    query_mask, component_mask = masks
    out = []
    for q0, q1, c0, c1 in directions:
        a, b = query_mask[q0:q1, None, :], component_mask[None, c0:c1, :]
        pair = (a & b).unsqueeze(-1)  # (m, n, S, 1)
        y, sigma = noisy[q0:q1, None], stds[None, c0:c1]
        # (y - x) - mu: y - (x + mu) would round mu away far from the origin, even in float64.
        difference = (y - clean[None, c0:c1]) - means[None, c0:c1]
        terms = 0.5 * (difference / sigma) ** 2 + sigma.log() + 0.5 * math.log(2 * math.pi)
        if with_own:
            own = (y - clean[q0:q1, None]) - means[q0:q1, None]
            own_s = stds[q0:q1, None]
            terms = terms - 0.5 * (own / own_s) ** 2 - own_s.log() - 0.5 * math.log(2 * math.pi)
        z = -torch.where(pair, terms, 0.0).sum((-1, -2))
        valid = pair.any(-1).any(-1)
        out.append(torch.logsumexp(torch.where(valid, z, -math.inf), -1))
    return torch.cat(out)


def _assert_equals_naive(lse, grads, tensors, masks, directions, with_own) -> None:
    """``lse`` equals :func:`_naive`, and ``grads`` (of :func:`_run`'s weighted sum) autograd
    through it."""
    expected = _naive(tensors, masks, directions, with_own)
    torch.testing.assert_close(lse, expected.detach())
    weights = torch.linspace(0.5, 1.5, expected.shape[0], dtype=expected.dtype)
    total = torch.where(torch.isfinite(expected), expected, 0.0) @ weights
    for grad, want, t in zip(
        grads, torch.autograd.grad(total, tensors, allow_unused=True), tensors, strict=True
    ):
        torch.testing.assert_close(grad, torch.zeros_like(t) if want is None else want)


@pytest.mark.parametrize(("granularity", "with_own", "symmetric", "pattern", "extra"), MATRIX)
def test_reference_equals_direct_float64(granularity, with_own, symmetric, pattern, extra) -> None:
    tensors, masks, directions = _problem(granularity, with_own, symmetric, pattern, extra)
    (lse, *_), _ = _run(tensors, masks, directions, with_own, KernelOptions(kernel="reference"))
    torch.testing.assert_close(lse, _naive(tensors, masks, directions, with_own))


@pytest.mark.parametrize("chunk_bytes", [1, streaming.CHUNK_BYTES])
@pytest.mark.parametrize("budget", [1, 700, 2000, 9000, 2**30])
@pytest.mark.parametrize(("granularity", "with_own", "symmetric", "pattern", "extra"), MATRIX)
def test_streaming_equals_reference(
    granularity, with_own, symmetric, pattern, extra, budget, chunk_bytes, monkeypatch
) -> None:
    """Blocks of one component, of a few, one block for all scores (then the factors are made
    a chunk of positions at a time: one position per chunk with ``chunk_bytes=1``, made again
    by the backward pass; with ``budget=2000`` the sequence problems' scores fit one block,
    their factors do not; with ``budget=9000`` the token problems take several blocks whose
    scores are kept for the backward pass)."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", chunk_bytes)
    if chunk_bytes == 1:  # the query rows of the several-block path in chunks too
        monkeypatch.setattr(streaming, "FRESH_BYTES", 1)
    tensors, masks, directions = _problem(granularity, with_own, symmetric, pattern, extra)
    expected = _run(tensors, masks, directions, with_own, KernelOptions(kernel="reference"))
    options = KernelOptions(kernel="streaming", max_block_bytes=budget)
    got = _run(tensors, masks, directions, with_own, options)
    for value, want in zip([*got[0], *got[1]], [*expected[0], *expected[1]], strict=True):
        torch.testing.assert_close(value, want)


@pytest.mark.parametrize("chunk_bytes", [1, streaming.CHUNK_BYTES])
def test_factors_kept_only_for_one_chunk(chunk_bytes, monkeypatch) -> None:
    """One chunk of positions: its factors are kept for the backward pass (which makes them at
    its peak anyway). Several: they are made again there (memory linear in the samples)."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", chunk_bytes)
    tensors, masks, directions = _problem("sequence", True, False, "random", 0)
    (d,) = streaming.directions((*tensors, *masks), tuple(directions), True)
    _, saved = streaming.TorchBlocks().forward(
        d, torch.float64, KernelOptions(kernel="streaming"), check=True, with_statistics=False
    )
    assert d.queries.shape[1] > 1
    if chunk_bytes == 1:
        assert saved.factors is None
    else:
        assert isinstance(saved.factors, Sides)
        assert saved.factors.queries.y.shape == (d.queries.shape[0], d.queries[0].numel())


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize(("with_own", "symmetric", "extra"), [(True, True, 0), (False, False, 3)])
def test_dense_chunks_equal_direct_float64(compiled, with_own, symmetric, extra, monkeypatch):
    """Sequences padded at their ends, a position per chunk: the chunks where every query and
    component is active skip the masks (two passes fewer per input), the others replace the
    padding. Values equal the direct float64 evaluation, gradients autograd through it."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1)
    tensors, masks, directions = _problem(
        "sequence", with_own, symmetric, "padded", extra, size=(8, 5, 4)
    )
    dense = []
    for d in streaming.directions((*tensors, *masks), tuple(directions), with_own):
        dense += streaming._dense(d, streaming._positions(d, torch.float64))
    assert any(dense) and not all(dense)  # both kinds of chunk in the call
    options = KernelOptions(kernel="streaming", compiled_factors=compiled)
    (lse, *_), grads = _run(tensors, masks, directions, with_own, options)
    _assert_equals_naive(lse, grads, tensors, masks, directions, with_own)


@pytest.mark.parametrize("budget", [1, 2**30])
@pytest.mark.parametrize(
    ("granularity", "with_own"), [("sequence", True), ("sequence", False), ("token", True)]
)
def test_compiled_factors_equal_direct_float64(granularity, with_own, budget, monkeypatch) -> None:
    """``compiled_factors=True`` (Inductor's generated code): values equal the direct float64
    evaluation and gradients autograd through it, on random masks with a position and a row
    per chunk, in several blocks of components (``budget=1``) or one."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1)
    monkeypatch.setattr(streaming, "FRESH_BYTES", 1)
    tensors, masks, directions = _problem(granularity, with_own, True, "random", 3)
    options = KernelOptions(kernel="streaming", max_block_bytes=budget, compiled_factors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # compiled, not the eager fallback
        (lse, *_), grads = _run(tensors, masks, directions, with_own, options)
    _assert_equals_naive(lse, grads, tensors, masks, directions, with_own)


def test_compiled_factors_fall_back_to_eager_with_one_warning() -> None:
    """Where compilation fails (here the backend raises, as Inductor does without a C++
    compiler), the eager function runs and a warning says why, once."""

    def broken(graph, example_inputs):
        raise RuntimeError("no working C++ compiler")

    def scaled(t: torch.Tensor) -> torch.Tensor:
        return t * 2.0 + 1.0

    run = compiled(scaled, backend=broken)
    t = torch.arange(5.0)
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="compile failed.*no working C\\+\\+ compiler"):
            torch.testing.assert_close(run(t), scaled(t))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            torch.testing.assert_close(run(t), scaled(t))


def test_compiled_factors_compile_past_dynamo_default_limit() -> None:
    """Every combination of a maker's flags is a graph of its own; past dynamo's default limit
    of 8 graphs per function it would run eagerly (two sequence shapes reached it)."""
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    def flagged(t: torch.Tensor, *, a: bool, b: bool, c: bool, d: bool) -> torch.Tensor:
        return t * (1.0 + a) + (2.0 + b) * (3.0 + c) - float(d)

    run = compiled(flagged, backend=counting)
    t = torch.arange(5.0)
    with torch.no_grad():
        for flags in itertools.product([False, True], repeat=4):
            kwargs = dict(zip("abcd", flags, strict=True))
            torch.testing.assert_close(run(t, **kwargs), flagged(t, **kwargs))
    assert len(graphs) == 16
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("kernel", "granularity", "with_own", "budget", "pattern"),
    [
        pytest.param("reference", "sequence", True, 500, "random", marks=pytest.mark.slow),
        pytest.param("reference", "token", False, 500, "random", marks=pytest.mark.slow),
        pytest.param("streaming", "sequence", True, 500, "random", marks=pytest.mark.slow),
        pytest.param("streaming", "sequence", True, 2**30, "random", marks=pytest.mark.slow),
        pytest.param("streaming", "sequence", True, 2**30, "padded", marks=pytest.mark.slow),
        pytest.param("streaming", "token", True, 9000, "random", marks=pytest.mark.slow),
    ],
)
def test_gradcheck_and_gradgradcheck(
    kernel, granularity, with_own, budget, pattern, monkeypatch
) -> None:
    """Several blocks of components (``budget=500``), or one block with one position per chunk
    (``padded``: some chunks active for every pair, which skip the masks)."""
    monkeypatch.setattr(streaming, "CHUNK_BYTES", 1)
    tensors, masks, directions = _problem(granularity, with_own, True, pattern, 0)
    options = KernelOptions(kernel=kernel, max_block_bytes=budget)
    plan = make_plan(directions, with_own=with_own, dtype=torch.float64, options=options)

    def fn(*tensors):
        lse = stream(*tensors, *masks, plan).log_sum_exp
        return torch.where(torch.isfinite(lse), lse, 0.0)

    assert gradcheck(fn, tuple(tensors))
    assert gradgradcheck(fn, tuple(tensors))


@pytest.mark.parametrize("kernel", ["reference", "streaming"])
@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_rounding_check_falls_back_to_float64(kernel, offset) -> None:
    """Data ``offset`` stds from the origin and near-duplicates: float32 inputs, exact result."""
    tensors = _inputs(8, 3, 4, 0, seed=7, dtype=torch.float64)
    noisy, clean, means, stds = (t.detach() for t in tensors)
    clean = clean + offset
    noisy = clean + means + 1e-3 * stds  # near-duplicates of their own centres
    noisy[1] = clean[5] + means[5]  # and of another component
    tensors = [t.float().requires_grad_() for t in (noisy, clean, means, stds)]
    masks = _masks(8, 8, 3, "random", 3)
    options = KernelOptions(kernel=kernel, max_block_bytes=300)
    (lse, *_), _ = _run(tensors, masks, [(0, 4, 4, 8), (4, 8, 0, 4)], True, options)
    expected = _naive(tensors, masks, [(0, 4, 4, 8), (4, 8, 0, 4)], True)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=1e-4)


def test_padding_never_read_on_every_path() -> None:
    tensors, masks, directions = _problem("sequence", True, True, "random", 0)
    for kernel in ["reference", "streaming"]:
        options = KernelOptions(kernel=kernel, max_block_bytes=500)
        clean_run = _run(tensors, masks, directions, True, options)
        poisoned = []
        for t in tensors:
            t = t.detach().clone()
            inactive = ~(masks[0] | masks[1]) if t.shape[0] == masks[1].shape[0] else ~masks[0]
            t[inactive] = math.nan
            poisoned.append(t.requires_grad_())
        dirty_run = _run(poisoned, masks, directions, True, options)
        for value, want in zip(
            [*dirty_run[0], *dirty_run[1]], [*clean_run[0], *clean_run[1]], strict=True
        ):
            torch.testing.assert_close(value, want)


def test_empty_axes() -> None:
    for rows, s, e in [(0, 3, 4), (8, 0, 4), (8, 3, 0)]:
        tensors = [
            torch.ones(rows, s, e, dtype=torch.float64, requires_grad=True) for _ in range(4)
        ]
        masks = (torch.ones(rows, s, dtype=torch.bool), torch.ones(rows, s, dtype=torch.bool))
        half = rows // 2
        for kernel in ["reference", "streaming"]:
            result, grads = _run(
                tensors, masks, [(0, half, half, rows)], True, KernelOptions(kernel=kernel)
            )
            assert result[0].shape == (half,)
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


def test_choice_of_path(monkeypatch) -> None:
    tensors, masks, directions = _problem("token", True, False, "none", 0)
    inputs = (*tensors, *masks)

    def plan(kernel, budget=2**20) -> Plan:
        options = KernelOptions(kernel=kernel, max_block_bytes=budget)
        return make_plan(directions, with_own=True, dtype=torch.float64, options=options)

    # CPU, outside torch.func and torch.compile: the streaming path, whatever the budget.
    assert choose(plan("auto"), inputs) == "streaming"
    assert choose(plan("auto", budget=100), inputs) == "streaming"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"kernel='triton' cannot run: .*CUDA"):
        choose(plan("triton"), inputs)

    def under_transform(kernel):
        def fn(noisy):
            return stream(noisy, *tensors[1:], *masks, plan(kernel, budget=100)).log_sum_exp.sum()

        return torch.func.grad(fn)(tensors[0].detach())

    reference = stream(*tensors, *masks, plan("reference")).log_sum_exp.sum()
    torch.testing.assert_close(
        under_transform("auto"), torch.autograd.grad(reference, tensors[0])[0]
    )
    with pytest.raises(ValueError, match=r"torch\.func"):
        under_transform("streaming")


@pytest.mark.slow
def test_triton_under_the_interpreter() -> None:
    """The Triton path equals the reference path (``triton_cases.py``, kernels interpreted)."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    cases = Path(__file__).with_name("triton_cases.py")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


@pytest.mark.parametrize("kernel", ["reference", "streaming"])
@pytest.mark.parametrize("offset", [1e10, 1e20, 1e30])
def test_mixture_entropy_far_from_the_origin(kernel, offset) -> None:
    """Queries and components of a mixture entropy (no own term) at a common ``offset`` in
    float32 give the float64 evaluation of the same (rounded) inputs."""
    tensors = _inputs(8, 3, 4, 0, seed=11, dtype=torch.float64)
    noisy, clean, means, stds = (t.detach() for t in tensors)
    tensors = [t.float().requires_grad_() for t in (noisy + offset, clean + offset, means, stds)]
    masks = _masks(8, 8, 3, "random", 12)
    options = KernelOptions(kernel=kernel, max_block_bytes=300)
    (lse, *_), _ = _run(tensors, masks, [(0, 8, 0, 8)], False, options)
    expected = _naive(tensors, masks, [(0, 8, 0, 8)], False)
    torch.testing.assert_close(lse.double(), expected, rtol=1e-5, atol=1e-4)
