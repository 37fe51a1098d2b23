"""One case measured three ways in one process: naive broadcast, library, matmul floor."""

from __future__ import annotations

import argparse
import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.floor import floor_operands, floor_step
from benchmarks.grids import DTYPES, Case, active_counts, make_inputs
from benchmarks.memory import MemoryMeter
from benchmarks.naive import naive_memory_estimate, naive_mutual_information_sub_batch
from benchmarks.timing import Budget, Measurement, measure
from mi_losses.functional import mutual_information_sub_batch

GIB = 2**30
MIB = 2**20

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


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


def _budget(args: argparse.Namespace, first_call_limit: float = 0.0) -> Budget:
    return Budget(args.warmup, args.repeats, args.target_seconds, first_call_limit)


def _autocast(case: Case, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    if case.autocast:
        return torch.autocast(device.type, dtype=DTYPES[case.autocast])
    return contextlib.nullcontext()


def _step(
    estimator: Callable[..., torch.Tensor], case: Case, inputs: Inputs, device: torch.device
) -> Callable[[], torch.Tensor]:
    """Forward + backward of ``estimator`` on ``inputs``; returns the value."""

    def step() -> torch.Tensor:
        with _autocast(case, device):
            value = estimator(*inputs, granularity=case.granularity)
        value.backward()
        return value

    return step


def measure_library(
    case: Case,
    inputs: Inputs,
    args: argparse.Namespace,
    meter: MemoryMeter,
    cleanup: Callable[[], None],
) -> Measurement:
    """The library; a failed ``torch.compile`` is reported in the note instead of raised."""
    estimator: Callable[..., torch.Tensor] = mutual_information_sub_batch
    if case.compile:
        torch._dynamo.reset()
        estimator = torch.compile(mutual_information_sub_batch)
    limit = args.compile_timeout if case.compile else 0.0
    try:
        library = measure(
            _step(estimator, case, inputs, meter.device),
            meter.device,
            meter,
            _budget(args, limit),
            cleanup,
        )
    except Exception as error:
        if not case.compile:
            raise
        torch._dynamo.reset()
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        return Measurement(note=f"compile failed: {reason}")
    library.grads = [_grad(t) for t in _leaves(inputs)]
    return library


def measure_naive(
    case: Case,
    inputs: Inputs,
    args: argparse.Namespace,
    meter: MemoryMeter,
    cleanup: Callable[[], None],
) -> Measurement:
    """The naive broadcast, unless it would need more than ``--naive-budget-gib``."""
    m, n = active_counts(case, inputs[2])
    needed = naive_memory_estimate(case, m, n)
    if args.skip_naive:
        return Measurement(note="naive skipped (--skip-naive)")
    if needed > args.naive_budget_gib * GIB:
        budget = f"budget {args.naive_budget_gib:g} GiB"
        return Measurement(note=f"naive skipped: would need {_fmt_gib(needed)} ({budget})")
    step = _step(naive_mutual_information_sub_batch, case, inputs, meter.device)
    naive = measure(step, meter.device, meter, _budget(args), cleanup)
    naive.grads = [_grad(t) for t in _leaves(inputs)]
    return naive


def measure_floor(case: Case, args: argparse.Namespace, meter: MemoryMeter) -> Measurement:
    """The six matrix products of the kernel alone, in its compute dtype."""
    operands = floor_operands(case, meter.device)
    step = functools.partial(floor_step, operands)
    return measure(step, meter.device, meter, _budget(args), cleanup=lambda: None)


def _leaves(inputs: Inputs) -> list[torch.Tensor]:
    means, stds, _, clean, noisy = inputs
    return [means, stds, clean, noisy]


def _grad(leaf: torch.Tensor) -> torch.Tensor:
    assert leaf.grad is not None
    return leaf.grad.detach().clone()


def _comparisons(
    naive: Measurement, library: Measurement, floor: Measurement, reference: float | None
) -> dict[str, Any]:
    """Ratios of times and memory, and the accuracy columns."""
    grads_diff = None
    if library.grads is not None and naive.grads is not None:
        grads_diff = _grad_difference(library.grads, naive.grads)
    return {
        "naive_over_library_time": _ratio(naive.seconds, library.seconds),
        "naive_over_library_mem": _ratio(naive.peak_bytes, library.peak_bytes),
        "library_over_floor_time": _ratio(library.seconds, floor.seconds),
        "library_over_floor_mem": _ratio(library.peak_bytes, floor.peak_bytes),
        "library_value": library.value,
        "float64_value": reference,
        "library_rel_err": _relative(library.value, reference),
        "naive_value": naive.value,
        "naive_vs_library_rel_diff": _relative(naive.value, library.value),
        "naive_vs_library_grad_rel_diff": grads_diff,
    }


def _measured(naive: Measurement, library: Measurement, floor: Measurement) -> dict[str, Any]:
    """Times (the table's statistic, medians and minima), peaks and call counts per method."""
    row: dict[str, Any] = {}
    for name, measured in (("naive", naive), ("library", library), ("floor", floor)):
        row[f"{name}_s"] = measured.seconds
        row[f"{name}_peak_mib"] = _mib(measured.peak_bytes)
        row[f"{name}_median_s"] = measured.median_seconds
        row[f"{name}_min_s"] = measured.min_seconds
    row["runs"] = f"{naive.runs}/{library.runs}/{floor.runs}"
    return row


def run_case(
    case: Case, args: argparse.Namespace, device: torch.device, meter: MemoryMeter
) -> dict[str, Any]:
    """Measure naive, library and floor for ``case``; one row of the table."""
    inputs = make_inputs(case, device, seed=args.seed)
    m, n = active_counts(case, inputs[2])

    def cleanup() -> None:
        for leaf in _leaves(inputs):
            leaf.grad = None

    library = measure_library(case, inputs, args, meter, cleanup)
    cleanup()
    naive = measure_naive(case, inputs, args, meter, cleanup)
    cleanup()
    floor = measure_floor(case, args, meter)
    if args.statistic == "min":  # the table's times and ratios use the fastest timed call
        for measured in (naive, library, floor):
            measured.seconds = measured.min_seconds
    reference = reference_value(case, inputs) if args.accuracy else None
    input_bytes = inputs[0].numel() * inputs[0].element_size()
    return {
        "device": device.type,
        "granularity": case.granularity,
        **{"B": case.batch, "S": case.seq, "E": case.emb, "M": m, "N": n},
        "dtype": case.dtype_label,
        "compile": "on" if case.compile else "off",
        **_measured(naive, library, floor),
        **_comparisons(naive, library, floor, reference),
        # the library's peak in units of one float32 (M, N) matrix and of one (B, S, E) input
        "library_peak_over_mn": _ratio(library.peak_bytes, 4 * m * n),
        "library_peak_over_input": _ratio(library.peak_bytes, input_bytes),
        "naive_estimated_gib": naive_memory_estimate(case, m, n) / GIB,
        "note": "; ".join(note for note in (library.note, naive.note) if note),
    }
