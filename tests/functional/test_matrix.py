"""The test matrix: every check applied to every public function of ``mi_losses.functional``.

Each function is described once in :data:`tests.registry.REGISTRY`; every test below runs over
all of its variants (granularities, mask flags, symmetric or not, mask patterns) and over the
``device`` fixture of ``tests/conftest.py`` (cpu, plus cuda where available), so the CUDA run is
this same matrix. Checks: values and components against the float64 reference of
``tests/reference.py`` (float32 and float64, result dtype and device), first-order gradients
against the reference's autograd, module == functional, ``gradcheck``, ``torch.compile``
equivalence (values and gradients), half precision (float16/bfloat16 computed in float32,
returned in the input dtype), mixed devices rejected. The hardening checks of issue 9 (second
derivatives, padding, scales, bad input...) are in ``tests/functional/test_hardening_*.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mi_losses import functional
from tests.harness import Case, Data, Entry, Variant, assert_compiled_matches_eager, grads
from tests.registry import BY_NAME, REGISTRY, entry_variants, masked_variant

_VOCABULARY = (
    "takes a vocabulary table and token ids, not the (B, S, E) inputs the matrix builds; "
    "tests/functional/test_vocabulary.py checks it against a float64 brute force (values, gradients, "
    "gradcheck, gradgradcheck, inactive positions never read)"
)
NOT_IN_MATRIX: dict[str, str] = {
    # name in mi_losses.functional.__all__ -> why the matrix does not apply to it
    "vocabulary_mutual_information": _VOCABULARY,
    "vocabulary_mutual_information_estimate": _VOCABULARY,
    "vocabulary_noise_parameters": "calls a noise layer over a table; tests/functional/test_vocabulary.py",
    "bayes_token_attack": "returns integer guesses (no gradient); tests/functional/test_attack.py",
    "fano_error_floor": "a scalar formula; tests/functional/test_attack.py",
    "token_prior": "counts token ids; tests/functional/test_vocabulary.py",
    "prior_entropy": "a scalar formula; tests/functional/test_vocabulary.py",
    "gaussian_channel_mutual_information": "a closed form; tests/functional/test_closed_form.py",
    "gaussian_differential_entropy": "a closed form; tests/functional/test_closed_form.py",
    "kolchinsky_tracey_entropy_bounds": (
        "returns a (lower, upper) pair of deterministic bounds; tests/functional/test_pairwise_bounds.py "
        "checks both against brute force with gradcheck and gradgradcheck"
    ),
    "kolchinsky_tracey_mutual_information_bounds": "as kolchinsky_tracey_entropy_bounds",
}


def test_registry_covers_the_public_api() -> None:
    """Every public function of ``mi_losses.functional`` has an entry (so the whole matrix
    applies to it): register new functions in ``tests/registry/``, or say in ``NOT_IN_MATRIX``
    why the matrix cannot apply (result types such as NamedTuples are left out)."""
    registered = {entry.name for entry in REGISTRY}
    functions = {
        name for name in functional.__all__ if not isinstance(getattr(functional, name), type)
    }
    missing = sorted(functions - registered - set(NOT_IN_MATRIX))
    assert not missing, f"not in tests.registry.REGISTRY (nor NOT_IN_MATRIX): {missing}"
    root = Path(__file__).resolve().parents[2]
    for name, reason in NOT_IN_MATRIX.items():
        files = re.findall(r"tests/[\w/]+\.py", reason) or re.findall(
            r"tests/[\w/]+\.py", NOT_IN_MATRIX.get(reason.split()[-1], "")
        )
        assert files, f"{name}: the reason names no test file"
        assert all((root / f).is_file() for f in files), f"{name}: {files} missing"


TOLERANCES = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-10},
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
}
HALF_TOLERANCES = {torch.float16: 2e-2, torch.bfloat16: 3e-2}


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_values_match_reference(
    entry: Entry, variant: Variant, dtype: torch.dtype, device: torch.device
) -> None:
    """Value and every component equal the float64 evaluation of MATH.md; the result has the
    input dtype and lives on the input device."""
    case = entry.case(variant, Data(seed=20))
    outputs = entry.evaluate(case.to(dtype, device))
    expected = entry.reference(case)
    assert set(expected) <= set(outputs), f"missing outputs {set(expected) - set(outputs)}"
    for key, want in expected.items():
        got = outputs[key]
        assert got.dtype == dtype, f"{key}: dtype {got.dtype}, expected {dtype}"
        assert got.device.type == device.type, f"{key} on {got.device}, expected {device}"
        torch.testing.assert_close(
            got.detach().cpu().double(),
            want.detach(),
            **TOLERANCES[dtype],
            msg=lambda m, k=key: f"{k}: {m}",
        )


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_gradients_match_reference(entry: Entry, variant: Variant, device: torch.device) -> None:
    """First derivatives with respect to every float input equal the reference's autograd."""
    case = entry.case(variant, Data(seed=21))
    leaves = case.to(torch.float64, device, requires_grad=True)
    found = grads(entry.evaluate(leaves)["value"], list(leaves.tensors.values()))
    ref_leaves = case.to(torch.float64, requires_grad=True)
    expected = grads(entry.reference(ref_leaves)["value"], list(ref_leaves.tensors.values()))
    for name, got, want in zip(case.tensors, found, expected, strict=True):
        assert got.device.type == device.type, f"gradient of {name} on {got.device}"
        torch.testing.assert_close(
            got.cpu(), want, rtol=1e-8, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
        )


