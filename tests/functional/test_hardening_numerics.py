"""Masked positions never read, accuracy at any scale, near-duplicates, empty axes.

Part of the hardening matrix of issue 9 (MATH.md "Numerics"): every test runs over every
registered function of ``tests.registry.REGISTRY`` (both granularities, both mask flags,
symmetric or not) and over the ``device`` fixture. Many of these fail on the kernel of
``main`` before issue 9 is fixed: they are its to-do list (not xfail on purpose).

- padding filled with NaN, inf, 0, -1, 1e30 or 1e-30 gives bitwise the value and gradients
  of clean padding, and an exactly-zero gradient there;
- offsets and scales from 1e-30 to 1e30 and near-duplicate pairs far from the batch mean
  against float64 (``inf``, never NaN, where the exact value overflows);
- empty axes give 0 with zero gradients or a ``ValueError``, never another exception.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.harness import (
    Case,
    Data,
    Entry,
    Variant,
    grads,
    value_tolerance,
)
from tests.registry import REGISTRY, entry_variants


def _run(entry: Entry, case: Case) -> tuple[torch.Tensor, list[torch.Tensor]]:
    value = entry.evaluate(case)["value"]
    return value, grads(value, list(case.tensors.values()))


# ---------------------------------------------------------------------------------------------
# Inactive positions are never read
# ---------------------------------------------------------------------------------------------

FILLS = {
    "nan": math.nan,
    "inf": math.inf,
    "zero": 0.0,
    "minus_one": -1.0,
    "1e30": 1e30,
    "1e-30": 1e-30,
}


def _padding_params() -> list:  # type: ignore[type-arg]
    params = []
    for param in entry_variants():
        entry, variant = param.values
        case = entry.case(variant)
        for name, inactive in entry.inactive(case).items():
            if bool(inactive.any()):
                params.append(pytest.param(entry, variant, name, id=f"{param.id}-{name}"))
    return params


FAST_FILLS = ("nan", "1e30")
"""Fills of the quick run (``-m "not slow"``): NaN spreads through any read, 1e30 overflows."""


@pytest.mark.parametrize(
    "fill", [pytest.param(f, marks=() if f in FAST_FILLS else pytest.mark.slow) for f in FILLS]
)
@pytest.mark.parametrize(("entry", "variant", "name"), _padding_params())
def test_padding_is_never_read(
    entry: Entry,
    variant: Variant,
    name: str,
    fill: str,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Whatever a masked position holds, value and gradients are bitwise those of clean
    padding, and the gradient there is exactly 0 (validation on, so it must not reject it)."""
    case = entry.case(variant, Data(seed=5))
    inactive = entry.inactive(case)
    clean = case.to(dtype, device, requires_grad=True)
    clean_value, clean_grads = _run(entry, clean)

    padded_tensor = case.tensors[name].clone()
    padded_tensor[inactive[name]] = FILLS[fill]
    padded = case.with_tensors(**{name: padded_tensor}).to(dtype, device, requires_grad=True)
    value, found = _run(entry, padded)

    assert torch.equal(value, clean_value), f"value changed: {clean_value} -> {value}"
    for arg, got, want in zip(case.tensors, found, clean_grads, strict=True):
        where = inactive[arg].to(device)
        assert torch.equal(got, want), f"gradient of {arg} changed"
        assert bool((got[where] == 0).all()), f"gradient of {arg} is not 0 at masked positions"


# ---------------------------------------------------------------------------------------------
# Accuracy at any scale, near-duplicates, against float64
# ---------------------------------------------------------------------------------------------

SCALES = {
    # all of x, mu, y and sigma scaled together
    "scale=1e-30": Data(seed=6, spread=1e-30, std=1e-30),
    "scale=1e-10": Data(seed=6, spread=1e-10, std=1e-10),
    "scale=1e10": Data(seed=6, spread=1e10, std=1e10),
    "scale=1e30": Data(seed=6, spread=1e30, std=1e30),
    # a common offset of x and y
    "offset=1e10": Data(seed=7, offset=1e10, spread=1.0, std=1.0),
    "offset=1e30": Data(seed=7, offset=1e30, spread=1.0, std=1.0),
    "offset=-1e30,scale=1e30": Data(seed=7, offset=-1e30, spread=1e30, std=1e30),
    # stds far from the data's scale
    "std=1e-30": Data(seed=8, spread=1.0, std=1e-30),
    "std=1e30": Data(seed=8, spread=1.0, std=1e30),
}

# Gradients against float64 autograd through the reference, relative to their largest entry.
GRAD_TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-7}

NEAR_DUPLICATES = {
    # samples alternate between two clusters at +- far; each 1e-3 std from its cluster
    "far=1e4std": Data(seed=9, std=1.0, far=1e4),
    "far=1e6std": Data(seed=9, std=1e-3, far=1e3),
    "far=1e8std,offset=1e3": Data(seed=9, offset=1e3, std=1e-6, far=1e2),
}


