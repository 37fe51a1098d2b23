"""A learnable Gaussian obfuscation of token embeddings: ``y = x + mu(x) + sigma(x) * eps``."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class NoisyEmbeddings(NamedTuple):
    """Output of :class:`GaussianNoiseLayer`, the four tensors the estimators take.

    Attributes:
        noisy: ``y``, shape ``(B, S, E)``; equal to the clean input where the noise mask is false.
        means: the mean shift ``mu``, shape ``(B, S, E)``.
        stds: the standard deviation ``sigma > 0``, shape ``(B, S, E)``.
    """

    noisy: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor


class GaussianNoiseLayer(nn.Module):
    """Per-token learned mean shift and standard deviation.

    A small MLP maps every clean embedding ``x`` to a mean shift ``mu(x)`` and a raw scale; the
    standard deviation is ``min_std + (max_std - min_std) * sigmoid(raw)``, smooth and bounded in
    ``(min_std, max_std)``. At positions where ``noise_mask`` is false the output is the clean
    embedding (padding and special tokens are not noised).

    Args:
        embedding_dim: ``E``, the size of each token embedding.
        hidden_dim: width of the hidden layer of the MLP.
        min_std: lower bound of ``sigma``, ``> 0``.
        max_std: upper bound of ``sigma``, ``> min_std``.
        init_std: ``sigma`` at initialisation, strictly between the bounds.

    Example:
        >>> layer = GaussianNoiseLayer(embedding_dim=8, hidden_dim=16)
        >>> out = layer(torch.randn(2, 5, 8))
        >>> out.noisy.shape, bool((out.stds > 0).all())
        (torch.Size([2, 5, 8]), True)
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 2.0,
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim}")
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {hidden_dim}")
        if not 0 < min_std < max_std:
            raise ValueError(
                f"min_std and max_std must satisfy 0 < min_std < max_std, got {min_std}, {max_std}"
            )
        if not min_std < init_std < max_std:
            raise ValueError(
                f"init_std must lie strictly between min_std={min_std} and max_std={max_std}, "
                f"got {init_std}"
            )
        self.min_std = min_std
        self.max_std = max_std
        self.hidden = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.GELU())
        self.mean_head = nn.Linear(hidden_dim, embedding_dim)
        self.std_head = nn.Linear(hidden_dim, embedding_dim)
        nn.init.zeros_(self.mean_head.weight)
        nn.init.zeros_(self.mean_head.bias)
        nn.init.zeros_(self.std_head.weight)
        fraction = (init_std - min_std) / (max_std - min_std)
        nn.init.constant_(self.std_head.bias, float(torch.logit(torch.tensor(fraction))))

    def forward(
        self, embeddings: torch.Tensor, noise_mask: torch.Tensor | None = None
    ) -> NoisyEmbeddings:
        """Obfuscate ``embeddings`` of shape ``(B, S, E)`` where ``noise_mask`` ``(B, S)`` is true."""
        hidden = self.hidden(embeddings)
        means = self.mean_head(hidden)
        stds = self.min_std + (self.max_std - self.min_std) * torch.sigmoid(self.std_head(hidden))
        noisy = embeddings + means + stds * torch.randn_like(embeddings)
        if noise_mask is not None:
            noisy = torch.where(noise_mask.bool().unsqueeze(-1), noisy, embeddings)
        return NoisyEmbeddings(noisy=noisy, means=means, stds=stds)
