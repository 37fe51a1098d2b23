"""The package layout: the package face is the library only, and the core is light."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mi_losses


@pytest.mark.parametrize("name", ["ComponentLossLogger", "TrainingSummary", "ComponentLossMetrics"])
def test_top_level_lazy_names(name: str) -> None:
    assert getattr(mi_losses, name).__name__ == name


@pytest.mark.parametrize(
    "old",
    ["mi_losses.task", "mi_losses.minilm.attack", "mi_losses.losses._base", "mi_losses._moved"],
)
def test_old_paths_are_gone(old: str) -> None:
    """No import hook keeps paths that lived two days (see CHANGELOG.md)."""
    with pytest.raises(ModuleNotFoundError):
        __import__(old)


@pytest.mark.parametrize("name", ["ObfuscationTask", "SyntheticEmbeddingDataModule"])
def test_package_face_has_no_applications(name: str) -> None:
    with pytest.raises(AttributeError):
        getattr(mi_losses, name)


def test_library_imports_without_lightning_or_applications() -> None:
    code = (
        "import sys, mi_losses, mi_losses.functional, mi_losses.losses, mi_losses.options;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('pytorch_lightning', 'lightning', 'torchmetrics') or m.startswith('mi_losses.apps')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
