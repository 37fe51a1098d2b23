"""The estimator of two checkouts of ``mi_losses`` side by side, each against the same floor.

For every shape of the grid this script runs one forward + backward of
``mutual_information_sub_batch`` (gradients w.r.t. all four ``(B, S, E)`` inputs, the inputs of
``bench_estimators.py``) with the package found under ``--baseline`` and with the one under
``--candidate``, each in its own subprocess (two copies of a package cannot share one). Every
subprocess times its library and the matrix-product floor of ``benchmarks/floor.py``
alternately, so each library is measured against a floor timed in the same process and the
same minutes; the table gives the candidate/baseline ratio of the times and of those two
ratios (the floor of small, memory-bound shapes varies between processes on a busy machine).
The two subprocesses of a shape run one after the other, ``--rounds`` times (the table keeps
each one's fastest round). One torch thread by default. ``--memory`` adds a table of the peak
memory of one call above the inputs (``torch.profiler`` allocations, in the same subprocesses).

Run from the repository root, e.g. against the commit before a change::

    git worktree add --detach ../baseline <commit>
    python benchmarks/bench_versions.py --baseline ../baseline --candidate . --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def measure(
    library: str, case: list[str], repeats: int, threads: int, memory: bool = False
) -> dict[str, float]:
    """Fastest library and floor times of one shape, measured in this process; with ``memory``
    also the peak bytes of one call above the inputs (``torch.profiler`` allocations)."""
    sys.path.insert(0, str(Path(library).resolve()))
    sys.path.insert(1, str(ROOT))
    torch.set_num_threads(threads)
    import mi_losses
    from benchmarks.floor import floor_operands, floor_step
    from benchmarks.grids import Case, make_inputs
    from mi_losses.functional import mutual_information_sub_batch

    location = Path(mi_losses.__file__).resolve()
    if not location.is_relative_to(Path(library).resolve()):
        raise RuntimeError(f"imported {location}, not the package under {library}")
    granularity, batch, seq, emb = case[0], *(int(v) for v in case[1:])
    shape = Case(granularity, batch, seq, emb)
    inputs = make_inputs(shape, torch.device("cpu"))
    leaves = [inputs[0], inputs[1], inputs[3], inputs[4]]
    operands = floor_operands(shape, torch.device("cpu"))

    def step() -> None:
        for leaf in leaves:
            leaf.grad = None
        mutual_information_sub_batch(*inputs, granularity=granularity).backward()

    step()
    floor_step(operands)
    library_times, floor_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        middle = time.perf_counter()
        floor_step(operands)
        library_times.append(middle - start)
        floor_times.append(time.perf_counter() - middle)
    result = {"library": min(library_times), "floor": min(floor_times)}
    if memory:
        from benchmarks.memory import MemoryMeter

        peak: dict[str, int] = {}
        for leaf in leaves:
            leaf.grad = None
        with MemoryMeter(torch.device("cpu"), "profiler").measure(peak):
            mutual_information_sub_batch(*inputs, granularity=granularity).backward()
        result["peak_mib"] = peak["peak"] / 2**20
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="directory holding mi_losses/")
    parser.add_argument("--candidate", default=str(ROOT), help="directory holding mi_losses/")
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=[
            "sequence,16,64,256",
            "sequence,64,128,768",
            "sequence,32,512,1024",
            "sequence,128,128,768",
            "token,4,64,256",
            "token,8,128,768",
            "token,8,256,768",
            "token,8,1024,4096",
        ],
        help="granularity,B,S,E of each shape (float32)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per subprocess")
    parser.add_argument("--rounds", type=int, default=1, help="subprocesses per library and shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--memory", action="store_true", help="also the peak memory of one call (MiB)"
    )
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # library, shape (internal)
    return parser


def _best(args: argparse.Namespace, shape: str) -> dict[str, dict[str, float]]:
    """Each library's fastest round on ``shape``, one subprocess per round and library."""
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for name, library in (("baseline", args.baseline), ("candidate", args.candidate)):
            command = [sys.executable, __file__, "--baseline", args.baseline]
            command += ["--measure", library, shape, "--repeats", str(args.repeats)]
            command += ["--threads", str(args.threads)] + (["--memory"] if args.memory else [])
            environment = {**os.environ, "PYTHONPATH": ""}
            output = subprocess.run(
                command, check=True, capture_output=True, text=True, env=environment
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            if name not in best or result["library"] < best[name]["library"]:
                best[name] = result
    return best


def main() -> None:
    args = _parser().parse_args()
    if args.measure:
        library, shape = args.measure
        result = measure(library, shape.split(","), args.repeats, args.threads, args.memory)
        print(json.dumps(result))
        return
    print(f"baseline {args.baseline}, candidate {args.candidate}; {args.threads} torch threads;")
    print(f"load average at start {os.getloadavg()[0]:.1f}; torch {torch.__version__}\n")
    print(
        "| shape | baseline s | floor s | baseline/floor | candidate s | floor s | "
        "candidate/floor | candidate/baseline (times) | candidate/baseline (over floors) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    peaks = []
    for shape in args.shapes:
        best = _best(args, shape)
        if args.memory:
            peaks.append((shape, best["baseline"]["peak_mib"], best["candidate"]["peak_mib"]))
        base, cand = best["baseline"], best["candidate"]
        base_ratio = base["library"] / base["floor"]
        cand_ratio = cand["library"] / cand["floor"]
        print(
            f"| {shape.replace(',', ' ')} | {base['library']:.4f} | {base['floor']:.4f} | "
            f"{base_ratio:.2f}x | {cand['library']:.4f} | {cand['floor']:.4f} | "
            f"{cand_ratio:.2f}x | {cand['library'] / base['library']:.2f}x | "
            f"{cand_ratio / base_ratio:.2f}x |",
            flush=True,
        )
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")
    if peaks:
        print("\n| shape | baseline peak MiB | candidate peak MiB | candidate/baseline |")
        print("|---|--:|--:|--:|")
        for shape, base_mib, cand_mib in peaks:
            ratio = cand_mib / base_mib if base_mib else float("nan")
            print(f"| {shape.replace(',', ' ')} | {base_mib:.1f} | {cand_mib:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
