"""Benchmarks of the estimators: ``python benchmarks/bench_estimators.py --help``.

- :mod:`benchmarks.grids`: the cases (shapes, dtypes, compile) and their inputs.
- :mod:`benchmarks.naive`: the naive broadcast evaluation the library is compared with.
- :mod:`benchmarks.floor`: the bare matrix products of the kernel (the speed floor).
- :mod:`benchmarks.memory`: the peak-memory meter (profiler, CUDA allocator or process RSS).
- :mod:`benchmarks.timing`: one step timed with ``torch.utils.benchmark.Timer``.
- :mod:`benchmarks.runner`: one case measured three ways, as one row.
- :mod:`benchmarks.report`: the CSV and Markdown tables and the machine line.
"""
