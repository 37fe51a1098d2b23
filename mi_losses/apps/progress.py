"""The progress bar of the applications: steps out of ``max_steps`` and a few short values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import RichProgressBarTheme

DEFAULT_METRICS: dict[str, str] = {
    "loss": "train/loss",
    "mi": "train/mi/mutual_information_loss",
    "utility": "train/utility_loss",
    "std": "train/std/mean",
    "val_mi": "val/mi/mutual_information_loss",
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


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps when ``max_steps`` is set.

    With ``trainer.max_steps`` set, the training bar reads ``Step  57/120`` (the global step out
    of ``max_steps``) across epochs instead of ``Epoch 1/-2`` and the batches of one epoch;
    otherwise it reads ``Epoch 2/4`` (counted from 1) with the epoch's batches. It shows only
    the values listed in ``metrics``, under their short labels, each once.

    Args:
        metrics: short label -> name of a logged metric (as passed to ``self.log``, without
            the ``_step``/``_epoch`` suffix Lightning adds). ``None`` shows the applications'
            loss, MI estimate, utility loss, mean std and validation MI.
        refresh_rate: redraw every this many batches.
        leave: keep the finished bar of every epoch on screen.
    """

    def __init__(
        self, metrics: dict[str, str] | None = None, refresh_rate: int = 1, leave: bool = False
    ) -> None:
        super().__init__(
            refresh_rate=refresh_rate, leave=leave, theme=RichProgressBarTheme(metrics_format=".4g")
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
        return f"{description:{len(self.validation_description)}}"

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
