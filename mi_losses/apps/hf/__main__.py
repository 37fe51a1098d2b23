"""``mi-losses-hf fit --config configs/hf/causal_lm.yaml --model.model_name_or_path PATH``.

A :class:`~pytorch_lightning.cli.LightningCLI` over :class:`HFObfuscation` and
:class:`HFTextDataModule`; ``data.model_name_or_path`` follows ``model.model_name_or_path``.
``--num_threads N`` sets torch's intra-op CPU threads.
"""

from __future__ import annotations

from pytorch_lightning.cli import LightningArgumentParser

from mi_losses.apps.cli import ThreadsCLI
from mi_losses.apps.hf.data import HFTextDataModule
from mi_losses.apps.hf.task import HFObfuscation


class HFCLI(ThreadsCLI):
    """``mi-losses-hf``: the tokenizer of the data is the model's."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.link_arguments("model.model_name_or_path", "data.model_name_or_path")


def run(args: list[str] | None = None) -> HFCLI:
    """Run the CLI and return it (``args`` replaces ``sys.argv[1:]`` when given)."""
    return HFCLI(
        HFObfuscation,
        HFTextDataModule,
        args=args,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            "description": "Learn a noise layer for the input embeddings of a transformers model."
        },
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``mi-losses-hf`` console script; returns nothing (exit code 0)."""
    run(args)


if __name__ == "__main__":
    main()
