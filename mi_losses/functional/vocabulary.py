"""Known-prior (vocabulary) mutual information of a context-free token noise layer."""

from __future__ import annotations

import math

import torch

from mi_losses import keys
from mi_losses._validation import (
    _shape,
    as_bool_mask,
    check_bool,
    check_floating,
    check_losses,
    check_ndim,
    check_positive,
    check_positive_int,
    check_same_device,
    check_same_dtype,
    check_same_shape,
    compute_dtype,
)
from mi_losses.functional._mixture import query_mean, to_result, value_with_losses
from mi_losses.kernels.vocabulary import Vocabulary, known_prior_terms
from mi_losses.types import ComponentLossesDict, Estimate

__all__ = ["vocabulary_mutual_information", "vocabulary_mutual_information_estimate"]

DEFAULT_VOCAB_CHUNK_SIZE = 4096


def vocabulary_mutual_information(
    vocabulary_means: torch.Tensor,
    vocabulary_stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
    token_ids: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    embedding_table: torch.Tensor,
    token_prior: torch.Tensor,
    losses: ComponentLossesDict | None = None,
    *,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Mutual information per token of a context-free noise layer, with a known prior, in nats.

    The channel is known for every vocabulary row $v$:
    $p(y \mid v) = \mathcal N(y; W_v + \mu_v, \operatorname{diag}\sigma_v^2)$. For the active
    tokens $t_i$ and their noisy embeddings $y_i$,

    $$\log q_i = \log \sum_{v : p_v > 0} p_v\, \mathcal N(y_i; W_v + \mu_v, \sigma_v),\qquad
      I = \operatorname*{mean}_i \big[\log \mathcal N(y_i; W_{t_i} + \mu_{t_i}, \sigma_{t_i})
      - \log q_i\big].$$

    The mixture is exact; with $t_i \sim p$ this is an **unbiased estimate** of $I(X; Y)$,
    never above $H(X)$ in expectation ([the math](math.md#known-prior-mutual-information)).
    Rows with $p_v = 0$ are never read. Arguments: [the glossary](glossary.md).

    Example:
        >>> table = torch.eye(3)
        >>> prior, means, stds = torch.ones(3) / 3, torch.zeros(3, 3), torch.full((3, 3), 0.1)
        >>> tokens = torch.tensor([[0, 1, 2, 1]])
        >>> noisy = table[tokens] + 0.1 * torch.randn(1, 4, 3)
        >>> mi = vocabulary_mutual_information(means, stds, None, tokens, noisy, table, prior)
        >>> 0.9 < mi.item() <= math.log(3) + 1e-6
        True
    """
    check_losses(losses)
    estimate = vocabulary_mutual_information_estimate(
        vocabulary_means,
        vocabulary_stds,
        noise_mask,
        token_ids,
        noisy_input_embeddings,
        embedding_table,
        token_prior,
        vocab_chunk_size=vocab_chunk_size,
        validate_args=validate_args,
    )
    return value_with_losses(estimate, losses)


def vocabulary_mutual_information_estimate(
    vocabulary_means: torch.Tensor,
    vocabulary_stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
    token_ids: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    embedding_table: torch.Tensor,
    token_prior: torch.Tensor,
    *,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    validate_args: bool = True,
) -> Estimate:
    """:func:`vocabulary_mutual_information` as an :class:`~mi_losses.types.Estimate`.

    `per_query` holds the per-token terms of the active tokens in row-major order `(N,)`.

    Example:
        >>> table, prior = torch.eye(3), torch.ones(3) / 3
        >>> means, stds = torch.zeros(3, 3), torch.full((3, 3), 0.1)
        >>> tokens = torch.tensor([[0, 1, 2, 1]])
        >>> noisy = table[tokens] + 0.1 * torch.randn(1, 4, 3)
        >>> estimate = vocabulary_mutual_information_estimate(
        ...     means, stds, None, tokens, noisy, table, prior
        ... )
        >>> int(estimate.num_queries), estimate.per_query.shape
        (4, torch.Size([4]))
    """
    queries, tokens, vocabulary, dtype = prepare_vocabulary_inputs(
        vocabulary_means,
        vocabulary_stds,
        noise_mask,
        token_ids,
        noisy_input_embeddings,
        embedding_table,
        token_prior,
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
    return to_result(estimate, dtype)


def prepare_vocabulary_inputs(
    vocabulary_means: torch.Tensor,
    vocabulary_stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
    token_ids: torch.Tensor | None,
    noisy_input_embeddings: torch.Tensor,
    embedding_table: torch.Tensor,
    token_prior: torch.Tensor,
    *,
    vocab_chunk_size: int,
    validate_args: bool,
) -> tuple[torch.Tensor, torch.Tensor, Vocabulary, torch.dtype]:
    """Every check of the vocabulary functions, once; the active queries ``(N, E)``, their
    tokens ``(N,)``, the :class:`Vocabulary` in the compute dtype and the result dtype."""
    noisy_embeddings, table, prior = noisy_input_embeddings, embedding_table, token_prior
    means, stds = vocabulary_means, vocabulary_stds
    named = {
        "noisy_input_embeddings": noisy_embeddings,
        "embedding_table": table,
        "token_prior": prior,
        "vocabulary_means": means,
        "vocabulary_stds": stds,
    }
    for name, tensor in named.items():
        check_floating(name, tensor)
    check_ndim("noisy_input_embeddings", noisy_embeddings, 3, "(B, S, E)")
    check_ndim("embedding_table", table, 2, "(V, E)")
    if table.shape[1] != noisy_embeddings.shape[2]:
        raise ValueError(
            f"embedding_table must have shape (V, {noisy_embeddings.shape[2]}) to match "
            f"noisy_input_embeddings {_shape(noisy_embeddings.shape)}, got {_shape(table.shape)}"
        )
    check_same_shape("vocabulary_means", means, "embedding_table", table)
    check_same_shape("vocabulary_stds", stds, "embedding_table", table)
    if prior.shape != table.shape[:1]:
        raise ValueError(
            f"token_prior must have shape ({table.shape[0]},) like the rows of embedding_table, "
            f"got {_shape(prior.shape)}"
        )
    check_positive_int("", "vocab_chunk_size", vocab_chunk_size)
    check_bool("", "validate_args", validate_args)
    check_same_device(**named)
    check_same_dtype(**named)
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
            check_positive(
                "vocabulary_stds (rows with token_prior > 0)", torch.where(rows, chunk, 1.0)
            )
    dtype = compute_dtype(noisy_embeddings.dtype)
    tokens = torch.zeros(0, dtype=torch.int64, device=device)
    if token_ids is not None:
        if not isinstance(token_ids, torch.Tensor) or token_ids.is_floating_point():
            raise ValueError(f"token_ids must be an integer torch.Tensor, got {token_ids!r:.60}")
        if token_ids.shape != noisy_embeddings.shape[:2]:
            raise ValueError(
                f"token_ids must have shape {_shape(noisy_embeddings.shape[:2])} like "
                f"noisy_input_embeddings without E, got {_shape(token_ids.shape)}"
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
                    "token_ids at active positions must have token_prior > 0 (smooth the prior, "
                    "e.g. with token_prior(..., smoothing=1.0))"
                )
    safe_prior = torch.where(support, prior, 1.0).to(dtype)
    log_prior = torch.where(support, safe_prior.log(), -math.inf)
    log_prior = log_prior - torch.logsumexp(log_prior, dim=0)
    vocabulary = Vocabulary(table.to(dtype), means.to(dtype), stds.to(dtype), log_prior, support)
    return noisy_embeddings[mask].to(dtype), tokens, vocabulary, noisy_embeddings.dtype


def _check_prior(prior: torch.Tensor) -> None:
    """Raise unless ``prior`` is finite, non-negative and has a positive sum."""
    if prior.numel() == 0:
        raise ValueError("token_prior must have at least one entry, got shape (0,)")
    low, high = torch.aminmax(prior.detach())
    if not (bool(low >= 0) and bool(high < torch.inf) and bool(high > 0)):
        raise ValueError(
            "token_prior must be finite and non-negative with a positive sum, got values in "
            f"[{low.item():.3g}, {high.item():.3g}]"
        )
