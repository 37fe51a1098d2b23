"""Bad input raises ``ValueError`` naming the argument (STYLE.md), at the public boundary.

Checks that apply to every public function (mask values, list masks, flags, NaN/inf and
non-positive stds at active positions, mixed devices) live in the matrix
(``tests/functional/test_hardening_inputs.py``, ``tests/functional/test_matrix.py``); this file keeps the
function-specific ones (shapes, batch size, dtypes, granularity) and the checks of
``mi_losses._validation`` itself.
"""

from __future__ import annotations

import re

import pytest
import torch

from mi_losses._validation import (
    as_bool_mask,
    check_bool,
    check_finite_at_active,
    check_mask_values,
    check_positive,
    check_positive_at_active,
    check_same_device,
)
from mi_losses.functional import (
    gaussian_entropy_log_loss,
    gaussian_mixture_entropy,
    gaussian_mixture_entropy_estimate,
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
    pairwise_square_mahalanobis_distance,
    square_mahalanobis_distance,
)
from tests.helpers import (
    ENTROPY_ARG_ORDER,
    ENTROPY_VOCABULARY,
    MI_ARG_ORDER,
    make_entropy_inputs,
    make_inputs,
)

MI_FUNCTIONS = [mutual_information_sub_batch, mutual_information_sub_batch_estimate]
ENTROPY_FUNCTIONS = [gaussian_mixture_entropy, gaussian_mixture_entropy_estimate]


def _call(fn, kwargs: dict, **options):
    """Call an entropy function with the reference's argument names (renamed for the estimate)."""
    if fn is gaussian_mixture_entropy_estimate:
        kwargs = {ENTROPY_VOCABULARY.get(k, k): v for k, v in kwargs.items()}
    return fn(**kwargs, **options)


def _name(fn, name: str) -> str:
    """The argument name ``fn`` reports for the reference's ``name``."""
    return ENTROPY_VOCABULARY.get(name, name) if fn is gaussian_mixture_entropy_estimate else name


def _mi_kwargs(b: int = 4, s: int = 3, e: int = 2) -> dict:
    kwargs = make_inputs(b, s, e, seed=70)
    kwargs["noise_mask"] = torch.ones(b, s, dtype=torch.bool)
    return kwargs


def _entropy_kwargs(m: int = 3, n: int = 4, s: int = 3, e: int = 2) -> dict:
    kwargs = make_entropy_inputs(m, n, s, e, seed=71)
    kwargs["mask"] = torch.ones(m, s, dtype=torch.bool)
    return kwargs


