"""Learned Gaussian noise layers for token embeddings: ``y = x + mu + sigma * eps`` at a mask.

- :class:`GaussianNoiseLayer`: context-free (a token's mean and std from its own embedding).
- :class:`SequenceGaussianNoiseLayer`: mean and std per position from the whole sequence (a small
  transformer encoder).

Both are built as ``Layer(embedding_dim=E, ...)``, are called as ``layer(embeddings (B, S, E),
noise_mask (B, S) | None)`` and return :class:`NoisyEmbeddings` ``(noisy, means, stds)``.

Token layers (:mod:`mi_losses.noise.token`) take token ids and the vocabulary table instead,
``layer(input_ids (B, S), table (V, E), noise_mask (B, S))``: :class:`LearnedTokenNoise` and the
baselines :class:`IsotropicNoise` and :class:`FrequencyRuleNoise`; :func:`as_token_noise` sees a
context-free embedding layer as one.

A trained layer is a directory: ``layer.save_pretrained(path)``, ``Layer.from_pretrained(path)``
(:class:`PretrainedMixin`: ``config.json`` with every constructor argument, ``model.safetensors``).
"""

from mi_losses.noise._head import draw_noise
from mi_losses.noise.gaussian import GaussianNoiseLayer
from mi_losses.noise.output import NoisyEmbeddings
from mi_losses.noise.pretrained import PretrainedMixin
from mi_losses.noise.sequence import SequenceGaussianNoiseLayer
from mi_losses.noise.token import (
    FrequencyRuleNoise,
    IsotropicNoise,
    LearnedTokenNoise,
    TokenNoise,
    as_token_noise,
)

__all__ = [
    "FrequencyRuleNoise",
    "GaussianNoiseLayer",
    "IsotropicNoise",
    "LearnedTokenNoise",
    "NoisyEmbeddings",
    "PretrainedMixin",
    "SequenceGaussianNoiseLayer",
    "TokenNoise",
    "as_token_noise",
    "draw_noise",
]
