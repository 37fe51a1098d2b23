"""``python -m mi_losses.minilm fit --config configs/minilm/fit.yaml``: train, then report.

A :class:`~pytorch_lightning.cli.LightningCLI` over :class:`MiniLMObfuscation` and
:class:`PydocTextDataModule`; the report is written by the ``ObfuscationReport`` callback that the
config adds to the trainer. ``--num_threads N`` sets torch's intra-op CPU threads (on a CPU shared
with other jobs one thread is much faster than two competing ones).
"""

from __future__ import annotations

import torch
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI

from mi_losses.minilm.data import PydocTextDataModule
from mi_losses.minilm.task import MiniLMObfuscation


class MiniLMCLI(LightningCLI):
    """``LightningCLI`` with a ``num_threads`` option."""

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


def run(args: list[str] | None = None) -> MiniLMCLI:
    """Run the CLI and return it (``args`` replaces ``sys.argv[1:]`` when given)."""
    return MiniLMCLI(
        MiniLMObfuscation,
        PydocTextDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"description": "Learn and attack an obfuscation of all-MiniLM-L6-v2."},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mi-losses-minilm`` console script; returns nothing (exit code 0)."""
    run(args)


if __name__ == "__main__":
    main()
