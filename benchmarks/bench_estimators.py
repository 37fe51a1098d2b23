"""Time and memory of ``mutual_information_sub_batch``: naive broadcast vs library vs matmul floor.

For every case of a grid (granularity, ``B``, ``S``, ``E``, input dtype, ``torch.compile`` on or
off) this script runs one forward + backward of the sub-batch mutual-information estimate with
gradients w.r.t. all four ``(B, S, E)`` inputs, three ways, in one process:

(a) **naive**: the straightforward broadcast of docs/math.md in
    ``benchmarks/naive.py``: it builds ``(M, N, S, E)`` differences
    (sequence granularity) or ``(M, N, E)`` differences between all active tokens (token
    granularity), masks, sums and takes a ``logsumexp``. Skipped where its estimated memory
    exceeds ``--naive-budget-gib``; the row says how much it would need.
(b) **library**: ``mi_losses.functional.mutual_information_sub_batch``.
(c) **floor**: the raw matrix products the library's kernel needs for the same shapes, timed
    alone in the kernel's compute dtype (float32 for half-precision inputs): the two
    ``(M, K) x (K, N)`` products of the expansion in docs/math.md#performance and the four
    products its backward needs, with
    ``K = S * E``, ``M = N = B / 2`` (sequence) or ``K = E``, ``M = N = B * S / 2`` (token).

Times come from ``torch.utils.benchmark.Timer(...).blocked_autorange(min_run_time=...)`` with
``--threads`` torch threads (default 1): a warm-up block, then timed blocks for
``--min-run-time`` seconds; the table gives the median block (``--statistic min``: the fastest,
the better estimate on a machine shared with other jobs; the CSV has both), and a
``benchmark.Compare`` table of all timings is printed at the end. Peak extra memory is the high-water mark of
tensor memory above what was allocated before the call (the inputs), gradients of the inputs
included, measured in the first (untimed) call: on CPU the running sum of the allocation and
free events of ``torch.profiler`` (``profile_memory=True``), the same quantity as
``torch.cuda.max_memory_allocated`` on CUDA; ``--memory rss`` uses the process resident set
instead (``VmHWM`` reset through ``/proc/self/clear_refs``, after ``malloc_trim``), which also
counts allocator fragmentation and library workspaces. Results go to ``results_<device>.md``
and ``.csv`` under ``--out``.

Run from the repository root::

    python benchmarks/bench_estimators.py --grid default --out benchmarks/results
    python benchmarks/bench_estimators.py --grid default --device cuda --out benchmarks/results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils import benchmark

if __package__ in (None, ""):  # run as `python benchmarks/bench_estimators.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.floor import floor_operands, floor_step
from benchmarks.grids import DTYPES, GRIDS, Case, grid_default, grid_tiny, make_inputs
from benchmarks.memory import MemoryMeter
from benchmarks.naive import naive_memory_estimate, naive_mutual_information_sub_batch
from benchmarks.report import (
    CSV_COLUMNS,
    GIB,
    MARKDOWN_COLUMNS,
    format_cell,
    machine_line,
    print_table,
    write_results,
)
from benchmarks.runner import run_case

__all__ = [
    "CSV_COLUMNS",
    "GRIDS",
    "MARKDOWN_COLUMNS",
    "Case",
    "floor_operands",
    "floor_step",
    "grid_default",
    "grid_tiny",
    "main",
    "make_inputs",
    "naive_memory_estimate",
    "naive_mutual_information_sub_batch",
    "parse_args",
    "select_cases",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=[*DTYPES, "autocast-bfloat16"],
        help="run every shape of the grid with these input dtypes instead of the grid's own",
    )
    parser.add_argument(
        "--compile",
        nargs="+",
        choices=["on", "off"],
        help="run every shape of the grid with torch.compile on and/or off, not the grid's own",
    )
    parser.add_argument(
        "--only", help="keep the cases whose label contains this, e.g. 'token B=8 S=1024'"
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=1.0,
        help="seconds of timed calls per method and case (Timer.blocked_autorange); at least "
        "one warm-up call and one timed call run",
    )
    parser.add_argument(
        "--naive-budget-gib", type=float, default=None, help="default: 12 (CPU), 60%% of GPU"
    )
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--memory", choices=["auto", "rss", "profiler"], default="auto")
    parser.add_argument(
        "--compile-timeout", type=float, default=600.0, help="seconds for the first compiled call"
    )
    parser.add_argument("--no-accuracy", dest="accuracy", action="store_false")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA (off by default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--statistic",
        choices=["median", "min"],
        default="median",
        help="time statistic of the table: the median block or the fastest (both are in the "
        "CSV); min resists a busy machine",
    )
    return parser.parse_args(argv)


def select_cases(args: argparse.Namespace, device: torch.device) -> list[Case]:
    cases = GRIDS[args.grid](device.type)
    if args.dtype or args.compile:
        shapes = list(dict.fromkeys((c.granularity, c.batch, c.seq, c.emb) for c in cases))
        dtypes = args.dtype or ["float32"]
        compiles = args.compile or ["off"]
        cases = []
        for shape in shapes:
            for dtype in dtypes:
                for compiled in compiles:
                    autocast = "bfloat16" if dtype == "autocast-bfloat16" else None
                    cases.append(
                        Case(
                            *shape,
                            dtype="float32" if autocast else dtype,
                            compile=compiled == "on",
                            autocast=autocast,
                        )
                    )
    if args.only:
        cases = [c for c in cases if args.only in f"{c.shape_label} {c.dtype_label}"]
    return cases


def _naive_budget_gib(device: torch.device) -> float:
    """Default memory budget of the naive broadcast: 60 % of the GPU, 12 GiB on CPU."""
    if device.type == "cuda":
        return 0.6 * torch.cuda.get_device_properties(device).total_memory / GIB
    return 12.0


def _summary(row: dict[str, Any]) -> str:
    cells = (
        f"{key}={format_cell(row[key], kind)}"
        for _, key, kind in MARKDOWN_COLUMNS[6:]
        if row.get(key) not in (None, "")
    )
    return ", ".join(cells)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the selected cases, print the table and write ``results_<device>.{md,csv}``."""
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    if args.naive_budget_gib is None:
        args.naive_budget_gib = _naive_budget_gib(device)
    meter = MemoryMeter(device, args.memory)
    machine = machine_line(device)
    command = "python benchmarks/bench_estimators.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(machine, file=sys.stderr)
    rows: list[dict[str, Any]] = []
    for case in select_cases(args, device):
        start = time.perf_counter()
        label = f"{case.shape_label} {case.dtype_label} compile={case.compile}"
        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
        rows.append(run_case(case, args, device, meter))
        elapsed = time.perf_counter() - start
        print(f"[bench]   {_summary(rows[-1])} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        # write after every case so that an interrupted run leaves what it measured
        write_results(rows, args.out, device, machine, command, meter.method, args.statistic)
    print_table(rows, machine)
    benchmark.Compare([timing for row in rows for timing in row["timings"]]).print()
    csv_path, md_path = write_results(
        rows, args.out, device, machine, command, meter.method, args.statistic
    )
    print(f"wrote {md_path} and {csv_path}")
    return rows


if __name__ == "__main__":
    main()
