"""The cost of gathering components across ranks, against the estimator itself (gloo, CPU).

``W`` processes (default 2, one torch thread each) run, for every shape of the grid, one
forward + backward of ``mutual_information_sub_batch`` (gradients w.r.t. all four ``(B, S, E)``
inputs; ``B`` is the batch of one rank) three ways, in the same processes:

- **local**: ``gather=None``, each rank's queries against its own components
  (the baseline);
- **gathered**: ``gather=GatherOptions()``, each rank's queries against the components of all
  ``W`` ranks (``W`` times more pairs);
- **gather only**: the autograd all-gather of the packed component half alone (forward and
  backward), what gathering adds besides the larger mixture.

Each rank times its calls with ``torch.utils.benchmark.Timer.timeit(--repeats)`` (two warm-up
calls, then ``--repeats`` calls: the same number on every rank), each call followed by a
barrier, so a call lasts until the slowest rank is done (the time of a data-parallel step); the
table shows the mean per call of the slowest rank, and ratios against the local baseline
measured in the same processes. ``gathered MiB`` is the size of the tensor every
rank receives, ``W * n * L * (2E + 1) * 4`` bytes (``n`` components of ``L`` positions per
rank: ``B/2`` sequences of ``S``, or ``B S / 2`` tokens of 1), not a measured peak.

Run from the repository root::

    python benchmarks/bench_distributed.py --world-size 2 --repeats 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils import benchmark

try:
    import mi_losses  # noqa: F401
except ImportError:  # run as `python benchmarks/bench_distributed.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mi_losses.functional import mutual_information_sub_batch
from mi_losses.functional._distributed import _all_gather
from mi_losses.options import GatherOptions

# granularity, B (per rank), S, E: shapes of benchmarks/bench_estimators.py's default grid
GRIDS: dict[str, list[tuple[str, int, int, int]]] = {
    "tiny": [("sequence", 4, 8, 16), ("token", 2, 8, 16)],
    "default": [
        ("sequence", 16, 64, 256),
        ("sequence", 64, 128, 768),
        ("token", 4, 64, 256),
        ("token", 8, 128, 768),
        ("token", 8, 256, 768),
    ],
}
COLUMNS = (
    "granularity",
    "B",
    "S",
    "E",
    "local s",
    "gathered s",
    "gather only s",
    "gathered/local",
    "gather share",
    "gathered MiB",
)


def timed(function: Callable[[], None], repeats: int) -> float:
    """Mean seconds per call of ``function`` on the slowest rank (``Timer.timeit``), every
    call followed by a barrier."""

    def call() -> None:
        function()
        dist.barrier()

    timer = benchmark.Timer("call()", globals={"call": call}, num_threads=torch.get_num_threads())
    dist.barrier()
    elapsed = torch.tensor(timer.timeit(repeats).mean, dtype=torch.float64)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def measure(shape: tuple[str, int, int, int], world_size: int, repeats: int) -> list[str]:
    granularity, b, s, e = shape
    g = torch.Generator().manual_seed(dist.get_rank())
    clean, means = torch.randn(b, s, e, generator=g), 0.1 * torch.randn(b, s, e, generator=g)
    stds = 0.5 + torch.rand(b, s, e, generator=g)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=g)
    leaves = [t.requires_grad_() for t in (means, stds, clean, noisy)]

    def step(gather: bool) -> Callable[[], None]:
        def run() -> None:
            for leaf in leaves:
                leaf.grad = None
            value = mutual_information_sub_batch(
                means,
                stds,
                None,
                clean,
                noisy,
                granularity=granularity,
                gather=GatherOptions() if gather else None,
            )
            value.backward()

        return run

    rows, length = (b // 2, s) if granularity == "sequence" else (b * s // 2, 1)
    packed = torch.randn(rows, length, 2 * e + 1, requires_grad=True)

    def gather_only() -> None:
        torch.cat(_all_gather(packed, None)).sum().backward()

    local = timed(step(False), repeats)
    gathered = timed(step(True), repeats)
    gather = timed(gather_only, repeats)
    mib = world_size * packed.numel() * 4 / 2**20
    return [
        granularity,
        str(b),
        str(s),
        str(e),
        f"{local:.3f}",
        f"{gathered:.3f}",
        f"{gather:.3f}",
        f"{gathered / local:.2f}x",
        f"{gather / gathered:.0%}",
        f"{mib:.1f}",
    ]


def worker(rank: int, world_size: int, port: int, args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=600),
    )
    try:
        table = [measure(shape, world_size, args.repeats) for shape in GRIDS[args.grid]]
        if rank == 0:
            load = os.getloadavg()[0]
            print(
                f"{world_size} gloo processes x {args.threads} torch thread(s), torch "
                f"{torch.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}; "
                f"forward + backward of mutual_information_sub_batch, float32, "
                f"mean of {args.repeats} calls (slowest rank, torch.utils.benchmark)\n"
            )
            print("| " + " | ".join(COLUMNS) + " |")
            print("|" + "|".join("---" if i < 1 else "--:" for i in range(len(COLUMNS))) + "|")
            for row in table:
                print("| " + " | ".join(row) + " |")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    args = parser.parse_args(argv)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(
        worker, args=(args.world_size, port, args), nprocs=args.world_size, start_method="spawn"
    )


if __name__ == "__main__":
    main()
