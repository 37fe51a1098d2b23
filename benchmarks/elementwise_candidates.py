"""A candidate for the kernel's elementwise passes, measured against the library's eager path.

The streaming path (CPU) makes its factors (:mod:`mi_losses.kernels.factors`) with eager,
in-place PyTorch operations, a few MiB of positions at a time. The candidate measured here is
``torch.compile`` (Inductor's generated C++ on the CPU) of the same factors written as pure
functions (``torch.where`` masks, no in-place steps), installed in place of
``query_factors`` and ``component_factors`` where no graph is being built. For each shape it
prints the eager time, the compiled path's first call (compiling included) and its time, their
ratio, and the largest relative difference of the four input gradients. Both are timed in this
process with ``torch.utils.benchmark`` (one thread by default)::

    OMP_NUM_THREADS=1 python benchmarks/elementwise_candidates.py --shapes sequence,32,512,1024

It is a measurement, not a path of the library: the candidate changes nothing else.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as `python benchmarks/elementwise_candidates.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.grids import Case, make_inputs
from benchmarks.timing import fastest, time_step
from mi_losses.functional import mutual_information_sub_batch
from mi_losses.kernels import factors, streaming
from mi_losses.kernels.factors import HALF_LOG_TWO_PI, Components, Frame, Own, Queries


def pure_components(
    clean: torch.Tensor, means: torch.Tensor | None, stds: torch.Tensor, on: torch.Tensor,
    f: Frame, check: bool, values: bool,
) -> tuple[torch.Tensor | None, ...]:  # fmt: skip
    """:func:`~mi_losses.kernels.factors.component_factors` as one pure function."""
    active = on.unsqueeze(-1) > 0
    centred = clean - f.reference if means is None else (clean - f.reference) + means
    c = torch.where(active, centred * f.inverse, 0.0)
    ratio = torch.where(active, stds * f.inverse, 1.0)
    w = torch.where(active, ratio.pow(-2), 0.0)
    wc = w * c
    if not values:
        return w.flatten(1), wc.flatten(1), c, ratio
    h2 = (wc * c).sum(-1)
    p = ratio.log().sum(-1) + on * f.constant
    largest = w.flatten(1).amax(-1) if check else None
    return w.flatten(1), wc.flatten(1), c, ratio, -(p + 0.5 * h2), p, h2, largest


def pure_queries(
    queries: torch.Tensor, own: Own | None, on: torch.Tensor, f: Frame, check: bool, values: bool
) -> tuple[object, ...]:
    """:func:`~mi_losses.kernels.factors.query_factors` as one pure function."""
    active = on.unsqueeze(-1) > 0
    y = torch.where(active, (queries - f.reference) * f.inverse, 0.0).flatten(1)
    residual, q = None, None
    if own is not None:
        sigma_i = torch.where(active, own.stds, 1.0)
        r = torch.where(active, (queries - own.clean) - own.means, 0.0) / sigma_i
        residual = (r, sigma_i)
        if values:
            log_density = 0.5 * (r * r).sum(-1) + sigma_i.log().sum(-1)
            q = -(log_density + queries.shape[-1] * HALF_LOG_TWO_PI) * on
    squares = (y * y).sum(-1) if values and check else None
    return y, y * y, residual, q, squares


def install_compiled() -> None:
    """Route the streaming path's factors through the compiled pure functions (no graph only)."""
    compiled_components = torch.compile(pure_components, dynamic=True)
    compiled_queries = torch.compile(pure_queries, dynamic=True)
    eager_components, eager_queries = factors.component_factors, factors.query_factors

    def component_factors(clean, means, stds, b, f, dtype, *, check=True, values=True, active=None):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled() or clean.dtype != dtype:
            return eager_components(
                clean, means, stds, b, f, dtype, check=check, values=values, active=active
            )
        on = b.to(dtype)
        w, wc, c, ratio, *rest = compiled_components(clean, means, stds, on, f, check, values)
        return Components(w, wc, c, on, ratio, *rest)

    def query_factors(queries, own, a, f, dtype, *, check=True, values=True):  # type: ignore[no-untyped-def]
        if torch.is_grad_enabled() or queries.dtype != dtype:
            return eager_queries(queries, own, a, f, dtype, check=check, values=values)
        on = a.to(dtype)
        y, y2, residual, q, squares = compiled_queries(queries, own, on, f, check, values)
        return Queries(y, y2, on, residual, q, squares)

    for module in (factors, streaming):
        module.component_factors = component_factors  # type: ignore[assignment]
        module.query_factors = query_factors  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["sequence,32,512,1024", "token,8,256,768"])
    parser.add_argument("--min-run-time", type=float, default=2.0)
    args = parser.parse_args()
    cases = [Case(g, int(b), int(s), int(e)) for g, b, s, e in (x.split(",") for x in args.shapes)]
    steps = []
    for case in cases:
        inputs = make_inputs(case, torch.device("cpu"))
        leaves = [inputs[0], inputs[1], inputs[3], inputs[4]]

        def step(inputs=inputs, leaves=leaves, g=case.granularity):  # type: ignore[no-untyped-def]
            return torch.autograd.grad(mutual_information_sub_batch(*inputs, granularity=g), leaves)

        steps.append(step)
    eager = [(fastest(time_step(s, min_run_time=args.min_run_time)), s()) for s in steps]
    install_compiled()
    print(
        "| shape | eager s | compiled: first call s | compiled s | compiled / eager | max rel. grad diff |"
    )
    print("|---|--:|--:|--:|--:|--:|")
    for case, step, (eager_s, reference) in zip(cases, steps, eager, strict=True):
        start = time.perf_counter()
        grads = step()
        first = time.perf_counter() - start
        compiled_s = fastest(time_step(step, min_run_time=args.min_run_time))
        diff = max(
            float((g - r).abs().max() / r.abs().max())
            for g, r in zip(grads, reference, strict=True)
        )
        print(
            f"| {case.shape_label} | {eager_s:.4g} | {first:.3g} | {compiled_s:.4g} | "
            f"{compiled_s / eager_s:.2f}x | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
