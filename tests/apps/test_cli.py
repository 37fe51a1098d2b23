"""The ``mi-losses`` CLI: every config in ``configs/`` parses and runs; help and errors are clear."""

from __future__ import annotations

import csv
import importlib.util
import io
import sys
from pathlib import Path

import pytest

from mi_losses import SubBatchMutualInformation
from mi_losses.apps.cli import DEMO_CONFIG, main, run, short_config_error, with_default_config
from mi_losses.apps.progress import StepProgressBar, short_metrics

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
MI_KEYS = (
    "gaussian_mixture_mahalanobis_distance_loss",
    "gaussian_mixture_log_constants_and_determinant_loss",
    "gaussian_mixture_entropy_loss",
    "std_log_loss",
    "mutual_information_loss",
)
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _run_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output paths of the configs land in tmp_path
    monkeypatch.setattr(sys, "argv", ["mi-losses"])  # pytest's own arguments are not ours


def test_the_configs_are_there() -> None:
    assert {p.name for p in CONFIGS} >= {"demo.yaml", "swap_loss.yaml"}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_config_runs_with_fast_dev_run(config: Path, tmp_path: Path) -> None:
    cli = run(
        [
            "fit",
            "--config",
            str(config),
            "--trainer.fast_dev_run",
            "2",
            "--trainer.default_root_dir",
            str(tmp_path),
            *QUIET,
        ]
    )
    assert cli.trainer.global_step == 2
    assert list(tmp_path.rglob("*.png")) == []  # fast_dev_run writes no logs, so no plot
    assert cli.model.mi_loss.component_losses["mutual_information_loss"].isfinite()


def test_swap_config_swaps_the_loss_options() -> None:
    config = str(ROOT / "configs" / "swap_loss.yaml")
    cli = run(["fit", "--config", config, "--trainer.fast_dev_run", "1", *QUIET])
    loss = cli.model.mi_loss
    assert (
        loss.granularity,
        loss.symmetric,
        loss.units,
        loss.combine_noise_masks_for_mutual_information_sub_batches,
    ) == (
        "token",
        True,
        "bits",
        False,
    )


@pytest.mark.slow
def test_demo_logs_every_component_per_step_and_writes_summary(tmp_path: Path) -> None:
    cli = run(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--trainer.max_steps",
            "8",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "logs"),
            *QUIET,
        ]
    )
    log_dir = Path(cli.trainer.log_dir)
    with (log_dir / "metrics.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss_step")]
    assert len(rows) == 8
    for row in rows:
        for key in MI_KEYS:
            assert row[f"train/mi/{key}_step"] != ""
    # The demo's claim, on its first steps: the MI estimate falls, utility stays bounded.
    mi = [float(row["train/mi/mutual_information_loss_step"]) for row in rows]
    assert mi[-1] < 0.8 * mi[0]
    assert all(float(row["train/utility_loss_step"]) < 0.5 for row in rows)
    assert (log_dir / "component_losses.png").read_bytes()[:4] == b"\x89PNG"
    assert "MI estimate" in (log_dir / "summary.txt").read_text()


def test_help_shows_the_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "weight of the privacy loss, in ``[0, 1]``" in out  # ObfuscationTask.alpha
    assert "``E``" in out and "--data.batch_size" in out  # the data module's options
    with pytest.raises(SystemExit):
        main(["fit", "--model.mi_loss.help", "SubBatchMutualInformation"])
    out = capsys.readouterr().out
    assert "average both directions" in out  # symmetric
    assert "{nats,bits}" in out


