"""One case measured three ways in one process: naive broadcast, library, matmul floor."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import benchmark

from benchmarks.floor import floor_operands, floor_step
from benchmarks.grids import DTYPES, Case, active_counts, make_inputs
from benchmarks.memory import FirstCallMeasured, MemoryMeter
from benchmarks.naive import naive_memory_estimate, naive_mutual_information_sub_batch
from benchmarks.timing import calls, fastest, synchronize, time_limit, time_step
from mi_losses.functional import mutual_information_sub_batch

GIB = 2**30
MIB = 2**20

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Measured:
    """What one method measured on one case (``None`` where it did not run)."""

    timing: benchmark.Measurement | None = None
    peak_bytes: int | None = None  # of the first (untimed) call
    value: float | None = None
    grads: list[torch.Tensor] | None = None
    note: str = ""

    def seconds(self, statistic: str) -> float | None:
        """Seconds per call: the median block or the fastest (``statistic="min"``)."""
        if self.timing is None:
            return None
        return fastest(self.timing) if statistic == "min" else self.timing.median


def _fmt_gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB"


def _relative(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / max(abs(b), 1e-30)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / MIB


def _grad_difference(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    worst = 0.0
    for grad, ref in zip(grads, reference, strict=True):
        ref64 = ref.double()
        scale = max(float(ref64.norm()), 1e-30)
        worst = max(worst, float((grad.double() - ref64).norm()) / scale)
    return worst


_REFERENCE_CACHE: dict[tuple[Any, ...], float] = {}


def reference_value(case: Case, inputs: Inputs) -> float:
    """The library's float64 evaluation on the same inputs (cached per shape and input dtype)."""
    key = (case.granularity, case.batch, case.seq, case.emb, case.dtype)
    if key not in _REFERENCE_CACHE:
        means, stds, mask, clean, noisy = (t.detach() for t in inputs)
        with torch.no_grad():
            value = mutual_information_sub_batch(
                means.double(),
                stds.double(),
                mask,
                clean.double(),
                noisy.double(),
                granularity=case.granularity,
            )
        _REFERENCE_CACHE[key] = float(value)
    return _REFERENCE_CACHE[key]


