"""The exact known-prior MI of a learned discrete channel as a privacy loss module."""

from __future__ import annotations

import torch

from mi_losses import keys
from mi_losses._validation import check_number
from mi_losses.losses.base import ComponentLossModule
from mi_losses.mechanisms.substitution import LearnedSubstitution
from mi_losses.types import Estimate, Units

__all__ = ["SubstitutionMutualInformation"]


class SubstitutionMutualInformation(ComponentLossModule):
    """The exact known-prior MI of a :class:`LearnedSubstitution` as a privacy loss.

    $I(X; Y)$ in nats per token (:meth:`LearnedSubstitution.mutual_information`) with
    $p_x \\propto n_x + s$: the training token counts $n_x$ plus the pseudo-count $s$ =
    ``prior_smoothing`` (``0``: the training prior, its support the tokens seen; the privacy
    frontier's smoothed prior is ``0.5``). It reads no batch: the channel is known for every
    token. The component ``mutual_information_loss`` is kept for
    :class:`~mi_losses.callbacks.ComponentLossLogger`.

    Args:
        prior_smoothing: pseudo-count $s \\ge 0$ of every vocabulary token.
        units: ``"nats"`` or ``"bits"``.

    Example:
        >>> from mi_losses.mechanisms import LearnedSubstitution
        >>> layer = LearnedSubstitution.nearest(torch.eye(3), torch.eye(3), num_candidates=2)
        >>> loss = SubstitutionMutualInformation()
        >>> value = loss(layer, torch.tensor([4.0, 1.0, 0.0]))
        >>> bool(value == loss.component_losses["mutual_information_loss"])
        True
    """

    def __init__(self, prior_smoothing: float = 0.0, units: Units = "nats") -> None:
        super().__init__(units=units)
        owner = type(self).__name__
        self.prior_smoothing = check_number(
            owner, "prior_smoothing", prior_smoothing, positive=False
        )

    def forward(self, layer: LearnedSubstitution, token_counts: torch.Tensor) -> torch.Tensor:
        """The MI of ``layer`` under the prior of ``token_counts`` ``(V,)``; a scalar in the
        logits' dtype."""
        if not isinstance(layer, LearnedSubstitution):
            raise TypeError(
                f"{type(self).__name__}: layer must be a LearnedSubstitution, got "
                f"{type(layer).__name__}"
            )
        if token_counts.shape != (layer.vocab_size,) or bool((token_counts < 0).any()):
            raise ValueError(
                f"token_counts must be non-negative counts of shape ({layer.vocab_size},), "
                f"got {tuple(token_counts.shape)}"
            )
        prior = token_counts.double() + self.prior_smoothing
        if not bool((prior > 0).any()):
            raise ValueError("token_counts must count at least one token (or prior_smoothing > 0)")
        value = layer.mutual_information(prior).to(layer.logits.dtype)
        estimate = Estimate(
            value=value,
            components={keys.MUTUAL_INFORMATION: value.detach()},
            num_queries=(prior > 0).sum(),
        )
        return self._output(estimate)

    def extra_repr(self) -> str:
        return f"prior_smoothing={self.prior_smoothing}, {super().extra_repr()}"
