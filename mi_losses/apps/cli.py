"""The ``mi-losses`` command: ``mi-losses fit --config configs/demo.yaml``.

Without ``--config``, ``fit``/``validate``/``test`` run the demo configuration that ships with
the package (``mi_losses/apps/demo/demo.yaml``, the same file as ``configs/demo.yaml``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning import Trainer
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.cli import ArgsType, LightningArgumentParser, LightningCLI

from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
from mi_losses.apps.demo.task import ObfuscationTask
from mi_losses.apps.progress import StepProgressBar

# Imported so that the parser knows them as Callback subclasses: short names work in
# `--trainer.callbacks.help ComponentLossLogger` and in `class_path`.
from mi_losses.callbacks import ComponentLossLogger, TrainingSummary  # noqa: F401

_STRUCTURE = re.compile(
    r"^(- )?(Does not validate against any of the|Subtypes:|Errors:|Given value|Expected a path but"
    r"|Expected a <class 'NoneType'>|Problem with given class_path|Parser key)"
)


def short_config_error(message: str) -> str:
    """One line from one of jsonargparse's multi-line errors: the option, then the innermost reason.

    ``Parser key "model.mi_loss": ... - Import path does not correspond to a subclass of
    MutualInformationLoss ... Given value: torch.nn.Identity`` becomes ``--model.mi_loss: Import
    path does not correspond to a subclass of MutualInformationLoss (got torch.nn.Identity)``.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [line.removeprefix("- ") for line in lines if not _STRUCTURE.match(line)]
    given = next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("Given value:")), None
    )
    if not keys:
        return lines[0] if lines else message
    option = "--" + keys[0] + "".join(f".init_args.{key}" for key in keys[1:])
    first = lines[0].split(":", 1)[1].strip() if lines[0].startswith("Parser key") else ""
    reason = reasons[0] if reasons else first or "invalid value"
    if given is not None and given not in reason and not given.startswith("NestedArg"):
        reason = f"{reason} (got {given})"
    reason = re.sub(r"<class '([\w.]+)'>", r"\1", reason).replace("typing.Literal", "Literal")
    reason = re.sub(r"^Expected an? (.+)\. Got value: (.*)$", r"expected \1, got \2", reason)
    return f"{option}: {reason}"


class ShortErrorParser(LightningArgumentParser):
    """A parser whose errors are two lines: what is wrong (naming the option), and ``--help``.

    jsonargparse prints the whole usage (some 70 lines) before the error; here the usage is left
    to ``--help``. ``JSONARGPARSE_DEBUG=1`` raises the parser's full error instead.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        exit_with_config_error(parser.prog.replace(" [options]", ""), short_config_error(message))


def exit_with_config_error(program: str, message: str) -> NoReturn:
    """Print ``program: error: message`` and where to find the options, then exit with status 2."""
    print(f"{program}: error: {message}", file=sys.stderr)
    print(f"{program}: every option and its type: {program} --help", file=sys.stderr)
    raise SystemExit(2)


THIRD_PARTY_NOISE = (
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Found \d+ module\(s\) in eval mode at the start of training",
)
"""Warnings of third-party code that say nothing to a user of the job (a deprecation inside
Lightning; frozen models are in eval mode on purpose)."""


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips (``💡 Tip: ... litlogger ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_third_party() -> None:
    """Silence exactly :data:`THIRD_PARTY_NOISE` and Lightning's tips, nothing else."""
    for message in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message)
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


class ThreadsCLI(LightningCLI):
    """``LightningCLI`` with a ``num_threads`` option and a short rich progress bar.

    ``num_threads`` sets torch's intra-op CPU threads (small models on a busy CPU run faster
    on one thread than on several competing ones). :class:`StepProgressBar` (steps out of
    ``max_steps``, a few short values) is used when ``rich`` is installed and the configuration
    sets no progress bar of its own.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        quiet_third_party()
        super().__init__(*args, **kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        self.parser_class = ShortErrorParser
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # `main` passes the command line (with a default config added) as `args`; Lightning's
        # warning about `args` given next to `sys.argv` is for calls from within Python.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().parse_arguments(parser, args)

    def _config_error(self, message: str) -> NoReturn:
        program = self.parser.prog.replace(" [options]", "")
        exit_with_config_error(f"{program} {self.subcommand or ''}".strip(), message)

    def instantiate_classes(self) -> None:
        # A value the parser accepts but a class rejects (`--trainer.max_steps=-5`,
        # `--data.batch_size=3`) is a configuration error too: one line, no traceback.
        try:
            super().instantiate_classes()
        except (ValueError, FileNotFoundError, MisconfigurationException) as error:
            self._config_error(str(error).strip().splitlines()[0])

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
                self._config_error(
                    f"--num_threads must be a positive integer or null, got {threads}"
                )
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
