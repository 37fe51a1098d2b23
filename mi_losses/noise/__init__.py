"""Learned Gaussian noise layers for token embeddings: ``y = x + mu + sigma * eps`` at a mask.

- :class:`GaussianNoiseLayer`: context-free (a token's mean and std from its own embedding).
- :class:`SequenceGaussianNoiseLayer`: mean and std per position from the whole sequence (a small
  transformer encoder).

Both are built as ``Layer(embedding_dim=E, ...)``, are called as ``layer(embeddings (B, S, E),
noise_mask (B, S) | None)`` and return :class:`NoisyEmbeddings` ``(noisy, means, stds)``.
"""

from mi_losses.noise.gaussian import GaussianNoiseLayer
from mi_losses.noise.output import NoisyEmbeddings
from mi_losses.noise.sequence import SequenceGaussianNoiseLayer

__all__ = ["GaussianNoiseLayer", "NoisyEmbeddings", "SequenceGaussianNoiseLayer"]
