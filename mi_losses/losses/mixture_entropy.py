"""Module form of the cross-batch Gaussian mixture entropy."""

from __future__ import annotations

from typing import TYPE_CHECKING, get_args

import torch

from mi_losses._validation import check_choice
from mi_losses.functional import gaussian_mixture_entropy_estimate
from mi_losses.functional._distributed import check_gather_options
from mi_losses.losses.base import ComponentLossModule, reduce, to_units
from mi_losses.types import Granularity, Reduction, Units

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class GaussianMixtureEntropy(ComponentLossModule):
    """Monte Carlo upper bound on the entropy of the transformed embeddings.

    Thin wrapper over :func:`mi_losses.functional.gaussian_mixture_entropy_estimate`. Queries
    ``y_i`` are the transformed embeddings of one batch, the mixture components ``N(c_j,
    sigma_j)`` come from a different batch (``c_j = x_j + mu_j``)::

        H_i = - log( 1/|V_i| * sum_{j in V_i} N(y_i ; c_j, sigma_j) )
        H   = mean over valid queries of H_i

    In expectation ``H`` is an upper bound on the differential entropy of ``y`` (Jensen).

    Args:
        granularity: ``"sequence"`` (one sample = one sequence) or ``"token"`` (one sample =
            one active token).
        reduction: ``"mean"`` over valid queries (the estimate), ``"sum"`` (the mean times the
            number of valid queries) or ``"none"`` (per-query values, ``0`` where invalid).
        units: ``"nats"`` or ``"bits"`` (value and components divided by ln 2).
        gather_components: under data parallelism (DDP and the like), evaluate this rank's
            queries against the components of all ranks (an autograd-aware all-gather); the
            value and ``component_losses`` stay this rank's, ``last_num_queries`` their weight.
            Nothing changes when not distributed. The ranks are those of the attribute
            ``process_group`` (default group when None; set it in Python, not in YAML).
        max_gathered_components: with ``gather_components``, each rank sends at most this many
            components (sequences, or tokens), drawn at random; ``None`` sends all.

    Attributes:
        component_losses: the component losses of the latest call
            (docs/math.md#components-and-their-identities): per-query means, in ``units``,
            whatever the reduction; ``last_num_queries`` their weight.

    Example:
        >>> loss = GaussianMixtureEntropy(units="bits")
        >>> x, mu, sigma = torch.randn(4, 3, 2), torch.zeros(4, 3, 2), torch.ones(4, 3, 2)
        >>> value = loss(x, x + torch.randn(4, 3, 2), mu, sigma)
        >>> sorted(loss.component_losses)[0]
        'gaussian_mixture_log_constants_and_determinant_loss'
    """

    def __init__(
        self,
        granularity: Granularity = "sequence",
        reduction: Reduction = "mean",
        units: Units = "nats",
        gather_components: bool = False,
        max_gathered_components: int | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "granularity", granularity, get_args(Granularity))
        check_choice(owner, "reduction", reduction, get_args(Reduction))
        check_choice(owner, "units", units, get_args(Units))
        check_gather_options(gather_components, max_gathered_components, owner)
        self.gather_components = gather_components
        self.max_gathered_components = max_gathered_components
        self.process_group: ProcessGroup | None = None
        self.granularity = granularity
        self.reduction = reduction
        self.units = units

    def forward(
        self,
        clean_embeddings: torch.Tensor,
        transformed_embeddings: torch.Tensor,
        means: torch.Tensor,
        stds: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        component_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Entropy estimate of ``transformed_embeddings`` ``(M, S, E)`` (query mask ``(M, S)``).

        ``clean_embeddings``, ``means`` and ``stds`` ``(N, S, E)`` define the components;
        ``component_mask`` ``(N, S)`` restricts their positions (all positions when None).
        """
        estimate = gaussian_mixture_entropy_estimate(
            clean_embeddings,
            transformed_embeddings,
            means,
            stds,
            mask,
            component_mask=component_mask,
            granularity=self.granularity,
            gather_components=self.gather_components,
            process_group=self.process_group,
            max_gathered_components=self.max_gathered_components,
        )
        estimate = to_units(estimate, self.units)
        self._remember(estimate)
        return reduce(estimate, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"granularity={self.granularity!r}, reduction={self.reduction!r}, units={self.units!r}, "
            f"gather_components={self.gather_components}, "
            f"max_gathered_components={self.max_gathered_components}"
        )
