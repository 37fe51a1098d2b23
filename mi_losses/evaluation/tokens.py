"""How well one-token attackers recover noised tokens, overall and per frequency bucket.

:func:`token_privacy` judges noisy embeddings ``(N, E)`` of known tokens against a context-free
channel (the vocabulary means and stds): the known-prior mutual information
``vocabulary_mutual_information`` (docs/math.md, "Known-prior mutual information"), the
Bayes-optimal attacker's failure (top-1 and top-5), Fano's floor, the nearest-neighbour attacks
(cosine, L2, L2 against the shifted vocabulary) and the same per training-frequency bucket.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from mi_losses.attacks.nearest import nearest_token_ids
from mi_losses.functional import (
    bayes_token_attack,
    fano_error_floor,
    prior_entropy,
    vocabulary_mutual_information_estimate,
)

BUCKET_EDGES = (20, 500)
"""Training-frequency ranks that split the buckets: the 20 most frequent tokens, ranks 21-500,
and every rarer (or unseen) token."""


def bucket_names(edges: tuple[int, ...] = BUCKET_EDGES) -> list[str]:
    """``["rank 1-20", "rank 21-500", "rank > 500"]`` for the default edges."""
    bounds = (0, *edges)
    names = [f"rank {low + 1}-{high}" for low, high in itertools.pairwise(bounds)]
    return [*names, f"rank > {edges[-1]}"]


def frequency_buckets(counts: torch.Tensor, edges: tuple[int, ...] = BUCKET_EDGES) -> torch.Tensor:
    """Bucket index ``(V,)`` of every token by its rank in ``counts`` (ties broken by token id)."""
    ranks = torch.empty_like(counts, dtype=torch.long)
    order = torch.argsort(counts, descending=True, stable=True)
    ranks[order] = torch.arange(counts.shape[0], device=counts.device)
    return torch.bucketize(ranks, torch.tensor(edges, device=counts.device), right=True)


def token_privacy(
    noisy: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    buckets: torch.Tensor,
    *,
    vocab_chunk_size: int = 8192,
    edges: tuple[int, ...] = BUCKET_EDGES,
    nearest_neighbour: bool = True,
) -> dict[str, Any]:
    """The one-token metrics of ``noisy`` ``(N, E)`` whose true tokens are ``ids`` ``(N,)``.

    Args:
        noisy: the noisy embeddings the attacker sees, ``(N, E)``.
        ids: their true tokens, ``(N,)``.
        table: the vocabulary table ``(V, E)``.
        prior: the attacker's prior ``(V,)``.
        means: the channel's mean shift of every vocabulary row, ``(V, E)``.
        stds: the channel's std of every vocabulary row, ``(V, E)``.
        buckets: frequency bucket of every token ``(V,)`` (:func:`frequency_buckets`).
        vocab_chunk_size: vocabulary rows scored at once.
        edges: the bucket edges ``buckets`` was built with.
        nearest_neighbour: also run the three nearest-neighbour attacks.

    Returns:
        ``exact_mi_nats_per_token``, ``bayes_attack_failure``, ``bayes_top5_failure``,
        ``fano_floor``, ``prior_entropy_nats``, ``nn_failure_{cosine,l2,l2_shift_aware}`` and
        ``buckets`` (per bucket: ``token_share``, ``self_information_nats``,
        ``exact_mi_nats_per_token``, ``hidden_fraction = 1 - MI / self-information``,
        ``bayes_attack_failure``).
    """
    noisy_1, ids_1 = noisy.unsqueeze(0), ids.unsqueeze(0)
    guesses = bayes_token_attack(
        means, stds, None, noisy_1, table, prior, top_k=5, vocab_chunk_size=vocab_chunk_size
    )[0]
    hit_1 = guesses[:, 0] == ids
    hit_5 = (guesses == ids.unsqueeze(-1)).any(-1)

    per_token = vocabulary_mutual_information_estimate(
        means, stds, None, ids_1, noisy_1, table, prior, vocab_chunk_size=vocab_chunk_size
    ).per_query
    assert per_token is not None
    mutual_information = float(per_token.mean())
    support_size = int((prior > 0).sum())
    entropy = float(prior_entropy(prior))
    result: dict[str, Any] = {
        "exact_mi_nats_per_token": mutual_information,
        "bayes_attack_failure": 1.0 - float(hit_1.float().mean()),
        "bayes_top5_failure": 1.0 - float(hit_5.float().mean()),
        "fano_floor": float(fano_error_floor(entropy, mutual_information, support_size)),
        "prior_entropy_nats": entropy,
    }
    attacks = (("cosine", table), ("l2", table), ("l2_shift_aware", table + means))
    for name, rows in attacks if nearest_neighbour else ():
        found = nearest_token_ids(noisy, rows, "cosine" if name == "cosine" else "l2")
        result[f"nn_failure_{name}"] = 1.0 - float((found == ids).float().mean())
    self_information = -prior.log()[ids]
    token_buckets = buckets[ids]
    per_bucket = {}
    for index, name in enumerate(bucket_names(edges)):
        mask = token_buckets == index
        if not bool(mask.any()):
            continue
        information = float(self_information[mask].mean())
        bucket_mi = float(per_token[mask].mean())
        per_bucket[name] = {
            "token_share": float(mask.float().mean()),
            "self_information_nats": information,
            "exact_mi_nats_per_token": bucket_mi,
            "hidden_fraction": 1.0 - bucket_mi / information if information > 0 else math.nan,
            "bayes_attack_failure": 1.0 - float(hit_1[mask].float().mean()),
        }
    result["buckets"] = per_bucket
    return result
