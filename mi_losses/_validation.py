"""Every input check of the package, in one place: clear ``ValueError`` messages at the boundary.

Tensor checks for the functional core, option checks (choices, bools) for the functional
keyword options and the modules' YAML values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar, cast, get_args

import torch

from mi_losses.types import Granularity


def _shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


def check_floating(name: str, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` is a floating-point tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name} must have a floating-point dtype, got {tensor.dtype}")


def check_ndim(name: str, tensor: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise unless ``tensor`` has ``ndim`` dimensions (``layout`` names them, e.g. ``(B, S, E)``)."""
    if tensor.ndim != ndim:
        raise ValueError(
            f"{name} must have {ndim} dimensions {layout}, got shape {_shape(tensor.shape)}"
        )


def check_same_shape(name: str, tensor: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    """Raise unless ``tensor`` has the shape of ``like``."""
    if tensor.shape != like.shape:
        raise ValueError(
            f"{name} must have shape {_shape(like.shape)} like {like_name}, "
            f"got {_shape(tensor.shape)}"
        )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    """Raise unless every given tensor lives on the same device (and is a tensor or ``None``)."""
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, tensor in present.items():
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor or None, got {type(tensor).__name__}")
    devices = {name: t.device for name, t in present.items()}
    first_name, first_device = next(iter(devices.items()))
    for name, device in devices.items():
        if device != first_device:
            raise ValueError(
                f"{name} must be on the same device as {first_name} ({first_device}), got {device}"
            )


def _where_active(tensor: torch.Tensor, active: torch.Tensor | None, filler: float) -> torch.Tensor:
    """``tensor`` (detached) with ``filler`` at inactive positions; nothing inactive is read."""
    values = tensor.detach()
    if active is None:
        return values
    return torch.where(active.unsqueeze(-1), values, filler)


def _where(active: torch.Tensor | None) -> str:
    return "everywhere" if active is None else "at active positions"


def check_embeddings(
    tensors: dict[str, torch.Tensor], like: str, *, free_batch: Collection[str] = ()
) -> torch.dtype:
    """Raise unless every tensor is floating point with the ``(B, S, E)`` shape, dtype and device
    of ``tensors[like]``; return that dtype. Names in ``free_batch`` may differ in ``B``."""
    for name, tensor in tensors.items():
        check_floating(name, tensor)
    reference = tensors[like]
    check_ndim(like, reference, 3, "(B, S, E)")
    for name, tensor in tensors.items():
        if name in free_batch:
            check_ndim(name, tensor, 3, "(B, S, E)")
            if tensor.shape[1:] != reference.shape[1:]:
                s, e = reference.shape[1:]
                raise ValueError(
                    f"{name} must have shape (B, {s}, {e}) to match {like} "
                    f"{_shape(reference.shape)}, got {_shape(tensor.shape)}"
                )
        else:
            check_same_shape(name, tensor, like, reference)
    check_same_device(**tensors)
    check_same_dtype(**tensors)
    return reference.dtype


def check_same_dtype(**tensors: torch.Tensor) -> None:
    """Raise unless every tensor has the dtype of the first (no silent promotion)."""
    (first_name, first), *rest = tensors.items()
    for name, tensor in rest:
        if tensor.dtype != first.dtype:
            raise ValueError(
                f"{name} must have the dtype of {first_name} ({first.dtype}), got {tensor.dtype}"
            )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the estimators compute in: float32 or better (half precision is promoted)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def check_losses(losses: object) -> None:
    """Raise unless ``losses`` is ``None`` or a ``dict`` the components can be written to."""
    if losses is not None and not isinstance(losses, dict):
        raise ValueError(
            f"losses must be a dict (str -> tensor) or None, got {type(losses).__name__}"
        )


def check_finite_at_active(name: str, tensor: torch.Tensor, active: torch.Tensor | None) -> None:
    """Raise unless ``tensor`` is finite wherever it is read (one pass, one host sync).

    Args:
        name: the argument's name, for the message.
        tensor: ``(..., E)`` values.
        active: bool, broadcastable to ``tensor.shape[:-1]``: the positions that are read;
            ``None`` means all. Values at inactive positions (NaN, inf, anything) are ignored.
    """
    _check_range(name, tensor, active, 0.0, positive=False)


def check_positive_at_active(name: str, stds: torch.Tensor, active: torch.Tensor | None) -> None:
    """Raise unless ``stds`` is finite and ``> 0`` wherever it is read (one pass, one sync).

    ``active`` as in :func:`check_finite_at_active`: zero, negative or NaN values at inactive
    positions (noise layers often output a zero std where nothing is noised) are accepted.
    """
    _check_range(name, stds, active, 1.0, positive=True)


def _check_range(
    name: str, tensor: torch.Tensor, active: torch.Tensor | None, filler: float, *, positive: bool
) -> None:
    """Raise naming the first bad element of ``tensor`` at an active position.

    The whole tensor is checked first, without a masked copy: if it passes, so do its active
    positions (the common case costs one read and one host sync). NaN fails every comparison.
    """
    if tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor.detach())
    if bool((low > 0 if positive else low > -torch.inf) & (high < torch.inf)):
        return
    values = _where_active(tensor, active, filler)
    good = torch.isfinite(values) & (values > 0) if positive else torch.isfinite(values)
    bad = (~good).nonzero()
    if bad.shape[0] == 0:
        return
    index = tuple(int(i) for i in bad[0])
    what = "finite and > 0" if positive else "finite"
    raise ValueError(
        f"{name} must be {what} {_where(active)}, got {values[index].item():.3g} at index "
        f"{index} ({bad.shape[0]} bad value(s); pass validate_args=False to skip this check)"
    )


