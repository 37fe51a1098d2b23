"""One spelling per class in YAML: a library class is named by its package's public path.

Every ``class_path: mi_losses.…`` of the configs, the packaged configs and the docs' YAML names
a library class as ``mi_losses.<package>.<Name>`` with ``Name`` in that package's ``__all__``
(``mi_losses.losses.SubBatchMutualInformation``, ``mi_losses.noise.GaussianNoiseLayer``,
``mi_losses.callbacks.ComponentLossLogger``), the path the guide and the API reference use.
Classes of the applications (``mi_losses.apps.…``) are named by their module.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    [*ROOT.glob("configs/**/*.yaml"), *ROOT.glob("mi_losses/**/*.yaml"), *ROOT.glob("docs/*.md")]
)
_CLASS_PATH = re.compile(r"class_path:\s*(mi_losses\.[\w.]+)")


def wrong_class_paths(text: str) -> list[str]:
    """The library class paths of ``text`` not of the form ``mi_losses.<package>.<Name>``."""
    wrong = []
    for path in _CLASS_PATH.findall(text):
        if path.startswith("mi_losses.apps."):
            continue
        package, _, name = path.rpartition(".")
        public = getattr(importlib.import_module(package), "__all__", [])
        if package.count(".") != 1 or name not in public:
            wrong.append(path)
    return wrong


def test_wrong_class_paths_finds_other_spellings() -> None:
    text = (
        "class_path: mi_losses.losses.SubBatchMutualInformation\n"
        "class_path: mi_losses.SubBatchMutualInformation\n"
        "- class_path: mi_losses.losses.base.MutualInformationLoss\n"
        "class_path: mi_losses.apps.hf.report.HFObfuscationReport\n"
    )
    assert wrong_class_paths(text) == [
        "mi_losses.SubBatchMutualInformation",
        "mi_losses.losses.base.MutualInformationLoss",
    ]


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_library_classes_are_named_by_their_package(source: Path) -> None:
    assert not wrong_class_paths(source.read_text())
