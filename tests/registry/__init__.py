"""The registry: one :class:`tests.harness.Entry` per public function of ``mi_losses.functional``.

Every test of ``tests/functional/test_matrix.py`` and ``tests/functional/test_hardening*.py`` runs over
:data:`REGISTRY`. To register a new public function, write its ``Entry`` in a module of this
package (see ``distances.py`` for the smallest example) and add it to ``REGISTRY`` below; the
whole matrix then applies to it. ``tests/functional/test_matrix.py::test_registry_covers_the_public_api``
fails while a public function is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from tests.harness import Entry, Variant
from tests.registry.distances import (
    PAIRWISE_SQUARE_MAHALANOBIS_DISTANCE,
    SQUARE_MAHALANOBIS_DISTANCE,
)
from tests.registry.gaussian_entropy import GAUSSIAN_ENTROPY_LOG_LOSS
from tests.registry.mixture_entropy import (
    GAUSSIAN_MIXTURE_ENTROPY,
    GAUSSIAN_MIXTURE_ENTROPY_ESTIMATE,
)
from tests.registry.mutual_information import (
    MUTUAL_INFORMATION_BOUNDS,
    MUTUAL_INFORMATION_SUB_BATCH,
    MUTUAL_INFORMATION_SUB_BATCH_ESTIMATE,
)

REGISTRY: tuple[Entry, ...] = (
    SQUARE_MAHALANOBIS_DISTANCE,
    PAIRWISE_SQUARE_MAHALANOBIS_DISTANCE,
    GAUSSIAN_MIXTURE_ENTROPY,
    GAUSSIAN_MIXTURE_ENTROPY_ESTIMATE,
    MUTUAL_INFORMATION_SUB_BATCH,
    MUTUAL_INFORMATION_SUB_BATCH_ESTIMATE,
    MUTUAL_INFORMATION_BOUNDS,
    GAUSSIAN_ENTROPY_LOG_LOSS,
)

BY_NAME = {entry.name: entry for entry in REGISTRY}


def entry_variants(
    select: Callable[[Entry, Variant], bool] = lambda e, v: True,
) -> list[Any]:
    """``pytest.param(entry, variant)`` for every registered pair that ``select`` keeps."""
    return [
        pytest.param(entry, variant, id=f"{entry.name}[{variant.id}]")
        for entry in REGISTRY
        for variant in entry.variants
        if select(entry, variant)
    ]


def entries(select: Callable[[Entry], bool] = lambda e: True) -> list[Any]:
    """``pytest.param(entry)`` for every registered entry that ``select`` keeps."""
    return [pytest.param(entry, id=entry.name) for entry in REGISTRY if select(entry)]


def masked_variant(entry: Entry) -> Variant:
    """The first variant that passes every mask argument as a tensor (for mask checks)."""
    for variant in entry.variants:
        masks = [entry.case(variant).masks.get(name) for name in entry.masks]
        if all(m is not None and bool(m.any()) for m in masks):
            return variant
    # none has every mask: take the first and fill the missing ones with a random pattern
    first = entry.variants[0]
    return replace(first, masks={**first.masks, **dict.fromkeys(entry.masks, "random")})
