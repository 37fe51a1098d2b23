"""ATen operations per forward + backward call of ``mutual_information_sub_batch`` (CPU).

Counted with a ``TorchDispatchMode`` (views, copies and scalar tensors included): on a GPU
every one of them is a launch. The issue's target is 150; the reference path with autograd
and the default checks (``validate_args``, ``accuracy_check``) reaches the bound below.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mi_losses.functional import mutual_information_sub_batch

BOUND = 250


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("granularity", "batch"), [("token", 4), ("sequence", 16)])
def test_operations_per_call(granularity: str, batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(batch, 64, 256, generator=g)
    means = torch.zeros_like(clean).requires_grad_()
    stds = torch.full_like(clean, 0.5).requires_grad_()
    noisy = (clean + 0.5 * torch.randn(batch, 64, 256, generator=g)).requires_grad_()
    clean.requires_grad_()
    with _Count() as count:
        value = mutual_information_sub_batch(
            means, stds, None, clean, noisy, granularity=granularity
        )
        value.backward()
    total = sum(count.ops.values())
    assert total <= BOUND, count.ops.most_common(20)
