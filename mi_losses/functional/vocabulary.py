"""Known-prior (vocabulary) mutual information of a context-free token noise layer."""

from __future__ import annotations

import math

import torch

from mi_losses import keys
from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_floating,
    check_ndim,
    check_positive,
    check_same_device,
    check_same_shape,
    compute_dtype,
    result_dtype,
)
from mi_losses.functional._mixture import query_mean, to_result, value_with_losses
from mi_losses.kernels.vocabulary import Vocabulary, known_prior_terms
from mi_losses.types import ComponentLossesDict, Estimate

__all__ = ["vocabulary_mutual_information", "vocabulary_mutual_information_estimate"]

DEFAULT_VOCAB_CHUNK_SIZE = 4096


def vocabulary_mutual_information(
    token_ids: torch.Tensor,
    noisy_embeddings: torch.Tensor,
    table: torch.Tensor,
    prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    noise_mask: torch.Tensor | None = None,
    losses: ComponentLossesDict | None = None,
    *,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Mutual information per token of a context-free token noise layer, with a known prior.

    The channel is known for every vocabulary row ``v``:
    ``p(y | v) = N(y ; W_v + mu_v, diag sigma_v^2)``. For the active tokens ``t_i`` of the
    batch and their noisy embeddings ``y_i``:

    .. math::
        \log q_i &= \log \sum_{v : p_v > 0} p_v\, N(y_i ; W_v + \mu_v, \sigma_v) \\
        I &= \operatorname{mean}_i \big[\log N(y_i ; W_{t_i} + \mu_{t_i}, \sigma_{t_i})
             - \log q_i\big]

    (nats per token). The mixture over the vocabulary is exact; the only approximation is the
    Monte Carlo average over ``(t_i, y_i)``. With ``t_i ~ p`` and ``y_i`` drawn from the layer it
    is an **unbiased estimate of** ``I(X; Y)`` per token (neither an upper nor a lower bound);
    each term is at most ``-log p_{t_i}``, so in expectation it never exceeds ``H(X)``. On tokens
    not drawn from ``p`` (e.g. one batch of real text) it estimates the MI of the tokens as they
    occur, under an attacker who believes ``p``.

    The sum over the vocabulary is a matrix product over chunks of ``vocab_chunk_size`` rows,
    with a running ``logsumexp``: memory ``O(N * vocab_chunk_size)`` beyond the inputs, in the
    forward and the backward pass (which recomputes each chunk; second derivatives are exact but
    keep every chunk). Differentiable in ``noisy_embeddings``, ``table``, ``prior``, ``means``
    and ``stds``, so it can be the privacy loss itself. In float32 the quadratic forms are
    expanded around the mean of the queries and lose about ``eps * sum_e ((y - ref)/sigma)^2``
    nats of absolute accuracy per score; pass float64 where that matters.

    Args:
        token_ids: the clean tokens ``t``, ``(B, S)`` integer, in ``[0, V)`` where active.
        noisy_embeddings: ``y``, ``(B, S, E)``.
        table: the vocabulary embedding table ``W``, ``(V, E)``.
        prior: ``p``, ``(V,)``, non-negative with a positive sum (normalised here; counts are
            fine). Rows with ``p_v = 0`` are left out of the mixture and never read (their
            ``table``, ``means`` and ``stds`` may hold anything); an active token must have
            ``p_t > 0`` (see :func:`token_prior` for smoothing).
        means: the layer's mean shift ``mu_v`` of every vocabulary row, ``(V, E)``.
        stds: the layer's ``sigma_v > 0`` of every vocabulary row, ``(V, E)``.
        noise_mask: ``(B, S)`` bool or 0/1, the noised (active) tokens; ``None`` = all.
            Inactive positions are never read.
        losses: if given, updated with detached scalar components (nats):
            ``gaussian_mixture_entropy_loss`` (``-mean log q_i``, the estimate of ``H(Y)``),
            ``std_log_loss`` (``mean log N(y_i ; own)``, minus the estimate of ``H(Y|X)``) and
            ``mutual_information_loss`` (their sum, ``I``).
        vocab_chunk_size: vocabulary rows scored at once.
        validate_args: check ``stds > 0`` on the support, the prior's values, and that active
            ``token_ids`` lie in ``[0, V)`` with ``p_t > 0`` (one synchronisation each).

    Returns:
        Scalar ``I`` in nats per active token, in the input dtype (computed in float32 or
        better); ``0`` (with a zero gradient) when no token is active.

    Raises:
        ValueError: a shape, dtype or device mismatch, a prior that is negative or sums to 0,
            an active token outside the vocabulary or with zero prior, ``stds`` not ``> 0`` on
            the support, or ``vocab_chunk_size < 1``.

    Example:
        >>> table = torch.eye(3)
        >>> prior, means, stds = torch.ones(3) / 3, torch.zeros(3, 3), torch.full((3, 3), 0.1)
        >>> tokens = torch.tensor([[0, 1, 2, 1]])
        >>> noisy = table[tokens] + 0.1 * torch.randn(1, 4, 3)
        >>> mi = vocabulary_mutual_information(tokens, noisy, table, prior, means, stds)
        >>> 0.9 < mi.item() <= math.log(3) + 1e-6
        True
    """
    estimate = vocabulary_mutual_information_estimate(
        token_ids,
        noisy_embeddings,
        table,
        prior,
        means,
        stds,
        noise_mask,
        vocab_chunk_size=vocab_chunk_size,
        validate_args=validate_args,
    )
    return value_with_losses(estimate, losses)


def vocabulary_mutual_information_estimate(
    token_ids: torch.Tensor,
    noisy_embeddings: torch.Tensor,
    table: torch.Tensor,
    prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    noise_mask: torch.Tensor | None = None,
    *,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    validate_args: bool = True,
) -> Estimate:
    """:func:`vocabulary_mutual_information` returning an :class:`~mi_losses.types.Estimate`.

    ``per_query`` holds the per-token terms ``log N(y_i ; own) - log q_i`` of the active tokens
    in row-major order ``(N,)``; ``num_queries`` is ``N``.

    Example:
        >>> table, prior = torch.eye(3), torch.ones(3) / 3
        >>> means, stds = torch.zeros(3, 3), torch.full((3, 3), 0.1)
        >>> tokens = torch.tensor([[0, 1, 2, 1]])
        >>> noisy = table[tokens] + 0.1 * torch.randn(1, 4, 3)
        >>> estimate = vocabulary_mutual_information_estimate(
        ...     tokens, noisy, table, prior, means, stds
        ... )
        >>> int(estimate.num_queries), estimate.per_query.shape
        (4, torch.Size([4]))
    """
    queries, tokens, vocabulary = prepare_vocabulary_inputs(
        token_ids,
        noisy_embeddings,
        table,
        prior,
        means,
        stds,
        noise_mask,
        vocab_chunk_size=vocab_chunk_size,
        validate_args=validate_args,
    )
    own, log_q = known_prior_terms(queries, tokens, vocabulary, vocab_chunk_size)
    per_token = own - log_q
    valid = torch.ones_like(per_token, dtype=torch.bool)
    value = query_mean(per_token, valid)
    with torch.no_grad():
        conditional = query_mean(own, valid)
        marginal = -query_mean(log_q, valid)
    estimate = Estimate(
        value=value,
        components={
            keys.MIXTURE_ENTROPY: marginal.detach(),
            keys.STD_LOG: conditional.detach(),
            keys.MUTUAL_INFORMATION: value.detach(),
        },
        num_queries=torch.tensor(per_token.shape[0], device=per_token.device),
        per_query=per_token,
    )
    return to_result(estimate, result_dtype(noisy_embeddings, table, means, stds))


def prepare_vocabulary_inputs(
    token_ids: torch.Tensor | None,
    noisy_embeddings: torch.Tensor,
    table: torch.Tensor,
    prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
    *,
    vocab_chunk_size: int,
    validate_args: bool,
) -> tuple[torch.Tensor, torch.Tensor, Vocabulary]:
    """Validate, and return the active queries ``(N, E)``, their tokens ``(N,)`` and the
    :class:`Vocabulary` in the compute dtype (shared by the estimator and the attack)."""
    for name, tensor in (
        ("noisy_embeddings", noisy_embeddings),
        ("table", table),
        ("prior", prior),
        ("means", means),
        ("stds", stds),
    ):
        check_floating(name, tensor)
    check_ndim("noisy_embeddings", noisy_embeddings, 3, "(B, S, E)")
    check_ndim("table", table, 2, "(V, E)")
    if table.shape[1] != noisy_embeddings.shape[2]:
        raise ValueError(
            f"table must have shape (V, {noisy_embeddings.shape[2]}) to match noisy_embeddings "
            f"{_shape(noisy_embeddings.shape)}, got {_shape(table.shape)}"
        )
    check_same_shape("means", means, "table", table)
    check_same_shape("stds", stds, "table", table)
    if prior.shape != table.shape[:1]:
        raise ValueError(
            f"prior must have shape ({table.shape[0]},) like the rows of table, "
            f"got {_shape(prior.shape)}"
        )
    if not isinstance(vocab_chunk_size, int) or vocab_chunk_size < 1:
        raise ValueError(f"vocab_chunk_size must be a positive integer, got {vocab_chunk_size!r}")
    check_same_device(
        noisy_embeddings=noisy_embeddings, table=table, prior=prior, means=means, stds=stds
    )
    device = noisy_embeddings.device
    mask = as_bool_mask(
        "noise_mask", noise_mask, noisy_embeddings.shape[:2], device, validate_values=validate_args
    )
    support = prior > 0
    if validate_args:
        _check_prior(prior)
        for start in range(0, table.shape[0], vocab_chunk_size):
            rows = support[start : start + vocab_chunk_size].unsqueeze(-1)
            chunk = stds[start : start + vocab_chunk_size].detach()
            check_positive("stds (rows with prior > 0)", torch.where(rows, chunk, 1.0))
    dtype = compute_dtype(noisy_embeddings, table, means, stds)
    tokens = torch.zeros(0, dtype=torch.int64, device=device)
    if token_ids is not None:
        if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point():
            raise ValueError(f"token_ids must be an integer torch.Tensor, got {token_ids!r:.60}")
        if token_ids.shape != noisy_embeddings.shape[:2]:
            raise ValueError(
                f"token_ids must have shape {_shape(noisy_embeddings.shape[:2])} like "
                f"noisy_embeddings without E, got {_shape(token_ids.shape)}"
            )
        if token_ids.device != device:
            raise ValueError(f"token_ids must be on device {device}, got {token_ids.device}")
        tokens = token_ids[mask].long()
        if validate_args and tokens.numel():
            low_id, high_id = tokens.min(), tokens.max()
            if bool(low_id < 0) or bool(high_id >= table.shape[0]):
                raise ValueError(
                    f"token_ids at active positions must lie in [0, {table.shape[0]}), got "
                    f"values in [{low_id.item()}, {high_id.item()}]"
                )
            if not bool(support[tokens].all()):
                raise ValueError(
                    "token_ids at active positions must have prior > 0 (smooth the prior, "
                    "e.g. with token_prior(..., smoothing=1.0))"
                )
    safe_prior = torch.where(support, prior, 1.0).to(dtype)
    log_prior = torch.where(support, safe_prior.log(), -math.inf)
    log_prior = log_prior - torch.logsumexp(log_prior, dim=0)
    vocabulary = Vocabulary(table.to(dtype), means.to(dtype), stds.to(dtype), log_prior, support)
    return noisy_embeddings[mask].to(dtype), tokens, vocabulary


def _check_prior(prior: torch.Tensor) -> None:
    """Raise unless ``prior`` is finite, non-negative and has a positive sum."""
    if prior.numel() == 0:
        raise ValueError("prior must have at least one entry, got shape (0,)")
    low, high = torch.aminmax(prior.detach())
    if not (bool(low >= 0) and bool(high < torch.inf) and bool(high > 0)):
        raise ValueError(
            "prior must be finite and non-negative with a positive sum, got values in "
            f"[{low.item():.3g}, {high.item():.3g}]"
        )
