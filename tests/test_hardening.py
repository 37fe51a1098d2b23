"""Hardened numerics (issue 9, MATH.md "Numerics"), applied to every registered function.

Every test here runs over :data:`tests.harness.REGISTRY` (every public function of
``mi_losses.functional``, both granularities, both mask flags, symmetric or not) and the
``device`` fixture:

- second derivatives: Hessian-vector products against float64 autograd through the broadcast
  reference of ``tests/reference.py``, and ``gradgradcheck`` (finite differences);
  ``torch.func.grad`` and ``torch.func.jacrev``;
- inactive positions are never read: padding filled with NaN, inf, 0, -1, 1e30 or 1e-30 gives
  bitwise the same value and gradients as clean padding, and an exactly-zero gradient there;
- accuracy at any scale (offsets and scales from 1e-30 to 1e30) and for near-duplicate pairs far
  from the batch mean, against float64; ``inf``, never NaN, where the exact value overflows;
- empty axes give 0 with zero gradients or a ``ValueError``, never another exception;
- every bad input raises a ``ValueError`` naming the argument and the offending value;
- ``torch.compile(fullgraph=True)`` with ``validate_args=False``; no host sync on CUDA.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.harness import (
    REGISTRY,
    Case,
    Data,
    Entry,
    Variant,
    active_position,
    entries,
    entry_variants,
    grads,
    masked_variant,
    scalar,
    value_tolerance,
)


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


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_gradgradcheck(entry: Entry, variant: Variant, device: torch.device) -> None:
    """Second derivatives against finite differences of the first (float64)."""
    case = entry.case(variant, Data(seed=3)).to(torch.float64, device, requires_grad=True)
    names = list(case.tensors)

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return entry.evaluate(case.with_tensors(**dict(zip(names, tensors, strict=True))))["value"]

    assert torch.autograd.gradgradcheck(fn, tuple(case.tensors.values()))


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


@pytest.mark.parametrize("fill", list(FILLS))
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
    got = value.detach().double().cpu()
    if magnitude > 1e-3 * largest or bool((exact.abs() > largest).any()):
        # terms or result beyond the compute dtype: inf of the right sign is the honest answer
        overflow = exact.abs() > largest
        assert bool(torch.isinf(got[overflow]).all()), (
            f"{got} should be inf where {exact} overflows"
        )
        assert bool((got[overflow].sign() == exact[overflow].sign()).all())
        finite = ~overflow & torch.isfinite(got)
        rtol, atol = value_tolerance(dtype, 0.0)
        torch.testing.assert_close(got[finite], exact[finite], rtol=max(rtol, 1e-4), atol=math.inf)
        return
    rtol, atol = value_tolerance(dtype, magnitude)
    torch.testing.assert_close(got, exact, rtol=rtol, atol=atol)
    found = grads(value, list(case.tensors.values()))
    for name, grad in zip(case.tensors, found, strict=True):
        assert not bool(torch.isnan(grad).any()), f"NaN in the gradient of {name}"
        assert bool(torch.isfinite(grad).all()), f"non-finite gradient of {name}"


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


@pytest.fixture
def _fresh_dynamo():  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("_fresh_dynamo")
@pytest.mark.parametrize("entry", entries())
def test_compile_fullgraph(entry: Entry, device: torch.device) -> None:
    """With ``validate_args=False`` the whole function is one graph (no data-dependent
    Python branch); compiled value and gradients equal eager ones."""
    variant = entry.variant(entry.key_variants[-1])  # test_matrix compiles key_variants[0]
    base = entry.case(variant, Data(seed=11))
    base.options["validate_args"] = False
    names = list(base.tensors)

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return entry.evaluate(base.with_tensors(**dict(zip(names, tensors, strict=True))))["value"]

    eager_case = base.to(torch.float32, device, requires_grad=True)
    compiled_case = base.to(torch.float32, device, requires_grad=True)
    eager = fn(*eager_case.tensors.values())
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(
        *compiled_case.tensors.values()
    )
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    expected = grads(eager, list(eager_case.tensors.values()))
    found = grads(compiled, list(compiled_case.tensors.values()))
    for name, got, want in zip(names, found, expected, strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("entry", entries())
def test_no_host_sync_on_cuda(entry: Entry) -> None:
    """Forward and backward on benign data with ``validate_args=False`` never wait for the
    device (no accuracy fallback is needed there)."""
    case = entry.case(entry.key_variants[0], Data(seed=12))
    case.options["validate_args"] = False
    case = case.to(torch.float32, "cuda", requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = entry.evaluate(case)["value"]
        grads(value, list(case.tensors.values()))
    finally:
        torch.cuda.set_sync_debug_mode("default")
