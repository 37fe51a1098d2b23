"""The chain rule of one block of pairs into the kernel's gradient buffers (see ``_streaming``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from mi_losses.functional._accumulators import Accumulator
from mi_losses.functional._pair_terms import (
    ComponentProducts,
    ComponentSide,
    QuerySide,
    component_gradients,
    component_products,
    query_gradients,
    query_products,
)

# On CPU, elementwise work runs on chunks of about this many bytes per (rows, positions, E)
# tensor, which stay in the processor's cache (and in the allocator's reusable memory) between
# operations. On an accelerator, chunks only keep within the memory budget (fewer launches).
CHUNK_BYTES = 2 * 2**20


def ranges(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive ranges of ``size`` (the last one shorter) over ``total``."""
    return [(start, min(start + size, total)) for start in range(0, total, size)]


def cache_sized(
    total: int, unit_bytes: int, device: torch.device, budget: int
) -> list[tuple[int, int]]:
    """``total`` units (rows or positions) of ``unit_bytes`` each in ranges of at most
    :data:`CHUNK_BYTES` on CPU, of a sixteenth of the memory ``budget`` elsewhere."""
    size = CHUNK_BYTES if device.type == "cpu" else budget // 16
    return ranges(total, max(1, size // max(unit_bytes, 1)))


def _rows(value: Any, start: int, stop: int) -> Any:
    """Rows ``[start, stop)`` of every tensor of a (nested) named tuple."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    return type(value)(*(_rows(v, start, stop) for v in value))


class Gradients(NamedTuple):
    """Where the backward pass adds its pieces, and how it splits the elementwise work."""

    queries: Accumulator
    centres: Accumulator
    stds: Accumulator
    needs_components: bool
    functional: bool
    budget: int

    def row_chunks(self, rows: int, k: int, like: torch.Tensor) -> list[tuple[int, int]]:
        """Rows in cache-sized chunks; out of place (a graph, ``torch.func``) whole blocks."""
        if self.functional:
            return ranges(rows, max(rows, 1))
        return cache_sized(rows, k * like.element_size(), like.device, self.budget)

    def add_block(
        self,
        d: Any,
        starts: tuple[int, int],
        query: QuerySide,
        comp: ComponentSide,
        weights: tuple[torch.Tensor, torch.Tensor | None],
        positions: tuple[int, int] | None,
    ) -> None:
        """The gradients of one block of pairs through its factors (rows ``starts`` on)."""
        q_start, c_start = starts
        k = query.scaled.shape[1] * query.scaled.shape[2]
        through = query_products(weights[0], comp, weights[1])
        scale = d.scale
        assert scale is not None
        for s0, s1 in self.row_chunks(query.scaled.shape[0], k, query.scaled):
            grad_y, grad_c, grad_s = query_gradients(
                _rows(query, s0, s1), _rows(through, s0, s1), scale
            )
            self.queries.add(q_start + s0, grad_y, positions)
            if grad_c is not None and grad_s is not None:
                self.centres.add(q_start + s0, grad_c, positions)
                self.stds.add(q_start + s0, grad_s, positions)
        if self.needs_components:
            products = component_products(weights[0], query, weights[1])
            self.add_components(d, c_start, comp, products, positions)

    def add_components(
        self,
        d: Any,
        start: int,
        comp: ComponentSide,
        products: ComponentProducts,
        positions: tuple[int, int] | None,
    ) -> None:
        k = comp.scaled.shape[1] * comp.scaled.shape[2]
        scale = d.scale
        assert scale is not None
        for s0, s1 in self.row_chunks(comp.scaled.shape[0], k, comp.scaled):
            grad_c, grad_s = component_gradients(
                _rows(comp, s0, s1), _rows(products, s0, s1), scale
            )
            self.centres.add(start + s0, grad_c, positions)
            self.stds.add(start + s0, grad_s, positions)
