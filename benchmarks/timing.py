"""Warm-up, one memory run and timed repeats of one step (times are never asserted on)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from benchmarks.memory import MemoryMeter


class CompileTimeout(Exception):
    """Raised by the alarm when compiling takes longer than allowed."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`CompileTimeout` in the ``with`` body after ``seconds`` (0: no limit)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise CompileTimeout(f"took longer than {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class Measurement:
    """What one method measured on one case (``None`` where it did not run)."""

    seconds: float | None = None  # median over the timed calls (min with --statistic min)
    median_seconds: float | None = None
    min_seconds: float | None = None
    peak_bytes: int | None = None  # of the one memory run
    runs: int = 0
    value: float | None = None
    grads: list[torch.Tensor] | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class Budget:
    """How often to call a step: warm-up calls, timed repeats and the time they may take."""

    warmup: int
    repeats: int
    target_seconds: float
    first_call_limit: float = 0.0  # torch.compile: seconds allowed for the compiling call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _warm_up(
    step: Callable[[], Any], device: torch.device, budget: Budget, cleanup: Callable[[], None]
) -> None:
    """Untimed calls; with a compile limit the first one compiles and is never measured."""
    compiling = budget.first_call_limit > 0
    calls = max(budget.warmup, 1) if compiling else max(budget.warmup - 1, 0)
    for index in range(calls):
        cleanup()
        _sync(device)
        with time_limit(budget.first_call_limit if index == 0 else 0.0):
            step()
        _sync(device)


def _timed_calls(
    step: Callable[[], Any], device: torch.device, repeats: int, cleanup: Callable[[], None]
) -> tuple[list[float], Any]:
    times: list[float] = []
    result = None
    for _ in range(repeats):
        cleanup()
        gc.collect()
        _sync(device)
        start = time.perf_counter()
        result = step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times, result


def measure(
    step: Callable[[], Any],
    device: torch.device,
    meter: MemoryMeter,
    budget: Budget,
    cleanup: Callable[[], None],
) -> Measurement:
    """Warm up, measure the peak memory of one call, then time up to ``budget.repeats`` calls.

    The memory run counts as the first warm-up call (except with ``first_call_limit``, i.e. for
    ``torch.compile``, whose first call compiles and is never measured). Timed calls are not
    profiled; fewer of them run when they would take longer than ``target_seconds``.
    """
    _warm_up(step, device, budget, cleanup)
    cleanup()
    memory: dict[str, int] = {}
    start = time.perf_counter()
    with meter.measure(memory):
        step()
    _sync(device)
    untimed = time.perf_counter() - start
    repeats = budget.repeats
    if untimed * repeats > budget.target_seconds:
        repeats = max(1, min(repeats, round(budget.target_seconds / max(untimed, 1e-9))))
    times, result = _timed_calls(step, device, repeats, cleanup)
    out = Measurement(peak_bytes=memory["peak"], runs=len(times))
    out.seconds = out.median_seconds = statistics.median(times)
    out.min_seconds = min(times)
    if isinstance(result, torch.Tensor):
        out.value = float(result.detach().double())
    return out
