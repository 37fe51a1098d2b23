"""``GaussianNoiseLayer``: a context-free learned Gaussian noise, mean and std from the token alone."""

from __future__ import annotations

from typing import ClassVar

import torch

from mi_losses.noise._head import as_mask, check_embeddings, draw_noise, read_only, token_mlp
from mi_losses.noise.output import NoisyEmbeddings
from mi_losses.noise.pretrained import PretrainedMixin


class GaussianNoiseLayer(PretrainedMixin):
    """Per-token learned noise $y = x + \\mu(x) + \\sigma(x)\\,\\varepsilon$, context-free.

    An MLP of each clean embedding alone, $h = \\mathrm{GELU}(\\mathrm{Linear}(\\mathrm{LayerNorm}(x)))$,
    gives $\\mu = m \\tanh(\\mathrm{Linear}(h))$ (so $|\\mu| \\le m$ = ``mean_scale`` per
    coordinate) and $\\log\\sigma = \\mathrm{clamp}(\\log\\sigma_0 + \\mathrm{Linear}(h))$ between
    ``log(min_std)`` and ``log(max_std)``; both heads start at zero ($\\mu = 0$,
    $\\sigma = \\sigma_0$ = ``init_std``). Where ``noise_mask`` is false the output is the clean
    embedding. Context-free: the channel is known per vocabulary row
    (:meth:`vocabulary_parameters`), so the known-prior MI and the Bayes attack apply
    (docs/math.md). Why bounded: docs/minilm.md, "Why the learned mean was bistable".
    ``save_pretrained(path)`` / ``from_pretrained(path)`` keep it as a directory
    (:class:`~mi_losses.noise.PretrainedMixin`).

    Args:
        embedding_dim: $E$, the width of the embeddings.
        hidden_dim: width of the MLP.
        min_std: lower bound of $\\sigma$.
        max_std: upper bound of $\\sigma$.
        init_std: $\\sigma$ at initialisation, in ``[min_std, max_std]``.
        mean_scale: bound of $|\\mu|$ per coordinate, in embedding units (``0``: no shift).

    Example:
        >>> layer = GaussianNoiseLayer(embedding_dim=8, hidden_dim=16)
        >>> out = layer(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
        >>> out.noisy.shape, round(out.stds.mean().item(), 4)
        (torch.Size([2, 5, 8]), 0.1)
    """

    context_free: ClassVar[bool] = True
    """The mean and std of a token depend on that token only."""

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int = 128,
        min_std: float = 1e-3,
        max_std: float = 4.0,
        init_std: float = 0.1,
        mean_scale: float = 0.05,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.hidden, self.head = token_mlp(
            type(self).__name__,
            embedding_dim,
            hidden_dim,
            min_std=min_std,
            max_std=max_std,
            init_std=init_std,
            mean_scale=mean_scale,
        )

    def parameters_of(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, stds)`` of embeddings ``(..., E)``, each ``(..., E)``, no noise drawn."""
        return self.head(self.hidden(embeddings))  # type: ignore[no-any-return]

    def vocabulary_parameters(
        self, table: torch.Tensor, rows: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(means, stds)``, each ``(R, E)``, of the rows ``table[rows]`` (all ``V`` if ``None``)."""
        return self.parameters_of(table if rows is None else table[rows])

    def forward(
        self, embeddings: torch.Tensor, noise_mask: torch.Tensor | None = None
    ) -> NoisyEmbeddings:
        """Noise ``embeddings`` ``(B, S, E)`` where ``noise_mask`` ``(B, S)`` is true (all if ``None``).

        ``noise_mask`` is bool or holds only 0 and 1. Only the noised positions are read: the
        others (padding, special tokens) come back unchanged, whatever they hold (NaN, inf), with
        the ``means`` and ``stds`` of a zero embedding. An empty batch (``B`` or ``S`` = 0) gives
        empty outputs.
        """
        owner = type(self).__name__
        check_embeddings(owner, self.embedding_dim, embeddings)
        mask = as_mask(owner, "noise_mask", noise_mask, embeddings)
        means, stds = self.parameters_of(read_only(embeddings, mask))
        return draw_noise(embeddings, means, stds, mask)
