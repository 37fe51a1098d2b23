"""The package layout: moved public names still import from their old paths; the core is light."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import mi_losses
from mi_losses._moved import MOVED

OLD_NAMES = [
    ("mi_losses.task", "ObfuscationTask"),
    ("mi_losses.data", "SyntheticEmbeddingDataModule"),
    ("mi_losses.downstream", "FrozenDownstreamEncoder"),
    ("mi_losses.cli", "main"),
    ("mi_losses.cli", "ThreadsCLI"),
    ("mi_losses.losses._base", "MutualInformationLoss"),
    ("mi_losses.losses._base", "ComponentLossModule"),
    ("mi_losses.functional._validation", "as_bool_mask"),
    ("mi_losses.callbacks", "TrainingSummary"),
    ("mi_losses.callbacks", "ComponentLossLogger"),
]


@pytest.mark.parametrize(("module", "name"), OLD_NAMES)
def test_old_paths_import_the_same_object(module: str, name: str) -> None:
    old = getattr(importlib.import_module(module), name)
    new_module = MOVED.get(module, module)
    for old_prefix, new_prefix in MOVED.items():
        if module.startswith(old_prefix + "."):
            new_module = new_prefix + module[len(old_prefix) :]
    assert old is getattr(importlib.import_module(new_module), name)


def test_old_package_path_is_the_new_module() -> None:
    import mi_losses.minilm.evaluate as old

    import mi_losses.apps.minilm.evaluate as new

    assert old is new


@pytest.mark.parametrize(
    "name",
    ["ObfuscationTask", "SyntheticEmbeddingDataModule", "ComponentLossLogger", "TrainingSummary"],
)
def test_top_level_lazy_names(name: str) -> None:
    assert getattr(mi_losses, name).__name__ == name


def test_functional_core_imports_without_lightning() -> None:
    code = (
        "import sys, mi_losses, mi_losses.functional;"
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'torchmetrics') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
