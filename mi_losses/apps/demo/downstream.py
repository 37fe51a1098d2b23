"""A small frozen downstream model: what the noisy embeddings must stay useful for."""

from __future__ import annotations

import torch
from torch import nn


class FrozenDownstreamEncoder(nn.Module):
    """A fixed random one-layer transformer encoder, seeded, never trained.

    It stands in for the model that consumes the obfuscated embeddings. Its parameters do not
    require gradients (gradients still flow through it to its input). It has no dropout and no
    running statistics, so train and eval mode compute the same function.

    Args:
        embedding_dim: ``E`` of the input and output.
        hidden_dim: width of the feed-forward block.
        num_heads: attention heads (must divide ``embedding_dim``).
        seed: seed of the random weights (the global RNG is left untouched).

    Example:
        >>> model = FrozenDownstreamEncoder(embedding_dim=8, num_heads=2)
        >>> model(torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)).shape
        torch.Size([3, 5, 8])
    """

    def __init__(
        self, embedding_dim: int, hidden_dim: int = 64, num_heads: int = 2, seed: int = 0
    ) -> None:
        super().__init__()
        if num_heads < 1 or embedding_dim % num_heads:
            raise ValueError(
                f"num_heads must be a positive divisor of embedding_dim={embedding_dim}, "
                f"got {num_heads}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layer = nn.TransformerEncoderLayer(
                d_model=embedding_dim,
                nhead=num_heads,
                dim_feedforward=hidden_dim,
                dropout=0.0,
                batch_first=True,
            )
        self.requires_grad_(False)

    def forward(self, embeddings: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Encode ``embeddings`` ``(B, S, E)``; ``token_mask`` ``(B, S)`` is true on real tokens."""
        return self.layer(embeddings, src_key_padding_mask=~token_mask.bool())
