"""Chunked Bayes scores of noisy token embeddings against every row of a vocabulary.

For a query ``y`` ``(E,)`` and a vocabulary row ``v`` with centre ``c_v = W_v + mu_v``, std
``sigma_v`` and prior ``p_v``, the score is the log joint density

    score_v(y) = log p_v + log N(y ; c_v, diag sigma_v^2)
               = log p_v - sum_e log sigma_ve - E/2 log 2 pi - 0.5 sum_e (y_e - c_ve)^2 / sigma_ve^2.

The score of all queries against a chunk of ``C`` rows is one matrix product,
``[y^2, y] . [-1/(2 sigma^2), c/sigma^2]^T`` plus a per-row constant, on coordinates centred on the
(detached) mean of the queries. Rows with ``p_v = 0`` get the score ``-inf`` and their values are
never read (they are replaced by ``c = 0, sigma = 1`` before any arithmetic). Nothing larger than
``(N, C)`` is formed: the log-mixture ``log q(y) = logsumexp_v score_v(y)`` is accumulated over
chunks with a running ``logaddexp``, and its backward pass recomputes each chunk.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from mi_losses.kernels.directions import ranges as chunk_bounds
from mi_losses.kernels.factors import HALF_LOG_TWO_PI
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


def chunk_rows(
    vocabulary: Vocabulary, start: int, stop: int, reference: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred centres, stds, precisions ``1/sigma^2`` and log-weights of rows ``[start, stop)``.

    The log-weight ``log p_v - sum_e log sigma_v - E/2 log 2 pi`` is ``-inf`` off the support,
    where the centres and stds are the safe placeholders ``0`` and ``1``.
    """
    keep = vocabulary.support[start:stop]
    rows = keep.unsqueeze(-1)
    centres = vocabulary.table[start:stop] + vocabulary.means[start:stop] - reference
    centres = torch.where(rows, centres, 0.0)
    stds = torch.where(rows, vocabulary.stds[start:stop], 1.0)
    log_prior = torch.where(keep, vocabulary.log_prior[start:stop], -math.inf)
    log_weight = log_prior - stds.log().sum(-1) - stds.shape[-1] * HALF_LOG_TWO_PI
    return centres, stds, stds.square().reciprocal(), log_weight


def chunk_scores(
    features: torch.Tensor,
    centres: torch.Tensor,
    precision: torch.Tensor,
    log_weight: torch.Tensor,
    *,
    inplace: bool = False,
) -> torch.Tensor:
    """``(N, C)`` scores from query ``features = [y^2, y]`` ``(N, 2E)`` and one chunk's rows.

    ``inplace`` (only without autograd) reuses the product's ``(N, C)`` buffer for every step.
    """
    weighted = centres * precision
    offset = log_weight - 0.5 * (weighted * centres).sum(-1)
    scores = features @ torch.cat([-0.5 * precision, weighted], dim=1).T
    return scores.add_(offset) if inplace else scores + offset


