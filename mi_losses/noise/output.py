"""``NoisyEmbeddings``: what every noise layer returns, the three tensors the estimators take."""

from __future__ import annotations

from typing import NamedTuple

import torch


class NoisyEmbeddings(NamedTuple):
    """Output of a noise layer, ``y = x + mu + sigma * eps`` at the noise mask.

    Attributes:
        noisy: ``y``, shape ``(B, S, E)``; equal to the clean input where the noise mask is false.
        means: the mean shift ``mu``, shape ``(B, S, E)``.
        stds: the standard deviation ``sigma > 0``, shape ``(B, S, E)``.

    At the positions a layer does not read (padding), ``means`` and ``stds`` are computed from a
    zero embedding: finite, and never read by the estimators.
    """

    noisy: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
