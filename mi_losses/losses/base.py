"""What every loss module shares: plain-value options checked once, one way from an estimate to
the value returned (units, components, reduction), and the latest components for logging."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, get_args

import torch
from torch import nn

from mi_losses._validation import check_bool, check_choice, check_positive_int
from mi_losses.options import DEFAULT_MAX_BLOCK_BYTES, GatherOptions, KernelOptions
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Kernel, Reduction, Units

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


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
    """Base of the loss modules: the options ``units`` and ``reduction``, and the latest
    components for logging.

    Each subclass has its own typed ``forward``: it computes an
    :class:`~mi_losses.types.Estimate` in nats and returns ``self._output(estimate)``, which
    converts the units, keeps the components and reduces. This is the protocol
    :class:`mi_losses.callbacks.ComponentLossLogger` reads after every step.

    Args:
        units: ``"nats"`` or ``"bits"`` (value and components divided by ln 2).
        reduction: ``"mean"`` over valid queries (the estimate), ``"sum"`` (the mean times
            their number) or ``"none"`` (per-query values).

    Attributes:
        component_losses: the component losses of the latest call (detached scalars, in
            ``units``); empty before the first call.
        last_num_queries: number of valid queries the latest value averages over (an int64
            scalar tensor), the weight of that step when component losses are averaged.
    """

    component_losses: ComponentLossesDict
    last_num_queries: torch.Tensor

    def __init__(self, units: Units = "nats", reduction: Reduction = "mean") -> None:
        super().__init__()
        owner = type(self).__name__
        check_choice(owner, "units", units, get_args(Units))
        check_choice(owner, "reduction", reduction, get_args(Reduction))
        self.units = units
        self.reduction = reduction
        self.component_losses = {}
        self.last_num_queries = torch.zeros((), dtype=torch.int64)

    def _output(self, estimate: Estimate) -> torch.Tensor:
        """What ``forward`` returns for ``estimate`` (in nats): the value in ``units``,
        reduced; the components are kept in ``component_losses``."""
        estimate = to_units(estimate, self.units)
        self._remember(estimate)
        return reduce(estimate, self.reduction)

    def _remember(self, estimate: Estimate) -> None:
        self.component_losses = dict(estimate.components)
        self.last_num_queries = estimate.num_queries.detach()

    def extra_repr(self) -> str:
        return f"units={self.units!r}, reduction={self.reduction!r}"


class MutualInformationLoss(ComponentLossModule):
    """Base of the modules that estimate $I(X; Y)$ from one batch of the noise layer's output.

    What :class:`mi_losses.apps.demo.task.ObfuscationTask` accepts as its privacy loss. Subclass
    it and implement :meth:`estimate` to plug your own estimator into the task and its logging.
    """

    def forward(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        """The estimate from `(B, S, E)` tensors and the `(B, S)` noise mask ([the
        glossary](glossary.md)), in ``units`` and reduced; its components are kept."""
        return self._output(
            self.estimate(
                means_tensor,
                stds_tensor,
                noise_mask,
                clean_input_embeddings,
                noisy_input_embeddings,
            )
        )

    def estimate(
        self,
        means_tensor: torch.Tensor,
        stds_tensor: torch.Tensor,
        noise_mask: torch.Tensor | None,
        clean_input_embeddings: torch.Tensor,
        noisy_input_embeddings: torch.Tensor,
    ) -> Estimate:
        """The estimate in nats, with its components and number of valid queries."""
        raise NotImplementedError(f"{type(self).__name__} must implement estimate")


class MixtureLossModule(ComponentLossModule):
    """Base of the modules over the pairwise kernel: granularity, kernel and gather options.

    The options are plain values (YAML-friendly); the module builds the option objects of the
    functional core from them (:class:`~mi_losses.options.KernelOptions`,
    :class:`~mi_losses.options.GatherOptions`, whose fields they are).

    Args:
        granularity: ``"sequence"`` (a sample is a sequence) or ``"token"`` (an active token).
        kernel: how pairs are evaluated (:class:`~mi_losses.options.KernelOptions`).
        max_block_bytes: memory budget of the kernel's blocks.
        accuracy_check: the kernel's rounding check.
        gather: under data parallelism, evaluate this rank's queries against the components
            of all ranks (see docs/distributed.md); the ranks are those of the attribute
            ``process_group`` (default group when None; set it in Python).
        max_gathered_components: with ``gather``, each rank sends at most this many
            components, drawn at random; ``None`` sends all.
        units: ``"nats"`` or ``"bits"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (see :class:`ComponentLossModule`).
    """

    def __init__(
        self,
        granularity: Granularity = "sequence",
        *,
        kernel: Kernel = "auto",
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        accuracy_check: bool = True,
        gather: bool = False,
        max_gathered_components: int | None = None,
        units: Units = "nats",
        reduction: Reduction = "mean",
    ) -> None:
        super().__init__(units=units, reduction=reduction)
        owner = type(self).__name__
        check_choice(owner, "granularity", granularity, get_args(Granularity))
        check_bool(owner, "gather", gather)
        self.granularity = granularity
        self.kernel_options = KernelOptions(kernel, max_block_bytes, accuracy_check)
        check_positive_int(owner, "max_gathered_components", max_gathered_components, optional=True)
        self.gather = gather
        self.max_gathered_components = max_gathered_components
        self.process_group: ProcessGroup | None = None

    @property
    def gather_options(self) -> GatherOptions | None:
        """The ``gather`` argument of the next call (``None`` when gathering is off)."""
        if not self.gather:
            return None
        return GatherOptions(self.max_gathered_components, self.process_group)

    def extra_repr(self) -> str:
        return (
            f"granularity={self.granularity!r}, kernel={self.kernel_options.kernel!r}, "
            f"gather={self.gather}, {super().extra_repr()}"
        )
