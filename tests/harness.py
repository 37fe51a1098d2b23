"""The test harness: what a case, a variant and a registry entry are, and shared checks.

In the spirit of torchmetrics' ``MetricTester`` and kornia's ``BaseTester``: every public
function of ``mi_losses.functional`` is described ONCE by an :class:`Entry` in
``tests/registry/`` (how to build its inputs, how to call it and its module, its float64
reference from ``tests/reference.py``, which positions of which input are never read, its flags
and masks). ``tests/functional/test_matrix.py`` and ``tests/functional/test_hardening*.py`` apply every check to every
entry of ``tests.registry.REGISTRY``, on every device of ``tests/conftest.py``.

To register a new function: add an ``Entry`` (one per public function) in a module of
``tests/registry/`` and list it in ``REGISTRY`` there. ``build`` returns float64 CPU inputs; the
harness moves them to the dtype and device under test.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import mi_losses.functional as F
from mi_losses.options import KernelOptions
from tests.helpers import make_mask

# ---------------------------------------------------------------------------------------------
# What a test call is made of
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Data:
    """How to draw the float inputs of a case (every entry reads the fields it needs).

    ``clean = offset + spread * randn`` (near-duplicates: samples alternate between two
    clusters at ``offset +- far``, each sample ``1e-3 * std`` from its cluster), ``means = 0.3 * std * randn``,
    ``stds = std * U(0.5, 1.5)``, ``noisy = clean + means + stds * randn``.
    ``sizes`` overrides the entry's default sizes (its own axes, see ``Entry.sizes``).
    """

    seed: int = 0
    sizes: tuple[int, ...] | None = None
    offset: float = 0.0
    spread: float = 0.5
    std: float = 1.0
    far: float | None = None  # near-duplicate pairs at +- far from the batch mean

    def clean(self, shape: Sequence[int], g: torch.Generator) -> Tensor:
        if self.far is None:
            return self.offset + self.spread * randn(shape, g)
        # alternating clusters: both halves of a batch hold samples of both clusters
        sign = 1.0 - 2.0 * (torch.arange(shape[0], dtype=torch.float64) % 2)
        sign = sign.reshape(-1, *([1] * (len(shape) - 1)))
        return self.offset + sign * self.far + 1e-3 * self.std * randn(shape, g)

    def stds(self, shape: Sequence[int], g: torch.Generator) -> Tensor:
        return self.std * (0.5 + torch.rand(tuple(shape), generator=g, dtype=torch.float64))

    def means(self, shape: Sequence[int], g: torch.Generator) -> Tensor:
        return 0.3 * self.std * randn(shape, g)


def randn(shape: Sequence[int], g: torch.Generator) -> Tensor:
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64)


@dataclass(frozen=True)
class Variant:
    """Options of one call: keyword ``options`` and one mask pattern per mask argument."""

    id: str
    options: Mapping[str, Any] = field(default_factory=dict)
    masks: Mapping[str, str] = field(default_factory=dict)  # argument -> helpers.MASK_PATTERNS


@dataclass
class Case:
    """One call: float inputs (the differentiable ones), masks and options, by argument name."""

    tensors: dict[str, Tensor]
    masks: dict[str, Tensor | None]
    options: dict[str, Any]

    def kwargs(self, **overrides: Any) -> dict[str, Any]:
        return {**self.tensors, **self.masks, **self.options, **overrides}

    def to(
        self, dtype: torch.dtype, device: torch.device | str = "cpu", requires_grad: bool = False
    ) -> Case:
        """The same case with float inputs in ``dtype`` on ``device`` (fresh leaves)."""
        tensors = {
            k: v.detach().to(device=device, dtype=dtype).requires_grad_(requires_grad)
            for k, v in self.tensors.items()
        }
        masks = {k: None if m is None else m.to(device) for k, m in self.masks.items()}
        return Case(tensors, masks, dict(self.options))

    def with_tensors(self, **tensors: Tensor) -> Case:
        return Case({**self.tensors, **tensors}, dict(self.masks), dict(self.options))


Outputs = dict[str, Tensor]
"""``"value"`` (carries the gradient) and, where the function has them, its components."""


@dataclass(frozen=True)
class Entry:
    """Everything the matrix needs to know about one public function.

    Attributes:
        name: the function's name in ``mi_losses.functional``.
        evaluate: calls the function on a case; ``{"value": ..., <component key>: ...}``.
        reference: the float64 evaluation of MATH.md on the same case, same keys (a subset).
        build: float64 CPU inputs for ``Data`` and a ``Variant``.
        variants: the option grid every check runs over.
        stds: the arguments that must be ``> 0`` at active positions.
        masks: the mask arguments, with their shape as a function of the case.
        inactive: per float argument, a bool ``shape[:-1]`` tensor of positions that are never
            read (a subset of the truly unread positions: a conservative test).
        flags: keyword arguments that must be real bools.
        module: calls the module form (equal to ``evaluate(...)["value"]``), if one exists.
        magnitude: from a case and its reference outputs, the size of the terms the value is
            built from, weighted as they enter it (softmax-weighted pair distances, own terms,
            log-determinants); the accuracy tolerances of MATH.md scale with it.
        empty_sizes: sizes with an empty axis (``Data.sizes``).
        key_variants: the few representative variant ids the costly checks run on (compile,
            scales, near-duplicates, empty axes).
        elementwise: the value is a tensor of independent results (tolerance per element).
    """

    name: str
    evaluate: Callable[[Case], Outputs]
    reference: Callable[[Case], Outputs]
    build: Callable[[Data, Variant], Case]
    variants: tuple[Variant, ...]
    stds: tuple[str, ...]
    masks: Mapping[str, Callable[[Case], tuple[int, ...]]]
    inactive: Callable[[Case], dict[str, Tensor]]
    flags: tuple[str, ...]
    module: Callable[[Case], Tensor] | None
    magnitude: Callable[[Case, Outputs], float]
    empty_sizes: tuple[tuple[int, ...], ...]
    key_variants: tuple[str, ...]
    elementwise: bool = False

    def variant(self, variant_id: str) -> Variant:
        return next(v for v in self.variants if v.id == variant_id)

    def case(self, variant: Variant | str, data: Data | None = None) -> Case:
        if isinstance(variant, str):
            variant = self.variant(variant)
        return self.build(data or Data(), variant)


def mask_of(pattern: str | None, rows: int, s: int, seed: int) -> Tensor | None:
    if pattern is None or pattern == "none":
        return None
    if pattern == "empty_rows" and rows < 2:
        pattern = "random"
    return make_mask(pattern, rows, s, seed=seed)


def bool_mask(mask: Tensor | None, shape: Sequence[int]) -> Tensor:
    if mask is None:
        return torch.ones(tuple(shape), dtype=torch.bool)
    return (mask != 0).cpu().expand(tuple(shape))


def max_abs(*tensors: Tensor) -> float:
    values = [t.detach().abs().max().item() for t in tensors if t.numel()]
    return max(values, default=0.0)


def log_std_magnitude(stds: Tensor) -> float:
    """``sum_{s, e} |log sigma|`` of the largest sample (bounds every log-determinant term)."""
    if stds.numel() == 0:
        return 0.0
    return stds.detach().double().abs().log().abs().flatten(1).sum(1).max().item()


def any_to(active: Tensor, shape: Sequence[int]) -> Tensor:
    """Reduce a broadcast bool tensor to ``shape`` with ``any`` over the broadcast axes."""
    while active.ndim > len(shape):
        active = active.any(0)
    for dim, size in enumerate(shape):
        if size == 1 and active.shape[dim] != 1:
            active = active.any(dim, keepdim=True)
    return active


def active_position(entry: Entry, case: Case, name: str) -> tuple[int, ...]:
    """An index of ``case.tensors[name]`` that is read (not in ``entry.inactive``)."""
    inactive = entry.inactive(case)[name]
    positions = (~inactive).nonzero()
    assert len(positions), f"{entry.name}: no active position of {name}"
    return (*(int(i) for i in positions[0]), 0)


def value_tolerance(dtype: torch.dtype, magnitude: float) -> tuple[float, float]:
    """``(rtol, atol)`` of MATH.md's accuracy contract for a value built from terms of size
    ``magnitude``: 1e-5 rel + 1e-4 nats (float32/16 inputs), 1e-10 rel + 1e-8 nats (float64)."""
    if dtype == torch.float64:
        return 1e-10, 1e-8 + 1e-10 * magnitude
    return 1e-5, 1e-4 + 1e-5 * magnitude


def scalar(value: Tensor) -> Tensor:
    """A scalar function of an output: itself, or a fixed weighted sum of its elements."""
    if value.ndim == 0:
        return value
    weights = 1.0 + torch.arange(value.numel(), device=value.device, dtype=value.dtype)
    return (value * weights.reshape(value.shape) / max(value.numel(), 1)).sum()


def grads(output: Tensor, inputs: Sequence[Tensor], create_graph: bool = False) -> list[Tensor]:
    """``d scalar(output) / d input`` for every input; zeros where the output does not depend."""
    if not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    found = torch.autograd.grad(
        scalar(output), list(inputs), create_graph=create_graph, allow_unused=True
    )
    return [torch.zeros_like(t) if g is None else g for g, t in zip(found, inputs, strict=True)]


def assert_compiled_matches_eager(
    entry: Entry, case: Case, device: torch.device, *, fullgraph: bool
) -> None:
    """``torch.compile`` (``aot_eager``) of ``entry`` on ``case`` with ``validate_args=False``
    gives eager's value and the gradients of every float input (float32 on ``device``)."""
    case.options["validate_args"] = False
    if fullgraph and "kernel" in inspect.signature(getattr(F, entry.name)).parameters:
        # The float64 accuracy fallback decides on the host: a graph break (issue 25).
        case.options["kernel"] = KernelOptions(accuracy_check=False)
    names = list(case.tensors)
    on_device = case.to(torch.float32, device)  # the masks on the device too

    def fn(*tensors: Tensor) -> Tensor:
        moved = on_device.with_tensors(**dict(zip(names, tensors, strict=True)))
        return entry.evaluate(moved)["value"]

    eager_case = case.to(torch.float32, device, requires_grad=True)
    compiled_case = case.to(torch.float32, device, requires_grad=True)
    eager = fn(*eager_case.tensors.values())
    compiled_fn = torch.compile(fn, fullgraph=fullgraph, backend="aot_eager")
    compiled = compiled_fn(*compiled_case.tensors.values())
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    expected = grads(eager, list(eager_case.tensors.values()))
    found = grads(compiled, list(compiled_case.tensors.values()))
    for name, got, want in zip(names, found, expected, strict=True):
        torch.testing.assert_close(
            got, want, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
