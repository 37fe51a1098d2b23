"""Chunked Bayes scores of noisy token embeddings against every row of a vocabulary.

For a query ``y`` ``(E,)`` and a row ``v`` with centre ``c_v = W_v + mu_v``, std ``sigma_v`` and
prior ``p_v``: ``score_v(y) = log p_v + log N(y ; c_v, diag sigma_v^2) = log p_v + z_v(y)``, with
``z`` the pairwise kernel's score (rows as components of one position): the same factors and
the same written-out chain rule. Rows with ``p_v = 0`` score ``-inf`` and are never read.
``log q(y) = logsumexp_v score_v(y)`` runs over chunks of rows (a running ``logaddexp``, each
chunk recomputed in the backward pass): nothing larger than ``(N, C)`` is formed. The kernel's
planned entry has no place for the per-row ``log p_v`` (a feature of std ``1/p_v`` would carry
it, at the price of copies of the table: measured 1.7-4x slower with 2.6-10x the memory).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from mi_losses.kernels.chain import Targets, add_component_grads, add_query_grads
from mi_losses.kernels.directions import ranges
from mi_losses.kernels.factors import (
    HALF_LOG_TWO_PI,
    Components,
    Frame,
    Queries,
    component_factors,
    query_factors,
)
from mi_losses.kernels.memory import below_fresh
from mi_losses.kernels.reference import graph_grads
from mi_losses.kernels.scores import exp_normal


class Vocabulary(NamedTuple):
    """The known channel of a context-free token noise layer, in one compute dtype.

    Attributes:
        table: ``W``, ``(V, E)``.
        means: ``mu``, ``(V, E)``.
        stds: ``sigma``, ``(V, E)`` (``> 0`` where ``support``).
        log_prior: ``log p``, ``(V,)``, normalised over the support; ``-inf`` off it.
        support: ``(V,)`` bool, ``p_v > 0``: the only rows ever read.
    """

    table: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    log_prior: torch.Tensor
    support: torch.Tensor


def query_side(queries: torch.Tensor) -> tuple[Queries, Frame]:
    """The query factors of ``y`` ``(N, E)`` and their frame: centred on the detached mean of
    the queries, unscaled; the frame's constant is ``E/2 log 2 pi``."""
    n, e = queries.shape
    with torch.no_grad():
        reference = queries.mean(0, keepdim=True) if n else queries.new_zeros(1, e)
        constant = queries.new_full((1,), e * HALF_LOG_TWO_PI)
    f = Frame(reference, torch.ones_like(reference), constant)
    active = torch.ones((n, 1), dtype=torch.bool, device=queries.device)
    return query_factors(queries[:, None], None, active, f, queries.dtype, check=False), f


def rows(vocabulary: Vocabulary, start: int, stop: int, f: Frame) -> Components:
    """The component factors of rows ``[start, stop)`` (one position; off the support: zeros)."""
    cut = slice(start, stop)
    table, means, stds = (t[cut, None] for t in vocabulary[:3])
    return component_factors(
        table, means, stds, vocabulary.support[cut, None], f, table.dtype, check=False
    )


def chunks(queries: torch.Tensor, vocabulary: Vocabulary, size: int) -> list[tuple[int, int]]:
    """Ranges of at most ``size`` vocabulary rows; on the CPU their ``(N, C)`` scores stay
    below :data:`~mi_losses.kernels.memory.FRESH_BYTES` (fresh pages at every chunk)."""
    size = below_fresh(size, queries.shape[0], queries.element_size(), queries.device)
    return ranges(vocabulary.table.shape[0], size)


def chunk_scores(
    q: Queries, c: Components, log_prior: torch.Tensor, *, inplace: bool = False
) -> torch.Tensor:
    """``(N, C)`` scores ``log p_v + z_v(y)`` of the queries against one chunk of rows
    (``-inf`` off the support); ``inplace`` (without autograd) makes them in one buffer."""
    assert c.k is not None
    offset = c.k[:, 0] + log_prior
    if inplace:
        return torch.addmm(offset, q.y2, c.w.T, alpha=-0.5).addmm_(q.y, c.wc.T)
    return offset - 0.5 * q.y2 @ c.w.T + q.y @ c.wc.T


