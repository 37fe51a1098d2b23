"""How private and how useful one context-free token noise layer is, on held-out text.

For a layer (:mod:`~mi_losses.noise.token`) and the validation sequences, with the noise
drawn from a fixed seed (two evaluations of one layer agree exactly):

- ``exact_mi_nats_per_token``: the known-prior mutual information
  ``vocabulary_mutual_information`` over the whole vocabulary, prior = smoothed token counts of
  the training text, averaged over the noised validation tokens (docs/math.md, "Known-prior mutual
  information"). Each token's term is at most its self-information ``-log p_t``.
- ``bayes_attack_failure`` / ``bayes_top5_failure``: the fraction of noised tokens that the
  Bayes-optimal attacker (knows the layer and the prior, sees one noisy embedding) misses with its
  best guess / its five best guesses.
- ``nn_failure_cosine``, ``nn_failure_l2``: nearest vocabulary row by cosine / L2;
  ``nn_failure_l2_shift_aware``: L2 against the vocabulary moved by the layer's mean shift.
- ``fano_floor``: Fano's lower bound on any one-token attacker's error from the exact MI and the
  prior's entropy ``H(X)``.
- ``sub_batch_mi_upper``: the reference API's sub-batch estimate at token granularity (an upper
  bound in expectation; batches of 32 sequences, 16 of queries); ``sub_batch_mi_lower``: its
  InfoNCE lower bound from the same pass (``None`` when ``mutual_information_bounds`` is absent).
- ``sentence_cosine``: mean cosine of clean vs noisy sentence embeddings; ``retrieval_at_1``: how
  often a noisy sentence embedding's nearest clean one among all validation sequences is its own.
- ``buckets``: the token-level numbers per training-frequency bucket (rank of the token in the
  training counts), with ``hidden_fraction = 1 - exact MI / self-information``: the share of the
  bucket's information the layer hides.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.nn import functional as F

from mi_losses.apps.minilm.model import MiniLMEncoder
from mi_losses.attacks.nearest import nearest_token_ids
from mi_losses.functional import (
    bayes_token_attack,
    fano_error_floor,
    mutual_information_sub_batch_estimate,
    prior_entropy,
    vocabulary_mutual_information_estimate,
)
from mi_losses.noise import TokenNoise

Batch = dict[str, torch.Tensor]

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
    ranks[torch.argsort(counts, descending=True, stable=True)] = torch.arange(counts.shape[0])
    return torch.bucketize(ranks, torch.tensor(edges), right=True)


def _mutual_information_bounds() -> Any:
    """``mutual_information_bounds`` of ``mi_losses.functional`` if this version has it."""
    import mi_losses.functional as functional

    return getattr(functional, "mutual_information_bounds", None)


@torch.no_grad()
def clean_sentence_embeddings(encoder: MiniLMEncoder, batches: Iterable[Batch]) -> torch.Tensor:
    """Sentence embeddings ``(N, E)`` of the clean sequences, in batch order."""
    return torch.cat(
        [
            encoder.sentence_embedding(
                encoder.embed_tokens(batch["input_ids"]), batch["attention_mask"].bool()
            )
            for batch in batches
        ]
    )


def _utility(noisy_sentences: torch.Tensor, clean_sentences: torch.Tensor) -> dict[str, float]:
    similarity = F.normalize(noisy_sentences, dim=-1) @ F.normalize(clean_sentences, dim=-1).T
    target = torch.arange(similarity.shape[0])
    return {
        "sentence_cosine": float(similarity.diagonal().mean()),
        "retrieval_at_1": float((similarity.argmax(-1) == target).float().mean()),
    }


@torch.no_grad()
def evaluate_layer(
    encoder: MiniLMEncoder,
    layer: TokenNoise,
    batches: Iterable[Batch],
    prior: torch.Tensor,
    buckets: torch.Tensor,
    *,
    clean_sentences: torch.Tensor | None = None,
    seed: int = 0,
    privacy: bool = True,
    nearest_neighbour: bool = True,
    vocab_chunk_size: int = 8192,
) -> dict[str, Any]:
    """Privacy and utility of ``layer`` on ``batches`` (see the module docstring).

    Args:
        encoder: the frozen model.
        layer: the context-free noise layer.
        batches: validation batches (dicts of ``input_ids``, ``attention_mask``, ``noise_mask``).
        prior: the attacker's prior over the vocabulary ``(V,)`` (smoothed training counts).
        buckets: frequency bucket of every vocabulary token ``(V,)``
            (:func:`frequency_buckets`).
        clean_sentences: precomputed :func:`clean_sentence_embeddings` of ``batches``, if any.
        seed: seed of the noise.
        privacy: compute the attacks and the mutual information (``False``: utility only).
        nearest_neighbour: also run the three nearest-neighbour attacks.
        vocab_chunk_size: vocabulary rows scored at once.

    Returns:
        A dict of the metrics, plus ``tokens_attacked``, ``sequences`` and ``noise_std_mean``.
    """
    batches = list(batches)
    if clean_sentences is None:
        clean_sentences = clean_sentence_embeddings(encoder, batches)
    table = encoder.word_embedding_table.detach()
    noisy_sentences, noisy_tokens, token_ids = [], [], []
    upper_sum, lower_sum, bound_count = 0.0, 0.0, 0
    bounds = _mutual_information_bounds()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in batches:
            noise_mask = batch["noise_mask"].bool()
            out = layer(batch["input_ids"], table, noise_mask)
            attention = batch["attention_mask"].bool()
            noisy_sentences.append(encoder.sentence_embedding(out.noisy, attention))
            noisy_tokens.append(out.noisy[noise_mask])
            token_ids.append(batch["input_ids"][noise_mask])
            if privacy and noise_mask.shape[0] % 2 == 0:
                clean = table[batch["input_ids"]]
                arguments = (out.means, out.stds, noise_mask, clean, out.noisy)
                estimate = mutual_information_sub_batch_estimate(*arguments, granularity="token")
                count = int(estimate.num_queries)
                upper_sum += float(estimate.value) * count
                if bounds is not None:
                    lower_sum += float(bounds(*arguments, granularity="token").lower) * count
                bound_count += count
    result: dict[str, Any] = _utility(torch.cat(noisy_sentences), clean_sentences)
    result["sequences"] = int(clean_sentences.shape[0])
    noisy = torch.cat(noisy_tokens)
    ids = torch.cat(token_ids)
    means, stds = layer.vocabulary_parameters(table)
    result["noise_std_mean"] = float(stds[ids].mean())
    if not privacy:
        return result
    result["tokens_attacked"] = int(ids.shape[0])
    result.update(
        _token_privacy(
            noisy,
            ids,
            table,
            prior,
            means,
            stds,
            buckets,
            vocab_chunk_size,
            nearest_neighbour=nearest_neighbour,
        )
    )
    result["sub_batch_mi_upper"] = upper_sum / bound_count if bound_count else None
    result["sub_batch_mi_lower"] = lower_sum / bound_count if bound_count and bounds else None
    return result


def _token_privacy(
    noisy: torch.Tensor,
    ids: torch.Tensor,
    table: torch.Tensor,
    prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    buckets: torch.Tensor,
    vocab_chunk_size: int,
    edges: tuple[int, ...] = BUCKET_EDGES,
    *,
    nearest_neighbour: bool = True,
) -> dict[str, Any]:
    """The one-token metrics of ``noisy`` ``(N, E)`` whose true tokens are ``ids`` ``(N,)``."""
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
