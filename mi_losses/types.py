"""Types shared by the functional core and the modules."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

ComponentLossesDict = dict[str, torch.Tensor]
"""Component losses of one estimator call: key -> detached scalar tensor (nats)."""

Granularity = Literal["sequence", "token"]
"""What one sample of the mixture is: a whole sequence, or one active token."""

Kernel = Literal["auto", "reference", "streaming", "triton"]
"""How the pair terms are evaluated: see :class:`mi_losses.options.KernelOptions`."""

Units = Literal["nats", "bits"]
"""Unit of an information quantity: natural log (``nats``) or log base 2 (``bits``)."""

Reduction = Literal["mean", "sum", "none"]
"""How a loss module reduces its per-sample (per-query) values: the mean over valid samples,
their sum, or ``none`` (the per-sample values, ``0`` where a query has no valid component)."""


class Estimate(NamedTuple):
    """What an estimator computed, beyond the loss itself.

    Attributes:
        value: the estimate, a scalar tensor in nats that carries the gradient.
        components: the component losses (detached scalars, nats) whose sum identities
            docs/math.md#components-and-their-identities states.
        num_queries: number of valid queries the value averages over (an int64 scalar); the
            weight to use when aggregating estimates over steps or devices.
        per_query: the per-query values whose mean over valid queries is ``value`` (``0`` at
            queries without a valid component), with gradient; ``None`` where not computed.
    """

    value: torch.Tensor
    components: ComponentLossesDict
    num_queries: torch.Tensor
    per_query: torch.Tensor | None = None
