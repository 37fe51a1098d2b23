"""``SequenceGaussianNoiseLayer``: mean and std per position from the whole sequence."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from mi_losses._validation import check_positive_int
from mi_losses.noise._head import (
    GaussianHead,
    as_mask,
    check_embeddings,
    check_head_options,
    draw_noise,
    read_only,
)
from mi_losses.noise.output import NoisyEmbeddings
from mi_losses.noise.pretrained import PretrainedMixin


class SequenceGaussianNoiseLayer(PretrainedMixin):
    """Learned noise whose $\\mu$ and $\\sigma$ at a position depend on the whole sequence.

    A small transformer encoder reads the clean sequence,
    $h = \\mathrm{Encoder}(\\mathrm{Linear}(\\mathrm{LayerNorm}(x)))$ (pre-norm layers, no
    positional encoding: the context is the set of tokens around a position), and the same bounded
    head as :class:`~mi_losses.noise.GaussianNoiseLayer` gives $\\mu = m\\tanh(\\cdot)$ and a
    clamped $\\log\\sigma$ per position (both zero-initialised: $\\mu = 0$, $\\sigma$ =
    ``init_std`` at the start). Keys are the positions of ``attention_mask`` if given, else of
    ``noise_mask``, else all; where ``noise_mask`` is false the output is the clean embedding.
    Not context-free: the known-prior MI and the Bayes attack do not apply; the sub-batch
    estimators do. ``save_pretrained(path)`` / ``from_pretrained(path)`` keep it as a directory
    (:class:`~mi_losses.noise.PretrainedMixin`).

    Args:
        embedding_dim: $E$, the width of the embeddings.
        hidden_dim: width of the encoder (divisible by ``num_heads``).
        num_layers: encoder layers.
        num_heads: attention heads per layer.
        feedforward_dim: width of each layer's feed-forward block.
        dropout: dropout of the encoder, in ``[0, 1)``.
        min_std: lower bound of $\\sigma$.
        max_std: upper bound of $\\sigma$.
        init_std: $\\sigma$ at initialisation, in ``[min_std, max_std]``.
        mean_scale: bound of $|\\mu|$ per coordinate, in embedding units (``0``: no shift).

    Example:
        >>> layer = SequenceGaussianNoiseLayer(embedding_dim=8, hidden_dim=16, num_heads=2)
        >>> out = layer(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
        >>> out.means.shape, round(out.stds.mean().item(), 4)
        (torch.Size([2, 5, 8]), 0.1)
    """

    context_free: ClassVar[bool] = False
    """A token's mean and std depend on the other tokens of its sequence."""

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        feedforward_dim: int = 256,
        dropout: float = 0.0,
        min_std: float = 1e-3,
        max_std: float = 4.0,
        init_std: float = 0.1,
        mean_scale: float = 0.05,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        for name, value in (
            ("embedding_dim", embedding_dim),
            ("hidden_dim", hidden_dim),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("feedforward_dim", feedforward_dim),
        ):
            check_positive_int(owner, name, value)
        if hidden_dim % num_heads:
            raise ValueError(
                f"{owner}: hidden_dim must be divisible by num_heads, got hidden_dim={hidden_dim}, "
                f"num_heads={num_heads}"
            )
        if (
            isinstance(dropout, bool)
            or not isinstance(dropout, (int, float))
            or not 0 <= dropout < 1
        ):
            raise ValueError(f"{owner}: dropout must lie in [0, 1), got {dropout!r}")
        check_head_options(owner, min_std, max_std, init_std, mean_scale)
        self.embedding_dim = embedding_dim
        self.input = nn.Sequential(
            nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, hidden_dim)
        )
        layer = nn.TransformerEncoderLayer(
            hidden_dim,
            num_heads,
            dim_feedforward=feedforward_dim,
            dropout=float(dropout),
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(hidden_dim), enable_nested_tensor=False
        )
        self.head = GaussianHead(
            hidden_dim,
            embedding_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
            mean_scale=mean_scale,
        )

    def forward(
        self,
        embeddings: torch.Tensor,
        noise_mask: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
    ) -> NoisyEmbeddings:
        """Noise ``embeddings`` ``(B, S, E)`` where ``noise_mask`` ``(B, S)`` is true (all if ``None``).

        ``attention_mask`` ``(B, S)`` (true at real tokens) decides which positions the encoder
        reads; without it, the noised positions. Both masks are bool or hold only 0 and 1. The
        positions not read (padding) are zeroed first: whatever they hold (NaN, inf) changes no
        output except their own ``noisy``, the clean input itself; a row with no position to read
        reads zeros. An empty batch (``B`` or ``S`` = 0) gives empty outputs.
        """
        owner = type(self).__name__
        check_embeddings(owner, self.embedding_dim, embeddings)
        noise_mask = as_mask(owner, "noise_mask", noise_mask, embeddings)
        attention_mask = as_mask(owner, "attention_mask", attention_mask, embeddings)
        keys = attention_mask if attention_mask is not None else noise_mask
        hidden = self.input(read_only(embeddings, keys))
        if hidden.numel():  # attention over an empty sequence has nothing to reshape
            padding = None
            if keys is not None:
                # A row with no key attends everywhere (to zeros) rather than to nothing (NaN).
                padding = ~(keys | ~keys.any(-1, keepdim=True))
            hidden = self.encoder(hidden, src_key_padding_mask=padding)
        means, stds = self.head(hidden)
        return draw_noise(embeddings, means, stds, noise_mask)
