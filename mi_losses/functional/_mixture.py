"""Steps shared by the mixture estimators after the kernel: means over queries, averages of
estimates, dtype of the results, the ``losses`` dict."""

from __future__ import annotations

import torch

from mi_losses.types import ComponentLossesDict, Estimate


def query_mean(per_query: torch.Tensor, query_valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid queries; ``0`` (keeping the graph) when none is valid."""
    total = torch.where(query_valid, per_query, 0.0).sum()
    return total / query_valid.sum().clamp_min(1)


def average_estimates(estimates: list[Estimate]) -> Estimate:
    """The estimates pooled: value and every component the mean over all their valid queries
    (each estimate weighted by its number of valid queries); a single one is returned as it is."""
    if len(estimates) == 1:
        return estimates[0]
    counts = [e.num_queries.to(e.value.dtype) for e in estimates]
    denominator = torch.stack(counts).sum().clamp_min(1.0)

    def mean(values: list[torch.Tensor]) -> torch.Tensor:
        return sum(n * v for n, v in zip(counts, values, strict=True)) / denominator

    components = {
        key: mean([e.components[key] for e in estimates]).detach()
        for key in estimates[0].components
    }
    num_queries = torch.stack([e.num_queries for e in estimates]).sum()
    per_query = [e.per_query for e in estimates]
    return Estimate(
        mean([e.value for e in estimates]),
        components,
        num_queries,
        None if any(p is None for p in per_query) else torch.cat(per_query),  # type: ignore[arg-type]
    )


def to_result(estimate: Estimate, dtype: torch.dtype) -> Estimate:
    """The estimate with its value and components in ``dtype``."""
    return Estimate(
        estimate.value.to(dtype),
        {key: value.to(dtype) for key, value in estimate.components.items()},
        estimate.num_queries,
        None if estimate.per_query is None else estimate.per_query.to(dtype),
    )


def value_with_losses(estimate: Estimate, losses: ComponentLossesDict | None) -> torch.Tensor:
    """The estimate's value, after adding its components to ``losses`` when it is given."""
    if losses is not None:
        losses.update(estimate.components)
    return estimate.value
