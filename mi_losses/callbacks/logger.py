"""``ComponentLossLogger``: every component loss of a loss module, per step and per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from mi_losses import keys
from mi_losses.metrics import ComponentLossMetrics

Stage = Literal["train", "val", "test"]
_STAGES: tuple[str, ...] = ("train", "val", "test")


class ComponentLossLogger(Callback):
    """Log every component loss of a loss module at every step, and its epoch mean.

    After each train/validation/test batch the callback reads ``component_losses`` and
    ``last_num_queries`` of the loss module found at ``pl_module.<module_attribute>`` (any
    :class:`mi_losses.losses.ComponentLossModule`, or any module with those two attributes) and
    logs, through ``pl_module.log`` (so any logger works), one
    :class:`torchmetrics.aggregation.MeanMetric` per component key and stage under::

        {stage}/{prefix}/{key}          e.g.  train/mi/mutual_information_loss

    Lightning appends ``_step`` and ``_epoch`` when a value is logged both per step and per
    epoch. The epoch value is the mean over all valid queries of the epoch (steps weighted by
    ``last_num_queries``). Under data parallelism both are synced exactly across processes:
    every rank logs the same global value, the step's (or the epoch's) mean over the valid
    queries of all ranks. Stages never share a metric. The loss module must be called in every
    step of the stages listed in ``stages`` (on every rank: the sync is a collective).

    In YAML::

        trainer:
          callbacks:
            - class_path: mi_losses.callbacks.ComponentLossLogger
              init_args: {module_attribute: mi_loss, prefix: mi}

    Args:
        module_attribute: attribute path of the loss module on the ``LightningModule``
            (dots allowed, e.g. ``losses.privacy``).
        prefix: middle part of the logged names.
        stages: stages to log (``train``, ``val``, ``test``).
        eval_on_step: also log validation/test values per batch (training always is).
        prog_bar_key: component shown in the progress bar (``null`` for none).
    """

    def __init__(
        self,
        module_attribute: str = "mi_loss",
        prefix: str = "mi",
        stages: Sequence[Stage] = ("train", "val", "test"),
        eval_on_step: bool = False,
        prog_bar_key: str | None = keys.MUTUAL_INFORMATION,
    ) -> None:
        super().__init__()
        if not module_attribute or not all(module_attribute.split(".")):
            raise ValueError(
                "ComponentLossLogger: module_attribute must be an attribute path such as "
                f"'mi_loss', got {module_attribute!r}"
            )
        if not prefix or prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(
                f"ComponentLossLogger: prefix must be a non-empty name without leading or "
                f"trailing '/', got {prefix!r}"
            )
        stages = list(stages)
        for stage in stages:
            if stage not in _STAGES:
                raise ValueError(
                    f"ComponentLossLogger: stages must be a list of {', '.join(_STAGES)}, "
                    f"got {stage!r} in {stages!r}"
                )
        self.module_attribute = module_attribute
        self.prefix = prefix
        self.stages = stages
        self.eval_on_step = eval_on_step
        self.prog_bar_key = prog_bar_key
        # Step values synced too: under data parallelism every rank logs the same global value.
        self.metrics: dict[str, ComponentLossMetrics] = {
            s: ComponentLossMetrics(sync_on_step=True) for s in stages
        }

    @property
    def state_key(self) -> str:
        return self._generate_state_key(module_attribute=self.module_attribute, prefix=self.prefix)

    def loss_module(self, pl_module: pl.LightningModule) -> torch.nn.Module:
        """The loss module at ``pl_module.<module_attribute>``, checked against the protocol."""
        module: Any = pl_module
        for part in self.module_attribute.split("."):
            if not hasattr(module, part):
                raise AttributeError(
                    f"ComponentLossLogger: {type(pl_module).__name__} has no attribute "
                    f"{self.module_attribute!r}; set module_attribute to the attribute that "
                    "holds the loss module"
                )
            module = getattr(module, part)
        if not (hasattr(module, "component_losses") and hasattr(module, "last_num_queries")):
            raise TypeError(
                f"ComponentLossLogger: {type(pl_module).__name__}.{self.module_attribute} is a "
                f"{type(module).__name__}, which has no component_losses/last_num_queries; use "
                "a mi_losses loss module (a ComponentLossModule)"
            )
        return cast(torch.nn.Module, module)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loss_module(pl_module)  # fail before the first step, not at step 1000

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.metrics or trainer.sanity_checking:
            return
        module = self.loss_module(pl_module)
        components = cast(Mapping[str, torch.Tensor], module.component_losses)
        if not components:
            return
        metrics = self.metrics[stage].to(pl_module.device)
        on_step = stage == "train" or self.eval_on_step
        weight = cast(torch.Tensor, module.last_num_queries)
        if on_step:
            metrics(components, weight)
        else:
            metrics.update(components, weight)
        for key, metric in metrics.items():
            if key not in components:
                continue
            name = f"{stage}/{self.prefix}/{key}"
            pl_module.log(
                name,
                metric,
                on_step=on_step,
                on_epoch=True,
                prog_bar=key == self.prog_bar_key,
                metric_attribute=f"{self.state_key}.{name}",
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._log(trainer, pl_module, "train")

    def on_validation_batch_end(  # type: ignore[no-untyped-def]
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._log(trainer, pl_module, "val")

    def on_test_batch_end(  # type: ignore[no-untyped-def]
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._log(trainer, pl_module, "test")
