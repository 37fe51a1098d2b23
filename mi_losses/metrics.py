"""Running weighted means of component losses, one ``torchmetrics.MeanMetric`` per key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn
from torchmetrics.aggregation import MeanMetric

from mi_losses.types import ComponentLossesDict


class ComponentLossMetrics(nn.Module):
    """Weighted means of the component losses of one stage (use one instance per stage).

    Every key gets its own :class:`torchmetrics.aggregation.MeanMetric`, so the value of a key
    over an epoch is ``sum_t w_t * v_t / sum_t w_t`` with ``w_t`` the number of valid queries of
    step ``t``: the mean over all valid queries seen, exactly as if the steps had been one batch.
    The metric states are sums, so distributed sync (``dist_reduce_fx="sum"``) is exact.

    A step without valid queries (weight 0) leaves the epoch value unchanged; its own step
    value is NaN (there was nothing to average), which loggers show as a gap.

    Keys are created on the first update that carries them (or up front with ``keys``), so any
    loss module can be tracked; every later update must carry the same keys.

    Args:
        keys: component keys to create up front (optional).
        sync_on_step: also sync the step values that :meth:`forward` returns across processes,
            so that every rank gets (and logs) the step's global weighted mean; one collective
            per key and step. Epoch values (:meth:`compute`) are always synced.

    Example:
        >>> metrics = ComponentLossMetrics()
        >>> _ = metrics({"a": torch.tensor(1.0)}, weight=torch.tensor(1))
        >>> _ = metrics({"a": torch.tensor(4.0)}, weight=torch.tensor(3))
        >>> metrics.compute()
        {'a': tensor(3.2500)}
    """

    def __init__(self, keys: Iterable[str] = (), *, sync_on_step: bool = False) -> None:
        super().__init__()
        self.sync_on_step = sync_on_step
        self.metrics = nn.ModuleDict()
        # Follows ``.to(device)`` so that keys created later land on the module's device.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        for key in keys:
            self._add(key)

    def _add(self, key: str) -> MeanMetric:
        metric = MeanMetric(nan_strategy="error", dist_sync_on_step=self.sync_on_step).to(
            self._device_anchor.device
        )
        self.metrics[key] = metric
        return metric

    def _metric(self, key: str) -> MeanMetric:
        if key not in self.metrics:
            return self._add(key)
        return self.metrics[key]  # type: ignore[return-value]

    def update(self, components: Mapping[str, torch.Tensor], weight: torch.Tensor | float) -> None:
        """Accumulate every component of one step, weighted by ``weight`` (valid queries)."""
        for key, value in components.items():
            metric = self._metric(key)
            metric.update(value.detach().to(metric.mean_value.device), weight)

    def forward(
        self, components: Mapping[str, torch.Tensor], weight: torch.Tensor | float
    ) -> ComponentLossesDict:
        """Accumulate like :meth:`update` and return the step values (what ``on_step`` logs)."""
        out: ComponentLossesDict = {}
        for key, value in components.items():
            metric = self._metric(key)
            out[key] = metric(value.detach().to(metric.mean_value.device), weight)
        return out

    def compute(self) -> ComponentLossesDict:
        """Weighted mean of every key since the last :meth:`reset` (synced across processes)."""
        return {key: metric.compute() for key, metric in self.metrics.items()}

    def reset(self) -> None:
        """Forget everything accumulated (the keys stay)."""
        for metric in self.metrics.values():
            metric.reset()

    def items(self) -> Iterator[tuple[str, MeanMetric]]:
        """``(key, MeanMetric)`` pairs, to hand each metric object to ``LightningModule.log``."""
        return iter(self.metrics.items())  # type: ignore[arg-type]

    def __contains__(self, key: object) -> bool:
        return key in self.metrics

    def __len__(self) -> int:
        return len(self.metrics)
