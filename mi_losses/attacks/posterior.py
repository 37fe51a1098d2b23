"""The one-token Bayes posterior of a context-free Gaussian layer over a candidate vocabulary.

For a noisy token embedding $y$ and candidate rows $v$ with centre $W_v + \\mu_v$, std
$\\sigma_v$ and prior $p_v$,

$$\\log p(v \\mid y) = \\log p_v + \\log N(y ; W_v + \\mu_v, \\operatorname{diag}\\sigma_v^2)
 - \\log \\sum_u p_u N(y ; W_u + \\mu_u, \\operatorname{diag}\\sigma_u^2),$$

the scores of :func:`~mi_losses.functional.bayes_token_attack` normalised over the candidates
(docs/math.md, "Known-prior mutual information"). The learned inversion attack takes it as a
feature, so it starts where the Bayes attacker is.
"""

from __future__ import annotations

import torch

from mi_losses.kernels.vocabulary import Vocabulary, chunk_scores, query_side, rows

__all__ = ["gaussian_token_log_posterior"]


@torch.no_grad()
def gaussian_token_log_posterior(
    noisy_embeddings: torch.Tensor,
    table: torch.Tensor,
    log_prior: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
) -> torch.Tensor:
    """Normalised log posterior ``(N, C)`` of ``N`` noisy embeddings over ``C`` candidate rows.

    Args:
        noisy_embeddings: ``y``, ``(N, E)``.
        table: the candidates' clean rows ``W``, ``(C, E)``.
        log_prior: ``log p`` of the candidates, ``(C,)`` (need not be normalised; finite).
        means: ``mu``, ``(C, E)``.
        stds: ``sigma > 0``, ``(C, E)``.

    Returns:
        ``(N, C)`` log-probabilities in float32 (float64 for float64 queries), computed on
        coordinates centred on the queries' mean; each row's ``logsumexp`` is 0. No gradient.

    Example:
        >>> table = torch.eye(3)
        >>> post = gaussian_token_log_posterior(
        ...     table[:1] * 0.9, table, torch.zeros(3), torch.zeros(3, 3), torch.full((3, 3), 0.1))
        >>> int(post.argmax())
        0
    """
    if noisy_embeddings.ndim != 2 or table.ndim != 2:
        raise ValueError(
            "noisy_embeddings must have shape (N, E) and table (C, E), got "
            f"{tuple(noisy_embeddings.shape)} and {tuple(table.shape)}"
        )
    for name, value in (("means", means), ("stds", stds)):
        if value.shape != table.shape:
            raise ValueError(
                f"{name} must have shape {tuple(table.shape)} like table, got {tuple(value.shape)}"
            )
    if log_prior.shape != table.shape[:1]:
        raise ValueError(
            f"log_prior must have shape ({table.shape[0]},), got {tuple(log_prior.shape)}"
        )
    dtype = torch.float64 if noisy_embeddings.dtype == torch.float64 else torch.float32
    queries = noisy_embeddings.to(dtype)
    vocabulary = Vocabulary(
        table.to(dtype),
        means.to(dtype),
        stds.to(dtype),
        log_prior.to(dtype),
        torch.ones(table.shape[0], dtype=torch.bool, device=table.device),
    )
    q, f = query_side(queries)
    scores = chunk_scores(q, rows(vocabulary, 0, table.shape[0], f), vocabulary.log_prior)
    return scores.log_softmax(-1)
