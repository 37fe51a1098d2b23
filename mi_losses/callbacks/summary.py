"""``TrainingSummary``: a first-vs-last table and a plot of the logged losses at the end of fit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from mi_losses.callbacks.logger import ComponentLossLogger


class TrainingSummary(Callback):
    """At the end of ``fit``: a first-vs-last table and a PNG plot of the losses per step.

    Records, after every training step, the step values of the logged metrics named in
    ``tracked`` and of every metric whose name starts with ``plot_prefix``. At the end of
    ``fit`` (global rank zero only) it prints a table (``rich`` if installed) of the first,
    last, smallest and largest step value of each tracked metric, writes it to ``summary_filename`` and plots every
    recorded series against the step into ``plot_filename`` (matplotlib), both in
    ``trainer.log_dir`` (no files without a logger or under ``fast_dev_run``). Place it after :class:`ComponentLossLogger` in ``trainer.callbacks``.

    Args:
        tracked: table rows, ``label: logged metric name``; ``null`` (default): one row per
            recorded metric whose name starts with ``plot_prefix``, labelled by its name.
        plot_prefix: every logged metric whose name starts with this is plotted.
        plot_filename: name of the PNG written in ``trainer.log_dir`` (``null``: no plot).
        summary_filename: name of the text table written in ``trainer.log_dir``.
        units: unit of the plotted values per metric-name prefix (the longest matching prefix
            wins), shown on each plot's y axis. The metrics a :class:`ComponentLossLogger`
            logs get its loss module's ``units`` (``nats`` or ``bits``) unless given here.

    A live rich progress bar is stopped before the table is printed, so the two never share
    the terminal.
    """

    def __init__(
        self,
        tracked: dict[str, str] | None = None,
        plot_prefix: str = "train/mi/",
        plot_filename: str | None = "component_losses.png",
        summary_filename: str = "summary.txt",
        units: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.units = {} if units is None else dict(units)
        self._logger_units: dict[str, str] = {}
        self.tracked = None if tracked is None else dict(tracked)
        self.plot_prefix = plot_prefix
        self.plot_filename = plot_filename
        self.summary_filename = summary_filename
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.summary_path: Path | None = None
        self.plot_path: Path | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])  # set at run time
        position = callbacks.index(self)
        later = [c for c in callbacks[position + 1 :] if isinstance(c, ComponentLossLogger)]
        if later:
            raise ValueError(
                "TrainingSummary must come after ComponentLossLogger in trainer.callbacks "
                "(it reads what the logger logged in the same step)"
            )
        for logger in callbacks:
            if isinstance(logger, ComponentLossLogger):
                units = getattr(logger.loss_module(pl_module), "units", "nats")
                for split in ("train", "val"):
                    self._logger_units[f"{split}/{logger.prefix}/"] = str(units)

    def unit(self, name: str) -> str | None:
        """The unit of metric ``name`` on the plot's y axis (``None``: unknown)."""
        known = {**self._logger_units, **self.units}
        prefixes = [prefix for prefix in known if name.startswith(prefix)]
        return known[max(prefixes, key=len)] if prefixes else None

    def _wanted(self, name: str) -> bool:
        return name.startswith(self.plot_prefix) or (
            self.tracked is not None and name in self.tracked.values()
        )

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
        tracked = self.tracked
        if tracked is None:
            tracked = {name: name for name in sorted(self.history)}
        for label, name in tracked.items():
            values = [value for _, value in self.history.get(name, [])]
            if values:
                rows.append((label, values[0], values[-1], min(values), max(values)))
        return rows

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # trainer.log_dir is a broadcast under DDP: every rank must ask, not only rank 0.
        log_dir = (
            None
            if not trainer.loggers or getattr(trainer, "fast_dev_run", False)
            else trainer.log_dir
        )
        if not trainer.is_global_zero or not self.history:
            return
        rows = self.rows()
        text = _plain_table(rows)
        _stop_live_progress(trainer)
        _print_table(rows, text)
        if log_dir is None:
            return  # no logs to write next to (no logger, or fast_dev_run's dummy logger)
        directory = Path(log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.summary_path = directory / self.summary_filename
        self.summary_path.write_text(text + "\n")
        if self.plot_filename is not None:
            self.plot_path = directory / self.plot_filename
            _plot(self.history, self.plot_path, {name: self.unit(name) for name in self.history})
            print(f"Component-loss plot: {self.plot_path}")


_COLUMNS = ("first step", "last step", "min", "max")
Row = tuple[str, float, float, float, float]


def _plain_table(rows: Sequence[Row]) -> str:
    width = max([len("metric"), *(len(row[0]) for row in rows)])
    lines = [f"{'metric':<{width}}" + "".join(f"  {c:>11}" for c in _COLUMNS)]
    lines += [f"{row[0]:<{width}}" + "".join(f"  {v:>11.4g}" for v in row[1:]) for row in rows]
    return "\n".join(lines)


def _stop_live_progress(trainer: pl.Trainer) -> None:
    """Stop a live rich progress bar (it would redraw over what is printed next)."""
    progress = getattr(trainer.progress_bar_callback, "progress", None)
    if progress is not None and callable(getattr(progress, "stop", None)):
        progress.stop()  # rich.progress.Progress.stop: draws the final state and releases


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


def _plot(
    history: Mapping[str, list[tuple[int, float]]],
    path: Path,
    units: Mapping[str, str | None],
) -> None:
    _figure(history, units).savefig(path, dpi=100)


def _figure(history: Mapping[str, list[tuple[int, float]]], units: Mapping[str, str | None]) -> Any:
    """One panel per metric against the training step, the y axis labelled with its unit."""
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
        unit = units.get(name)
        axis.set_ylabel("value" if unit is None else f"value ({unit})", fontsize=8)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.set_visible(False)
    for axis in axes.flat:
        axis.tick_params(labelbottom=True)
        axis.set_xlabel("training step (optimizer steps)", fontsize=8)
    figure.tight_layout()
    return figure
