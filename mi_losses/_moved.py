"""Old import paths of modules that moved into :mod:`mi_losses.apps` keep working.

``import mi_losses.task`` (and ``from mi_losses.minilm.attack import ...``) resolve to the
module at its new path, the same object, so classes pickled or named in YAML under either path
are one class. Nothing is imported until an old path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

MOVED = {
    "mi_losses.cli": "mi_losses.apps.cli",
    "mi_losses.data": "mi_losses.apps.demo.data",
    "mi_losses.downstream": "mi_losses.apps.demo.downstream",
    "mi_losses.task": "mi_losses.apps.demo.task",
    "mi_losses.minilm": "mi_losses.apps.minilm",
    "mi_losses.losses._base": "mi_losses.losses.base",
    "mi_losses.functional._validation": "mi_losses._validation",
}
"""Old module path -> new module path (a package maps its submodules too)."""


def new_path(name: str) -> str | None:
    """The new path of module ``name``, or ``None`` if it did not move."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if new_path(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        target = new_path(module.__name__)
        assert target is not None
        # The import system returns whatever sys.modules holds under the old name.
        sys.modules[module.__name__] = importlib.import_module(target)


def install() -> None:
    """Register the finder once (idempotent)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
