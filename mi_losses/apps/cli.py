"""The ``mi-losses`` command: ``mi-losses fit --config configs/demo.yaml``."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
from mi_losses.apps.demo.task import ObfuscationTask

# Imported so that the parser knows them as Callback subclasses: short names work in
# `--trainer.callbacks.help ComponentLossLogger` and in `class_path`.
from mi_losses.callbacks import ComponentLossLogger, TrainingSummary  # noqa: F401


class ThreadsCLI(LightningCLI):
    """``LightningCLI`` with a ``num_threads`` option and Lightning's rich progress bar.

    ``num_threads`` sets torch's intra-op CPU threads (small models on a busy CPU run faster
    on one thread than on several competing ones). The rich progress bar is used when ``rich``
    is installed and the configuration sets no progress bar of its own.
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
            kwargs["callbacks"] = [*callbacks, RichProgressBar()]
        return super().instantiate_trainer(**kwargs)


class MILossesCLI(ThreadsCLI):
    """``mi-losses``: :class:`ObfuscationTask` on :class:`SyntheticEmbeddingDataModule`.

    ``model.embedding_dim`` follows ``data.embedding_dim``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("data.embedding_dim", "model.embedding_dim")


def run(args: list[str] | None = None) -> MILossesCLI:
    """Run the CLI and return it (``args`` default to ``sys.argv``), for use from Python."""
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
