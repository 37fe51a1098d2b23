"""The ``mi-losses`` command: ``mi-losses fit --config configs/demo.yaml``.

Without ``--config``, ``fit``/``validate``/``test`` run the demo configuration that ships with
the package (``mi_losses/apps/demo/demo.yaml``, the same file as ``configs/demo.yaml``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
from mi_losses.apps.demo.task import ObfuscationTask
from mi_losses.apps.progress import StepProgressBar

# Imported so that the parser knows them as Callback subclasses: short names work in
# `--trainer.callbacks.help ComponentLossLogger` and in `class_path`.
from mi_losses.callbacks import ComponentLossLogger, TrainingSummary  # noqa: F401


class ThreadsCLI(LightningCLI):
    """``LightningCLI`` with a ``num_threads`` option and a short rich progress bar.

    ``num_threads`` sets torch's intra-op CPU threads (small models on a busy CPU run faster
    on one thread than on several competing ones). :class:`StepProgressBar` (steps out of
    ``max_steps``, a few short values) is used when ``rich`` is installed and the configuration
    sets no progress bar of its own.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help="torch intra-op CPU threads (torch.set_num_threads); null keeps torch's default.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("num_threads")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"num_threads must be a positive integer or null, got {threads}")
            torch.set_num_threads(threads)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = list(trainer_config.get("callbacks") or [])
        wants_bar = trainer_config.get("enable_progress_bar", True) is not False
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
        if wants_bar and not has_bar and importlib.util.find_spec("rich") is not None:
            kwargs["callbacks"] = [*callbacks, StepProgressBar()]
        return super().instantiate_trainer(**kwargs)


class MILossesCLI(ThreadsCLI):
    """``mi-losses``: :class:`ObfuscationTask` on :class:`SyntheticEmbeddingDataModule`.

    ``model.embedding_dim`` follows ``data.embedding_dim``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.embedding_dim", "model.embedding_dim")


DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "demo.yaml"
"""The configuration ``mi-losses`` runs when none is given (``configs/demo.yaml``)."""

_RUNS = ("fit", "validate", "test", "predict")


def with_default_config(
    args: list[str], default: Path = DEMO_CONFIG, program: str = "mi-losses"
) -> list[str]:
    """``args`` with ``--config default`` added when a run subcommand has no ``--config``.

    Calls with ``--help`` or another subcommand are left alone; a note on stderr names the file
    used. Any application CLI can call it with its own packaged ``default``.
    """
    if not args or args[0] not in _RUNS:
        return args
    flags = {arg.split("=", 1)[0] for arg in args[1:]}
    if flags & {"-c", "--config", "-h", "--help"}:
        return args
    print(f"{program}: no --config given; using {default}", file=sys.stderr)
    return [args[0], "--config", str(default), *args[1:]]


def run(args: list[str] | None = None) -> MILossesCLI:
    """Run the CLI and return it (``args`` default to ``sys.argv[1:]``), for use from Python."""
    args = with_default_config(sys.argv[1:] if args is None else list(args))
    return MILossesCLI(
        ObfuscationTask,
        SyntheticEmbeddingDataModule,
        args=args,
        parser_kwargs={"description": "Train a Gaussian noise layer against an MI estimate."},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mi-losses`` console script; returns nothing, so it exits with 0."""
    run(args)


if __name__ == "__main__":
    main()