def check_positive(name: str, tensor: torch.Tensor) -> None:
    """Raise unless every element of ``tensor`` is finite and ``> 0`` (one pass, one sync)."""
    check_positive_at_active(name, tensor, None)


Function = TypeVar("Function", bound=Callable[..., Any])


def eager_under_compile(reason: str) -> Callable[[Function], Function]:
    """Decorator: under ``torch.compile`` the function runs eagerly (a graph break), and
    ``fullgraph=True`` fails with ``reason``, which says what to pass instead."""

    def wrap(function: Function) -> Function:
        return cast(Function, torch.compiler.disable(function, reason=reason))  # type: ignore[no-untyped-call]

    return wrap


host_check = eager_under_compile(
    "validate_args=True reads the inputs' values on the host, a graph break; under "
    "torch.compile(fullgraph=True) pass validate_args=False (and "
    "kernel=KernelOptions(accuracy_check=False))"
)
"""The checks that read values (``validate_args=True``) run eagerly under ``torch.compile``."""

host_fallback = eager_under_compile(
    "KernelOptions(accuracy_check=True) decides on the host whether to re-evaluate in float64, "
    "a graph break; under torch.compile(fullgraph=True) pass "
    "kernel=KernelOptions(accuracy_check=False) (exact only while no pair is flagged)"
)
"""The float64 accuracy fallbacks run eagerly under ``torch.compile``: compiled results are
checked too."""


@host_check
def check_mask_values(name: str, mask: torch.Tensor) -> None:
    """Raise unless a numeric mask holds only 0 and 1 (bool masks always pass).

    The message names the mask, how many values are wrong and one of them (``0.5``, ``2``...).
    """
    if mask.dtype == torch.bool:
        return
    if mask.is_complex():
        raise ValueError(f"{name} must be bool or hold only 0 and 1, got dtype {mask.dtype}")
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        wrong = mask[bad]
        example = wrong.flatten()[0].item()
        raise ValueError(
            f"{name} must be bool or hold only 0 and 1, got {wrong.numel()} other value(s), "
            f"e.g. {example:g}"
        )


def check_mask_type(name: str, mask: object) -> None:
    """Raise unless ``mask`` is a tensor or ``None`` (a list mask is a ``ValueError``)."""
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or None, got {type(mask).__name__}")


def as_bool_mask(
    name: str,
    mask: torch.Tensor | None,
    shape: Sequence[int],
    device: torch.device,
    *,
    validate_values: bool,
) -> torch.Tensor:
    """Return ``mask`` as a bool tensor of ``shape``; ``None`` means all true.

    Accepts bool masks and numeric masks whose values are 0 or 1 (checked with
    :func:`check_mask_values` when ``validate_values``; otherwise any non-zero value is true).
    """
    check_mask_type(name, mask)
    if mask is None:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {_shape(shape)}, got {_shape(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} must be on device {device}, got {mask.device}")
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"{name} must be bool or hold only 0 and 1, got dtype {mask.dtype}")
    if validate_values:
        check_mask_values(name, mask)
    return mask != 0


def check_choice(owner: str, option: str, value: object, allowed: Collection[object]) -> None:
    """Raise ``ValueError`` naming ``owner: option``, the allowed values and the value given.

    ``owner`` is the class name for module options, or ``""`` for a function's argument.
    """
    if value not in allowed:
        allowed_text = ", ".join(repr(a) for a in allowed)
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{option} must be one of {allowed_text}, got {value!r}")


def check_bool(owner: str, option: str, value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is a real ``bool`` (YAML ``yes``/``1`` slip through)."""
    if not isinstance(value, bool):
        prefix = f"{owner}: " if owner else ""
        raise ValueError(f"{prefix}{option} must be a bool (true or false), got {value!r}")


def check_positive_int(owner: str, option: str, value: object, *, optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``owner: option`` unless ``value`` is an int >= 1 (or
    ``None`` when ``optional``); ``owner`` as in :func:`check_choice`."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        prefix = f"{owner}: " if owner else ""
        expected = "None or an int >= 1" if optional else "a positive integer"
        raise ValueError(f"{prefix}{option} must be {expected}, got {value!r}")


def check_granularity(granularity: object) -> None:
    """Raise unless ``granularity`` is one of :data:`mi_losses.types.Granularity`."""
    check_choice("", "granularity", granularity, get_args(Granularity))


def check_number(owner: str, name: str, value: object, *, positive: bool) -> float:
    """``value`` as a float, or a ``ValueError`` naming it (finite, ``> 0`` or ``>= 0``)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):  # type: ignore[operator]
        expected = "> 0" if positive else ">= 0"
        raise ValueError(f"{owner}: {name} must be a finite number {expected}, got {value!r}")
    return float(value)  # type: ignore[arg-type]