# --------------------------------------------------------------------------------------------
# mutual_information_sub_batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
@pytest.mark.parametrize("b", [1, 3, 5])
def test_mi_odd_batch(fn, b) -> None:
    with pytest.raises(ValueError, match=r"(?i)batch|even"):
        fn(**_mi_kwargs(b=b))


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
def test_mi_empty_batch(fn) -> None:
    with pytest.raises(ValueError, match=r"(?i)batch|even|at least"):
        fn(**_mi_kwargs(b=0))


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
@pytest.mark.parametrize("name", MI_ARG_ORDER)
@pytest.mark.parametrize("bad_shape", [(4, 3, 3), (4, 2, 2), (2, 3, 2), (4, 6)], ids=str)
def test_mi_shape_mismatch(fn, name, bad_shape) -> None:
    kwargs = _mi_kwargs()
    kwargs[name] = 0.5 + torch.rand(bad_shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
@pytest.mark.parametrize("bad_shape", [(4, 2), (4,), (2, 3), (4, 3, 2)], ids=str)
def test_mi_mask_shape(fn, bad_shape) -> None:
    kwargs = _mi_kwargs()
    kwargs["noise_mask"] = torch.ones(bad_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match="noise_mask"):
        fn(**kwargs)


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
@pytest.mark.parametrize("name", MI_ARG_ORDER)
def test_mi_integer_dtype(fn, name) -> None:
    kwargs = _mi_kwargs()
    kwargs[name] = torch.ones_like(kwargs[name], dtype=torch.long)
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
def test_mi_bad_granularity(fn) -> None:
    with pytest.raises(ValueError, match="granularity"):
        fn(**_mi_kwargs(), granularity="word")


# --------------------------------------------------------------------------------------------
# gaussian_mixture_entropy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ENTROPY_FUNCTIONS)
@pytest.mark.parametrize("name", ENTROPY_ARG_ORDER)
@pytest.mark.parametrize("bad_shape", [(4, 3, 3), (4, 2, 2), (4, 6)], ids=str)
def test_entropy_shape_mismatch(fn, name, bad_shape) -> None:
    kwargs = _entropy_kwargs()
    kwargs[name] = 0.5 + torch.rand(bad_shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=_name(fn, name)):
        _call(fn, kwargs)


@pytest.mark.parametrize("fn", ENTROPY_FUNCTIONS)
@pytest.mark.parametrize("name", ["clean_embeddings", "means", "stds"])
def test_entropy_component_batch_mismatch(fn, name) -> None:
    kwargs = _entropy_kwargs()
    kwargs[name] = 0.5 + torch.rand(5, 3, 2, dtype=torch.float64)  # N = 4 elsewhere
    with pytest.raises(ValueError, match=_name(fn, name)):
        _call(fn, kwargs)


@pytest.mark.parametrize("fn", ENTROPY_FUNCTIONS)
@pytest.mark.parametrize("name", ["mask", "component_mask"])
@pytest.mark.parametrize("bad_shape", [(3, 2), (4, 3, 2), (7,)], ids=str)
def test_entropy_mask_shape(fn, name, bad_shape) -> None:
    kwargs = _entropy_kwargs()
    kwargs[name] = torch.ones(bad_shape, dtype=torch.bool)
    with pytest.raises(ValueError, match=_name(fn, name)):
        _call(fn, kwargs)


@pytest.mark.parametrize("fn", ENTROPY_FUNCTIONS)
@pytest.mark.parametrize("name", ENTROPY_ARG_ORDER)
def test_entropy_integer_dtype(fn, name) -> None:
    kwargs = _entropy_kwargs()
    kwargs[name] = torch.ones_like(kwargs[name], dtype=torch.long)
    with pytest.raises(ValueError, match=_name(fn, name)):
        _call(fn, kwargs)


@pytest.mark.parametrize("fn", ENTROPY_FUNCTIONS)
def test_entropy_bad_granularity(fn) -> None:
    with pytest.raises(ValueError, match="granularity"):
        _call(fn, _entropy_kwargs(), granularity="word")


# --------------------------------------------------------------------------------------------
# gaussian_entropy_log_loss and the pairwise distance
# --------------------------------------------------------------------------------------------


def test_gaussian_entropy_log_loss_mask_shape() -> None:
    with pytest.raises(ValueError, match="noise_mask"):
        gaussian_entropy_log_loss(torch.ones(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


def test_gaussian_entropy_log_loss_integer_dtype() -> None:
    with pytest.raises(ValueError, match="stds"):
        gaussian_entropy_log_loss(torch.ones(2, 3, 4, dtype=torch.long))


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("x", ((3, 2, 4), (5, 3, 4), (5, 3, 4))),
        ("stds", ((3, 2, 4), (5, 2, 4), (5, 2, 3))),
    ],
)
def test_pairwise_shape_mismatch(name, shapes) -> None:
    x, y, stds = (0.5 + torch.rand(shape) for shape in shapes)
    with pytest.raises(ValueError, match=rf"^{name} must have shape"):
        pairwise_square_mahalanobis_distance(x, y, stds)


# --------------------------------------------------------------------------------------------
# The checks of mi_losses._validation themselves
# --------------------------------------------------------------------------------------------

ACTIVE = torch.tensor([[True, False, True], [False, False, True]])  # (2, 3) positions


@pytest.mark.parametrize("fill", [float("nan"), float("inf"), -float("inf"), 0.0, -1.0, 1e30])
def test_checks_ignore_inactive_positions(fill: float) -> None:
    values = 0.5 + torch.rand(2, 3, 4)
    values[~ACTIVE] = fill
    check_finite_at_active("x", values, ACTIVE)
    check_positive_at_active("stds", values, ACTIVE)


@pytest.mark.parametrize(("bad", "text"), [(float("nan"), "nan"), (float("inf"), "inf")])
def test_check_finite_at_active_names_argument_and_values(bad: float, text: str) -> None:
    values = torch.rand(2, 3, 4)
    values[0, 2, 1] = bad
    with pytest.raises(ValueError, match=rf"^clean_embeddings must be finite at active .*{text}"):
        check_finite_at_active("clean_embeddings", values, ACTIVE)
    with pytest.raises(ValueError, match=rf"everywhere.*{text}"):
        check_finite_at_active("clean_embeddings", values, None)
    check_finite_at_active("clean_embeddings", values[:, :0], ACTIVE[:, :0])  # empty


@pytest.mark.parametrize(
    ("bad", "text"), [(0.0, "got 0 at"), (-2.0, "got -2 at"), (float("nan"), "got nan at")]
)
def test_check_positive_at_active_names_argument_and_values(bad: float, text: str) -> None:
    stds = 0.5 + torch.rand(2, 3, 4)
    stds[1, 2, 3] = bad
    with pytest.raises(
        ValueError,
        match=rf"^stds_tensor must be finite and > 0 at active positions, {text} index \(1, 2, 3\)",
    ):
        check_positive_at_active("stds_tensor", stds, ACTIVE)
    with pytest.raises(ValueError, match="stds must be finite and > 0 everywhere"):
        check_positive("stds", stds)


def test_active_mask_broadcasts() -> None:
    stds = 0.5 + torch.rand(2, 3, 4)
    stds[:, 1] = 0.0
    check_positive_at_active("stds", stds, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="stds"):
        check_positive_at_active("stds", stds, torch.tensor([True, True, True]))


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (torch.tensor([[0.0, 0.5], [1.0, 1.0]]), "0.5"),
        (torch.tensor([[0, 2], [1, 1]]), "2"),
        (torch.tensor([[0, -1], [1, 1]]), "-1"),
        (torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), "nan"),
    ],
)
def test_mask_values_other_than_0_and_1(mask: torch.Tensor, text: str) -> None:
    with pytest.raises(ValueError, match=rf"^noise_mask must be bool or hold only 0 and 1.*{text}"):
        check_mask_values("noise_mask", mask)
    with pytest.raises(ValueError, match=rf"^noise_mask .*{text}"):
        as_bool_mask("noise_mask", mask, (2, 2), mask.device, validate_values=True)
    # without validation, any non-zero value counts as true
    assert as_bool_mask("noise_mask", mask, (2, 2), mask.device, validate_values=False)[0, 1]


