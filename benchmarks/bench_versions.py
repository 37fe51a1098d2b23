"""Several checkouts of ``mi_losses`` side by side, each against the GEMM floor of its process.

For every shape this script runs one forward + backward of ``mutual_information_sub_batch``
(``torch.autograd.grad`` to all four ``(B, S, E)`` inputs; the padded inputs of
``benchmarks.grids.make_inputs``) with the package of every ``--checkouts NAME=DIR``, each in
its own subprocess (two copies of a package cannot share one). A subprocess times the library
and the matrix-product floor of ``benchmarks/floor.py`` (two forward and 2x2 backward products
of the shape) with ``torch.utils.benchmark.Timer.blocked_autorange`` (at least one untimed and
one timed call each; one torch thread by default); the timer's untimed first call of the
library measures its extra peak memory (``torch.profiler`` allocations above the inputs, input
gradients included). The
subprocesses of a shape run one after the other, ``--rounds`` times, each round starting one
checkout later (a position in the order can cost several percent); the table keeps each
checkout's round with the fastest median and gives its time over its own floor, and time and
memory over the first checkout's (the baseline). Every subprocess's result is appended to
``--json`` as it comes, and ``--load`` prints the tables of saved results (several runs
merged). ``--interleave CALLS`` keeps one process per checkout alive instead and takes their
calls in turn (each turn starting one checkout later), so that a busy neighbour or a slow
stretch of the machine falls on every checkout alike: between subprocesses of the same code
the token rows varied by 10-17 %. A shape may name a fifth field, the block budget in MiB
(``KernelOptions(max_block_bytes=...)``; default the library's). Run from the repository root,
e.g. against the commit before a change::

    git worktree add --detach ../baseline <commit>
    python benchmarks/bench_versions.py --checkouts base=../baseline new=. --rounds 2
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
PARTS = ("library", "floor")
# glibc's malloc (mallopt(3)): every request below 4 GiB from the heap, and freed memory kept
# there up to 16 GiB, so that a call's large tensors reuse the pages of the call before.
REUSE_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(16 << 30)}

SMALL_SHAPES = [
    "sequence,16,64,256",
    "sequence,128,128,768",
    "token,4,64,256",
    "token,8,128,768",
    "token,8,256,768",
]
# the rows of issue 25, whose extra peak memory it compares
ISSUE_SHAPES = [
    "token,8,1024,4096",
    "token,16,2048,1024",
    "sequence,32,512,1024",
    "sequence,64,128,768",
]


def _import_checkout(library: Path) -> Any:
    """This repository's ``benchmarks`` and the ``mi_losses`` under ``library`` (both folders
    hold both packages: ``benchmarks`` is imported first, with this repository in front)."""
    sys.path.insert(0, str(ROOT))
    import benchmarks.floor
    import benchmarks.grids
    import benchmarks.memory
    import benchmarks.timing

    sys.path.remove(str(ROOT))
    sys.path.insert(0, str(library))
    import mi_losses.functional

    for module in (benchmarks, mi_losses):
        origin = Path(module.__file__ or "").resolve()
        if not origin.is_relative_to(ROOT if module is benchmarks else library):
            raise RuntimeError(f"imported {origin}, not the package under {library}")
    return mi_losses.functional.mutual_information_sub_batch


def _calls(library: Path, shape: str, threads: int) -> tuple[Any, Any]:
    """The library's call (its first call measures its memory) and the floor's, in this
    process."""
    import torch

    estimator = _import_checkout(library)
    from benchmarks.floor import floor_operands, floor_step
    from benchmarks.grids import Case, make_inputs
    from benchmarks.memory import FirstCallMeasured, MemoryMeter
    from mi_losses.options import KernelOptions

    torch.set_num_threads(threads)
    granularity, batch, seq, emb, *budget = shape.split(",")
    case = Case(granularity, int(batch), int(seq), int(emb))
    inputs = make_inputs(case, torch.device("cpu"))
    leaves = [inputs[0], inputs[1], inputs[3], inputs[4]]
    options: dict[str, Any] = {}
    if budget and "max_block_bytes" in inspect.signature(estimator).parameters:  # before 0.2
        options["max_block_bytes"] = int(budget[0]) * MIB
    elif budget:
        options["kernel"] = KernelOptions(max_block_bytes=int(budget[0]) * MIB)

    def step() -> tuple[torch.Tensor, ...]:
        value = estimator(*inputs, granularity=granularity, **options)
        return torch.autograd.grad(value, leaves)

    operands = floor_operands(case, torch.device("cpu"))
    measured = FirstCallMeasured(step, MemoryMeter(torch.device("cpu"), "profiler"))
    return measured, lambda: floor_step(operands)


def measure(library: Path, shape: str, min_run_time: float, threads: int) -> dict[str, Any]:
    """Extra peak MiB of one call, then library and floor timings, in this process."""
    step, floor = _calls(library, shape, threads)
    from benchmarks.timing import time_step

    # the timer's first (untimed) call of the library measures its memory
    timings = {
        name: time_step(function, min_run_time=min_run_time, num_threads=threads)
        for name, function in (("library", step), ("floor", floor))
    }
    assert step.peak_bytes is not None
    return {
        "peak_mib": step.peak_bytes / MIB,
        **{
            name: {"raw_times": t.raw_times, "number_per_run": t.number_per_run}
            for name, t in timings.items()
        },
    }


def serve(library: Path, shape: str, threads: int) -> None:
    """One call measured for memory, then one timed call per line read (``library`` or
    ``floor``), its seconds printed: a worker of ``--interleave``."""
    step, floor = _calls(library, shape, threads)
    from torch.utils.benchmark import Timer

    step()
    assert step.peak_bytes is not None
    print(json.dumps({"peak_mib": step.peak_bytes / MIB}), flush=True)
    timers = {
        name: Timer("f()", globals={"f": f}, num_threads=threads)
        for name, f in (("library", step), ("floor", floor))
    }
    for line in sys.stdin:
        print(timers[line.strip()].timeit(1).raw_times[0], flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkouts",
        nargs="+",
        metavar="NAME=DIR",
        help="folders holding mi_losses/, the first one the baseline",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=SMALL_SHAPES + ISSUE_SHAPES,
        help="granularity,B,S,E of each shape (float32), optionally ,MiB: the block budget",
    )
    parser.add_argument("--rounds", type=int, default=1, help="subprocesses per checkout, shape")
    parser.add_argument(
        "--min-run-time", type=float, default=1.0, help="seconds of timed calls per subprocess"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--huge-pages",
        action="store_true",
        help="THP_MEM_ALLOC_ENABLE=1 in the subprocesses: PyTorch's CPU allocator asks for "
        "transparent huge pages (fresh large tensors page-fault 512x less often)",
    )
    parser.add_argument(
        "--reuse-memory",
        action="store_true",
        help="glibc keeps freed memory for reuse in the subprocesses (MALLOC_MMAP_THRESHOLD_ "
        "and MALLOC_TRIM_THRESHOLD_ of 4 and 16 GiB): a large tensor takes pages already "
        "touched instead of fresh ones",
    )
    parser.add_argument("--json", type=Path, help="append every subprocess's result here")
    parser.add_argument(
        "--load", type=Path, nargs="+", help="print the tables of saved results (of --shapes)"
    )
    parser.add_argument(
        "--interleave",
        type=int,
        metavar="CALLS",
        help="instead of rounds, one live process per checkout and shape, their calls taken in "
        "turn (each turn starting one checkout later), CALLS each",
    )
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # DIR, shape (internal)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)  # DIR, shape (internal)
    return parser


def _commit(folder: str) -> str:
    result = subprocess.run(
        ["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return result.stdout.strip() or "?"


def _environment(args: argparse.Namespace) -> dict[str, str]:
    environment = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": str(args.threads)}
    environment["THP_MEM_ALLOC_ENABLE"] = "1" if args.huge_pages else "0"
    if args.reuse_memory:
        environment.update(REUSE_MEMORY)
    return environment


def _record(args: argparse.Namespace, name: str, folder: str, shape: str) -> dict[str, Any]:
    return {
        "checkout": name, "commit": _commit(folder), "shape": shape,
        "load": round(os.getloadavg()[0], 2), "threads": args.threads,
        "huge_pages": args.huge_pages, "reuse_memory": args.reuse_memory,
    }  # fmt: skip


def _run_one(args: argparse.Namespace, name: str, folder: str, shape: str) -> dict[str, Any]:
    """One subprocess: the record of one checkout on one shape (``error`` if it failed)."""
    command = [sys.executable, __file__, "--measure", folder, shape]
    command += ["--min-run-time", str(args.min_run_time), "--threads", str(args.threads)]
    process = subprocess.run(command, capture_output=True, text=True, env=_environment(args))
    record = _record(args, name, folder, shape)
    if process.returncode != 0:
        record["error"] = (process.stderr.strip().splitlines() or ["?"])[-1][:300]
    else:
        record.update(json.loads(process.stdout.strip().splitlines()[-1]))
    return record


def _interleaved(
    args: argparse.Namespace, checkouts: list[list[str]], shape: str
) -> list[dict[str, Any]]:
    """One live process per checkout, their calls in turn: whatever else the machine does
    falls on every checkout alike. The records of one shape, in the checkouts' order."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--serve"]
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    workers = [
        subprocess.Popen([*command, folder, shape], env=_environment(args), **pipes)  # type: ignore[call-overload]
        for _, folder in checkouts
    ]
    records = []
    for (name, folder), worker in zip(checkouts, workers, strict=True):
        assert worker.stdout is not None
        records.append({**_record(args, name, folder, shape), "interleaved": args.interleave})
        records[-1].update(json.loads(worker.stdout.readline()))
        records[-1].update({part: {"raw_times": [], "number_per_run": 1} for part in PARTS})
    for call in range(args.interleave):
        turn = call % len(workers)
        for index in [*range(turn, len(workers)), *range(turn)]:
            worker = workers[index]
            assert worker.stdin is not None and worker.stdout is not None
            for part in PARTS:
                worker.stdin.write(part + "\n")
                worker.stdin.flush()
                records[index][part]["raw_times"].append(float(worker.stdout.readline()))
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
        worker.wait()
    return records


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every round of every shape and checkout, saved to ``--json`` as they come."""
    records = []
    checkouts = [item.split("=", 1) for item in args.checkouts]
    for shape in args.shapes:
        if args.interleave:
            records += _interleaved(args, checkouts, shape)
            for record in records[-len(checkouts) :]:
                print(f"[versions] {shape} {record['checkout']}: {record['peak_mib']:.0f} MiB")
                if args.json:
                    with open(args.json, "a") as handle:
                        handle.write(json.dumps(record) + "\n")
            continue
        for round_ in range(args.rounds):
            # Each round starts one checkout later: at sequence B16 S64 E256 whichever ran
            # second ran 6-7 % slower, either way round (3 rounds each).
            turn = round_ % len(checkouts)
            for name, folder in checkouts[turn:] + checkouts[:turn]:
                records.append(_run_one(args, name, folder, shape))
                summary = records[-1].get("error") or f"{records[-1]['peak_mib']:.0f} MiB"
                print(f"[versions] {shape} {name}: {summary}", file=sys.stderr, flush=True)
                if args.json:
                    with open(args.json, "a") as handle:
                        handle.write(json.dumps(records[-1]) + "\n")
    return records


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = _parser().parse_args(argv)
    if args.serve:
        serve(Path(args.serve[0]).resolve(), args.serve[1], args.threads)
        return []
    if args.measure:
        folder, shape = args.measure
        result = measure(Path(folder).resolve(), shape, args.min_run_time, args.threads)
        print(json.dumps(result))
        return [result]
    if args.load:
        lines = [line for path in args.load for line in path.read_text().splitlines() if line]
        saved = [json.loads(line) for line in lines]
        records = [r for shape in args.shapes for r in saved if r["shape"] == shape]
    elif args.checkouts:
        pages = "huge pages" if args.huge_pages else "4 KiB pages"
        pages += ", freed memory reused" if args.reuse_memory else ""
        print(f"load average at start {os.getloadavg()[0]:.2f}; {pages}", flush=True)
        records = run(args)
        print(f"load average at end {os.getloadavg()[0]:.2f}\n")
    else:
        raise SystemExit("pass --checkouts NAME=DIR ... (or --load FILE ...)")
    sys.path.insert(0, str(ROOT))
    from benchmarks.versions_table import compare_tables, markdown_table

    print(markdown_table(records))
    compare_tables(records)
    return records


if __name__ == "__main__":
    main()