@pytest.mark.parametrize(
    ("entry", "variant"), entry_variants(lambda entry, variant: entry.module is not None)
)
def test_module_equals_functional(
    entry: Entry, variant: Variant, dtype: torch.dtype, device: torch.device
) -> None:
    assert entry.module is not None
    case = entry.case(variant, Data(seed=22)).to(dtype, device)
    torch.testing.assert_close(entry.module(case), entry.evaluate(case)["value"], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_gradcheck(entry: Entry, variant: Variant, device: torch.device) -> None:
    """First derivatives against finite differences (float64)."""
    case = entry.case(variant, Data(seed=23)).to(torch.float64, device, requires_grad=True)
    names = list(case.tensors)

    def fn(*tensors: torch.Tensor) -> torch.Tensor:
        return entry.evaluate(case.with_tensors(**dict(zip(names, tensors, strict=True))))["value"]

    assert torch.autograd.gradcheck(fn, tuple(case.tensors.values()))


@pytest.mark.parametrize(("entry", "variant"), entry_variants())
def test_half_precision(
    entry: Entry, variant: Variant, half_dtype: torch.dtype, device: torch.device
) -> None:
    """float16/bfloat16 inputs: computed in float32, returned (value, components, gradients)
    in the input dtype."""
    case = entry.case(variant, Data(seed=24))
    half = case.to(half_dtype, device, requires_grad=True)
    outputs = entry.evaluate(half)
    as_float = half.to(torch.float32, device)  # the same (rounded) inputs, in float32
    expected = entry.evaluate(as_float)
    tol = HALF_TOLERANCES[half_dtype]
    for key, want in expected.items():
        got = outputs[key]
        assert got.dtype == half_dtype, f"{key}: dtype {got.dtype}"
        torch.testing.assert_close(
            got.float(), want.detach(), rtol=tol, atol=tol, msg=lambda m, k=key: f"{k}: {m}"
        )
    found = grads(outputs["value"], list(half.tensors.values()))
    for name, grad in zip(case.tensors, found, strict=True):
        assert grad.dtype == half_dtype, f"gradient of {name}: dtype {grad.dtype}"
        assert bool(torch.isfinite(grad).all()), f"gradient of {name} is not finite"


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize(
    ("entry", "variant"), entry_variants(lambda e, v: v.id == e.key_variants[0])
)
def test_compile_matches_eager(entry: Entry, variant: Variant, device: torch.device) -> None:
    """``torch.compile`` (``aot_eager``: forward and backward traced through AOTAutograd, no C++
    compiler) gives eager's value and gradients, with ``validate_args=False``. One variant per
    function (compiling is slow); ``test_hardening_inputs.test_compile_fullgraph`` compiles another
    one with ``fullgraph=True``."""
    assert_compiled_matches_eager(
        entry, entry.case(variant, Data(seed=25)), device, fullgraph=False
    )


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_inductor_forward_matches_eager() -> None:
    """One case through the default (inductor) backend, forward only (it compiles C++)."""
    entry = BY_NAME["pairwise_square_mahalanobis_distance"]
    case = entry.case("masked", Data(seed=26)).to(torch.float32)
    eager = entry.evaluate(case)["value"]
    compiled = torch.compile(lambda c: entry.evaluate(c)["value"])(case)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def _device_params() -> list:  # type: ignore[type-arg]
    params = []
    for entry in REGISTRY:
        case = entry.case(masked_variant(entry))
        names = [*case.masks] if len(case.tensors) == 1 else [*case.tensors, *case.masks]
        params += [pytest.param(entry, name, id=f"{entry.name}-{name}") for name in names]
    return params


@pytest.mark.parametrize(("entry", "name"), _device_params())
def test_mixed_devices_raise(entry: Entry, name: str, device: torch.device) -> None:
    """One argument on another device: a ``ValueError`` naming it."""
    case = entry.case(masked_variant(entry)).to(torch.float32, device)
    if name in case.tensors:
        moved = case.with_tensors(**{name: case.tensors[name].to("meta")})
    else:
        mask = case.masks[name]
        assert mask is not None
        moved = Case(case.tensors, {**case.masks, name: mask.to("meta")}, case.options)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        entry.evaluate(moved)
