"""One call's directions: the rows of queries and components each compares, their effective
masks (the positions that take part in a valid pair: the others are never read), and the block
ranges every path iterates over."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import NamedTuple

import torch


def ranges(total: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive ranges of ``size`` (the last one shorter) over ``total``."""
    return [(start, min(start + size, total)) for start in range(0, total, max(size, 1))]


# Blocks of several are cut at a multiple of this many rows (a 64-byte cache line of float32):
# a block's rows are the leading dimension of its matrix products, and 478 or 1170 of them
# (token B16 S2048 E1024, token B8 S1024 E4096) made MKL's forward products about 1.4x slower
# per row on CPU than 464 or 1152; multiples of 8 or 16 ran at full speed.
ALIGN_ROWS = 16


def aligned(size: int, total: int) -> int:
    """``size`` rows per block of ``total``, rounded down to a multiple of :data:`ALIGN_ROWS`
    when that makes several blocks of more than that many."""
    return size - size % ALIGN_ROWS if ALIGN_ROWS < size < total else size


def block_rows(rows: int, row_bytes: int, budget: int) -> list[tuple[int, int]]:
    """Ranges of ``rows`` of ``row_bytes`` each, as many per block as the ``budget`` allows
    (rounded down to a multiple of :data:`ALIGN_ROWS` when there are several, and at least
    that many)."""
    return ranges(rows, aligned(max(1, budget // max(row_bytes, 1)), rows))


def effective_masks(
    query_mask: torch.Tensor, component_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions that take part in at least one valid pair: the others are never read."""
    return (
        query_mask & component_mask.any(0, keepdim=True),
        component_mask & query_mask.any(0, keepdim=True),
    )


class Own(NamedTuple):
    """The queries' own clean embeddings, means and stds ``(m, S, E)`` (mutual information)."""

    clean: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor


class Direction(NamedTuple):
    """One direction's inputs (the arguments of :func:`sides`): queries ``(m, S, E)``, their
    own term or ``None``, components ``(n, S, E)`` and the effective bool masks."""

    queries: torch.Tensor
    own: Own | None
    clean: torch.Tensor
    means: torch.Tensor
    stds: torch.Tensor
    a: torch.Tensor  # (m, S)
    b: torch.Tensor  # (n, S)

    def positions(self, start: int, stop: int) -> Direction:
        """The direction restricted to positions ``[start, stop)``."""
        if start == 0 and stop == self.queries.shape[1]:
            return self
        cut = (slice(None), slice(start, stop))
        own = None if self.own is None else Own(*(t[cut] for t in self.own))
        return Direction(self.queries[cut], own, *(t[cut] for t in self[2:]))

    def components(self, start: int, stop: int, index: torch.Tensor | None = None) -> Direction:
        """The direction restricted to components ``[start, stop)``, or with an ``index`` to
        components ``index[start:stop]`` (gathered)."""
        if index is None and start == 0 and stop == self.clean.shape[0]:
            return self
        cut = slice(start, stop) if index is None else index[start:stop]
        rows = (self.clean[cut], self.means[cut], self.stds[cut])
        return Direction(self.queries, self.own, *rows, self.a, self.b[cut])


class Active(NamedTuple):
    """The rows of a direction's queries and of its components that have an active position,
    as indices (``None``: every row): the streaming blocks gather these, so padding rows (at
    token granularity, every padding token) take no part in any product."""

    queries: torch.Tensor | None
    components: torch.Tensor | None

    @staticmethod
    def of(d: Direction) -> Active:
        """The active rows of ``d`` (one host synchronisation per side); under
        ``torch.compile`` every row (no host synchronisation: the masks keep the rest out)."""
        if torch.compiler.is_compiling():
            return Active(None, None)
        return Active(active_rows(d.a), active_rows(d.b))

    def sizes(self, d: Direction) -> tuple[int, int]:
        """The numbers of active queries and components of ``d``."""
        m = d.queries.shape[0] if self.queries is None else len(self.queries)
        return m, d.clean.shape[0] if self.components is None else len(self.components)


def active_rows(mask: torch.Tensor) -> torch.Tensor | None:
    """The indices of the rows of ``mask`` ``(rows, S)`` with an active position, ``None`` when
    every row has one."""
    index = mask.any(1).nonzero().squeeze(1)
    return None if len(index) == mask.shape[0] else index


def directions(
    inputs: tuple[torch.Tensor, ...], spans: tuple[tuple[int, int, int, int], ...], with_own: bool
) -> list[Direction]:
    """The rows of each direction: queries ``[q0, q1)``, components ``[c0, c1)``; with an own
    term, rows ``[q0, q1)`` of the component tensors are the queries' own ``(x, mu, sigma)``.

    Each input is split once at every boundary (one gradient buffer per input in the backward
    pass, where slices would each allocate a full one)."""
    queries, clean, means, stds, query_mask, component_mask = inputs
    query_cuts = {q for span in spans for q in span[:2]}
    component_cuts = {c for span in spans for c in span[2:]} | (query_cuts if with_own else set())
    take_query = _splitter(queries, query_cuts)
    take_clean, take_means, take_stds = (_splitter(t, component_cuts) for t in (clean, means, stds))
    out: list[Direction] = []
    for q0, q1, c0, c1 in spans:
        a, b = effective_masks(query_mask[q0:q1], component_mask[c0:c1])
        own = Own(take_clean(q0, q1), take_means(q0, q1), take_stds(q0, q1)) if with_own else None
        comps = take_clean(c0, c1), take_means(c0, c1), take_stds(c0, c1)
        out.append(Direction(take_query(q0, q1), own, *comps, a, b))
    return out


def _splitter(tensor: torch.Tensor, cuts: set[int]) -> Callable[[int, int], torch.Tensor]:
    """``take(start, stop)``: rows ``[start, stop)`` of ``tensor``, split once at ``cuts`` (a piece
    itself where the rows are one)."""
    bounds = sorted(cuts | {0, tensor.shape[0]})
    pieces = (
        torch.split(tensor, [b - a for a, b in itertools.pairwise(bounds)])
        if len(bounds) > 2
        else (tensor,)
    )

    def take(start: int, stop: int) -> torch.Tensor:
        parts = [p for first, p in zip(bounds, pieces, strict=False) if start <= first < stop]
        if stop <= start or not parts:
            return tensor[start:stop]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return take