def chunk_log_sum_exp(scores: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the rows of a chunk's ``(N, C)`` scores, in place (no autograd)."""
    peak = scores.amax(1, keepdim=True)
    peak = torch.where(torch.isfinite(peak), peak, 0.0)
    return exp_normal(scores.sub_(peak), inplace=True).sum(1).log_().add_(peak.squeeze(1))


def query_features(queries: torch.Tensor) -> torch.Tensor:
    """``[y^2, y]``, ``(N, 2E)``: the left factor of every chunk's matrix product."""
    return torch.cat([queries.square(), queries], dim=1)


def centre_of(queries: torch.Tensor) -> torch.Tensor:
    """The detached mean of the queries ``(E,)``: the origin the expansion is evaluated at."""
    with torch.no_grad():
        if queries.shape[0] == 0:
            return queries.new_zeros(queries.shape[1:])
        return queries.mean(0)


def known_prior_terms(
    queries: torch.Tensor, tokens: torch.Tensor, vocabulary: Vocabulary, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: ``log N(y_i ; W_t + mu_t, sigma_t)`` (own row ``t = tokens[i]``) and
    ``log q(y_i) = logsumexp_v [log p_v + log N(y_i ; W_v + mu_v, sigma_v)]``, each ``(N,)``.

    Differentiable (twice) in ``queries`` ``(N, E)``, the table, means, stds and log prior;
    memory ``O(N * chunk_size)`` beyond the inputs and one gradient per input, in the forward
    and the first backward pass (the own rows' gradients are added into the same buffers).
    """
    reference = centre_of(queries)
    own, log_q = _KnownPriorTerms.apply(  # type: ignore[no-untyped-call]
        queries - reference,
        vocabulary.table,
        vocabulary.means,
        vocabulary.stds,
        vocabulary.log_prior,
        vocabulary.support,
        reference,
        tokens,
        chunk_size,
    )
    return own, log_q


def _own_rows(
    queries: torch.Tensor,
    vocabulary: Vocabulary,
    tokens: torch.Tensor,
    reference: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y_i - c_t) / sigma_t^2``-ready pieces of the own rows: difference, stds, precision."""
    centres = vocabulary.table[tokens] + vocabulary.means[tokens] - reference
    stds = vocabulary.stds[tokens]
    return queries - centres, stds, stds.square().reciprocal()


class _KnownPriorTerms(torch.autograd.Function):
    """The own term and the running ``logsumexp`` over vocabulary chunks; the backward pass
    recomputes each chunk.

    With posterior weights ``G_iv = g_i exp(score_iv - log q_i)`` (``g`` the incoming gradient
    of ``log q``) and centred ``y``, ``c``, precision ``P = 1/sigma^2``:

        d/dy_i     = sum_v G_iv P_v (c_v - y_i)
        d/dc_v     = P_v (sum_i G_iv y_i - G_v c_v),                 G_v = sum_i G_iv
        d/dsigma_v = (P_v / sigma_v) (sum_i G_iv (y_i - c_v)^2 - G_v sigma_v^2)
        d/dlog p_v = G_v

    and the own term's gradients are added at the rows ``t_i``. Everything is written in
    differentiable operations, so that a second backward pass is exact.
    """

    @staticmethod
    def forward(
        queries: torch.Tensor,
        table: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        log_prior: torch.Tensor,
        support: torch.Tensor,
        reference: torch.Tensor,
        tokens: torch.Tensor,
        chunk_size: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vocabulary = Vocabulary(table, means, stds, log_prior, support)
        difference, own_stds, own_precision = _own_rows(queries, vocabulary, tokens, reference)
        own = -0.5 * (difference.square() * own_precision).sum(-1) - own_stds.log().sum(-1)
        own = own - queries.shape[-1] * HALF_LOG_TWO_PI
        features = query_features(queries)
        total = queries.new_full(queries.shape[:1], -math.inf)
        for start, stop in chunk_bounds(table.shape[0], chunk_size):
            centres, _, precision, log_weight = chunk_rows(vocabulary, start, stop, reference)
            scores = chunk_scores(features, centres, precision, log_weight, inplace=True)
            total = torch.logaddexp(total, chunk_log_sum_exp(scores))
        return own, total

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        queries, table, means, stds, log_prior, support, reference, tokens, chunk_size = inputs
        ctx.save_for_backward(
            queries, table, means, stds, log_prior, support, reference, tokens, output[1]
        )
        ctx.chunk_size = chunk_size

    @staticmethod
    def backward(
        ctx: Any, grad_own: torch.Tensor, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        queries, table, means, stds, log_prior, support, reference, tokens, log_q = saved
        vocabulary = Vocabulary(table, means, stds, log_prior, support)
        features = query_features(queries)
        # Queries whose mixture is empty (log q = -inf) get no gradient instead of NaN.
        finite = torch.isfinite(log_q)
        safe_log_q = torch.where(finite, log_q, 0.0)
        grad = torch.where(finite, grad, 0.0)
        # Under create_graph the chunks are concatenated (differentiable); otherwise they are
        # written into preallocated gradients, so the peak stays one (V, E) tensor per input.
        differentiable = torch.is_grad_enabled()
        grad_c = _RowGradient(table, differentiable)
        grad_s = _RowGradient(stds, differentiable)
        grad_p = _RowGradient(log_prior, differentiable)
        difference, own_stds, own_precision = _own_rows(queries, vocabulary, tokens, reference)
        toward = grad_own.unsqueeze(-1) * difference * own_precision
        grad_queries = -toward
        for start, stop in chunk_bounds(table.shape[0], ctx.chunk_size):
            centres, stds_, precision, log_weight = chunk_rows(vocabulary, start, stop, reference)
            if differentiable:
                scores = chunk_scores(features, centres, precision, log_weight)
                weights = grad.unsqueeze(-1) * exp_normal(scores - safe_log_q.unsqueeze(-1))
            else:  # one (N, C) buffer for the scores and the weights
                weights = chunk_scores(features, centres, precision, log_weight, inplace=True)
                weights = exp_normal(weights.sub_(safe_log_q.unsqueeze(-1)), inplace=True)
                weights.mul_(grad.unsqueeze(-1))
            row_totals = weights.sum(0)
            through = weights @ torch.cat([precision, centres * precision], dim=1)
            through_precision, through_weighted = through.chunk(2, dim=1)
            grad_queries = grad_queries + through_weighted - queries * through_precision
            moments = weights.T @ features
            second, first = moments.chunk(2, dim=1)
            keep = support[start:stop]
            rows = keep.unsqueeze(-1)
            totals = row_totals.unsqueeze(-1)
            grad_c.put(start, torch.where(rows, precision * (first - totals * centres), 0.0))
            spread = second - 2.0 * centres * first + totals * (centres.square() - stds_.square())
            grad_s.put(start, torch.where(rows, precision / stds_ * spread, 0.0))
            grad_p.put(start, torch.where(keep, row_totals, 0.0))
        # The own term: d/dc_t = g (y - c_t) P_t, d/dsigma_t = g ((y - c_t)^2 P_t - 1) / sigma_t.
        grad_c.add_rows(tokens, toward)
        own_spread = difference.square() * own_precision - 1.0
        grad_s.add_rows(tokens, grad_own.unsqueeze(-1) * own_spread / own_stds)
        needs = ctx.needs_input_grad
        grad_centres = grad_c.result()
        return (
            grad_queries if needs[0] else None,
            grad_centres if needs[1] else None,
            (grad_centres.clone() if needs[1] else grad_centres) if needs[2] else None,
            grad_s.result() if needs[3] else None,
            grad_p.result() if needs[4] else None,
            None,
            None,
            None,
            None,
        )


class _RowGradient:
    """The gradient of a ``(V, ...)`` input assembled from row chunks and indexed rows."""

    def __init__(self, like: torch.Tensor, differentiable: bool) -> None:
        self.like = like
        self.chunks: list[torch.Tensor] | None = [] if differentiable else None
        self.buffer = None if differentiable else torch.empty_like(like)
        self.indexed: list[tuple[torch.Tensor, torch.Tensor]] = []

    def put(self, start: int, rows: torch.Tensor) -> None:
        if self.chunks is not None:
            self.chunks.append(rows)
        elif self.buffer is not None:
            self.buffer[start : start + rows.shape[0]] = rows

    def add_rows(self, index: torch.Tensor, rows: torch.Tensor) -> None:
        """Add ``rows`` at ``index`` (repeats accumulate)."""
        if self.buffer is not None:
            self.buffer.index_add_(0, index, rows.to(self.buffer.dtype))
        else:
            self.indexed.append((index, rows))

    def result(self) -> torch.Tensor:
        if self.buffer is not None:
            return self.buffer
        total = torch.cat(self.chunks) if self.chunks else torch.zeros_like(self.like)
        for index, rows in self.indexed:
            total = total.index_add(0, index, rows)
        return total


def best_rows(
    queries: torch.Tensor, vocabulary: Vocabulary, chunk_size: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``top_k`` largest scores per query and their row indices, ``(N, top_k)`` each.

    Rows off the support are never chosen while a supported row remains (their score is
    ``-inf``); ``top_k`` must not exceed the support size.
    """
    with torch.no_grad():
        reference = centre_of(queries)
        features = query_features(queries - reference)
        best = queries.new_full((queries.shape[0], 0), -math.inf)
        best_index = torch.zeros((queries.shape[0], 0), dtype=torch.int64, device=queries.device)
        for start, stop in chunk_bounds(vocabulary.table.shape[0], chunk_size):
            centres, _, precision, log_weight = chunk_rows(vocabulary, start, stop, reference)
            scores = chunk_scores(features, centres, precision, log_weight, inplace=True)
            index = torch.arange(start, stop, device=queries.device).expand_as(scores)
            candidates = torch.cat([best, scores], dim=1)
            candidate_index = torch.cat([best_index, index], dim=1)
            best, position = candidates.topk(min(top_k, candidates.shape[1]), dim=1)
            best_index = candidate_index.gather(1, position)
        return best, best_index
