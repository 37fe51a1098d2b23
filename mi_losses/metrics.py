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

    A step without valid queries (weight 0) is ignored entirely (its values are not read, NaN
    or not) and leaves the epoch value unchanged; its own step value is NaN (there was nothing
    to average), which loggers show as a gap.

    Keys are created on the first update (or up front with ``keys``), so any loss module can be
    tracked; every later update must carry exactly the same keys.

    Raises (from :meth:`update` and :meth:`forward`):
        ValueError: a NaN component at a step with weight > 0 (naming the key), a negative,
            NaN or non-scalar weight, or keys that differ from the first update's (naming the
            missing and extra keys).

    Args:
        keys: component keys to create up front (optional).

    Example:
        >>> metrics = ComponentLossMetrics()
        >>> _ = metrics({"a": torch.tensor(1.0)}, weight=torch.tensor(1))
        >>> _ = metrics({"a": torch.tensor(4.0)}, weight=torch.tensor(3))
        >>> metrics.compute()
        {'a': tensor(3.2500)}
    """

    def __init__(self, keys: Iterable[str] = ()) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict()
        # Follows ``.to(device)`` so that keys created later land on the module's device.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        for key in keys:
            self._add(key)

    @property
    def _device(self) -> torch.device:
        anchor = self._device_anchor
        assert isinstance(anchor, torch.Tensor)
        return anchor.device

    def _typed(self) -> Iterator[tuple[str, MeanMetric]]:
        for key, metric in self.metrics.items():
            assert isinstance(metric, MeanMetric)
            yield key, metric

    def _add(self, key: str) -> MeanMetric:
        metric = MeanMetric(nan_strategy="error").to(self._device)
        self.metrics[key] = metric
        return metric

    def _metric(self, key: str) -> MeanMetric:
        if key not in self.metrics:
            return self._add(key)
        metric = self.metrics[key]
        assert isinstance(metric, MeanMetric)
        return metric

    def _check_step(
        self, components: Mapping[str, torch.Tensor], weight: torch.Tensor | float
    ) -> bool:
        """Validate one step; ``True`` when it counts (weight > 0), ``False`` when ignored."""
        weight_tensor = torch.as_tensor(weight).detach()
        if weight_tensor.numel() != 1:
            raise ValueError(
                f"weight must be a scalar (the step's number of valid queries), got shape "
                f"{tuple(weight_tensor.shape)}"
            )
        weight_value = float(weight_tensor)
        if not weight_value >= 0:  # NaN fails too
            raise ValueError(
                f"weight must be >= 0 (the step's number of valid queries), got {weight_value:g}"
            )
        if len(self.metrics):
            expected, given = set(self.metrics), set(components)
            if expected != given:
                missing, extra = sorted(expected - given), sorted(given - expected)
                raise ValueError(
                    f"components must carry the keys {sorted(expected)} of the first update; "
                    f"missing {missing}, extra {extra}"
                )
        if weight_value == 0:
            return False
        for key, value in components.items():
            if bool(torch.isnan(value.detach()).any()):
                raise ValueError(
                    f"component {key!r} is NaN at a step with weight {weight_value:g}; a step "
                    "with valid queries must have finite component losses"
                )
        return True

    def update(self, components: Mapping[str, torch.Tensor], weight: torch.Tensor | float) -> None:
        """Accumulate every component of one step, weighted by ``weight`` (valid queries)."""
        if not self._check_step(components, weight):
            for key in components:
                self._metric(key)
            return
        for key, value in components.items():
            metric = self._metric(key)
            metric.update(value.detach().to(metric.mean_value.device), weight)

    def forward(
        self, components: Mapping[str, torch.Tensor], weight: torch.Tensor | float
    ) -> ComponentLossesDict:
        """Accumulate like :meth:`update` and return the step values (what ``on_step`` logs);
        NaN for every key at a step with weight 0."""
        counts = self._check_step(components, weight)
        out: ComponentLossesDict = {}
        for key, value in components.items():
            metric = self._metric(key)
            if counts:
                out[key] = metric(value.detach().to(metric.mean_value.device), weight)
            else:
                out[key] = torch.full((), torch.nan, device=self._device)
        return out

    def compute(self) -> ComponentLossesDict:
        """Weighted mean of every key since the last :meth:`reset` (synced across processes)."""
        return {key: metric.compute() for key, metric in self._typed()}

    def reset(self) -> None:
        """Forget everything accumulated (the keys stay)."""
        for _, metric in self._typed():
            metric.reset()

    def items(self) -> Iterator[tuple[str, MeanMetric]]:
        """``(key, MeanMetric)`` pairs, to hand each metric object to ``LightningModule.log``."""
        return self._typed()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.metrics

    def __len__(self) -> int:
        return len(self.metrics)
