"""Docstring examples run as tests: every ``>>>`` example of the library and of the apps is
executed with :mod:`doctest`, and every public function has one."""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
from pathlib import Path

import pytest
import torch

import mi_losses
from mi_losses import functional, losses

ROOT = Path(mi_losses.__file__).parent
SKIPPED: tuple[str, ...] = ()


def _module_names() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if parts[-1] == "__main__" or name.startswith(SKIPPED):
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("module_name", _module_names())
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder().find(module, module_name, globs={"torch": torch})
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    for test in tests:
        torch.manual_seed(0)
        test.globs = {**vars(module), **test.globs}
        runner.run(test, out=report.write)
    assert runner.failures == 0, report.getvalue()


def test_examples_were_found() -> None:
    """The finder sees the examples (a typo in the collection would silently run nothing)."""
    for name in ("mi_losses.functional.mutual_information", "mi_losses.metrics"):
        module = importlib.import_module(name)
        tests = doctest.DocTestFinder().find(module, name)
        assert sum(len(t.examples) for t in tests) >= 3, name


BASES = {
    "ComponentLossModule",
    "MixtureLossModule",
    "MutualInformationLoss",
}  # protocols to subclass, not losses
PUBLIC = [
    *(  # functions and modules; result types (NamedTuples) need no example
        getattr(functional, name)
        for name in functional.__all__
        if not isinstance(getattr(functional, name), type)
    ),
    *(getattr(losses, name) for name in losses.__all__ if name not in BASES),
    mi_losses.GaussianNoiseLayer,
    mi_losses.SequenceGaussianNoiseLayer,
]


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda obj: obj.__qualname__)
def test_public_api_has_an_example(obj: object) -> None:
    """Google-style docstrings with a short runnable example (the quality bar of the project)."""
    assert ">>>" in (inspect.getdoc(obj) or ""), f"{obj} has no docstring example"
