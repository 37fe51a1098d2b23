"""Second derivatives and function transforms of every public function.

Part of the hardening matrix of issue 9 (MATH.md "Numerics"): every test runs over every
registered function of ``tests.registry.REGISTRY`` (both granularities, both mask flags,
symmetric or not) and over the ``device`` fixture. Many of these fail on the kernel of
``main`` before issue 9 is fixed: they are its to-do list (not xfail on purpose).

- Hessian-vector products (a gradient penalty) against float64 autograd through the broadcast
  reference of ``tests/reference.py``, and ``gradgradcheck`` (finite differences);
- ``torch.func.grad`` and ``torch.func.jacrev`` equal autograd.
"""

from __future__ import annotations

import pytest
import torch

from tests.harness import (
    Case,
    Data,
    Entry,
    Variant,
    grads,
    scalar,
)
from tests.registry import entry_variants


def _run(entry: Entry, case: Case) -> tuple[torch.Tensor, list[torch.Tensor]]:
    value = entry.evaluate(case)["value"]
    return value, grads(value, list(case.tensors.values()))


# ---------------------------------------------------------------------------------------------
# Second derivatives
# ---------------------------------------------------------------------------------------------


def _hessian_vector(
    evaluate, case: Case, directions: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:  # type: ignore[no-untyped-def]
    """A gradient penalty: ``g = d f / d inputs`` (with graph), then ``d (g . v) / d inputs``."""
    inputs = list(case.tensors.values())
    first = grads(evaluate(case)["value"], inputs, create_graph=True)
    penalty = sum((g * v).sum() for g, v in zip(first, directions, strict=True))
    return [g.detach() for g in first], grads(penalty, inputs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_second_derivatives_match_float64_reference(
    entry: Entry, variant: Variant, device: torch.device
) -> None:
    """``torch.autograd.grad(..., create_graph=True)`` then backward: exact Hessian-vector
    products (what a gradient penalty needs), equal to those of the broadcast reference."""
    case = entry.case(variant, Data(seed=1))
    generator = torch.Generator().manual_seed(2)
    directions = [
        torch.randn(t.shape, generator=generator, dtype=torch.float64)
        for t in case.tensors.values()
    ]
    got_case = case.to(torch.float64, device, requires_grad=True)
    got_first, got_second = _hessian_vector(
        entry.evaluate, got_case, [d.to(device) for d in directions]
    )
    ref_case = case.to(torch.float64, "cpu", requires_grad=True)
    expected_first, expected_second = _hessian_vector(entry.reference, ref_case, directions)
    for name, got, expected in zip(case.tensors, got_first, expected_first, strict=True):
        torch.testing.assert_close(
            got.cpu(), expected, rtol=1e-7, atol=1e-9, msg=lambda m, n=name: f"grad {n}: {m}"
        )
    for name, got, expected in zip(case.tensors, got_second, expected_second, strict=True):
        torch.testing.assert_close(
            got.cpu(),
            expected,
            rtol=1e-7,
            atol=1e-9,
            msg=lambda m, n=name: f"Hessian-vector product, {n}: {m}",
        )


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_gradgradcheck(entry: Entry, variant: Variant, device: torch.device) -> None:
    """Second derivatives against finite differences of the first (float64). ``fast_mode``
    checks random projections of the Jacobian (seconds instead of minutes over the registry);
    the Hessian-vector test above compares every element with the reference."""
    case = entry.case(variant, Data(seed=3)).to(torch.float64, device, requires_grad=True)
    names = list(case.tensors)

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return entry.evaluate(case.with_tensors(**dict(zip(names, tensors, strict=True))))["value"]

    assert torch.autograd.gradgradcheck(fn, tuple(case.tensors.values()), fast_mode=True)


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_torch_func_grad_and_jacrev(entry: Entry, variant: Variant, device: torch.device) -> None:
    """``torch.func.grad`` (scalar outputs) and ``torch.func.jacrev`` give autograd's gradient."""
    case = entry.case(variant, Data(seed=4)).to(torch.float64, device)
    names = list(case.tensors)
    argnums = tuple(range(len(names)))

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return entry.evaluate(case.with_tensors(**dict(zip(names, tensors, strict=True))))["value"]

    leaves = case.to(torch.float64, device, requires_grad=True)
    value = fn(*leaves.tensors.values())
    expected = grads(value, list(leaves.tensors.values()))
    if value.ndim == 0:
        found = torch.func.grad(fn, argnums=argnums)(*case.tensors.values())
        for name, got, want in zip(names, found, expected, strict=True):
            torch.testing.assert_close(got, want, msg=lambda m, n=name: f"func.grad {n}: {m}")
    jacobians = torch.func.jacrev(fn, argnums=argnums)(*case.tensors.values())
    weights = None
    if value.ndim:  # the weights of harness.scalar, to contract the Jacobian's output axes
        leaf = value.detach().requires_grad_()
        (weights,) = torch.autograd.grad(scalar(leaf), leaf)
    for name, jacobian, want in zip(names, jacobians, expected, strict=True):
        got = jacobian if weights is None else torch.tensordot(weights, jacobian, dims=value.ndim)
        torch.testing.assert_close(got, want, msg=lambda m, n=name: f"jacrev {n}: {m}")
