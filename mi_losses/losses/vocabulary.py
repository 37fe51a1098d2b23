"""Module form of the known-prior (vocabulary) mutual information."""

from __future__ import annotations

import torch

from mi_losses._validation import check_positive_int
from mi_losses.functional.vocabulary import (
    DEFAULT_VOCAB_CHUNK_SIZE,
    vocabulary_mutual_information_estimate,
)
from mi_losses.losses.base import ComponentLossModule
from mi_losses.types import Reduction, Units


class VocabularyMutualInformation(ComponentLossModule):
    """Exact-mixture mutual information per token of a context-free token noise layer.

    Module form of :func:`mi_losses.functional.vocabulary_mutual_information`: an unbiased
    estimate of $I(X; Y)$ per token when tokens follow the prior, differentiable, so it can be
    the privacy loss. The tensors are arguments of :meth:`forward`, not buffers: the table is
    usually the model's own embedding weight and the per-row means/stds change at every step
    (:func:`mi_losses.functional.vocabulary_noise_parameters`).

    Args:
        vocab_chunk_size: vocabulary rows scored at once (memory $O(N \\cdot \\text{chunk})$).
        units: ``"nats"`` or ``"bits"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the per-token terms).

    Example:
        >>> loss = VocabularyMutualInformation()
        >>> table, prior = torch.eye(3), torch.ones(3)
        >>> means, stds = torch.zeros(3, 3), torch.full((3, 3), 0.5)
        >>> tokens = torch.tensor([[0, 2]])
        >>> noisy = table[tokens] + 0.5 * torch.randn(1, 2, 3)
        >>> value = loss(means, stds, None, tokens, noisy, table, prior)
        >>> bool(value == loss.component_losses["mutual_information_loss"])
        True
    """

    def __init__(
        self,
        vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
        units: Units = "nats",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(units=units, reduction=reduction)
        check_positive_int(type(self).__name__, "vocab_chunk_size", vocab_chunk_size)
        self.vocab_chunk_size = vocab_chunk_size

    def forward(
        self,
        vocabulary_means: torch.Tensor,
        vocabulary_stds: torch.Tensor,
        noise_mask: torch.Tensor | None,
        token_ids: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
        embedding_table: torch.Tensor,
        token_prior: torch.Tensor,
    ) -> torch.Tensor:
        """MI per token ([the glossary](glossary.md)); `(V, E)` means and stds."""
        estimate = vocabulary_mutual_information_estimate(
            vocabulary_means,
            vocabulary_stds,
            noise_mask,
            token_ids,
            noisy_input_embeddings,
            embedding_table,
            token_prior,
            vocab_chunk_size=self.vocab_chunk_size,
        )
        return self._output(estimate)

    def extra_repr(self) -> str:
        return f"vocab_chunk_size={self.vocab_chunk_size}, {super().extra_repr()}"
