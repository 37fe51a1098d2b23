"""The bounded Gaussian head both noise layers share, its option checks and the noise draw.

``mu = mean_scale * tanh(Linear(h))`` and ``sigma = exp(clamp(log init_std + Linear(h), log
min_std, log max_std))``, both linear maps zero-initialised (``mu = 0``, ``sigma = init_std`` at the
start). This is the shape the MiniLM case study arrived at (docs/minilm.md, "Why the learned mean
was bistable"): Adam moves a parameter by about the learning rate per step whatever its gradient,
so an unbounded linear mean grows by ``lr`` per coordinate per step until the shift is as long as
the token; ``tanh`` caps it at ``mean_scale`` per coordinate. A log-parametrised std changes by a
ratio per step, so large stds stay reachable from a small ``init_std``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mi_losses._validation import as_bool_mask, check_positive_int
from mi_losses.noise.output import NoisyEmbeddings


def check_head_options(
    owner: str, min_std: float, max_std: float, init_std: float, mean_scale: float
) -> None:
    """The bounds of the head: ``0 < min_std <= init_std <= max_std``, finite ``mean_scale >= 0``."""
    values = {
        "min_std": min_std,
        "max_std": max_std,
        "init_std": init_std,
        "mean_scale": mean_scale,
    }
    for name, value in values.items():
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    if not 0 < min_std <= init_std <= max_std:
        raise ValueError(
            f"{owner}: the stds must satisfy 0 < min_std <= init_std <= max_std, got "
            f"min_std={min_std}, init_std={init_std}, max_std={max_std}"
        )
    if mean_scale < 0:
        raise ValueError(f"{owner}: mean_scale must be >= 0, got {mean_scale}")


def check_embeddings(owner: str, embedding_dim: int, embeddings: torch.Tensor) -> None:
    """``embeddings`` ``(B, S, E)`` floating point (``B`` or ``S`` may be 0)."""
    if embeddings.ndim != 3 or embeddings.shape[-1] != embedding_dim:
        raise ValueError(
            f"{owner}: embeddings must have shape (B, S, {embedding_dim}), "
            f"got {tuple(embeddings.shape)}"
        )
    if not embeddings.is_floating_point():
        raise ValueError(f"{owner}: embeddings must be floating point, got {embeddings.dtype}")


def as_mask(
    owner: str, name: str, mask: torch.Tensor | None, embeddings: torch.Tensor
) -> torch.Tensor | None:
    """``mask`` ``(B, S)`` as bool, or ``None``.

    A mask is bool, or of any dtype holding only 0 and 1 (a tokenizer's ``int64`` attention
    mask); any other value, such as ``0.5``, is a ``ValueError``, never read as true.
    """
    if mask is None:
        return None
    shape, device = embeddings.shape[:2], embeddings.device
    return as_bool_mask(f"{owner}: {name}", mask, shape, device, validate_values=True)


def read_only(embeddings: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """``embeddings`` with zeros where ``read`` ``(B, S)`` is false, so NaN or inf there never
    reaches a value or a gradient the layer computes (padding is never read)."""
    return embeddings if read is None else embeddings.masked_fill(~read.unsqueeze(-1), 0)


class GaussianHead(nn.Module):
    """Features ``h`` ``(..., H)`` to a bounded mean shift and std, each ``(..., E)``."""

    def __init__(
        self,
        hidden_dim: int,
        embedding_dim: int,
        *,
        min_std: float,
        max_std: float,
        init_std: float,
        mean_scale: float,
    ) -> None:
        super().__init__()
        self.mean_scale = float(mean_scale)
        self.log_min, self.log_max = math.log(min_std), math.log(max_std)
        self.log_init = math.log(init_std)
        self.mean_head = nn.Linear(hidden_dim, embedding_dim)
        self.std_head = nn.Linear(hidden_dim, embedding_dim)
        for head in (self.mean_head, self.std_head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.mean_head.requires_grad_(mean_scale > 0)

    def forward(
        self, hidden: torch.Tensor, log_std_offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, stds)``; ``log_std_offset`` ``(..., 1)`` is added to ``log sigma`` before the clamp."""
        means = self.mean_scale * torch.tanh(self.mean_head(hidden))
        log_stds = self.log_init + self.std_head(hidden)
        if log_std_offset is not None:
            log_stds = log_stds + log_std_offset
        return means, torch.exp(torch.clamp(log_stds, self.log_min, self.log_max))


def token_mlp(
    owner: str,
    embedding_dim: int,
    hidden_dim: int,
    *,
    min_std: float,
    max_std: float,
    init_std: float,
    mean_scale: float,
) -> tuple[nn.Sequential, GaussianHead]:
    """The context-free layers' MLP of one clean embedding, options checked: the hidden layer
    ``GELU(Linear(LayerNorm(x)))`` and the bounded :class:`GaussianHead` on it."""
    check_positive_int(owner, "embedding_dim", embedding_dim)
    check_positive_int(owner, "hidden_dim", hidden_dim)
    check_head_options(owner, min_std, max_std, init_std, mean_scale)
    hidden = nn.Sequential(
        nn.LayerNorm(embedding_dim), nn.Linear(embedding_dim, hidden_dim), nn.GELU()
    )
    head = GaussianHead(
        hidden_dim,
        embedding_dim,
        min_std=min_std,
        max_std=max_std,
        init_std=init_std,
        mean_scale=mean_scale,
    )
    return hidden, head


def draw_noise(
    clean: torch.Tensor,
    means: torch.Tensor,
    stds: torch.Tensor,
    noise_mask: torch.Tensor | None,
) -> NoisyEmbeddings:
    """``y = x + mu + sigma * eps`` where ``noise_mask`` ``(B, S)`` is true, ``x`` elsewhere.

    ``noise_mask`` is bool or holds only 0 and 1 (``0.5`` is a ``ValueError``); ``None``: all.
    """
    noisy = clean + means + stds * torch.randn_like(clean)
    if noise_mask is not None:
        shape, device = clean.shape[:2], clean.device
        mask = as_bool_mask("noise_mask", noise_mask, shape, device, validate_values=True)
        noisy = torch.where(mask.unsqueeze(-1), noisy, clean)
    return NoisyEmbeddings(noisy=noisy, means=means, stds=stds)
