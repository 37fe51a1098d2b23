"""The demo config under Lightning's ``ddp`` strategy on 2 CPU processes, against 1 process.

Both runs are the user's command (``mi-losses fit --config configs/demo.yaml ...``) for a few
steps: the 2-process run in a subprocess (the ddp launcher starts the second rank), the
1-process run meanwhile in this process. A recorder callback, added on the
command line, writes what every rank held after every training step: its own component losses
and number of valid queries, and the step values the ``ComponentLossLogger`` logged.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import pytorch_lightning as pl
import torch

from mi_losses import MutualInformationLoss, SubBatchMutualInformation, keys
from mi_losses.apps.cli import run
from mi_losses.apps.demo.task import ObfuscationTask
from mi_losses.callbacks import ComponentLossLogger

pytestmark = pytest.mark.slow  # a real model, or several processes

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
TIMEOUT_S = 240


class RankRecorder(pl.Callback):
    """Write ``rank{r}.json``: per training step, the loss module's own components and weight
    and the logger's (synced) step values."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.steps: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        component_logger = next(c for c in trainer.callbacks if isinstance(c, ComponentLossLogger))
        logged = {
            key: float(metric._forward_cache)  # the step value Lightning logs for a Metric
            for key, metric in component_logger.metrics["train"].items()
        }
        module = pl_module.mi_loss
        self.steps.append(
            {
                "own": {k: float(v) for k, v in module.component_losses.items()},
                "num_queries": int(module.last_num_queries),
                "logged": logged,
                "gather": module.gather,
            }
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.out_dir / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.steps))


def arguments(out_dir: Path) -> list[str]:
    """The demo command's arguments for ``STEPS`` training steps, logging under ``out_dir``."""
    out_dir.mkdir()
    recorder = {
        "class_path": "tests.apps.test_distributed_lightning.RankRecorder",
        "init_args": {"out_dir": str(out_dir)},
    }
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        f"--trainer.max_steps={STEPS}",
        "--trainer.limit_val_batches=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={out_dir}",
        f"--trainer.callbacks+={json.dumps(recorder)}",
    ]


def step_rows(out_dir: Path) -> list[dict[str, str]]:
    """Rows of the CSV log that hold per-step component values."""
    (path,) = out_dir.glob("demo/version_*/metrics.csv")
    with path.open() as file:
        rows = list(csv.DictReader(file))
    return [row for row in rows if row.get(f"train/mi/{keys.MUTUAL_INFORMATION}_step")]


def finish(process: subprocess.Popen[bytes], out_dir: Path) -> None:
    try:
        process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()  # the ddp launcher's worker dies with it (Lightning watches its parent)
        pytest.fail(f"run in {out_dir} still going after {TIMEOUT_S} s")
    output = (out_dir / "output.txt").read_text(errors="replace")
    assert process.returncode == 0, output[-3000:]


def test_ddp_run_logs_the_same_components_as_one_process(tmp_path: Path) -> None:
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    ddp_arguments = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    command = [sys.executable, "-m", "mi_losses.apps.cli", *arguments(ddp_dir), *ddp_arguments]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with (ddp_dir / "output.txt").open("wb") as log:
        ddp = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    threads = torch.get_num_threads()
    try:
        run(arguments(single_dir))
    finally:
        torch.set_num_threads(threads)  # the config sets num_threads: 1
        finish(ddp, ddp_dir)

    single_rows, ddp_rows = step_rows(single_dir), step_rows(ddp_dir)
    assert len(single_rows) == len(ddp_rows) == STEPS
    component_columns = {f"train/mi/{key}_step" for key in keys.MUTUAL_INFORMATION_KEYS}
    for rows in (single_rows, ddp_rows):
        columns = {name for name in rows[0] if name.startswith("train/mi/")}
        assert component_columns <= columns
        assert all(math.isfinite(float(row[name])) for row in rows for name in component_columns)
    assert {n for n in single_rows[0]} == {n for n in ddp_rows[0]}

    ranks = [json.loads((ddp_dir / f"rank{r}.json").read_text()) for r in range(2)]
    (single_rank,) = [json.loads((single_dir / "rank0.json").read_text())]
    assert all(step["gather"] for rank in ranks for step in rank)  # the task turned it on
    assert not any(step["gather"] for step in single_rank)
    for step in range(STEPS):
        own = [rank[step] for rank in ranks]
        weights = [s["num_queries"] for s in own]
        for key in keys.MUTUAL_INFORMATION_KEYS:
            expected = sum(w * s["own"][key] for w, s in zip(weights, own, strict=True))
            expected /= sum(weights)
            logged = [s["logged"][key] for s in own]
            assert logged[0] == logged[1]  # every rank logs the same value
            assert logged[0] == pytest.approx(expected, rel=1e-5)  # the global weighted mean
            written = float(ddp_rows[step][f"train/mi/{key}_step"])
            assert written == pytest.approx(logged[0], rel=1e-6)
        assert own[0]["own"] != own[1]["own"]  # the ranks' own values differ: a real check


class _Trainer:
    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


class _OwnLoss(MutualInformationLoss):
    """A user's loss without a gather option."""


@pytest.mark.parametrize(
    ("option", "world_size", "module_flag", "expected"),
    [
        (None, 1, False, False),  # one process: the loss module's own setting
        (None, 1, True, True),
        (None, 2, False, True),  # several processes: on
        (False, 2, True, False),  # explicit: wins
        (True, 1, False, True),
    ],
)
def test_task_turns_gathering_on_under_several_processes(
    option: bool | None, world_size: int, module_flag: bool, expected: bool
) -> None:
    task = ObfuscationTask(SubBatchMutualInformation(gather=module_flag), gather=option)
    with patch.object(ObfuscationTask, "trainer", _Trainer(world_size)):
        task.setup("fit")
    assert task.mi_loss.gather is expected


def test_task_gather_option_is_validated() -> None:
    with pytest.raises(ValueError, match="gather must be true, false or null"):
        ObfuscationTask(gather=1)  # type: ignore[arg-type]
    own = ObfuscationTask(_OwnLoss(), gather=None)
    with patch.object(ObfuscationTask, "trainer", _Trainer(2)):
        own.setup("fit")  # a loss without the option is left alone
    explicit = ObfuscationTask(_OwnLoss(), gather=True)
    with (
        patch.object(ObfuscationTask, "trainer", _Trainer(1)),
        pytest.raises(ValueError, match="_OwnLoss has none"),
    ):
        explicit.setup("fit")