def test_callback_help_shows_the_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--trainer.callbacks.help", "ComponentLossLogger"])
    assert "attribute path of the loss module" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.alpha", "1.5"], "ObfuscationTask: alpha must lie in [0, 1], got 1.5"),
        (["--data.batch_size", "63"], "batch_size must be even and at least 2"),
        (["--model.init_std", "5.0"], "0 < min_std <= init_std <= max_std"),
        (["--num_threads", "0"], "--num_threads must be a positive integer or null, got 0"),
        (["--trainer.max_steps=-5"], "`max_steps` must be a non-negative integer or -1"),
        (["--trainer.max_steps=abc"], "--trainer.max_steps: expected int, got abc"),
        (
            ["--model.mi_loss=torch.nn.Identity"],
            "--model.mi_loss: Import path does not correspond to a subclass of "
            "MutualInformationLoss (got torch.nn.Identity)",
        ),
        (
            ["--model.mi_loss.init_args.granularity=foo"],
            "--model.mi_loss.init_args.granularity: expected Literal['sequence', 'token'], got foo",
        ),
        (["--model.foo=1"], "unrecognized arguments: --model.foo=1"),
    ],
)
def test_config_errors_are_two_lines_naming_the_option(
    override: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad value, whether the parser or a class rejects it: the error, then --help; no usage
    dump, no traceback."""
    config = str(ROOT / "configs" / "demo.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, *override, *QUIET])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "Seed set" not in line]
    assert lines == [
        f"mi-losses fit: error: {message}" if message.startswith("--") else lines[0],
        "mi-losses fit: every option and its type: mi-losses fit --help",
    ]
    assert lines[0].startswith("mi-losses fit: error: ") and message in lines[0]


def test_short_config_error_keeps_the_option_and_the_innermost_reason() -> None:
    nested = """Parser key "model.mi_loss":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'mi_losses.losses.base.MutualInformationLoss'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'mi_losses.SubBatchMutualInformation':
        Parser key "units":
          Expected a typing.Literal['nats', 'bits']. Got value: nat
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='units', val='nat')
"""
    assert short_config_error(nested) == (
        "--model.mi_loss.init_args.units: expected Literal['nats', 'bits'], got nat"
    )
    assert short_config_error('Parser key "config": File does not exist: x.yaml') == (
        "--config: File does not exist: x.yaml"
    )
    assert short_config_error("unrecognized arguments: --x=1") == "unrecognized arguments: --x=1"


def test_a_normal_call_warns_nothing(
    monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder, tmp_path: Path
) -> None:
    """The console script passes the command line on as ``args``: Lightning's warning about
    ``args`` given next to ``sys.argv`` is not for it."""
    args = ["fit", "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["mi-losses", *args, *QUIET])
    main()
    assert not [str(w.message) for w in recwarn if "args parameter" in str(w.message)]


class MyEstimator(SubBatchMutualInformation):
    """A user's own loss module (what ``configs/swap_loss.yaml`` says ``model.mi_loss`` takes)."""


def test_the_swap_config_takes_a_subclass_of_the_loss_base_class() -> None:
    config = str(ROOT / "configs" / "swap_loss.yaml")
    assert "any subclass of mi_losses.MutualInformationLoss" in Path(config).read_text()
    override = f"--model.mi_loss={__name__}.MyEstimator"
    cli = run(["fit", "--config", config, override, "--trainer.fast_dev_run", "1", *QUIET])
    assert type(cli.model.mi_loss) is MyEstimator


