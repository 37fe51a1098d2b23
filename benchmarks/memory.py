"""Peak memory of one call above what was allocated before it.

Three methods: ``profiler`` (CPU; the running sum of ``torch.profiler`` allocation events),
``cuda`` (``torch.cuda.max_memory_allocated``) and ``rss`` (the process resident-set
high-water mark, reset through ``/proc/self/clear_refs`` after ``malloc_trim``; it also counts
allocator fragmentation and library workspaces).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None, key
    return int(match.group(1)) * 1024


def _reset_high_water_mark() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def rss_method_available() -> bool:
    """Whether the process high-water mark can be reset (Linux ``clear_refs``)."""
    try:
        _reset_high_water_mark()
        _status_bytes("VmHWM")
    except (OSError, AssertionError):
        return False
    return True


def profiler_peak(prof: Any) -> int:
    """Highest running sum of the ``[memory]`` events of a finished ``torch.profiler`` run."""
    events = [
        (event.start_ns(), event.nbytes())
        for event in prof.profiler.kineto_results.events()
        if event.name() == "[memory]"
    ]
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


class MemoryMeter:
    """Peak memory of one call above what was allocated before it."""

    def __init__(self, device: torch.device, method: str) -> None:
        self.device = device
        if device.type == "cuda":
            method = "cuda"
        elif method == "auto":
            method = "profiler"
        if method == "rss" and not rss_method_available():
            raise RuntimeError(
                "--memory rss needs Linux /proc/self/clear_refs; use --memory profiler"
            )
        self.method = method

    def _settle(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        libc = _libc()
        if self.method == "rss" and libc:  # give freed heap pages back so that RSS is live memory
            libc.malloc_trim(0)

    @contextlib.contextmanager
    def measure(self, result: dict[str, int]) -> Iterator[None]:
        """Store the peak extra bytes of the ``with`` body in ``result["peak"]``."""
        self._settle()
        if self.method == "cuda":
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            result["peak"] = torch.cuda.max_memory_allocated(self.device) - base
        elif self.method == "rss":
            _reset_high_water_mark()
            base = _status_bytes("VmRSS")
            yield
            result["peak"] = max(_status_bytes("VmHWM") - base, 0)
        else:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                yield
            result["peak"] = profiler_peak(prof)


class FirstCallMeasured:
    """``step`` whose first call runs under ``meter`` (the timer's untimed warm-up call when
    given to :func:`benchmarks.timing.time_step`): its peak extra bytes land in ``peak_bytes``
    and, with ``keep``, its result in ``first``; later calls run ``step`` alone."""

    def __init__(self, step: Callable[[], Any], meter: MemoryMeter, keep: bool = False) -> None:
        self.step, self.meter, self.keep = step, meter, keep
        self.peak_bytes: int | None = None
        self.first: Any = None

    def __call__(self) -> Any:
        if self.peak_bytes is not None:
            return self.step()
        peak: dict[str, int] = {}
        with self.meter.measure(peak):
            result = self.step()
        self.peak_bytes = peak["peak"]
        if self.keep:
            self.first = result
        return result