def _key_variants() -> list:  # type: ignore[type-arg]
    return entry_variants(lambda e, v: v.id in e.key_variants)


def _check_against_float64(
    entry: Entry, variant: Variant, data: Data, dtype: torch.dtype, device: torch.device
) -> None:
    """The value against float64 evaluated on the same (rounded) inputs: within MATH.md's
    accuracy where the exact value is representable, ``inf`` where it overflows, never NaN;
    gradients finite wherever the value is."""
    case = entry.case(variant, data).to(dtype, device, requires_grad=True)
    value = entry.evaluate(case)["value"]
    assert not bool(torch.isnan(value).any()), f"NaN value: {value}"
    exact_case = case.to(torch.float64, "cpu")
    expected = entry.reference(exact_case)
    exact = expected["value"].detach()
    compute = torch.promote_types(dtype, torch.float32)
    largest = torch.finfo(compute).max
    magnitude = entry.magnitude(exact_case, expected)
    rtol, atol = value_tolerance(dtype, magnitude)
    got = value.detach().double().cpu()
    # where the exact result overflows the compute dtype, inf of the right sign is the answer
    overflow = exact.abs() > largest
    assert bool(torch.isinf(got[overflow]).all()), f"{got} should be inf where {exact} overflows"
    assert bool((got[overflow].sign() == exact[overflow].sign()).all()), f"{got} vs {exact}"
    if magnitude > 0.1 * largest:
        # terms beyond the compute dtype although the result is not: inf or accurate
        finite = ~overflow & torch.isfinite(got)
        torch.testing.assert_close(got[finite], exact[finite], rtol=rtol, atol=atol)
        return
    torch.testing.assert_close(got[~overflow], exact[~overflow], rtol=rtol, atol=atol)
    if bool(overflow.any()):
        return
    found = grads(value, list(case.tensors.values()))
    exact_case = case.to(torch.float64, "cpu", requires_grad=True)
    exact_grads = grads(entry.reference(exact_case)["value"], list(exact_case.tensors.values()))
    for name, grad, exact_grad in zip(case.tensors, found, exact_grads, strict=True):
        assert not bool(torch.isnan(grad).any()), f"NaN in the gradient of {name}"
        assert bool(torch.isfinite(grad).all()), f"non-finite gradient of {name}"
        # against float64 autograd through the reference, relative to the largest entry
        size = float(exact_grad.abs().max()) if exact_grad.numel() else 0.0
        torch.testing.assert_close(
            grad.double().cpu(), exact_grad, rtol=0.0, atol=GRAD_TOLERANCE[compute] * size + 1e-300
        )


@pytest.mark.parametrize("data", list(SCALES.values()), ids=list(SCALES))
@pytest.mark.parametrize(("entry", "variant"), _key_variants())
def test_any_scale_against_float64(
    entry: Entry, variant: Variant, data: Data, dtype: torch.dtype, device: torch.device
) -> None:
    _check_against_float64(entry, variant, data, dtype, device)


@pytest.mark.parametrize("data", list(NEAR_DUPLICATES.values()), ids=list(NEAR_DUPLICATES))
@pytest.mark.parametrize(("entry", "variant"), _key_variants())
def test_near_duplicates_far_from_the_mean(
    entry: Entry, variant: Variant, data: Data, dtype: torch.dtype, device: torch.device
) -> None:
    """Pair terms within 1e-5 rel + 1e-4 nats (float32), 1e-10 rel + 1e-8 nats (float64)."""
    _check_against_float64(entry, variant, data, dtype, device)


# ---------------------------------------------------------------------------------------------
# Empty axes
# ---------------------------------------------------------------------------------------------


def _empty_params() -> list:  # type: ignore[type-arg]
    return [
        pytest.param(entry, variant, sizes, id=f"{entry.name}[{variant.id}]-{sizes}")
        for entry in REGISTRY
        for variant in entry.variants
        if variant.id in entry.key_variants
        for sizes in entry.empty_sizes
    ]


@pytest.mark.parametrize(("entry", "variant", "sizes"), _empty_params())
def test_empty_axes(entry: Entry, variant: Variant, sizes: tuple[int, ...], device) -> None:  # type: ignore[no-untyped-def]
    """``0`` with zero gradients, or a ``ValueError``; never another exception."""
    case = entry.case(variant, Data(seed=10, sizes=sizes)).to(torch.float32, device, True)
    try:
        value = entry.evaluate(case)["value"]
    except ValueError as error:
        assert str(error)
        return
    assert bool((value == 0).all()), f"{value} should be 0"
    for name, grad in zip(case.tensors, grads(value, list(case.tensors.values())), strict=True):
        assert bool((grad == 0).all()), f"gradient of {name} should be 0"
