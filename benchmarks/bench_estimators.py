"""Time and memory of ``mutual_information_sub_batch``: naive broadcast vs library vs matmul floor.

For every case of a grid (granularity, ``B``, ``S``, ``E``, input dtype, ``torch.compile`` on or
off) this script runs one forward + backward of the sub-batch mutual-information estimate with
gradients w.r.t. all four ``(B, S, E)`` inputs, three ways, in one process:

(a) **naive**: the straightforward broadcast of ``MATH.md`` written below
    (:func:`naive_mutual_information_sub_batch`): it builds ``(M, N, S, E)`` differences
    (sequence granularity) or ``(M, N, E)`` differences between all active tokens (token
    granularity), masks, sums and takes a ``logsumexp``. Skipped where its estimated memory
    exceeds ``--naive-budget-gib``; the row says how much it would need.
(b) **library**: ``mi_losses.functional.mutual_information_sub_batch``.
(c) **floor**: the raw matrix products the library's kernel needs for the same shapes, timed
    alone in the kernel's compute dtype (float32 for half-precision inputs): the two
    ``(M, K) x (K, N)`` products of the expansion in ``MATH.md`` (Performance) and the four
    products its backward needs, with
    ``K = S * E``, ``M = N = B / 2`` (sequence) or ``K = E``, ``M = N = B * S / 2`` (token).

Times are medians over repeats after a warm-up run (``--statistic min``: the fastest repeat,
the better estimate on a machine shared with other jobs; the CSV has both). Peak extra memory is the high-water mark of
tensor memory above what was allocated before the call (the inputs), gradients of the inputs
included, measured in one separate (untimed) run: on CPU the running sum of the allocation and
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
import contextlib
import csv
import ctypes
import dataclasses
import datetime
import functools
import gc
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

try:
    import mi_losses  # noqa: F401
except ImportError:  # run as `python benchmarks/bench_estimators.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mi_losses.functional import mutual_information_sub_batch

GIB = 2**30
MIB = 2**20

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}

# Peak memory of the naive forward + backward, in units of one float32 (M, N, S, E) tensor
# (measured on this implementation: about 6 of them are alive at once during the backward).
NAIVE_PEAK_INTERMEDIATES = 7


# --------------------------------------------------------------------------------------------
# Cases and grids
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table."""

    granularity: str
    batch: int
    seq: int
    emb: int
    dtype: str = "float32"
    compile: bool = False
    autocast: str | None = None  # e.g. "bfloat16": float32 inputs under torch.autocast

    @property
    def dtype_label(self) -> str:
        return f"{self.dtype}+autocast-{self.autocast}" if self.autocast else self.dtype

    @property
    def shape_label(self) -> str:
        return f"{self.granularity} B={self.batch} S={self.seq} E={self.emb}"


def _grid_tiny() -> list[Case]:
    return [
        Case("sequence", 4, 8, 16),
        Case("sequence", 4, 8, 16, dtype="bfloat16"),
        Case("token", 4, 8, 16),
        Case("token", 4, 8, 16, dtype="bfloat16"),
    ]


def _grid_default(device: str) -> list[Case]:
    cases = [
        Case("sequence", 16, 64, 256),
        Case("sequence", 64, 128, 768),
        Case("sequence", 64, 128, 768, dtype="bfloat16"),
        Case("sequence", 64, 128, 768, compile=True),
        Case("sequence", 32, 512, 1024),
        Case("sequence", 128, 128, 768),
        Case("token", 4, 64, 256),
        Case("token", 8, 128, 768),
        Case("token", 8, 256, 768),
        Case("token", 8, 256, 768, dtype="bfloat16"),
        Case("token", 8, 256, 768, compile=True),
        Case("token", 8, 1024, 4096),
        Case("token", 8, 1024, 4096, dtype="bfloat16"),
    ]
    if device == "cuda":
        cases += [
            Case("sequence", 64, 128, 768, autocast="bfloat16"),
            Case("token", 8, 256, 768, autocast="bfloat16"),
            Case("token", 8, 1024, 4096, autocast="bfloat16"),
            Case("token", 8, 1024, 4096, compile=True),
            Case("token", 16, 2048, 4096),
            Case("token", 16, 2048, 4096, autocast="bfloat16"),
        ]
    return cases


