"""Out-of-place and in-place accumulation of row blocks for the streaming kernel."""

from __future__ import annotations

import itertools

import torch


def is_wrapped(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.func`` wrapper (in-place updates would not be traced)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(tensor))


class Accumulator:
    """Sum of blocks of rows (and of positions, dimension 1) into a tensor shaped like
    ``like``: in place, or out of place when a graph is being built or under ``torch.func``
    (then only whole positions; blocks of equal rows are summed first and laid out with one
    ``cat`` per layer of non-overlapping blocks)."""

    def __init__(self, like: torch.Tensor, dtype: torch.dtype, functional: bool) -> None:
        self.shape, self.dtype, self.device = like.shape, dtype, like.device
        self.functional = functional
        self.pieces: dict[tuple[int, int], torch.Tensor] = {}
        # In place: elements are copied where first written and added to afterwards (no
        # zeroing pass). ``written`` maps a range of positions (the same partition for every
        # call) to the sorted, disjoint row ranges written there so far.
        self.buffer = None if functional else like.new_empty(like.shape, dtype=dtype)
        self.written: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def add(
        self, start: int, piece: torch.Tensor, positions: tuple[int, int] | None = None
    ) -> None:
        stop = start + piece.shape[0]
        if self.buffer is not None:
            positions = positions or (0, self.shape[1])
            columns = slice(*positions)
            written = self.written.get(positions, [])
            # Split at the ends of the written ranges: copy into new rows, add into written ones.
            inner = {x for r in written for x in r if start < x < stop}
            cuts = sorted({start, stop} | inner)
            for low, high in itertools.pairwise(cuts):
                target = self.buffer[low:high, columns]
                source = piece[low - start : high - start]
                if any(begin <= low and high <= end for begin, end in written):
                    target.add_(source)
                else:
                    target.copy_(source)
            self.written[positions] = _union(written, (start, stop))
        elif positions is not None and positions != (0, self.shape[1]):
            raise AssertionError("out-of-place accumulation takes whole positions only")
        elif (start, stop) in self.pieces:
            self.pieces[(start, stop)] = self.pieces[(start, stop)] + piece
        else:
            self.pieces[(start, stop)] = piece

    def result(self) -> torch.Tensor:
        if self.buffer is not None:
            keys = sorted(self.written)
            covered = [(0, 0), *keys, (self.shape[1], self.shape[1])]
            for (_, end), (begin, _) in itertools.pairwise(covered):
                self.buffer[:, end:begin].zero_()  # positions no block wrote
            for key in keys:
                row = 0
                for begin, end in [*self.written[key], (self.shape[0], self.shape[0])]:
                    self.buffer[row:begin, key[0] : key[1]].zero_()
                    row = end
            return self.buffer
        layers: list[list[tuple[int, int, torch.Tensor]]] = []
        for start, stop in sorted(self.pieces):
            piece = self.pieces[(start, stop)]
            for layer in layers:
                if layer[-1][1] <= start:
                    layer.append((start, stop, piece))
                    break
            else:
                layers.append([(start, stop, piece)])
        total = None
        for layer in layers:
            parts, position = [], 0
            for start, stop, piece in layer:
                if start > position:
                    parts.append(self._zeros(start - position))
                parts.append(piece)
                position = stop
            if position < self.shape[0]:
                parts.append(self._zeros(self.shape[0] - position))
            full = torch.cat(parts)
            total = full if total is None else total + full
        return total if total is not None else self._zeros(self.shape[0])

    def _zeros(self, rows: int) -> torch.Tensor:
        return torch.zeros((rows, *self.shape[1:]), dtype=self.dtype, device=self.device)


def put(target: torch.Tensor, rows: slice, value: torch.Tensor) -> torch.Tensor:
    """``target`` with ``target[rows] = value``, out of place (safe under ``vmap``)."""
    if rows.start == 0 and rows.stop == target.shape[0]:
        return value
    return torch.cat([target[: rows.start], value, target[rows.stop :]])


def _union(ranges: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """Sorted disjoint ranges covering ``ranges`` and ``new`` (touching ranges merged)."""
    merged: list[tuple[int, int]] = []
    for begin, end in sorted([*ranges, new]):
        if end <= begin:
            continue
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    return merged