def test_bad_loss_option_is_rejected_when_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(ROOT / "configs" / "demo.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config, "--model.mi_loss.init_args.units", "nat"])
    assert exit_info.value.code != 0
    error = capsys.readouterr().err
    assert "units" in error and "nat" in error


def test_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["mi-losses"] == "mi_losses.apps.cli:main"


def test_console_script_entry_point_returns_none_so_the_process_exits_zero(
    tmp_path: Path,
) -> None:
    """A console script calls ``sys.exit(main())``: anything but None would exit non-zero."""
    config = str(ROOT / "configs" / "demo.yaml")
    args = ["fit", "--config", config, "--trainer.fast_dev_run", "1"]
    assert main([*args, "--trainer.default_root_dir", str(tmp_path), *QUIET]) is None


def test_fit_without_config_runs_the_packaged_demo(capsys: pytest.CaptureFixture[str]) -> None:
    cli = run(["fit", "--trainer.fast_dev_run", "1", *QUIET])
    assert cli.trainer.global_step == 1
    assert cli.model.alpha == 0.002 and cli.datamodule.vocab_size == 256  # the demo's values
    assert f"mi-losses: no --config given; using {DEMO_CONFIG}" in capsys.readouterr().err


def test_packaged_demo_config_is_configs_demo() -> None:
    assert DEMO_CONFIG.read_text() == (ROOT / "configs" / "demo.yaml").read_text()


def test_default_config_is_added_only_when_none_is_given() -> None:
    assert with_default_config(["fit"]) == ["fit", "--config", str(DEMO_CONFIG)]
    for args in (
        ["fit", "--config", "x.yaml"],
        ["fit", "--config=x.yaml"],
        ["fit", "-c", "x.yaml"],
        ["fit", "--help"],
        ["--help"],
        [],
    ):
        assert with_default_config(args) == args


def test_short_metrics_show_each_value_once_under_a_short_label() -> None:
    logged = {
        "train/loss_step": 2.0,
        "train/loss_epoch": 3.0,
        "train/mi/mutual_information_loss": 40.0,
        "val/utility_loss_epoch": 0.5,
        "v_num": 7,
    }
    labels = {"loss": "train/loss", "mi": "train/mi/mutual_information_loss"}
    labels |= {"val_utility": "val/utility_loss", "std": "train/std/mean"}
    assert short_metrics(logged, labels) == {"loss": 2.0, "mi": 40.0, "val_utility": 0.5}


def _bar(cli: object) -> StepProgressBar:
    bars = [c for c in cli.trainer.callbacks if isinstance(c, StepProgressBar)]  # type: ignore[attr-defined]
    assert len(bars) == 1
    return bars[0]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="needs the optional extra 'cli' (rich)"
)
def test_progress_bar_counts_steps_of_max_steps_with_short_values(tmp_path: Path) -> None:
    cli = run(
        [
            *("fit", "--config", str(ROOT / "configs" / "demo.yaml")),
            *("--trainer.max_steps", "40", "--trainer.limit_train_batches", "16"),
            *("--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false"),
            *("--trainer.logger.init_args.save_dir", str(tmp_path)),
            *("--trainer.enable_model_summary", "false"),
        ]
    )
    bar = _bar(cli)
    assert cli.trainer.current_epoch >= 2  # 40 steps of 16 batches: the bar spans epochs
    assert bar.train_progress_bar_id is not None and bar.progress is not None
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert (task.completed, task.total) == (40, 40)
    assert task.description.strip().endswith("Step")
    shown = bar.get_metrics(cli.trainer, cli.model)
    assert set(shown) == {"loss", "mi", "util", "std"}
    assert all(isinstance(value, float) for value in shown.values())
    # The whole line (description, bar, steps, times, values) fits an 80-column terminal.
    from rich.console import Console

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(bar.progress.make_tasks_table([task]))
    line = console.export_text().rstrip()
    assert "loss: " in line and "util: " in line
    assert len(line) <= 80, line


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("rich") is None, reason="needs the optional extra 'cli' (rich)"
)
def test_progress_bar_counts_epochs_from_one_without_max_steps(tmp_path: Path) -> None:
    cli = run(
        [
            *("fit", "--config", str(ROOT / "configs" / "demo.yaml")),
            *("--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2"),
            *("--trainer.limit_val_batches", "1", "--trainer.enable_checkpointing", "false"),
            *("--trainer.logger.init_args.save_dir", str(tmp_path)),
            *("--trainer.enable_model_summary", "false"),
        ]
    )
    bar = _bar(cli)
    assert bar.train_progress_bar_id is not None and bar.progress is not None
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.description.strip().endswith("Epoch 2/2")
    assert (task.completed, task.total) == (2, 2)
