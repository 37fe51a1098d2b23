"""Time and memory of the known-prior vocabulary MI against its own matrix products.

One forward + backward of ``vocabulary_mutual_information`` (gradients w.r.t. the noisy
embeddings, ``means`` and ``stds``) at ``N`` tokens, a ``V``-row vocabulary and ``E`` features,
against the **floor**: the raw matrix products the chunked kernel runs for the same shapes, timed
alone in the same process on preallocated operands (each with
``torch.utils.benchmark.Timer.blocked_autorange``: a warm-up call, then ``--min-run-time``
seconds of timed calls; medians). Per chunk of ``C`` rows the forward pass
runs one ``(N, 2E) x (2E, C)`` product; the backward pass recomputes it and runs
``(N, C) x (C, 2E)`` and ``(C, N) x (N, 2E)``: four products of ``N * 2E * C``
multiply-adds per chunk in all. Peak memory is the high-water mark of tensor memory above the
inputs during the call (``torch.profiler`` memory events on CPU,
``torch.cuda.max_memory_allocated`` on CUDA), compared with one ``(N, V)`` float32 matrix, the
size a non-chunked implementation would hold several of.

    python benchmarks/bench_vocabulary.py                      # N=4096, V=32768, E=1024
    python benchmarks/bench_vocabulary.py --tokens 256 --vocab 2048 --dim 64 --min-run-time 1
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as `python benchmarks/bench_vocabulary.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import MemoryMeter
from benchmarks.report import machine_line
from benchmarks.timing import time_step
from mi_losses.functional import vocabulary_mutual_information

MIB = 2**20


def make_inputs(
    n: int, v: int, e: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Embedding-like table, Zipf prior, stds in [0.05, 0.3], tokens from the prior."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(v, e, generator=g) / e**0.5
    means = 0.01 * torch.randn(v, e, generator=g)
    stds = 0.05 + 0.25 * torch.rand(v, e, generator=g)
    prior = 1.0 / torch.arange(1, v + 1, dtype=torch.float64)
    tokens = torch.multinomial(prior / prior.sum(), n, replacement=True, generator=g)
    noisy = table[tokens] + means[tokens] + stds[tokens] * torch.randn(n, e, generator=g)
    tensors = {"table": table, "means": means, "stds": stds, "noisy": noisy[None]}
    out = {k: t.to(device=device, dtype=dtype) for k, t in tensors.items()}
    out["prior"] = (prior / prior.sum()).to(device=device, dtype=dtype)
    out["tokens"] = tokens[None].to(device)
    for name in ("means", "stds", "noisy"):
        out[name].requires_grad_(True)
    return out


def library_step(inputs: dict[str, torch.Tensor], chunk: int) -> Callable[[], Any]:
    def step() -> Any:
        value = vocabulary_mutual_information(
            inputs["means"],
            inputs["stds"],
            None,
            inputs["tokens"],
            inputs["noisy"],
            inputs["table"],
            inputs["prior"],
            vocab_chunk_size=chunk,
        )
        return torch.autograd.grad(value, [inputs[n] for n in ("noisy", "means", "stds")])

    return step


def floor_step(n: int, v: int, e: int, chunk: int, device: torch.device) -> Callable[[], Any]:
    """The four products per chunk of the forward and backward passes, on random operands."""
    features = torch.randn(n, 2 * e, device=device)
    right = torch.randn(min(chunk, v), 2 * e, device=device)
    weights = torch.randn(n, min(chunk, v), device=device)
    sizes = [min(chunk, v - start) for start in range(0, v, chunk)]

    def step() -> Any:
        out = []
        for size in sizes:
            r, w = right[:size], weights[:, :size]
            out.append(features @ r.T)  # forward scores
            out.append(features @ r.T)  # backward: recomputed scores
            out.append(w @ r)  # backward: gradient of the queries
            out.append(w.T @ features)  # backward: moments for centres and stds
            out.clear()
        return out

    return step


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    n, v, e, chunk = args.tokens, args.vocab, args.dim, args.chunk
    inputs = make_inputs(n, v, e, torch.float32, device)
    memory: dict[str, int] = {}
    with MemoryMeter(device, "auto").measure(memory):  # also the library's warm-up
        library_step(inputs, chunk)()
    library, floor = (
        time_step(step, min_run_time=args.min_run_time, num_threads=args.threads).median
        for step in (library_step(inputs, chunk), floor_step(n, v, e, chunk, device))
    )
    dense = n * v * 4
    return {
        "N": n,
        "V": v,
        "E": e,
        "chunk": chunk,
        "library s": library,
        "matmul floor s": floor,
        "ratio": library / floor,
        "peak extra MiB": memory["peak"] / MIB,
        "(N, V) float32 MiB": dense / MIB,
        "gradient outputs MiB": (2 * v * e + n * e) * 4 / MIB,
    }


def table(row: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return "\n".join(
        [
            "| " + " | ".join(row) + " |",
            "|" + "---|" * len(row),
            "| " + " | ".join(fmt(x) for x in row.values()) + " |",
        ]
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="N, active tokens")
    parser.add_argument("--vocab", type=int, default=32768, help="V, vocabulary rows")
    parser.add_argument("--dim", type=int, default=1024, help="E, embedding size")
    parser.add_argument("--chunk", type=int, default=4096, help="vocab_chunk_size")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--min-run-time", type=float, default=0.0, help="seconds of timed calls per step"
    )
    args = parser.parse_args(argv)
    row = run(args)
    print(machine_line(torch.device(args.device)))
    print(f"float32 forward + backward, {args.threads} thread(s)\n")
    print(table(row))
    return row


if __name__ == "__main__":
    main()
