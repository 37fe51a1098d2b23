"""Module form of the known-prior (vocabulary) mutual information."""

from __future__ import annotations

from typing import get_args

import torch

from mi_losses._validation import check_choice
from mi_losses.functional.vocabulary import (
    DEFAULT_VOCAB_CHUNK_SIZE,
    vocabulary_mutual_information_estimate,
)
from mi_losses.losses.base import ComponentLossModule, reduce, to_units
from mi_losses.types import Reduction, Units


class VocabularyMutualInformation(ComponentLossModule):
    """Exact-mixture mutual information per token of a context-free token noise layer.

    Thin wrapper over
    :func:`mi_losses.functional.vocabulary_mutual_information_estimate`::

        log q_i = log sum_{v : p_v > 0} p_v N(y_i ; W_v + mu_v, sigma_v)
        I       = mean over active tokens of  log N(y_i ; W_t_i + mu_t_i, sigma_t_i) - log q_i

    An unbiased estimate of ``I(X; Y)`` per token when tokens follow the prior (not a bound),
    never above ``H(X)`` on average; differentiable in the noisy embeddings, ``means`` and
    ``stds``, so it can be the privacy loss. The components are logged under the keys of the
    sub-batch estimator: ``gaussian_mixture_entropy_loss`` (``H(Y)``), ``std_log_loss``
    (``-H(Y|X)``) and ``mutual_information_loss``.

    The module holds only plain options. The table, prior, means and stds are arguments of
    :meth:`forward`, not buffers: the table is usually the model's own (possibly trained)
    embedding weight, and ``means``/``stds`` change at every step as the noise layer trains
    (compute them with :func:`mi_losses.functional.vocabulary_noise_parameters`), so storing
    them would duplicate large tensors in checkpoints and let them go stale. Keep the prior
    (from :func:`mi_losses.functional.token_prior`) as a buffer of your LightningModule.

    Args:
        vocab_chunk_size: vocabulary rows scored at once (memory ``O(N * chunk)``).
        units: ``"nats"`` or ``"bits"`` (value and components divided by ln 2).
        reduction: ``"mean"`` over active tokens (the estimate), ``"sum"`` or ``"none"``
            (the per-token terms of the active tokens, ``(N,)``).

    Attributes:
        component_losses: the three components of the latest call (in ``units``);
            ``last_num_queries`` the number of active tokens.

    Example:
        >>> loss = VocabularyMutualInformation()
        >>> table, prior = torch.eye(3), torch.ones(3)
        >>> means, stds = torch.zeros(3, 3), torch.full((3, 3), 0.5)
        >>> tokens = torch.tensor([[0, 2]])
        >>> value = loss(tokens, table[tokens] + 0.5 * torch.randn(1, 2, 3), table, prior, means, stds)
        >>> bool(value == loss.component_losses["mutual_information_loss"])
        True
    """

    def __init__(
        self,
        vocab_chunk_size: int = DEFAULT_VOCAB_CHUNK_SIZE,
        units: Units = "nats",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if not isinstance(vocab_chunk_size, int) or vocab_chunk_size < 1:
            raise ValueError(
                f"{owner}: vocab_chunk_size must be a positive integer, got {vocab_chunk_size!r}"
            )
        check_choice(owner, "units", units, get_args(Units))
        check_choice(owner, "reduction", reduction, get_args(Reduction))
        self.vocab_chunk_size = vocab_chunk_size
        self.units = units
        self.reduction = reduction

    def forward(
        self,
        token_ids: torch.Tensor,
        noisy_embeddings: torch.Tensor,
        table: torch.Tensor,
        prior: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        noise_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """MI per token: ``token_ids`` ``(B, S)``, ``noisy_embeddings`` ``(B, S, E)``, ``table``,
        ``means``, ``stds`` ``(V, E)``, ``prior`` ``(V,)``, ``noise_mask`` ``(B, S)``."""
        estimate = vocabulary_mutual_information_estimate(
            token_ids,
            noisy_embeddings,
            table,
            prior,
            means,
            stds,
            noise_mask,
            vocab_chunk_size=self.vocab_chunk_size,
        )
        estimate = to_units(estimate, self.units)
        self._remember(estimate)
        return reduce(estimate, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"vocab_chunk_size={self.vocab_chunk_size}, units={self.units!r}, "
            f"reduction={self.reduction!r}"
        )
