"""``KernelOptions(compiled_factors=True)`` against the default eager factors, in one process.

For each shape it runs one forward + backward of ``mutual_information_sub_batch``
(``torch.autograd.grad`` to all four inputs; the padded inputs of
``benchmarks.grids.make_inputs``) with the eager factors and with the compiled ones, and the
matrix-product floor of ``benchmarks/floor.py``. The first compiled call (compiling included)
is timed alone; then the calls of the three are taken in turn, each turn starting one later
(a busy neighbour falls on all three alike), with ``torch.utils.benchmark.Timer`` (one thread
by default). It prints the median seconds (the fastest in brackets), the compiled path over
the eager one and over the floor, the extra peak memory of a warm call of each
(``torch.profiler`` allocations), and the largest relative difference of the gradients::

    OMP_NUM_THREADS=1 python benchmarks/compiled_factors.py --shapes sequence,32,512,1024
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

if __package__ in (None, ""):  # run as `python benchmarks/compiled_factors.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.floor import floor_operands, floor_step
from benchmarks.grids import Case, make_inputs
from benchmarks.memory import MemoryMeter
from mi_losses.functional import mutual_information_sub_batch
from mi_losses.options import KernelOptions

MIB = 2**20
STEPS = ("eager", "compiled", "floor")


def _steps(case: Case) -> dict[str, Callable[[], Any]]:
    inputs = make_inputs(case, torch.device("cpu"))
    leaves = [inputs[0], inputs[1], inputs[3], inputs[4]]

    def step(options: KernelOptions) -> Callable[[], Any]:
        def call() -> tuple[torch.Tensor, ...]:
            value = mutual_information_sub_batch(
                *inputs, granularity=case.granularity, kernel=options
            )
            return torch.autograd.grad(value, leaves)

        return call

    operands = floor_operands(case, torch.device("cpu"))
    return {
        "eager": step(KernelOptions()),
        "compiled": step(KernelOptions(compiled_factors=True)),
        "floor": lambda: floor_step(operands),
    }


def measure(case: Case, calls: int, threads: int) -> dict[str, Any]:
    """Seconds per call of the three steps (``calls`` each, interleaved), the first compiled
    call, extra peak MiB of a warm call of the library's steps, the gradients' difference."""
    torch.set_num_threads(threads)
    steps = _steps(case)
    start = time.perf_counter()
    compiled = steps["compiled"]()
    first = time.perf_counter() - start
    eager = steps["eager"]()
    difference = max(
        float((c - e).abs().max() / e.abs().max().clamp_min(1e-30))
        for c, e in zip(compiled, eager, strict=True)
    )
    meter, peak = MemoryMeter(torch.device("cpu"), "profiler"), {}
    for name in STEPS[:2]:
        result: dict[str, int] = {}
        with meter.measure(result):
            steps[name]()
        peak[name] = result["peak"] / MIB
    timers = {
        name: Timer("f()", globals={"f": f}, num_threads=threads) for name, f in steps.items()
    }
    times: dict[str, list[float]] = {name: [] for name in STEPS}
    for turn in range(calls):
        for name in STEPS[turn % 3 :] + STEPS[: turn % 3]:
            times[name].append(timers[name].timeit(1).mean)
    return {"times": times, "first": first, "peak_mib": peak, "difference": difference}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["sequence,32,512,1024", "token,8,256,768"])
    parser.add_argument("--calls", type=int, default=10, help="timed calls of each step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(
        "| shape | eager s | compiled s | first compiled call s | floor s | compiled / eager "
        "| compiled / floor | extra peak MiB eager, compiled | max rel. grad diff |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    records = []
    for shape in args.shapes:
        granularity, batch, seq, emb = shape.split(",")
        case = Case(granularity, int(batch), int(seq), int(emb))
        record = measure(case, args.calls, args.threads)
        median = {name: statistics.median(t) for name, t in record["times"].items()}
        low = {name: min(t) for name, t in record["times"].items()}
        print(
            f"| {case.shape_label} | {median['eager']:.4g} ({low['eager']:.4g}) "
            f"| {median['compiled']:.4g} ({low['compiled']:.4g}) | {record['first']:.3g} "
            f"| {median['floor']:.4g} | {median['compiled'] / median['eager']:.2f}x "
            f"| {median['compiled'] / median['floor']:.2f}x "
            f"| {record['peak_mib']['eager']:.0f}, {record['peak_mib']['compiled']:.0f} "
            f"| {record['difference']:.1e} |",
            flush=True,
        )
        records.append({"shape": shape, **record})
    return records


if __name__ == "__main__":
    main()