def _autocast(case: Case, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if case.autocast:
        return torch.autocast(device.type, dtype=DTYPES[case.autocast])
    return contextlib.nullcontext()


Step = Callable[[], Any]


def _step(
    estimator: Callable[..., torch.Tensor], case: Case, inputs: Inputs, device: torch.device
) -> Step:
    """Forward + backward of ``estimator`` on ``inputs``: ``(value, gradients of the four
    leaves)``, through ``torch.autograd.grad`` (nothing accumulates between calls)."""

    def step() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with _autocast(case, device):
            value = estimator(*inputs, granularity=case.granularity)
        return value, torch.autograd.grad(value, _leaves(inputs))

    return step


def measure(
    step: Step,
    meter: MemoryMeter,
    args: argparse.Namespace,
    case: Case,
    method: str,
    first_call_limit: float = 0.0,
) -> Measured:
    """``Timer.blocked_autorange`` for ``--min-run-time``; its first (untimed) call measures
    the peak memory. With ``first_call_limit`` (``torch.compile``) a compiling call comes first."""
    if first_call_limit > 0:
        with time_limit(first_call_limit):
            step()
        synchronize(meter.device)
    measured_step = FirstCallMeasured(step, meter, keep=True)
    timing = time_step(
        measured_step,
        min_run_time=args.min_run_time,
        num_threads=torch.get_num_threads(),
        label="mutual_information_sub_batch forward + backward",
        sub_label=f"{case.shape_label} {case.dtype_label}" + (" compiled" if case.compile else ""),
        description=method,
    )
    out = Measured(timing=timing, peak_bytes=measured_step.peak_bytes)
    result = measured_step.first
    if isinstance(result, tuple) and isinstance(result[0], torch.Tensor):
        out.value = float(result[0].detach().double())
        out.grads = [grad.detach().clone() for grad in result[1]]
    return out


def measure_library(
    case: Case, inputs: Inputs, args: argparse.Namespace, meter: MemoryMeter
) -> Measured:
    """The library; a failed ``torch.compile`` is reported in the note instead of raised."""
    estimator: Callable[..., torch.Tensor] = mutual_information_sub_batch
    if case.compile:
        torch._dynamo.reset()
        estimator = torch.compile(mutual_information_sub_batch)
    limit = args.compile_timeout if case.compile else 0.0
    try:
        return measure(
            _step(estimator, case, inputs, meter.device), meter, args, case, "library", limit
        )
    except Exception as error:
        if not case.compile:
            raise
        torch._dynamo.reset()
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        return Measured(note=f"compile failed: {reason}")


def measure_naive(
    case: Case, inputs: Inputs, args: argparse.Namespace, meter: MemoryMeter
) -> Measured:
    """The naive broadcast, unless it would need more than ``--naive-budget-gib``."""
    m, n = active_counts(case, inputs[2])
    needed = naive_memory_estimate(case, m, n)
    if args.skip_naive:
        return Measured(note="naive skipped (--skip-naive)")
    if needed > args.naive_budget_gib * GIB:
        budget = f"budget {args.naive_budget_gib:g} GiB"
        return Measured(note=f"naive skipped: would need {_fmt_gib(needed)} ({budget})")
    step = _step(naive_mutual_information_sub_batch, case, inputs, meter.device)
    return measure(step, meter, args, case, "naive")


def measure_floor(case: Case, args: argparse.Namespace, meter: MemoryMeter) -> Measured:
    """The six matrix products of the kernel alone, in its compute dtype."""
    operands = floor_operands(case, meter.device)
    return measure(functools.partial(floor_step, operands), meter, args, case, "floor")


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    means, stds, _, clean, noisy = inputs
    return [means, stds, clean, noisy]


def _comparisons(
    naive: Measured, library: Measured, floor: Measured, reference: float | None, statistic: str
) -> dict[str, Any]:
    """Ratios of times (``statistic`` of each) and memory, and the accuracy columns."""
    grads_diff = None
    if library.grads is not None and naive.grads is not None:
        grads_diff = _grad_difference(library.grads, naive.grads)
    naive_s, library_s = naive.seconds(statistic), library.seconds(statistic)
    return {
        "naive_over_library_time": _ratio(naive_s, library_s),
        "naive_over_library_mem": _ratio(naive.peak_bytes, library.peak_bytes),
        "library_over_floor_time": _ratio(library_s, floor.seconds(statistic)),
        "library_over_floor_mem": _ratio(library.peak_bytes, floor.peak_bytes),
        "library_value": library.value,
        "float64_value": reference,
        "library_rel_err": _relative(library.value, reference),
        "naive_value": naive.value,
        "naive_vs_library_rel_diff": _relative(naive.value, library.value),
        "naive_vs_library_grad_rel_diff": grads_diff,
    }


def _measured(
    naive: Measured, library: Measured, floor: Measured, statistic: str
) -> dict[str, Any]:
    """Times (the table's statistic, medians and minima), peaks and call counts per method."""
    row: dict[str, Any] = {}
    methods = (("naive", naive), ("library", library), ("floor", floor))
    for name, measured in methods:
        row[f"{name}_s"] = measured.seconds(statistic)
        row[f"{name}_peak_mib"] = _mib(measured.peak_bytes)
        row[f"{name}_median_s"] = measured.seconds("median")
        row[f"{name}_min_s"] = measured.seconds("min")
    row["runs"] = "/".join(str(calls(m.timing) if m.timing else 0) for _, m in methods)
    return row


def run_case(
    case: Case, args: argparse.Namespace, device: torch.device, meter: MemoryMeter
) -> dict[str, Any]:
    """Measure naive, library and floor for ``case``; one row of the table."""
    inputs = make_inputs(case, device, seed=args.seed)
    m, n = active_counts(case, inputs[2])
    library = measure_library(case, inputs, args, meter)
    naive = measure_naive(case, inputs, args, meter)
    floor = measure_floor(case, args, meter)
    reference = reference_value(case, inputs) if args.accuracy else None
    input_bytes = inputs[0].numel() * inputs[0].element_size()
    return {
        "device": device.type,
        "granularity": case.granularity,
        **{"B": case.batch, "S": case.seq, "E": case.emb, "M": m, "N": n},
        "dtype": case.dtype_label,
        "compile": "on" if case.compile else "off",
        **_measured(naive, library, floor, args.statistic),
        **_comparisons(naive, library, floor, reference, args.statistic),
        # the library's peak in units of one float32 (M, N) matrix and of one (B, S, E) input
        "library_peak_over_mn": _ratio(library.peak_bytes, 4 * m * n),
        "library_peak_over_input": _ratio(library.peak_bytes, input_bytes),
        "naive_estimated_gib": naive_memory_estimate(case, m, n) / GIB,
        "note": "; ".join(note for note in (library.note, naive.note) if note),
        # for a torch.utils.benchmark.Compare table (not a CSV column)
        "timings": [m.timing for m in (naive, library, floor) if m.timing is not None],
    }
