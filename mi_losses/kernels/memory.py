"""Fresh pages on the CPU: how large temporaries are sized and gradient buffers allocated.

glibc's malloc serves a request of :data:`FRESH_BYTES` or more (its largest mmap threshold on
64-bit) with fresh pages, and each first touch of a 4 KiB page is a page fault. The paths keep
their temporaries below that size (:func:`below_fresh`), where the allocator reuses memory; the
input gradients they return are whole tensors, allocated by :func:`zeros` on huge pages."""

from __future__ import annotations

import ctypes
import math
import mmap
from typing import Any

import torch

from mi_losses.kernels.directions import aligned

# Token B8 S2048 E256 with a 1 GiB budget took 7.0 s with 64 MiB blocks, 4.1 s with them
# capped below this (though it then kept its scores).
FRESH_BYTES = 1 << 25

HUGE_PAGE_BYTES = 1 << 21
# A tensor this large holds at least one whole 2 MiB page, wherever it starts.
ADVISED_BYTES = 2 * HUGE_PAGE_BYTES
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)  # Linux only
_LIBC: list[Any] = []  # loaded at the first advice


def below_fresh(columns: int, rows: int, itemsize: int, device: torch.device) -> int:
    """At most ``columns``, and on the CPU few enough that a ``(rows, columns)`` matrix stays
    below :data:`FRESH_BYTES` (a multiple of
    :data:`~mi_losses.kernels.directions.ALIGN_ROWS` when that cuts it)."""
    if device.type != "cpu" or rows == 0:
        return columns
    return aligned(min(columns, max(1, (FRESH_BYTES - 1) // (rows * itemsize))), columns)


def zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.zeros(shape)``. On a Linux CPU a tensor of :data:`ADVISED_BYTES` or more is
    first advised to transparent huge pages (``madvise(MADV_HUGEPAGE)`` on the whole 2 MiB
    pages inside it), so that zeroing fresh pages takes a page fault per 2 MiB instead of one
    per 4 KiB: the three 64 MiB gradients of sequence B32 S512 E1024 took 66 ms of faults per
    call. Below :data:`FRESH_BYTES` glibc serves a request from fresh pages or from memory the
    process already touched, depending on what it freed before (sequence B64 S128 E768's
    24 MiB gradients took 11,500 faults per call in one process and 2,200 in another); advised,
    neither faults much. The advice is a hint; where the system does not take it
    (``transparent_hugepage`` set to ``never``), the pages are ordinary ones."""
    size = math.prod(shape) * dtype.itemsize
    if (
        device.type != "cpu" or size < ADVISED_BYTES or _MADV_HUGEPAGE is None
        or torch.compiler.is_compiling()  # no addresses while tracing
    ):  # fmt: skip
        return torch.zeros(shape, dtype=dtype, device=device)
    t = torch.empty(shape, dtype=dtype, device=device)
    start = -(-t.data_ptr() // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    stop = (t.data_ptr() + size) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if stop > start:
        if not _LIBC:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        _LIBC[0].madvise(ctypes.c_void_p(start), ctypes.c_size_t(stop - start), _MADV_HUGEPAGE)
    return t.zero_()
