"""A griffe extension for the API pages: defaults that name a constant are shown as its value.

``max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES`` reads ``max_block_bytes=256 * 2 ** 20`` in
the rendered signature. Only upper-case module constants whose value is a number, a string or
arithmetic on numbers are replaced; ``mkdocs.yml`` loads this file through mkdocstrings'
``extensions`` option.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_LITERAL = re.compile(r"^[\d\s.*+\-/()e_]+$|^'[^']*'$|^\"[^\"]*\"$")


def _constant_value(expr: object, loader: griffe.GriffeLoader) -> str | None:
    if not isinstance(expr, griffe.ExprName) or not expr.name.isupper():
        return None
    try:
        target = loader.modules_collection[expr.canonical_path]
        if isinstance(target, griffe.Alias):
            target = target.final_target
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    value = getattr(target, "value", None)
    text = None if value is None else str(value)
    return text if text is not None and _LITERAL.match(text) else None


class ConstantDefaults(griffe.Extension):
    """Replace ``NAME`` defaults (parameters and dataclass fields) by the constant's value."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._visit(pkg, loader, set())

    def _visit(self, obj: griffe.Object, loader: griffe.GriffeLoader, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if isinstance(obj, griffe.Function):
            for parameter in obj.parameters:
                if (value := _constant_value(parameter.default, loader)) is not None:
                    parameter.default = value
        if (
            isinstance(obj, griffe.Attribute)
            and isinstance(obj.parent, griffe.Class)
            and (value := _constant_value(obj.value, loader)) is not None
        ):
            obj.value = value
        for member in obj.members.values():
            if not isinstance(member, griffe.Alias):
                self._visit(member, loader, seen)