GRIDS: dict[str, Callable[[str], list[Case]]] = {
    "tiny": lambda device: _grid_tiny(),
    "default": _grid_default,
}


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def make_inputs(
    case: Case, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Leaf tensors ``(means, stds, noise_mask, clean, noisy)`` like a noise layer produces.

    Embeddings have a common offset (real token embeddings are anisotropic), the noise has
    ``sigma`` in ``[0.3, 1)``, and every sequence has between 0 and ``S / 4`` padding positions
    at its end where the noise mask is false (and the noisy embedding equals the clean one).
    """
    generator = torch.Generator().manual_seed(seed)
    b, s, e = case.batch, case.seq, case.emb
    offset = 2.0 * torch.randn(e, generator=generator)
    clean = torch.randn(b, s, e, generator=generator) + offset
    means = 0.1 * torch.randn(b, s, e, generator=generator)
    stds = 0.3 + 0.7 * torch.rand(b, s, e, generator=generator)
    padding = torch.randint(0, s // 4 + 1, (b,), generator=generator)
    mask = torch.arange(s).unsqueeze(0) < (s - padding).unsqueeze(1)
    noisy = clean + means + stds * torch.randn(b, s, e, generator=generator)
    noisy = torch.where(mask.unsqueeze(-1), noisy, clean)
    dtype = DTYPES[case.dtype]
    leaves = [
        t.to(device=device, dtype=dtype).requires_grad_() for t in (means, stds, clean, noisy)
    ]
    return leaves[0], leaves[1], mask.to(device), leaves[2], leaves[3]


def _active_counts(case: Case, mask: torch.Tensor) -> tuple[int, int]:
    """``(M, N)``: number of queries and of components the estimator compares."""
    half = case.batch // 2
    if case.granularity == "sequence":
        return half, half
    return int(mask[:half].sum()), int(mask[half:].sum())


# --------------------------------------------------------------------------------------------
# (a) The naive broadcast
# --------------------------------------------------------------------------------------------


def naive_mutual_information_sub_batch(
    means_tensor: torch.Tensor,
    stds_tensor: torch.Tensor,
    noise_mask: torch.Tensor,
    clean_input_embeddings: torch.Tensor,
    noisy_input_embeddings: torch.Tensor,
    granularity: str = "sequence",
) -> torch.Tensor:
    """``MATH.md``'s sub-batch estimate, written the obvious way with broadcasting.

    Queries are the first half of the batch, components the second half; the component mask is
    the second half's noise mask. Computes in float32 (or float64 for float64 inputs) and returns
    a float32/float64 scalar in nats.
    """
    compute = torch.promote_types(means_tensor.dtype, torch.float32)
    means, stds, clean, noisy = (
        t.to(compute)
        for t in (means_tensor, stds_tensor, clean_input_embeddings, noisy_input_embeddings)
    )
    mask = noise_mask.bool()
    half = means.shape[0] // 2
    y, c_q, s_q = noisy[:half], (clean + means)[:half], stds[:half]
    c, s = (clean + means)[half:], stds[half:]
    q_mask, c_mask = mask[:half], mask[half:]
    if granularity == "token":  # every active token is a sample; all pairs are valid
        y, c_q, s_q = y[q_mask], c_q[q_mask], s_q[q_mask]  # (M, E)
        c, s = c[c_mask], s[c_mask]  # (N, E)
        own = 0.5 * ((y - c_q) / s_q) ** 2 + torch.log(s_q)  # (M, E)
        other = 0.5 * ((y[:, None] - c[None]) / s[None]) ** 2 + torch.log(s)[None]  # (M, N, E)
        log_ratio = (other - own[:, None]).sum(-1)  # (M, N)
        valid = torch.ones_like(log_ratio, dtype=torch.bool)
    else:
        own = 0.5 * ((y - c_q) / s_q) ** 2 + torch.log(s_q)  # (M, S, E)
        other = 0.5 * ((y[:, None] - c[None]) / s[None]) ** 2 + torch.log(s)[None]  # (M, N, S, E)
        per_position = (other - own[:, None]).sum(-1)  # (M, N, S)
        pair_mask = q_mask[:, None, :] & c_mask[None, :, :]  # (M, N, S)
        log_ratio = (per_position * pair_mask).sum(-1)  # (M, N)
        valid = pair_mask.any(-1)
    num_valid = valid.sum(-1)
    valid_query = num_valid > 0
    if not bool(valid_query.any()):
        return log_ratio.sum() * 0.0
    logits = (-log_ratio).masked_fill(~valid, float("-inf"))[valid_query]
    per_query = -(torch.logsumexp(logits, dim=-1) - torch.log(num_valid[valid_query].to(compute)))
    return per_query.mean()


def naive_memory_estimate(case: Case, m: int, n: int) -> int:
    """Bytes the naive forward + backward needs at its peak (float32 or float64 compute)."""
    k = case.seq * case.emb if case.granularity == "sequence" else case.emb
    bytes_per = 8 if case.dtype == "float64" else 4
    return NAIVE_PEAK_INTERMEDIATES * m * n * k * bytes_per


# --------------------------------------------------------------------------------------------
# (c) The matmul floor
# --------------------------------------------------------------------------------------------


def floor_operands(case: Case, device: torch.device) -> list[torch.Tensor]:
    """Random operands of the six products: ``(A1, B1, A2, B2, G)``."""
    half = case.batch // 2
    if case.granularity == "sequence":
        m = n = half
        k = case.seq * case.emb
    else:
        m = n = half * case.seq
        k = case.emb
    # The kernel multiplies in its compute dtype: float32 or better (half precision promoted).
    dtype = torch.promote_types(DTYPES[case.dtype], torch.float32)
    generator = torch.Generator().manual_seed(1)
    shapes = [(m, k), (n, k), (m, k), (n, k), (m, n)]
    return [
        torch.randn(shape, generator=generator).to(device=device, dtype=dtype) for shape in shapes
    ]


def floor_step(operands: list[torch.Tensor]) -> list[torch.Tensor]:
    """Forward ``A1 B1^T``, ``A2 B2^T`` and the four backward products ``G B``, ``G^T A``."""
    a1, b1, a2, b2, g = operands
    return [a1 @ b1.T, a2 @ b2.T, g @ b1, g.T @ a1, g @ b2, g.T @ a2]


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(rf"^{key}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert match is not None, key
    return int(match.group(1)) * 1024


def rss_method_available() -> bool:
    """Whether the process high-water mark can be reset (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        _status_bytes("VmHWM")
    except (OSError, AssertionError):
        return False
    return True


class MemoryMeter:
    """Peak memory of one call above what was allocated before it."""

    def __init__(self, device: torch.device, method: str) -> None:
        self.device = device
        if device.type == "cuda":
            method = "cuda"
        elif method == "auto":
            method = "profiler"
        if method == "rss" and not rss_method_available():
            raise RuntimeError(
                "--memory rss needs Linux /proc/self/clear_refs; use --memory profiler"
            )
        self.method = method

    def _settle(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        libc = _libc()
        if self.method == "rss" and libc:  # give freed heap pages back so that RSS is live memory
            libc.malloc_trim(0)

    @contextlib.contextmanager
    def measure(self, result: dict[str, int]) -> Iterator[None]:
        """Store the peak extra bytes of the ``with`` body in ``result["peak"]``."""
        self._settle()
        if self.method == "cuda":
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            yield
            torch.cuda.synchronize(self.device)
            result["peak"] = torch.cuda.max_memory_allocated(self.device) - base
        elif self.method == "rss":
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")
            base = _status_bytes("VmRSS")
            yield
            result["peak"] = max(_status_bytes("VmHWM") - base, 0)
        else:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                yield
            events = [
                (event.start_ns(), event.nbytes())
                for event in prof.profiler.kineto_results.events()
                if event.name() == "[memory]"
            ]
            current = peak = 0
            for _, nbytes in sorted(events):
                current += nbytes
                peak = max(peak, current)
            result["peak"] = peak


class CompileTimeout(Exception):
    """Raised by the alarm when compiling takes longer than allowed."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
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


@dataclasses.dataclass
class Measurement:
    seconds: float | None = None  # median over the timed calls (min with --statistic min)
    median_seconds: float | None = None
    min_seconds: float | None = None
    peak_bytes: int | None = None  # of the one memory run
    runs: int = 0
    value: float | None = None
    grads: list[torch.Tensor] | None = None
    note: str = ""


def measure(
    step: Callable[[], Any],
    device: torch.device,
    meter: MemoryMeter,
    warmup: int,
    repeats: int,
    target_seconds: float,
    cleanup: Callable[[], None],
    first_call_limit: float = 0.0,
) -> Measurement:
    """Warm up, measure the peak memory of one call, then time up to ``repeats`` calls.

    The memory run counts as the first warm-up call (except when ``first_call_limit`` is set,
    i.e. for ``torch.compile``, whose first call compiles and is never measured). Timed calls
    are not profiled; fewer of them run when they would take longer than ``target_seconds``.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = Measurement()
    for index in range(max(warmup, 1) if first_call_limit > 0 else max(warmup - 1, 0)):
        cleanup()
        sync()
        with _time_limit(first_call_limit if index == 0 else 0.0):
            step()
        sync()
    cleanup()
    memory: dict[str, int] = {}
    start = time.perf_counter()
    with meter.measure(memory):
        step()
    sync()
    untimed = time.perf_counter() - start
    out.peak_bytes = memory["peak"]
    if untimed * repeats > target_seconds:
        repeats = max(1, min(repeats, round(target_seconds / max(untimed, 1e-9))))
    times: list[float] = []
    result = None
    for _ in range(repeats):
        cleanup()
        gc.collect()
        sync()
        start = time.perf_counter()
        result = step()
        sync()
        times.append(time.perf_counter() - start)
    out.seconds = out.median_seconds = statistics.median(times)
    out.min_seconds = min(times)
    out.runs = len(times)
    if isinstance(result, torch.Tensor):
        out.value = float(result.detach().double())
    return out


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


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


def _grad_difference(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    worst = 0.0
    for grad, ref in zip(grads, reference, strict=True):
        ref64 = ref.double()
        scale = max(float(ref64.norm()), 1e-30)
        worst = max(worst, float((grad.double() - ref64).norm()) / scale)
    return worst


_REFERENCE_CACHE: dict[tuple[Any, ...], float] = {}


def reference_value(case: Case, inputs: tuple[torch.Tensor, ...]) -> float:
    """The library's float64 evaluation on the same inputs (cached per shape and input dtype)."""
    key = (case.granularity, case.batch, case.seq, case.emb, case.dtype)
    if key not in _REFERENCE_CACHE:
        means, stds, mask, clean, noisy = inputs
        with torch.no_grad():
            args = [t.detach().double() for t in (means, stds)]
            value = mutual_information_sub_batch(
                args[0],
                args[1],
                mask,
                clean.detach().double(),
                noisy.detach().double(),
                granularity=case.granularity,
            )
        _REFERENCE_CACHE[key] = float(value)
    return _REFERENCE_CACHE[key]


def run_case(
    case: Case, args: argparse.Namespace, device: torch.device, meter: MemoryMeter
) -> dict[str, Any]:
    """Measure naive, library and floor for ``case``; one row of the table."""
    means, stds, mask, clean, noisy = make_inputs(case, device, seed=args.seed)
    leaves = [means, stds, clean, noisy]
    m, n = _active_counts(case, mask)
    row: dict[str, Any] = {
        "device": device.type,
        "granularity": case.granularity,
        "B": case.batch,
        "S": case.seq,
        "E": case.emb,
        "dtype": case.dtype_label,
        "compile": "on" if case.compile else "off",
        "M": m,
        "N": n,
    }
    notes: list[str] = []

    def cleanup() -> None:
        for leaf in leaves:
            leaf.grad = None

    autocast = (
        torch.autocast(device.type, dtype=DTYPES[case.autocast])
        if case.autocast
        else contextlib.nullcontext()
    )

    # (b) the library
    library_fn: Callable[..., torch.Tensor] = mutual_information_sub_batch
    if case.compile:
        torch._dynamo.reset()
        library_fn = torch.compile(mutual_information_sub_batch)

    def library_step() -> torch.Tensor:
        with autocast:
            value = library_fn(means, stds, mask, clean, noisy, granularity=case.granularity)
        value.backward()
        return value

    library = Measurement()
    try:
        library = measure(
            library_step,
            device,
            meter,
            warmup=args.warmup,
            repeats=args.repeats,
            target_seconds=args.target_seconds,
            cleanup=cleanup,
            first_call_limit=args.compile_timeout if case.compile else 0.0,
        )
        library.grads = [leaf.grad.detach().clone() for leaf in leaves]
    except Exception as error:  # report a failed compile in the row instead of crashing
        if not case.compile:
            raise
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:160]
        notes.append(f"compile failed: {reason}")
        torch._dynamo.reset()
    cleanup()

    # (a) the naive broadcast
    naive = Measurement()
    naive_bytes = naive_memory_estimate(case, m, n)
    budget = args.naive_budget_gib * GIB
    if args.skip_naive:
        naive.note = "naive skipped (--skip-naive)"
    elif naive_bytes > budget:
        naive.note = (
            f"naive skipped: would need {_fmt_gib(naive_bytes)} "
            f"(budget {args.naive_budget_gib:g} GiB)"
        )
    else:

        def naive_step() -> torch.Tensor:
            with autocast:
                value = naive_mutual_information_sub_batch(
                    means, stds, mask, clean, noisy, granularity=case.granularity
                )
            value.backward()
            return value

        naive = measure(
            naive_step,
            device,
            meter,
            warmup=args.warmup,
            repeats=args.repeats,
            target_seconds=args.target_seconds,
            cleanup=cleanup,
        )
        naive.grads = [leaf.grad.detach().clone() for leaf in leaves]
    cleanup()
    if naive.note:
        notes.append(naive.note)

    # (c) the matmul floor
    operands = floor_operands(case, device)
    floor = measure(
        functools.partial(floor_step, operands),
        device,
        meter,
        warmup=args.warmup,
        repeats=args.repeats,
        target_seconds=args.target_seconds,
        cleanup=lambda: None,
    )
    del operands

    if args.statistic == "min":  # the table's times and ratios use the fastest timed call
        for measured in (naive, library, floor):
            measured.seconds = measured.min_seconds
    # accuracy: against the library in float64 on the same inputs, and naive against library
    reference = reference_value(case, (means, stds, mask, clean, noisy)) if args.accuracy else None
    row.update(
        {
            "naive_s": naive.seconds,
            "naive_peak_mib": None if naive.peak_bytes is None else naive.peak_bytes / MIB,
            "library_s": library.seconds,
            "library_peak_mib": None if library.peak_bytes is None else library.peak_bytes / MIB,
            "floor_s": floor.seconds,
            "floor_peak_mib": floor.peak_bytes / MIB if floor.peak_bytes is not None else None,
            "naive_over_library_time": _ratio(naive.seconds, library.seconds),
            "naive_over_library_mem": _ratio(naive.peak_bytes, library.peak_bytes),
            "library_over_floor_time": _ratio(library.seconds, floor.seconds),
            "library_over_floor_mem": _ratio(library.peak_bytes, floor.peak_bytes),
            "library_value": library.value,
            "float64_value": reference,
            "library_rel_err": _relative(library.value, reference),
            "naive_value": naive.value,
            "naive_vs_library_rel_diff": _relative(naive.value, library.value),
            "naive_vs_library_grad_rel_diff": (
                _grad_difference(library.grads, naive.grads)
                if library.grads is not None and naive.grads is not None
                else None
            ),
            "naive_median_s": naive.median_seconds,
            "library_median_s": library.median_seconds,
            "floor_median_s": floor.median_seconds,
            "naive_min_s": naive.min_seconds,
            "library_min_s": library.min_seconds,
            "floor_min_s": floor.min_seconds,
            # the library's peak in units of one float32 (M, N) matrix and of one (B, S, E) input
            "library_peak_over_mn": _ratio(library.peak_bytes, 4 * m * n),
            "library_peak_over_input": _ratio(
                library.peak_bytes, means.numel() * means.element_size()
            ),
            "naive_estimated_gib": naive_bytes / GIB,
            "runs": f"{naive.runs}/{library.runs}/{floor.runs}",
            "note": "; ".join(notes),
        }
    )
    return row


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------

CSV_COLUMNS = [
    "device",
    "granularity",
    "B",
    "S",
    "E",
    "dtype",
    "compile",
    "M",
    "N",
    "naive_s",
    "naive_peak_mib",
    "library_s",
    "library_peak_mib",
    "floor_s",
    "floor_peak_mib",
    "naive_over_library_time",
    "naive_over_library_mem",
    "library_over_floor_time",
    "library_over_floor_mem",
    "library_value",
    "float64_value",
    "library_rel_err",
    "naive_value",
    "naive_vs_library_rel_diff",
    "naive_vs_library_grad_rel_diff",
    "naive_median_s",
    "library_median_s",
    "floor_median_s",
    "naive_min_s",
    "library_min_s",
    "floor_min_s",
    "library_peak_over_mn",
    "library_peak_over_input",
    "naive_estimated_gib",
    "runs",
    "note",
]

# (header, csv column, format)
MARKDOWN_COLUMNS: list[tuple[str, str, str]] = [
    ("granularity", "granularity", "s"),
    ("B", "B", "d"),
    ("S", "S", "d"),
    ("E", "E", "d"),
    ("dtype", "dtype", "s"),
    ("compile", "compile", "s"),
    ("naive s", "naive_s", "time"),
    ("naive MiB", "naive_peak_mib", "mib"),
    ("library s", "library_s", "time"),
    ("library MiB", "library_peak_mib", "mib"),
    ("floor s", "floor_s", "time"),
    ("floor MiB", "floor_peak_mib", "mib"),
    ("naive/lib time", "naive_over_library_time", "ratio"),
    ("naive/lib mem", "naive_over_library_mem", "ratio"),
    ("lib/floor time", "library_over_floor_time", "ratio"),
    ("rel err vs f64", "library_rel_err", "err"),
    ("naive vs lib", "naive_vs_library_rel_diff", "err"),
    ("note", "note", "s"),
]


def _format(value: Any, kind: str) -> str:
    if value is None or value == "":
        return "—" if kind != "s" else ""
    if kind == "time":
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    if kind == "mib":
        return f"{value:.1f}" if value < 100 else f"{value:.0f}"
    if kind == "ratio":
        return f"{value:.2f}x" if value < 10 else f"{value:.0f}x"
    if kind == "err":
        return f"{value:.1e}"
    return str(value)


def machine_line(device: torch.device) -> str:
    """CPU model, cores, torch version, date (and the GPU on CUDA)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read(), re.MULTILINE)
        if match:
            model = match.group(1).strip()
    parts = [
        f"CPU: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        f"torch {torch.__version__}",
        f"python {platform.python_version()}",
    ]
    with contextlib.suppress(OSError):
        load = os.getloadavg()
        parts.append(f"load average at start {load[0]:.1f}")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        parts.insert(
            1,
            f"GPU: {props.name} ({props.total_memory / GIB:.0f} GiB), CUDA {torch.version.cuda}, "
            f"TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}",
        )
    parts.append(datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    return "; ".join(parts)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    header = "| " + " | ".join(name for name, _, _ in MARKDOWN_COLUMNS) + " |"
    rule = "|" + "|".join("---" if kind == "s" else "--:" for _, _, kind in MARKDOWN_COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        cells = [_format(row.get(key), kind) for _, key, kind in MARKDOWN_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(
    rows: list[dict[str, Any]],
    out_dir: Path,
    device: torch.device,
    machine: str,
    command: str,
    memory: str,
    statistic: str = "median",
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"results_{device.type}.csv"
    md_path = out_dir / f"results_{device.type}.md"
    with open(csv_path, "w", newline="") as handle:
        handle.write(f"# machine: {machine}\n")
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {key: ("" if row.get(key) is None else row.get(key)) for key in CSV_COLUMNS}
            )
    with contextlib.suppress(OSError):
        machine += f" (at end {os.getloadavg()[0]:.1f})"
    text = [
        f"Machine: {machine}",
        "",
        f"Command: `{command}`",
        "",
        f"Forward + backward of `mutual_information_sub_batch` (gradients w.r.t. all four "
        f"`(B, S, E)` inputs); seconds: {statistic} of the timed calls; peak extra memory in MiB above the inputs "
        f"(input gradients included), measured with `{memory}`.",
        "",
        markdown_table(rows),
        "",
    ]
    md_path.write_text("\n".join(text))
    return csv_path, md_path


def print_table(rows: list[dict[str, Any]], machine: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(machine)
        print(markdown_table(rows))
        return
    table = Table(title=machine, show_lines=False)
    for name, _, kind in MARKDOWN_COLUMNS:
        table.add_column(name, justify="left" if kind == "s" else "right", overflow="fold")
    for row in rows:
        table.add_row(*[_format(row.get(key), kind) for _, key, kind in MARKDOWN_COLUMNS])
    Console(width=320).print(table)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


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
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="at most this many timed runs")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=10.0,
        help="fewer repeats when they would take longer than this (per method and case)",
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
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--statistic",
        choices=["median", "min"],
        default="median",
        help="time statistic of the table (both are in the CSV); min resists a busy machine",
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    if args.naive_budget_gib is None:
        if device.type == "cuda":
            args.naive_budget_gib = (
                0.6 * torch.cuda.get_device_properties(device).total_memory / GIB
            )
        else:
            args.naive_budget_gib = 12.0
    meter = MemoryMeter(device, args.memory)
    machine = machine_line(device)
    command = "python benchmarks/bench_estimators.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print(machine, file=sys.stderr)
    rows = []
    for case in select_cases(args, device):
        start = time.perf_counter()
        print(
            f"[bench] {case.shape_label} {case.dtype_label} compile={case.compile} ...",
            file=sys.stderr,
            flush=True,
        )
        row = run_case(case, args, device, meter)
        rows.append(row)
        summary = ", ".join(
            f"{key}={_format(row[key], kind)}"
            for _, key, kind in MARKDOWN_COLUMNS[6:]
            if row.get(key) not in (None, "")
        )
        print(
            f"[bench]   {summary} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        # write after every case so that an interrupted run leaves what it measured
        write_results(rows, args.out, device, machine, command, meter.method, args.statistic)
    print_table(rows, machine)
    csv_path, md_path = write_results(
        rows, args.out, device, machine, command, meter.method, args.statistic
    )
    print(f"wrote {md_path} and {csv_path}")
    return rows


if __name__ == "__main__":
    main()