def chunk_log_sum_exp(scores: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the rows of a chunk's ``(N, C)`` scores, in place (no autograd)."""
    peak = scores.amax(1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    return exp_normal(scores.sub_(peak), inplace=True).sum(1).log_().add_(peak.squeeze(1))


def own_terms(
    queries: torch.Tensor, vocabulary: Vocabulary, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log N(y_i ; W_t + mu_t, sigma_t)`` of each query's own row ``t = tokens[i]``, the
    residual ``(y - c_t) / sigma_t`` and ``sigma_t`` ``(N, E)``."""
    table, means, stds = (t[tokens] for t in vocabulary[:3])
    # (y - W) - mu, not y - (W + mu): W + mu rounds mu away when the data sit far from 0.
    residual = ((queries - table) - means) / stds
    own = -0.5 * residual.square().sum(-1) - stds.log().sum(-1)
    return own - queries.shape[-1] * HALF_LOG_TWO_PI, residual, stds


def known_prior_terms(
    queries: torch.Tensor, tokens: torch.Tensor, vocabulary: Vocabulary, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: ``log N(y_i ; W_t + mu_t, sigma_t)`` (own row ``t = tokens[i]``) and
    ``log q(y_i) = logsumexp_v [log p_v + log N(y_i ; W_v + mu_v, sigma_v)]``, each ``(N,)``.

    Differentiable (twice) in ``queries`` ``(N, E)``, the table, means, stds and log prior;
    memory ``O(N * chunk_size)`` beyond the inputs and one gradient per input, in the forward
    and the first backward pass (the own rows' gradients are added into the same buffers).
    """
    own, log_q = _KnownPriorTerms.apply(  # type: ignore[no-untyped-call]
        queries, *vocabulary, tokens, chunk_size
    )
    return own, log_q


def _log_mixture(queries: torch.Tensor, vocabulary: Vocabulary, chunk_size: int) -> torch.Tensor:
    """``log q`` ``(N,)`` in differentiable operations (the second derivatives: autograd keeps
    every chunk's scores)."""
    q, f = query_side(queries)
    parts = [
        chunk_scores(q, rows(vocabulary, start, stop, f), vocabulary.log_prior[start:stop])
        for start, stop in chunks(queries, vocabulary, chunk_size)
    ]
    return torch.logsumexp(torch.cat(parts, 1), 1)


class _KnownPriorTerms(torch.autograd.Function):
    """The own term and the running ``logsumexp`` over vocabulary chunks; the backward pass
    recomputes each chunk. With the weights ``G_iv = g_i exp(score_iv - log q_i)`` (``g`` the
    incoming gradient of ``log q``), the factors' gradients are the kernel's (``G w``,
    ``G w c'``, ``G^T y'^2``, ``G^T y'``, ``G^T 1``: :mod:`~mi_losses.kernels.chain`),
    ``d log p_v = sum_i G_iv``, and the own term's are added at the rows ``t_i``. When a graph
    is being built (second derivatives) the backward pass differentiates :func:`_log_mixture`.
    """

    @staticmethod
    def forward(
        queries: torch.Tensor,
        table: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        log_prior: torch.Tensor,
        support: torch.Tensor,
        tokens: torch.Tensor,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vocabulary = Vocabulary(table, means, stds, log_prior, support)
        own = own_terms(queries, vocabulary, tokens)[0]
        q, f = query_side(queries)
        total = queries.new_full(queries.shape[:1], -math.inf)
        for start, stop in chunks(queries, vocabulary, chunk_size):
            c = rows(vocabulary, start, stop, f)
            scores = chunk_scores(q, c, log_prior[start:stop], inplace=True)
            total = torch.logaddexp(total, chunk_log_sum_exp(scores))
        return own, total

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        *tensors, chunk_size = inputs
        ctx.save_for_backward(*tensors, output[1])
        ctx.chunk_size = chunk_size

    @staticmethod
    def backward(
        ctx: Any, grad_own: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        queries, *columns, tokens, log_q = ctx.saved_tensors
        vocabulary = Vocabulary(*columns)
        needs = ctx.needs_input_grad[:5]
        if torch.is_grad_enabled():
            return (
                *_second_order(ctx, queries, vocabulary, tokens, grad_own, grad),
                None,
                None,
                None,
            )
        # Queries whose mixture is empty (log q = -inf) get no gradient instead of NaN.
        finite = torch.isfinite(log_q)
        log_q, grad = torch.where(finite, log_q, 0.0), torch.where(finite, grad, 0.0)
        q, f = query_side(queries)
        d_y, d_y2 = torch.zeros_like(q.y), torch.zeros_like(q.y)
        # Every row's gradient is added by its chunk, then the own rows'.
        grad_c, grad_s = torch.zeros_like(vocabulary.table), torch.zeros_like(vocabulary.stds)
        grad_p = torch.empty_like(vocabulary.log_prior)
        for start, stop in chunks(queries, vocabulary, ctx.chunk_size):
            c = rows(vocabulary, start, stop, f)
            weights = chunk_scores(q, c, vocabulary.log_prior[start:stop], inplace=True)
            weights = exp_normal(weights.sub_(log_q.unsqueeze(-1)), inplace=True)
            weights.mul_(grad.unsqueeze(-1))
            d_y.addmm_(weights, c.wc)
            d_y2.addmm_(weights, c.w)
            transposed = weights.T
            totals = transposed @ q.a
            rows_out = Targets(None, None, None, grad_c[start:stop, None], grad_s[start:stop, None])
            add_component_grads(c, f, transposed @ q.y2, transposed @ q.y, totals, rows_out)
            grad_p[start:stop] = totals[:, 0]
        grad_queries = torch.zeros_like(queries).unsqueeze(1)
        add_query_grads(q, f, d_y, d_y2, None, Targets(grad_queries, None, None, None, None))
        # The own term: d/dc_t = g r / sigma_t = -d/dy, d/dsigma_t = g (r^2 - 1) / sigma_t.
        _, residual, own_stds = own_terms(queries, vocabulary, tokens)
        toward = grad_own.unsqueeze(-1) * residual / own_stds
        grad_c.index_add_(0, tokens, toward)
        grad_s.index_add_(0, tokens, grad_own.unsqueeze(-1) * (residual.square() - 1.0) / own_stds)
        grad_queries = grad_queries[:, 0].sub_(toward)
        found = (grad_queries, grad_c, grad_c.clone() if needs[1] else grad_c, grad_s, grad_p)
        grads = (g if need else None for g, need in zip(found, needs, strict=True))
        return (*grads, None, None, None)


def _second_order(
    ctx: Any,
    queries: torch.Tensor,
    vocabulary: Vocabulary,
    tokens: torch.Tensor,
    grad_own: torch.Tensor,
    grad: torch.Tensor,
) -> list[torch.Tensor | None]:
    """The first derivatives as a graph: autograd through :func:`own_terms` and
    :func:`_log_mixture`."""
    own = own_terms(queries, vocabulary, tokens)[0]
    log_q = _log_mixture(queries, vocabulary, ctx.chunk_size)
    inputs = (queries, *vocabulary[:4])
    return graph_grads((own, log_q), (grad_own, grad), inputs, ctx.needs_input_grad[:5])


def best_rows(
    queries: torch.Tensor, vocabulary: Vocabulary, chunk_size: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` largest scores per query and their row indices, ``(N, top_k)`` each.

    Rows off the support are never chosen while a supported row remains (their score is
    ``-inf``); ``top_k`` must not exceed the support size.
    """
    with torch.no_grad():
        q, f = query_side(queries)
        best = queries.new_full((queries.shape[0], 0), -math.inf)
        best_index = torch.zeros((queries.shape[0], 0), dtype=torch.int64, device=queries.device)
        for start, stop in chunks(queries, vocabulary, chunk_size):
            c = rows(vocabulary, start, stop, f)
            scores = chunk_scores(q, c, vocabulary.log_prior[start:stop], inplace=True)
            index = torch.arange(start, stop, device=queries.device).expand_as(scores)
            candidates = torch.cat([best, scores], dim=1)
            candidate_index = torch.cat([best_index, index], dim=1)
            best, position = candidates.topk(min(top_k, candidates.shape[1]), dim=1)
            best_index = candidate_index.gather(1, position)
        return best, best_index
