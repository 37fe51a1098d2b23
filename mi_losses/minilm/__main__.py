"""``python -m mi_losses.minilm fit --config configs/minilm.yaml``: train, then report.

A plain :class:`~pytorch_lightning.cli.LightningCLI` over :class:`MiniLMObfuscation` and
:class:`PydocTextDataModule`; the report is written by the ``ObfuscationReport`` callback that the
config adds to the trainer.
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningCLI

from mi_losses.minilm.data import PydocTextDataModule
from mi_losses.minilm.task import MiniLMObfuscation


def main(args: list[str] | None = None) -> LightningCLI:
    """Run the CLI (``args`` replaces ``sys.argv[1:]`` when given)."""
    return LightningCLI(
        MiniLMObfuscation,
        PydocTextDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
