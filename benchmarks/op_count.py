"""ATen operations per forward + backward call of ``mutual_information_sub_batch`` (CPU).

Counted with a ``TorchDispatchMode`` (views, copies and scalar tensors included): on a GPU each
one is a launch. Prints one row per shape and setting::

    python benchmarks/op_count.py
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if __package__ in (None, ""):  # run as `python benchmarks/op_count.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.grids import Case, make_inputs
from mi_losses.functional import mutual_information_sub_batch
from mi_losses.options import KernelOptions

SETTINGS = {
    "default": {},
    "losses={}": {"losses": {}},
    "no checks": {"validate_args": False, "kernel": KernelOptions(accuracy_check=False)},
    "kernel='reference'": {"kernel": "reference"},
}


class OperationCount(TorchDispatchMode):
    """Counts the ATen operations run inside it, by name."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count(granularity: str, batch: int, seq: int, emb: int, **options: object) -> int:
    """Operations of one forward + backward call (gradients for all four inputs) on the
    benchmarks' inputs (:func:`benchmarks.grids.make_inputs`: padded sequences)."""
    inputs = make_inputs(Case(granularity, batch, seq, emb), torch.device("cpu"))
    with OperationCount() as counter:
        value = mutual_information_sub_batch(*inputs, granularity=granularity, **options)  # type: ignore[arg-type]
        value.backward()
    return sum(counter.ops.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    shapes = [("token", 4, 64, 256), ("sequence", 16, 64, 256)]
    print("| shape | " + " | ".join(SETTINGS) + " |")
    print("|---|" + "--:|" * len(SETTINGS))
    for shape in shapes:
        counts = [count(*shape, **options) for options in SETTINGS.values()]
        name = " ".join(str(v) for v in shape)
        print(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")


if __name__ == "__main__":
    main()
