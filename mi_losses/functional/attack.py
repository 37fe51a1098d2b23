"""The Bayes-optimal token attacker of a context-free noise layer, and Fano's floor on any attacker."""

from __future__ import annotations

import math

import torch

from mi_losses.functional.vocabulary import DEFAULT_VOCAB_CHUNK_SIZE, prepare_vocabulary_inputs
from mi_losses.kernels.vocabulary import best_rows

__all__ = ["bayes_token_attack", "fano_error_floor"]


def bayes_token_attack(
    vocabulary_means: torch.Tensor,
    vocabulary_stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
    noisy_input_embeddings: torch.Tensor,
    embedding_table: torch.Tensor,
    token_prior: torch.Tensor,
    *,
    top_k: int = 1,
    vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Bayes-optimal guesses of the clean tokens from their noisy embeddings (no gradient).

    $$\hat t(y) = \arg\max_{v : p_v > 0}\; \log p_v + \log \mathcal N(y; W_v + \mu_v, \sigma_v)$$

    No attacker who sees one noisy token embedding and knows the layer and the prior recovers
    more tokens on average when tokens are drawn from the prior. `top_k > 1` returns the $k$
    most probable tokens, best first. Arguments as in
    :func:`~mi_losses.functional.vocabulary_mutual_information` without `token_ids`; returns
    int64 ids `(B, S)` or `(B, S, top_k)`, `-1` at inactive positions.

    Example:
        >>> table = torch.eye(3)
        >>> prior, means, stds = torch.ones(3), torch.zeros(3, 3), torch.full((3, 3), 0.1)
        >>> y = torch.tensor([[[0.9, 0.1, 0.0]]])
        >>> bayes_token_attack(means, stds, None, y, table, prior)
        tensor([[0]])
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    with torch.no_grad():
        queries, _, vocabulary, _ = prepare_vocabulary_inputs(
            vocabulary_means,
            vocabulary_stds,
            noise_mask,
            None,
            noisy_input_embeddings,
            embedding_table,
            token_prior,
            vocab_chunk_size=vocab_chunk_size,
            validate_args=validate_args,
        )
        support_size = int(vocabulary.support.sum())
        if top_k > support_size:
            raise ValueError(
                f"top_k must be at most the number of rows with token_prior > 0 ({support_size}), "
                f"got {top_k}"
            )
        _, guesses = best_rows(queries, vocabulary, vocab_chunk_size, top_k)
        mask = (
            torch.ones(noisy_input_embeddings.shape[:2], dtype=torch.bool, device=queries.device)
            if noise_mask is None
            else noise_mask.bool()
        )
        result = torch.full(
            (*noisy_input_embeddings.shape[:2], top_k), -1, dtype=torch.int64, device=queries.device
        )
        result[mask] = guesses
        return result.squeeze(-1) if top_k == 1 else result


def fano_error_floor(
    entropy: float | torch.Tensor,
    mutual_information: float | torch.Tensor,
    support_size: int,
) -> torch.Tensor:
    r"""Fano's lower bound on the error rate of any attacker that guesses ``X`` from ``Y``.

    $$P_\text{error} \ge \max\Big(0, \frac{H(X) - I(X; Y) - \log 2}{\log(|\mathcal X| - 1)}\Big)$$

    With ``H(X)`` the entropy of the tokens (e.g. of the prior) and ``I`` the mutual information
    per token, both in nats, over a support of ``|X|`` tokens. The floor holds for the true
    ``I``; plugging in an estimate gives an estimate of the floor (an upper bound on ``I``, such
    as the sub-batch estimate, gives a valid floor).

    Args:
        entropy: ``H(X)`` in nats (float or tensor).
        mutual_information: ``I(X; Y)`` in nats (float or tensor, broadcast with ``entropy``).
        support_size: ``|X|``, the number of tokens with positive probability, at least 3.

    Returns:
        The floor, a tensor in ``[0, 1)`` of the broadcast shape (float64 for float inputs).

    Raises:
        ValueError: ``support_size`` below 3 (the bound divides by ``log(|X| - 1)``).

    Example:
        >>> fano_error_floor(math.log(1000), 1.0, 1000)
        tensor(0.7550, dtype=torch.float64)
    """
    if not isinstance(support_size, int) or support_size < 3:
        raise ValueError(f"support_size must be an integer of at least 3, got {support_size!r}")
    given = [t for t in (entropy, mutual_information) if isinstance(t, torch.Tensor)]
    dtype = given[0].dtype if given else torch.float64
    device = given[0].device if given else None
    entropy_ = torch.as_tensor(entropy, dtype=dtype, device=device)
    information = torch.as_tensor(mutual_information, dtype=dtype, device=device)
    floor = (entropy_ - information - math.log(2.0)) / math.log(support_size - 1)
    return floor.clamp_min(0.0)
