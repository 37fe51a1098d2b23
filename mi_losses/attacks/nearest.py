"""Nearest-neighbour token recovery: the simplest attacker of docs/math.md ("Attackers and baselines").

The attacker sees an obfuscated word embedding ``y`` ``(E,)`` and guesses the vocabulary row
closest to it, by cosine similarity or by Euclidean (L2) distance. The search is chunked over the
vocabulary (and the queries), so memory is ``O(query_chunk * vocab_chunk)`` whatever ``V`` is.
"""

from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["cosine", "l2"]


def nearest_token_ids(
    embeddings: torch.Tensor,
    table: torch.Tensor,
    metric: Metric = "cosine",
    *,
    vocab_chunk_size: int = 8192,
    query_chunk_size: int = 2048,
) -> torch.Tensor:
    """Index of the nearest row of ``table`` for every embedding.

    Args:
        embeddings: queries ``(N, E)``.
        table: the vocabulary embedding table ``(V, E)``.
        metric: ``"cosine"`` (largest cosine similarity) or ``"l2"`` (smallest Euclidean distance,
            computed as ``|t|^2 - 2 y.t``, which ranks rows like ``|y - t|``).
        vocab_chunk_size: rows of ``table`` compared at once.
        query_chunk_size: queries compared at once.

    Returns:
        ``(N,)`` int64 indices into ``table``.

    Example:
        >>> table = torch.eye(4)
        >>> nearest_token_ids(torch.tensor([[0.1, 0.9, 0.0, 0.0]]), table).tolist()
        [1]
    """
    if embeddings.ndim != 2 or table.ndim != 2 or embeddings.shape[1] != table.shape[1]:
        raise ValueError(
            "embeddings must have shape (N, E) and table (V, E) with the same E, got "
            f"{tuple(embeddings.shape)} and {tuple(table.shape)}"
        )
    if metric not in ("cosine", "l2"):
        raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")
    embeddings = embeddings.detach().float()
    table = table.detach().float().to(embeddings.device)
    if metric == "cosine":
        embeddings = torch.nn.functional.normalize(embeddings, dim=-1)
        table = torch.nn.functional.normalize(table, dim=-1)
    else:
        square_norms = table.square().sum(-1)
    result = torch.empty(embeddings.shape[0], dtype=torch.long, device=embeddings.device)
    for q_start in range(0, embeddings.shape[0], query_chunk_size):
        queries = embeddings[q_start : q_start + query_chunk_size]
        best_score = torch.full((queries.shape[0],), -torch.inf, device=queries.device)
        best_index = torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device)
        for v_start in range(0, table.shape[0], vocab_chunk_size):
            rows = table[v_start : v_start + vocab_chunk_size]
            score = queries @ rows.T
            if metric == "l2":
                score = 2.0 * score - square_norms[v_start : v_start + vocab_chunk_size]
            chunk_best, chunk_index = score.max(dim=-1)
            better = chunk_best > best_score
            best_score = torch.where(better, chunk_best, best_score)
            best_index = torch.where(better, chunk_index + v_start, best_index)
        result[q_start : q_start + query_chunk_size] = best_index
    return result


def recovered_tokens(
    noisy_embeddings: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    table: torch.Tensor,
    metric: Metric = "cosine",
) -> tuple[int, int]:
    """How many masked tokens the attack recovers, and how many it tried.

    Args:
        noisy_embeddings: obfuscated word embeddings ``(B, S, E)``.
        input_ids: the true token ids ``(B, S)``.
        mask: ``(B, S)`` bool, the positions attacked (the noise mask).
        table: the vocabulary embedding table ``(V, E)``.
        metric: ``"cosine"`` or ``"l2"``.

    Returns:
        ``(recovered, attacked)``; the failure rate is ``1 - recovered / attacked``.
    """
    mask = mask.bool()
    guesses = nearest_token_ids(noisy_embeddings[mask], table, metric)
    return int((guesses == input_ids[mask]).sum()), int(mask.sum())


def recovery_rate(
    noisy_embeddings: torch.Tensor,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    table: torch.Tensor,
    metric: Metric = "cosine",
) -> float:
    """Fraction of the masked tokens whose nearest vocabulary row is the true token (``nan`` if none)."""
    recovered, attacked = recovered_tokens(noisy_embeddings, input_ids, mask, table, metric)
    return recovered / attacked if attacked else float("nan")
