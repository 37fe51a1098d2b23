"""The training summary and progress bars as a user sees them: the live bar stops before the
summary table is printed, every plot has labelled axes with units, the example's bar counts
epochs from one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger

from mi_losses import SubBatchMutualInformation
from mi_losses.callbacks import ComponentLossLogger, TrainingSummary
from tests.metrics.test_callbacks import tiny_setup

needs_rich = pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="needs the optional extra 'cli' (rich)"
)


@pytest.mark.slow
@needs_rich
@pytest.mark.parametrize("bar_kind", ["StepProgressBar", "RichProgressBar"])
def test_the_live_bar_stops_before_the_summary_is_printed(
    bar_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The summary table is printed to a terminal the bar no longer redraws (its border kept);
    with the applications' bar or Lightning's own, wherever the bar sits among the callbacks."""
    from pytorch_lightning.callbacks import RichProgressBar

    from mi_losses.apps.progress import StepProgressBar
    from mi_losses.callbacks import summary

    live_when_printed: list[bool] = []
    print_table = summary._print_table

    def recording_print_table(*args: object) -> None:
        live_when_printed.append(bar.progress is not None and bar.progress.live.is_started)
        print_table(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(summary, "_print_table", recording_print_table)
    bar = StepProgressBar() if bar_kind == "StepProgressBar" else RichProgressBar()
    model, data = tiny_setup()
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[ComponentLossLogger(), TrainingSummary(), bar],  # the bar after the summary
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, data)
    assert live_when_printed == [False]


@pytest.mark.slow
def test_every_plot_has_axis_labels_with_units(tmp_path: Path) -> None:
    from mi_losses.callbacks.summary import _figure

    model, data = tiny_setup()
    model.mi_loss = SubBatchMutualInformation(granularity="token", units="bits")
    summary = TrainingSummary(units={"train/std/": "embedding units"})
    trainer = pl.Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        callbacks=[ComponentLossLogger(), summary],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
    )
    summary.tracked = {"mean std": "train/std/mean"}
    trainer.fit(model, data)
    units = {name: summary.unit(name) for name in summary.history}
    assert units["train/mi/mutual_information_loss"] == "bits"
    assert units["train/std/mean"] == "embedding units"
    figure = _figure(summary.history, units)
    visible = [axis for axis in figure.axes if axis.get_visible()]
    assert len(visible) == len(summary.history)
    for axis in visible:
        assert axis.get_xlabel() == "training step (optimizer steps)"
        assert axis.get_ylabel().startswith("value (") and axis.get_ylabel().endswith(")")


@pytest.mark.slow
@needs_rich
def test_example_bar_counts_epochs_from_one_with_readable_labels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import runpy

    from mi_losses.apps.progress import StepProgressBar

    example = runpy.run_path(
        str(Path(__file__).parents[2] / "examples" / "own_lightning_module.py")
    )
    monkeypatch.setitem(example["main"].__globals__, "make_data", lambda: example["make_data"](64))
    trainer = example["main"]()
    (bar,) = [c for c in trainer.callbacks if isinstance(c, StepProgressBar)]
    assert bar.progress is not None and bar.train_progress_bar_id is not None
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert trainer.max_epochs == 3 and task.description.strip() == "Epoch 3/3"
    assert set(bar.get_metrics(trainer, trainer.lightning_module)) == {"task", "mi_bits"}
