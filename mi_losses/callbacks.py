"""Lightning callbacks: per-step component-loss logging, and an end-of-fit summary and plot."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

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
    ``last_num_queries``), synced exactly across processes. Stages never share a metric.
    The loss module must be called in every step of the stages listed in ``stages``.

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
        prog_bar_key: str | None = "mutual_information_loss",
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
        self.metrics: dict[str, ComponentLossMetrics] = {s: ComponentLossMetrics() for s in stages}

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
        return module

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.loss_module(pl_module)  # fail before the first step, not at step 1000

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in self.metrics or trainer.sanity_checking:
            return
        module = self.loss_module(pl_module)
        components: Mapping[str, torch.Tensor] = module.component_losses
        if not components:
            return
        metrics = self.metrics[stage].to(pl_module.device)
        on_step = stage == "train" or self.eval_on_step
        weight = module.last_num_queries
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


_DEFAULT_TRACKED = {
    "MI estimate": "train/mi/mutual_information_loss",
    "utility loss": "train/utility_loss",
    "mean std": "train/std/mean",
}


class TrainingSummary(Callback):
    """At the end of ``fit``: a first-vs-last table and a PNG plot of the losses per step.

    Records, after every training step, the step values of the logged metrics named in
    ``tracked`` and of every metric whose name starts with ``plot_prefix``. At the end of
    ``fit`` (global rank zero only) it prints a table (``rich`` if installed) of the first,
    last, smallest and largest step value of each tracked metric, writes it to ``summary_filename`` and plots every
    recorded series against the step into ``plot_filename`` (matplotlib), both in
    ``trainer.log_dir`` (no files without a logger or under ``fast_dev_run``). Place it after :class:`ComponentLossLogger` in ``trainer.callbacks``.

    Args:
        tracked: table rows, ``label: logged metric name``.
        plot_prefix: every logged metric whose name starts with this is plotted.
        plot_filename: name of the PNG written in ``trainer.log_dir`` (``null``: no plot).
        summary_filename: name of the text table written in ``trainer.log_dir``.
    """

    def __init__(
        self,
        tracked: dict[str, str] | None = None,
        plot_prefix: str = "train/mi/",
        plot_filename: str | None = "component_losses.png",
        summary_filename: str = "summary.txt",
    ) -> None:
        super().__init__()
        self.tracked = dict(_DEFAULT_TRACKED if tracked is None else tracked)
        self.plot_prefix = plot_prefix
        self.plot_filename = plot_filename
        self.summary_filename = summary_filename
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.summary_path: Path | None = None
        self.plot_path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        position = trainer.callbacks.index(self)
        later = [c for c in trainer.callbacks[position + 1 :] if isinstance(c, ComponentLossLogger)]
        if later:
            raise ValueError(
                "TrainingSummary must come after ComponentLossLogger in trainer.callbacks "
                "(it reads what the logger logged in the same step)"
            )

    def _wanted(self, name: str) -> bool:
        return name in self.tracked.values() or name.startswith(self.plot_prefix)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        step = trainer.global_step
        for name, value in trainer.callback_metrics.items():
            if name.endswith("_epoch"):
                continue
            base = name.removesuffix("_step")
            if not self._wanted(base) or (
                base == name and f"{name}_step" in trainer.callback_metrics
            ):
                continue
            series = self.history.setdefault(base, [])
            if series and series[-1][0] == step:
                continue
            series.append((step, float(value)))

    def rows(self) -> list[tuple[str, float, float, float, float]]:
        """``(label, first, last, min, max)`` of every tracked metric that was recorded."""
        rows = []
        for label, name in self.tracked.items():
            values = [value for _, value in self.history.get(name, [])]
            if values:
                rows.append((label, values[0], values[-1], min(values), max(values)))
        return rows

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        rows = self.rows()
        text = _plain_table(rows)
        _print_table(rows, text)
        if not trainer.loggers or trainer.fast_dev_run or trainer.log_dir is None:
            return  # no logs to write next to (no logger, or fast_dev_run's dummy logger)
        directory = Path(trainer.log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.summary_path = directory / self.summary_filename
        self.summary_path.write_text(text + "\n")
        if self.plot_filename is not None:
            self.plot_path = directory / self.plot_filename
            _plot(self.history, self.plot_path)
            print(f"Component-loss plot: {self.plot_path}")


_COLUMNS = ("first step", "last step", "min", "max")
Row = tuple[str, float, float, float, float]


def _plain_table(rows: Sequence[Row]) -> str:
    width = max([len("metric"), *(len(row[0]) for row in rows)])
    lines = [f"{'metric':<{width}}" + "".join(f"  {c:>11}" for c in _COLUMNS)]
    lines += [f"{row[0]:<{width}}" + "".join(f"  {v:>11.4g}" for v in row[1:]) for row in rows]
    return "\n".join(lines)


def _print_table(rows: Sequence[Row], plain: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(plain)
        return
    table = Table(title="Training summary (step values)")
    table.add_column("metric")
    for column in _COLUMNS:
        table.add_column(column, justify="right")
    for label, *values in rows:
        table.add_row(label, *(f"{v:.4g}" for v in values))
    Console().print(table)


def _plot(history: Mapping[str, list[tuple[int, float]]], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    names = sorted(history)
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.5 * columns, 3 * rows))
    axes = figure.subplots(rows, columns, squeeze=False, sharex=True)
    for axis, name in zip(axes.flat, names, strict=False):
        steps, values = zip(*history[name], strict=True)
        axis.plot(steps, values, linewidth=1)
        axis.set_title(name, fontsize=9)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    for axis in axes.flat:
        axis.tick_params(labelbottom=True)
        axis.set_xlabel("step", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
