"""What every loss module shares: validated plain-value options, units, the last components."""

from __future__ import annotations

import math

import torch
from torch import nn

from mi_losses.types import ComponentLossesDict, Estimate, Reduction, Units


def to_units(estimate: Estimate, units: Units) -> Estimate:
    """Express ``estimate`` (value and components, in nats) in ``units``; ``bits`` divides by ln 2."""
    if units == "nats":
        return estimate
    scale = 1.0 / math.log(2.0)
    return Estimate(
        value=estimate.value * scale,
        components={key: value * scale for key, value in estimate.components.items()},
        num_queries=estimate.num_queries,
        per_query=None if estimate.per_query is None else estimate.per_query * scale,
    )


def reduce(estimate: Estimate, reduction: Reduction) -> torch.Tensor:
    """What a module returns for ``reduction``: the mean over valid queries (the estimate),
    its sum (mean times the number of valid queries), or the per-query values."""
    if reduction == "sum":
        return estimate.value * estimate.num_queries
    if reduction == "none":
        if estimate.per_query is None:
            raise ValueError("reduction='none' needs per-query values, which this estimate lacks")
        return estimate.per_query
    return estimate.value


class ComponentLossModule(nn.Module):
    """Base of the loss modules: keeps the component losses of the latest ``forward`` call.

    This is the protocol :class:`mi_losses.callbacks.ComponentLossLogger` reads after every step.

    Attributes:
        component_losses: the component losses of the latest call (detached scalars, in the
            module's units); empty before the first call.
        last_num_queries: number of valid queries the latest value averages over (an int64
            scalar tensor), the weight of that step when component losses are averaged.
    """

    component_losses: ComponentLossesDict
    last_num_queries: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.component_losses = {}
        self.last_num_queries = torch.zeros((), dtype=torch.int64)

    def _remember(self, estimate: Estimate) -> None:
        self.component_losses = dict(estimate.components)
        self.last_num_queries = estimate.num_queries.detach()


class MutualInformationLoss(ComponentLossModule):
    """Base of the modules that estimate ``I(X; Y)`` from one batch of the noise layer's output.

    What :class:`mi_losses.apps.demo.task.ObfuscationTask` accepts as its privacy loss (``mi_loss`` in
    YAML). Subclass it to plug your own estimator into the task and its logging: implement
    :meth:`forward` with this signature, return a scalar and call ``self._remember(estimate)``
    with an :class:`mi_losses.types.Estimate` so that the component losses get logged.
    """

    def forward(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """Estimate from ``(B, S, E)`` tensors and the ``(B, S)`` noise mask; a scalar."""
        raise NotImplementedError
