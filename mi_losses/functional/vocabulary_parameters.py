"""The inputs of the known-prior estimator: a smoothed token prior and the layer's per-row noise."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from mi_losses._validation import _shape, check_floating, check_ndim

__all__ = ["prior_entropy", "token_prior", "vocabulary_noise_parameters"]


def token_prior(
    token_ids_or_counts: torch.Tensor,
    vocab_size: int,
    *,
    smoothing: float = 0.5,
    noise_mask: torch.Tensor | None = None,
    counts: bool = False,
) -> torch.Tensor:
    r"""A unigram prior over the vocabulary from training tokens, with additive smoothing.

    $$p_v = \frac{n_v + \alpha}{\sum_u n_u + \alpha V}$$

    with ``n_v`` the number of occurrences of token ``v`` and ``alpha = smoothing``. Any
    ``alpha > 0`` gives every token a positive probability, so that a token never seen in
    training cannot make the known-prior estimator fail; the default ``0.5`` is the
    Krichevsky–Trofimov estimator. ``smoothing=0`` keeps unseen tokens at ``p_v = 0`` (they are
    then left out of the mixture and the attack).

    Args:
        token_ids_or_counts: token ids of the training text (any shape, integers in
            ``[0, vocab_size)``), or with ``counts=True`` the counts ``n`` ``(vocab_size,)``.
        vocab_size: ``V``.
        smoothing: ``alpha >= 0``, pseudo-count added to every token.
        noise_mask: with token ids, a bool or 0/1 tensor of their shape: only true positions count
            (padding, special tokens); ``None`` counts all.
        counts: the first argument holds counts instead of token ids.

    Returns:
        ``(V,)`` float64 probabilities summing to 1.

    Raises:
        ValueError: ids outside ``[0, V)``, negative counts or smoothing, a mask of another
            shape, or no mass at all (no tokens and ``smoothing=0``).

    Example:
        >>> token_prior(torch.tensor([0, 0, 1]), 3, smoothing=1.0)
        tensor([0.5000, 0.3333, 0.1667], dtype=torch.float64)
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if not smoothing >= 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing!r}")
    if not isinstance(token_ids_or_counts, torch.Tensor):
        raise ValueError(
            f"token_ids_or_counts must be a torch.Tensor, got {type(token_ids_or_counts).__name__}"
        )
    if counts:
        if token_ids_or_counts.shape != (vocab_size,):
            raise ValueError(
                f"token_ids_or_counts must have shape ({vocab_size},) with counts=True, "
                f"got {_shape(token_ids_or_counts.shape)}"
            )
        totals = token_ids_or_counts.detach().to(torch.float64)
        if bool((totals < 0).any()) or not bool(totals.isfinite().all()):
            raise ValueError("token_ids_or_counts must hold finite counts >= 0 with counts=True")
    else:
        if token_ids_or_counts.is_floating_point():
            raise ValueError(
                "token_ids_or_counts must hold integer token ids (pass counts=True for counts), "
                f"got dtype {token_ids_or_counts.dtype}"
            )
        ids = token_ids_or_counts
        if noise_mask is not None:
            if noise_mask.shape != ids.shape:
                raise ValueError(
                    f"noise_mask must have shape {_shape(ids.shape)} like the token ids, "
                    f"got {_shape(noise_mask.shape)}"
                )
            ids = ids[noise_mask.bool()]
        ids = ids.reshape(-1).long()
        if ids.numel() and (bool(ids.min() < 0) or bool(ids.max() >= vocab_size)):
            raise ValueError(
                f"token ids must lie in [0, {vocab_size}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )
        totals = torch.bincount(ids, minlength=vocab_size).to(torch.float64)
    totals = totals + smoothing
    mass = totals.sum()
    if not bool(mass > 0):
        raise ValueError("the prior has no mass: no tokens were counted and smoothing is 0")
    return totals / mass


def prior_entropy(token_prior: torch.Tensor) -> torch.Tensor:
    r"""``H(X) = -sum_v p_v log p_v`` in nats, over ``p_v > 0`` (the prior is normalised first).

    The most any token can leak: the known-prior mutual information never exceeds it on
    average. The first argument of :func:`~mi_losses.functional.fano_error_floor`.

    Example:
        >>> prior_entropy(torch.tensor([0.5, 0.5, 0.0]))
        tensor(0.6931)
    """
    prior = token_prior
    check_floating("token_prior", prior)
    check_ndim("token_prior", prior, 1, "(V,)")
    if bool((prior < 0).any()) or not bool(prior.sum() > 0):
        raise ValueError("token_prior must be non-negative with a positive sum")
    p = prior / prior.sum()
    return -torch.where(p > 0, p * torch.where(p > 0, p, 1.0).log(), 0.0).sum()


class NoiseParameters(Protocol):
    """What a noise layer returns: anything with ``means`` and ``stds`` ``(B, S, E)``."""

    @property
    def means(self) -> torch.Tensor: ...

    @property
    def stds(self) -> torch.Tensor: ...


def vocabulary_noise_parameters(
    noise_layer: Callable[[torch.Tensor], NoiseParameters],
    embedding_table: torch.Tensor,
    *,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean shift and std a context-free noise layer applies to every vocabulary row.

    Calls ``noise_layer`` on the rows of ``embedding_table`` as one sequence of ``chunk_size`` tokens at
    a time (``(1, C, E)``) and concatenates the ``means`` and ``stds`` of its output (e.g.
    :class:`mi_losses.noise.GaussianNoiseLayer`, whose output is a
    :class:`~mi_losses.noise.NoisyEmbeddings`). Only valid for layers whose output for a
    token depends on that token alone. The layer's own noise sampling does not advance the
    caller's random state (it runs under :func:`torch.random.fork_rng`). With gradients enabled
    the result keeps the layer's graph, so that the known-prior estimate can train the layer.

    Args:
        noise_layer: called as ``noise_layer(embeddings)`` with ``embeddings`` ``(1, C, E)``.
        embedding_table: the vocabulary embedding table ``W``, ``(V, E)``.
        chunk_size: rows per call.

    Returns:
        ``(means, stds)``, each ``(V, E)``: the arguments ``vocabulary_means`` and ``vocabulary_stds`` of
        :func:`~mi_losses.functional.vocabulary_mutual_information`.

    Example:
        >>> from mi_losses.noise import GaussianNoiseLayer
        >>> layer = GaussianNoiseLayer(embedding_dim=4, hidden_dim=8, init_std=0.5)
        >>> means, stds = vocabulary_noise_parameters(layer, torch.randn(10, 4), chunk_size=3)
        >>> means.shape, round(stds.mean().item(), 4)
        (torch.Size([10, 4]), 0.5)
    """
    table = embedding_table
    check_floating("embedding_table", table)
    check_ndim("embedding_table", table, 2, "(V, E)")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    devices = [table.device] if table.device.type == "cuda" else []
    means, stds = [], []
    with torch.random.fork_rng(devices=devices):
        for start in range(0, table.shape[0], chunk_size):
            output = noise_layer(table[start : start + chunk_size].unsqueeze(0))
            means.append(output.means.squeeze(0))
            stds.append(output.stds.squeeze(0))
    if not means:
        empty = table.new_zeros(table.shape)
        return empty, empty.clone()
    return torch.cat(means), torch.cat(stds)
