"""ComponentLossLogger and TrainingSummary inside a real (tiny) Trainer with a CSVLogger."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from mi_losses import SubBatchMutualInformation
from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
from mi_losses.apps.demo.task import ObfuscationTask
from mi_losses.callbacks import ComponentLossLogger, TrainingSummary

MI_KEYS = {
    "gaussian_mixture_mahalanobis_distance_loss",
    "gaussian_mixture_log_constants_and_determinant_loss",
    "gaussian_mixture_entropy_loss",
    "std_log_loss",
    "mutual_information_loss",
}
STEPS_PER_EPOCH = 4
EPOCHS = 2


class Recorder(pl.Callback):
    """What the loss module held after every batch, per stage (the ground truth)."""

    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[dict[str, float], int]]] = {
            "train": [],
            "val": [],
            "test": [],
        }

    def _record(self, pl_module: ObfuscationTask, stage: str) -> None:
        module = pl_module.mi_loss
        components = {k: float(v) for k, v in module.component_losses.items()}
        self.seen[stage].append((components, int(module.last_num_queries)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self._record(pl_module, "train")

    def on_validation_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
        self._record(pl_module, "val")

    def on_test_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
        self._record(pl_module, "test")


def tiny_setup() -> tuple[ObfuscationTask, SyntheticEmbeddingDataModule]:
    data = SyntheticEmbeddingDataModule(
        vocab_size=32,
        embedding_dim=8,
        sequence_length=6,
        min_length=1,
        num_train=16 * STEPS_PER_EPOCH,
        num_val=32,
        batch_size=16,
        seed=3,
    )
    # Token granularity: the number of valid queries differs from batch to batch, so a
    # weighted epoch mean differs from the plain mean of the step values.
    model = ObfuscationTask(
        mi_loss=SubBatchMutualInformation(granularity="token"),
        embedding_dim=8,
        noise_hidden_dim=8,
        downstream_hidden_dim=8,
        alpha=0.01,
    )
    return model, data


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def weighted(seen: list[tuple[dict[str, float], int]], key: str) -> float:
    return sum(c[key] * w for c, w in seen) / sum(w for _, w in seen)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    pl.seed_everything(0)
    root = tmp_path_factory.mktemp("fit")
    model, data = tiny_setup()
    recorder = Recorder()
    summary = TrainingSummary(
        tracked={
            "MI estimate": "train/mi/mutual_information_loss",
            "utility loss": "train/utility_loss",
            "mean std": "train/std/mean",
        }
    )
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        logger=CSVLogger(root, name="run"),
        log_every_n_steps=1,
        callbacks=[recorder, ComponentLossLogger(), summary],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="cpu",
        devices=1,
    )
    trainer.fit(model, datamodule=data)
    fit_seen = {stage: list(rows) for stage, rows in recorder.seen.items()}
    trainer.test(model, datamodule=data, verbose=False)
    trainer.logger.save()
    rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    return {"rows": rows, "fit_seen": fit_seen, "seen": recorder.seen, "summary": summary}


def test_every_component_is_logged_at_every_step(fitted) -> None:  # type: ignore[no-untyped-def]
    step_rows = [r for r in fitted["rows"] if r.get("train/loss_step")]
    assert len(step_rows) == STEPS_PER_EPOCH * EPOCHS
    seen = fitted["fit_seen"]["train"]
    assert len(seen) == len(step_rows)
    for row, (components, _) in zip(step_rows, seen, strict=True):
        for key in MI_KEYS:
            value = row[f"train/mi/{key}_step"]
            assert value != "", f"train/mi/{key}_step missing at step {row['step']}"
            assert float(value) == pytest.approx(components[key], rel=1e-6, abs=1e-6)


def test_epoch_value_is_weighted_by_valid_queries(fitted) -> None:  # type: ignore[no-untyped-def]
    epoch_rows = [r for r in fitted["rows"] if r.get("train/mi/mutual_information_loss_epoch")]
    assert len(epoch_rows) == EPOCHS
    seen = fitted["fit_seen"]["train"]
    weights = {w for _, w in seen}
    assert len(weights) > 1, "the test needs batches with different numbers of valid queries"
    for epoch, row in enumerate(epoch_rows):
        steps = seen[epoch * STEPS_PER_EPOCH : (epoch + 1) * STEPS_PER_EPOCH]
        for key in MI_KEYS:
            logged = float(row[f"train/mi/{key}_epoch"])
            assert logged == pytest.approx(weighted(steps, key), rel=1e-5, abs=1e-6)


def test_stages_do_not_mix(fitted) -> None:  # type: ignore[no-untyped-def]
    val_rows = [r for r in fitted["rows"] if r.get("val/mi/mutual_information_loss")]
    assert len(val_rows) == EPOCHS
    val_seen = fitted["fit_seen"]["val"]
    per_epoch = len(val_seen) // EPOCHS
    for epoch, row in enumerate(val_rows):
        steps = val_seen[epoch * per_epoch : (epoch + 1) * per_epoch]
        for key in MI_KEYS:
            assert float(row[f"val/mi/{key}"]) == pytest.approx(weighted(steps, key), rel=1e-5)
        # Validation is logged per epoch only and never under the train names.
        assert not row.get("train/mi/mutual_information_loss_epoch")
    test_rows = [r for r in fitted["rows"] if r.get("test/mi/mutual_information_loss")]
    assert len(test_rows) == 1
    test_seen = fitted["seen"]["test"]
    for key in MI_KEYS:
        logged = float(test_rows[0][f"test/mi/{key}"])
        assert logged == pytest.approx(weighted(test_seen, key), rel=1e-5)
    # The test pass re-runs the validation data with the trained model: its value differs from
    # every validation epoch, so a shared metric would have shown up as a mixture.
    assert all(
        float(test_rows[0]["test/mi/mutual_information_loss"])
        != pytest.approx(float(r["val/mi/mutual_information_loss"]), rel=1e-9)
        for r in val_rows[:1]
    )


def test_task_logs_std_statistics_and_gaussian_entropy(fitted) -> None:  # type: ignore[no-untyped-def]
    row = [r for r in fitted["rows"] if r.get("train/loss_step")][-1]
    for name in ("std/mean", "std/min", "std/max", "gaussian_entropy_log_loss", "utility_loss"):
        assert row[f"train/{name}_step"] != ""
    low, mean, high = (float(row[f"train/std/{s}_step"]) for s in ("min", "mean", "max"))
    assert 0 < low < mean < high  # the layer has learned token-dependent stds
    # -log(sigma) - 0.5 log(2 pi e) at sigma ~ mean std: same sign and scale.
    entropy_loss = float(row["train/gaussian_entropy_log_loss_step"])
    assert entropy_loss == pytest.approx(
        -math.log(mean) - 0.5 * math.log(2 * math.pi * math.e), abs=0.5
    )


def test_summary_table_and_plot_are_written(fitted) -> None:  # type: ignore[no-untyped-def]
    summary: TrainingSummary = fitted["summary"]
    assert summary.summary_path is not None and summary.summary_path.exists()
    assert summary.plot_path is not None and summary.plot_path.read_bytes()[:4] == b"\x89PNG"
    labels = [row[0] for row in summary.rows()]
    assert labels == ["MI estimate", "utility loss", "mean std"]
    _, first, last, low, high = summary.rows()[0]
    seen = fitted["fit_seen"]["train"]
    mi = [components["mutual_information_loss"] for components, _ in seen]
    assert (first, last) == pytest.approx((mi[0], mi[-1]), rel=1e-6)
    assert (low, high) == pytest.approx((min(mi), max(mi)), rel=1e-6)
    assert "MI estimate" in summary.summary_path.read_text()
    assert set(summary.history) >= {f"train/mi/{key}" for key in MI_KEYS}
    assert all(len(series) == len(seen) for series in summary.history.values())


def test_missing_loss_module_fails_before_the_first_step(tmp_path: Path) -> None:
    model, data = tiny_setup()
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        callbacks=[ComponentLossLogger(module_attribute="privacy")],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(AttributeError, match="ObfuscationTask has no attribute 'privacy'"):
        trainer.fit(model, datamodule=data)
    assert trainer.global_step == 0


def test_summary_before_logger_is_refused(tmp_path: Path) -> None:
    model, data = tiny_setup()
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        callbacks=[TrainingSummary(), ComponentLossLogger()],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(ValueError, match="TrainingSummary must come after ComponentLossLogger"):
        trainer.fit(model, datamodule=data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prefix": "/mi"}, "prefix must be a non-empty name"),
        ({"stages": ["train", "validation"]}, "stages must be a list of train, val, test"),
        ({"module_attribute": "a..b"}, "module_attribute must be an attribute path"),
    ],
)
def test_bad_logger_options_fail_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ComponentLossLogger(**kwargs)


def test_module_without_component_losses_is_refused() -> None:
    model, _ = tiny_setup()
    model.mi_loss = torch.nn.Identity()
    with pytest.raises(TypeError, match="has no component_losses"):
        ComponentLossLogger().loss_module(model)


def test_example_user_module_logs_its_components(tmp_path: Path) -> None:
    import runpy

    example = runpy.run_path(
        str(Path(__file__).parents[2] / "examples" / "own_lightning_module.py")
    )
    model = example["PrivateClassifier"]()
    loader = torch.utils.data.DataLoader(
        example["make_data"](num=64), batch_size=16, drop_last=True
    )
    trainer = pl.Trainer(
        max_steps=2,
        logger=CSVLogger(tmp_path, name="example"),
        log_every_n_steps=1,
        callbacks=[ComponentLossLogger(module_attribute="privacy", prefix="privacy")],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, loader)
    trainer.logger.save()
    rows = [r for r in read_csv(Path(trainer.logger.log_dir) / "metrics.csv") if r.get("step")]
    logged = [r for r in rows if r.get("train/privacy/mutual_information_loss_step")]
    assert len(logged) == 2
    assert all(r[f"train/privacy/{key}_step"] != "" for r in logged for key in MI_KEYS)


def test_tensorboard_logger_receives_every_component(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, data = tiny_setup()
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(
        max_steps=3,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[ComponentLossLogger()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    for key in MI_KEYS:
        assert len(events.Scalars(f"train/mi/{key}_step")) == 3


class MetricDeviceProbe(pl.Callback):
    """Where the component-loss metrics live while training (Lightning moves them at teardown)."""

    def __init__(self, component_logger: ComponentLossLogger) -> None:
        self.component_logger = component_logger
        self.devices: set[str] = set()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        for _, metric in self.component_logger.metrics["train"].items():
            self.devices.add(metric.device.type)
            self.devices.add(metric.mean_value.device.type)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_weighted_epoch_mean_on_gpu(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model, data = tiny_setup()
    recorder, component_logger = Recorder(), ComponentLossLogger()
    probe = MetricDeviceProbe(component_logger)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=CSVLogger(tmp_path, name="gpu"),
        log_every_n_steps=1,
        callbacks=[recorder, component_logger, probe],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        accelerator="gpu",
        devices=1,
    )
    trainer.fit(model, datamodule=data)
    assert model.mi_loss.last_num_queries.device.type == "cuda"
    assert probe.devices == {"cuda"}
    trainer.logger.save()
    rows = read_csv(Path(trainer.logger.log_dir) / "metrics.csv")
    epoch = next(r for r in rows if r.get("train/mi/mutual_information_loss_epoch"))
    seen = recorder.seen["train"]
    assert len(seen) == STEPS_PER_EPOCH
    for key in MI_KEYS:
        assert float(epoch[f"train/mi/{key}_epoch"]) == pytest.approx(
            weighted(seen, key), rel=1e-5, abs=1e-6
        )
