"""Types shared by the functional core and the modules."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

ComponentLossesDict = dict[str, torch.Tensor]
"""Component losses of one estimator call: key -> detached scalar tensor (nats)."""

Granularity = Literal["sequence", "token"]
"""What one sample of the mixture is: a whole sequence, or one active token."""


class Estimate(NamedTuple):
    """What an estimator computed, beyond the loss itself.

    Attributes:
        value: the estimate, a scalar tensor in nats that carries the gradient.
        components: the component losses (detached scalars, nats) whose sum identities
            ``MATH.md`` states.
        num_queries: number of valid queries the value averages over (an int64 scalar); the
            weight to use when aggregating estimates over steps or devices.
    """

    value: torch.Tensor
    components: ComponentLossesDict
    num_queries: torch.Tensor
