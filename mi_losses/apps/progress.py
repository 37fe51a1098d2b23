"""The progress bar of the applications: steps out of ``max_steps`` and a few short values.

One line under 80 columns: ``Step ━━━━━━━━ 57/120 1:03<1:10 loss: 1.42 mi: 4.67 util: 0.0272
std: 0.83`` (the bar, the steps, elapsed < remaining time, four values to three digits).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import RichProgressBarTheme

DEFAULT_METRICS: dict[str, str] = {
    "loss": "train/loss",
    "mi": "train/mi/mutual_information_loss",
    "util": "train/utility_loss",
    "std": "train/std/mean",
}
"""Short label -> logged metric (without Lightning's ``_step``/``_epoch`` suffix)."""


def short_metrics(
    callback_metrics: Mapping[str, Any], metrics: Mapping[str, str]
) -> dict[str, float]:
    """One value per label of ``metrics``: the step value if logged per step, else the epoch's.

    Labels whose metric was not logged (yet) are left out, so the bar never shows a
    placeholder; each value appears once, under its short label.
    """
    shown: dict[str, float] = {}
    for label, name in metrics.items():
        for key in (f"{name}_step", name, f"{name}_epoch"):
            if key in callback_metrics:
                shown[label] = float(callback_metrics[key])
                break
    return shown


BAR_WIDTH = 8
"""Characters of the bar itself (Lightning's default, 40, pushes the line past 80 columns)."""


def _clock(seconds: float | None) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on), ``-:--`` when unknown."""
    if seconds is None:
        return "-:--"
    text = str(timedelta(seconds=int(seconds)))
    return text[2:] if text.startswith("0:") else text


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps when ``max_steps`` is set.

    With ``trainer.max_steps`` set, the training bar reads ``Step  57/120`` (the global step out
    of ``max_steps``) across epochs instead of ``Epoch 1/-2`` and the batches of one epoch;
    otherwise it reads ``Epoch 2/4`` (counted from 1) with the epoch's batches. It shows only
    the values listed in ``metrics``, under their short labels, each once.

    Args:
        metrics: short label -> name of a logged metric (as passed to ``self.log``, without
            the ``_step``/``_epoch`` suffix Lightning adds). ``None`` shows the applications'
            loss, MI estimate, utility loss and mean std.
        refresh_rate: redraw every this many batches.
        leave: keep the finished bar of every epoch on screen.
    """

    def __init__(
        self, metrics: dict[str, str] | None = None, refresh_rate: int = 1, leave: bool = False
    ) -> None:
        super().__init__(
            refresh_rate=refresh_rate, leave=leave, theme=RichProgressBarTheme(metrics_format=".3g")
        )
        self.metrics = dict(DEFAULT_METRICS if metrics is None else metrics)

    def _counts_steps(self) -> bool:
        max_steps = self.trainer.max_steps
        return max_steps is not None and max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        if self._counts_steps():
            return self.trainer.max_steps
        return super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._counts_steps():
            description = "Step"
        else:
            max_epochs = self.trainer.max_epochs
            total = f"/{max_epochs}" if max_epochs is not None and max_epochs > 0 else ""
            description = f"Epoch {current_epoch + 1}{total}"
        return description

    def configure_columns(self, trainer: pl.Trainer) -> list:
        """The description, a short bar, the steps and ``elapsed<remaining`` (no speed)."""
        from pytorch_lightning.callbacks.progress.rich_progress import (
            BatchesProcessedColumn,
            CustomBarColumn,
        )
        from rich.progress import ProgressColumn, TextColumn
        from rich.text import Text

        style = self.theme.time

        class Times(ProgressColumn):
            max_refresh = 0.5

            def render(self, task: Any) -> Text:
                elapsed = task.finished_time if task.finished else task.elapsed
                return Text(f"{_clock(elapsed)}<{_clock(task.time_remaining)}", style=style)

        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                bar_width=BAR_WIDTH,
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            Times(),
        ]

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._counts_steps() and self.train_progress_bar_id is not None and not self._leave:
            return  # one bar for the whole run: keep its count and speed across epochs
        super().on_train_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Stop the live display before anything prints a summary or a report at the end of
        # fit (those run in on_fit_end, after this): the last frame stays on screen, above.
        super().on_train_end(trainer, pl_module)
        self._stop_progress()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._counts_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()

    def get_metrics(  # type: ignore[override]
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, float]:
        return short_metrics(trainer.callback_metrics, self.metrics)
