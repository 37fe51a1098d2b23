"""Bad input, whole-graph compilation and host synchronisation of every public function.

Part of the hardening matrix of issue 9 (MATH.md "Numerics"): every test runs over every
registered function of ``tests.registry.REGISTRY`` (both granularities, both mask flags,
symmetric or not) and over the ``device`` fixture. Many of these fail on the kernel of
``main`` before issue 9 is fixed: they are its to-do list (not xfail on purpose).

- every bad input raises a ``ValueError`` naming the argument and the offending value (mask
  values, list masks, non-bool flags, NaN/inf or non-positive stds at active positions);
- ``torch.compile(fullgraph=True)`` with ``validate_args=False``; no host sync on CUDA.
"""

from __future__ import annotations

import inspect
import math
import re

import pytest
import torch

import mi_losses.functional
from mi_losses.options import KernelOptions
from tests.harness import (
    Case,
    Data,
    Entry,
    active_position,
    assert_compiled_matches_eager,
    grads,
)
from tests.registry import REGISTRY, entries, masked_variant

# ---------------------------------------------------------------------------------------------
# Bad input: a ValueError naming the argument and the offending value
# ---------------------------------------------------------------------------------------------


def _mask_params() -> list:  # type: ignore[type-arg]
    return [
        pytest.param(entry, name, id=f"{entry.name}-{name}")
        for entry in REGISTRY
        for name in entry.masks
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5, "0.5"), (2.0, "2"), (2, "2"), (-1, "-1")],
    ids=["float_half", "float_two", "int_two", "int_minus_one"],
)
@pytest.mark.parametrize(("entry", "name"), _mask_params())
def test_mask_values_other_than_0_and_1(entry: Entry, name: str, value, text: str) -> None:  # type: ignore[no-untyped-def]
    case = entry.case(masked_variant(entry))
    shape = entry.masks[name](case)
    mask = torch.ones(shape, dtype=torch.float64 if isinstance(value, float) else torch.long)
    mask.view(-1)[0] = value
    with pytest.raises(ValueError, match=rf"\b{name}\b") as error:
        entry.evaluate(Case(case.tensors, {**case.masks, name: mask}, case.options))
    assert re.search(rf"(?<![\d.]){re.escape(text)}(?![\d])", str(error.value)), str(error.value)


@pytest.mark.parametrize(("entry", "name"), _mask_params())
def test_list_mask_is_a_value_error(entry: Entry, name: str) -> None:
    case = entry.case(masked_variant(entry))
    shape = entry.masks[name](case)
    as_list = torch.ones(shape, dtype=torch.bool).tolist()
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        entry.evaluate(Case(case.tensors, {**case.masks, name: as_list}, case.options))


def _flag_params() -> list:  # type: ignore[type-arg]
    return [
        pytest.param(entry, flag, id=f"{entry.name}-{flag}")
        for entry in REGISTRY
        for flag in entry.flags
    ]


@pytest.mark.parametrize("bad", ["no", 1, None], ids=["str", "int", "none"])
@pytest.mark.parametrize(("entry", "flag"), _flag_params())
def test_flags_must_be_real_bools(entry: Entry, flag: str, bad: object) -> None:
    """``symmetric="no"`` must not act as true: functional flags are checked like YAML ones."""
    case = entry.case(entry.variants[0])
    with pytest.raises(ValueError, match=rf"{flag}.*{re.escape(repr(bad))}"):
        entry.evaluate(Case(case.tensors, case.masks, {**case.options, flag: bad}))


def _argument_params() -> list:  # type: ignore[type-arg]
    params = []
    for entry in REGISTRY:
        case = entry.case(masked_variant(entry))
        for name in case.tensors:
            params.append(pytest.param(entry, name, id=f"{entry.name}-{name}"))
    return params


@pytest.mark.parametrize(
    ("bad", "text"), [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "inf")]
)
@pytest.mark.parametrize(("entry", "name"), _argument_params())
def test_non_finite_at_active_positions(entry: Entry, name: str, bad: float, text: str) -> None:
    """NaN or inf where the value is read: a ``ValueError`` naming the argument."""
    case = entry.case(masked_variant(entry))
    tensor = case.tensors[name].clone()
    tensor[active_position(entry, case, name)] = bad
    with pytest.raises(ValueError, match=rf"(?i)\b{name}\b.*\b{text}\b"):
        entry.evaluate(case.with_tensors(**{name: tensor}))


def _stds_params() -> list:  # type: ignore[type-arg]
    return [
        pytest.param(entry, name, id=f"{entry.name}-{name}")
        for entry in REGISTRY
        for name in entry.stds
    ]


@pytest.mark.parametrize(("bad", "text"), [(0.0, "0"), (-1.0, "-1")])
@pytest.mark.parametrize(("entry", "name"), _stds_params())
def test_non_positive_stds_at_active_positions(
    entry: Entry, name: str, bad: float, text: str
) -> None:
    case = entry.case(masked_variant(entry))
    tensor = case.tensors[name].clone()
    tensor[active_position(entry, case, name)] = bad
    bad_case = case.with_tensors(**{name: tensor})
    with pytest.raises(ValueError, match=rf"\b{name}\b.*> 0.*{re.escape(text)}"):
        entry.evaluate(bad_case)
    # validate_args=False skips the check (no error, whatever the value)
    bad_case.options["validate_args"] = False
    entry.evaluate(bad_case)


# ---------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True), host synchronisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("entry", entries())
def test_compile_fullgraph(entry: Entry, device: torch.device) -> None:
    """With ``validate_args=False`` the whole function is one graph (no data-dependent
    Python branch); compiled value and gradients equal eager ones."""
    variant = entry.variant(entry.key_variants[-1])  # test_matrix compiles key_variants[0]
    assert_compiled_matches_eager(entry, entry.case(variant, Data(seed=11)), device, fullgraph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("entry", entries())
def test_no_host_sync_on_cuda(entry: Entry) -> None:
    """Forward and backward with ``validate_args=False`` (and no rounding check where a
    function has the rounding check, whose one synchronisation per call its docstring states)
    never wait for the device."""
    case = entry.case(entry.key_variants[0], Data(seed=12))
    case.options["validate_args"] = False
    function = getattr(mi_losses.functional, entry.name)
    if "kernel" in inspect.signature(function).parameters:
        case.options["kernel"] = KernelOptions(accuracy_check=False)
    case = case.to(torch.float32, "cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = entry.evaluate(case)["value"]
        grads(value, list(case.tensors.values()))
    finally:
        torch.cuda.set_sync_debug_mode("default")
