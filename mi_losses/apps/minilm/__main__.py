"""``python -m mi_losses.apps.minilm fit --config configs/minilm/fit.yaml``: train, then report.

A :class:`~pytorch_lightning.cli.LightningCLI` over :class:`MiniLMObfuscation` and
:class:`PydocTextDataModule`; the report is written by the ``ObfuscationReport`` callback that the
config adds to the trainer. ``--num_threads N`` sets torch's intra-op CPU threads (on a CPU shared
with other jobs one thread is much faster than two competing ones).
"""

from __future__ import annotations

from mi_losses.apps.cli import ThreadsCLI
from mi_losses.apps.minilm.data import PydocTextDataModule
from mi_losses.apps.minilm.task import MiniLMObfuscation


def run(args: list[str] | None = None) -> ThreadsCLI:
    """Run the CLI and return it (``args`` replaces ``sys.argv[1:]`` when given)."""
    return ThreadsCLI(
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
