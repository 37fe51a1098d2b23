"""Times of one step with ``torch.utils.benchmark`` (times are never asserted on).

:func:`time_step` wraps ``Timer(...).blocked_autorange``: the timer's first block is the
warm-up, it sets the torch threads (``num_threads``) for the timed calls only, and on CUDA it
synchronises before reading the clock. A ``Measurement`` holds the time per call of every timed
block (``.times``, ``.median``, ``.mean``); :func:`fastest` is the statistic that resists a
busy machine. :func:`time_limit` bounds the compiling call of ``torch.compile``, made before
timing starts.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils import benchmark


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


def time_step(
    step: Callable[[], Any],
    *,
    min_run_time: float,
    num_threads: int = 1,
    label: str = "",
    sub_label: str = "",
    description: str = "",
) -> benchmark.Measurement:
    """Time ``step()`` with ``Timer.blocked_autorange(min_run_time=...)``.

    At least two calls: one that sizes the blocks (and warms up), then timed blocks until
    ``min_run_time`` seconds have passed (at least one). ``label``, ``sub_label`` and
    ``description`` place the measurement in a ``benchmark.Compare`` table (table, row, column).
    """
    timer = benchmark.Timer(
        stmt="step()",
        globals={"step": step},
        label=label,
        sub_label=sub_label,
        description=description,
        num_threads=num_threads,
    )
    return timer.blocked_autorange(min_run_time=min_run_time)


def fastest(measurement: benchmark.Measurement) -> float:
    """Seconds per call of the fastest timed block."""
    return min(measurement.times)


def calls(measurement: benchmark.Measurement) -> int:
    """Number of timed calls behind ``measurement``."""
    return len(measurement.raw_times) * measurement.number_per_run


def rebuilt(
    raw_times: list[float],
    number_per_run: int,
    *,
    label: str,
    sub_label: str,
    description: str,
    num_threads: int,
) -> benchmark.Measurement:
    """A measurement made in another process, from its blocks' times and calls per block."""
    spec = benchmark.TaskSpec(
        stmt="step()",
        setup="pass",
        label=label,
        sub_label=sub_label,
        description=description,
        num_threads=num_threads,
    )
    return benchmark.Measurement(
        number_per_run=number_per_run, raw_times=list(raw_times), task_spec=spec
    )


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