def test_good_masks_pass() -> None:
    for mask in (torch.tensor([[0, 1]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[False, True]])):
        check_mask_values("mask", mask)
        assert as_bool_mask("mask", mask, (1, 2), mask.device, validate_values=True).tolist() == [
            [False, True]
        ]


@pytest.mark.parametrize("mask", [[[True, False]], (1, 0), 1.0], ids=["list", "tuple", "float"])
def test_non_tensor_masks_are_value_errors(mask: object) -> None:
    with pytest.raises(ValueError, match=r"^query_mask must be a torch\.Tensor or None, got"):
        as_bool_mask("query_mask", mask, (1, 2), torch.device("cpu"), validate_values=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^query_mask must be a torch\.Tensor or None, got"):
        check_same_device(x=torch.ones(1), query_mask=mask)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["no", "yes", 1, 0, None, 1.0])
def test_check_bool_rejects_everything_but_bool(value: object) -> None:
    with pytest.raises(
        ValueError,
        match=rf"^symmetric must be a bool \(true or false\), got {re.escape(repr(value))}$",
    ):
        check_bool("", "symmetric", value)
    check_bool("", "symmetric", True)
    check_bool("", "symmetric", False)


# --------------------------------------------------------------------------------------------
# Checks at the door of every estimator: dtypes, losses, where a bad value sits
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", MI_FUNCTIONS)
def test_mixed_dtypes_are_an_error(fn) -> None:
    kwargs = _mi_kwargs()
    kwargs["stds_tensor"] = kwargs["stds_tensor"].float()
    with pytest.raises(
        ValueError,
        match=r"^stds_tensor must have the dtype of means_tensor \(torch.float64\), got torch.float32",
    ):
        fn(**kwargs)


def test_mixed_dtypes_in_the_reference_distance() -> None:
    x = torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"^stds must have the dtype of x"):
        square_mahalanobis_distance(x, x, torch.ones(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("losses", [[], (), "losses", 0])
def test_losses_of_the_wrong_type(losses) -> None:
    with pytest.raises(ValueError, match=r"^losses must be a dict \(str -> tensor\) or None, got"):
        mutual_information_sub_batch(**_mi_kwargs(), losses=losses)
    with pytest.raises(ValueError, match=r"^losses must be a dict"):
        gaussian_mixture_entropy(**_entropy_kwargs(), losses=losses)


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_non_finite_value_says_where(granularity) -> None:
    kwargs = _mi_kwargs()
    kwargs["clean_input_embeddings"][3, 1, 0] = float("nan")
    with pytest.raises(
        ValueError,
        match=r"^clean_input_embeddings must be finite at active positions, got nan at index \(3, 1, 0\)",
    ):
        mutual_information_sub_batch(**kwargs, granularity=granularity)


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        (
            "fast",
            r"^KernelOptions: kernel must be one of 'auto', 'reference', 'streaming', 'triton', got 'fast'",
        ),
        (3, r"^kernel must be one of .* or a KernelOptions, got int"),
    ],
)
def test_bad_kernel_option(kernel, message) -> None:
    with pytest.raises(ValueError, match=message):
        mutual_information_sub_batch(**_mi_kwargs(), kernel=kernel)


def test_bad_gather_option() -> None:
    with pytest.raises(ValueError, match=r"^gather must be a GatherOptions or None, got bool"):
        mutual_information_sub_batch(**_mi_kwargs(), gather=True)
