"""One registry describing every public function of ``mi_losses.functional`` for the test matrix.

In the spirit of torchmetrics' ``MetricTester`` and kornia's ``BaseTester``: each public function
is described ONCE by an :class:`Entry` (how to build its inputs, how to call it and its module,
its float64 reference from ``tests/reference.py``, which positions of which input are never
read, its flags and masks). ``tests/test_matrix.py`` and ``tests/test_hardening.py`` apply every
check to every entry of :data:`REGISTRY`, on every device of ``tests/conftest.py``.

To register a new function, append one ``Entry`` to :data:`REGISTRY` (see the existing entries;
``build`` returns float64 CPU inputs, the harness moves them to the dtype and device under test).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

import mi_losses.functional as F
from mi_losses import GaussianMixtureEntropy, MahalanobisDistance, SubBatchMutualInformation
from tests import reference as ref
from tests.helpers import make_mask

MI_FLAG = "combine_noise_masks_for_mutual_information_sub_batches"


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
            return self.offset + self.spread * _randn(shape, g)
        # alternating clusters: both halves of a batch hold samples of both clusters
        sign = 1.0 - 2.0 * (torch.arange(shape[0], dtype=torch.float64) % 2)
        sign = sign.reshape(-1, *([1] * (len(shape) - 1)))
        return self.offset + sign * self.far + 1e-3 * self.std * _randn(shape, g)

    def stds(self, shape: Sequence[int], g: torch.Generator) -> Tensor:
        return self.std * (0.5 + torch.rand(tuple(shape), generator=g, dtype=torch.float64))

    def means(self, shape: Sequence[int], g: torch.Generator) -> Tensor:
        return 0.3 * self.std * _randn(shape, g)


def _randn(shape: Sequence[int], g: torch.Generator) -> Tensor:
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


def _mask(pattern: str | None, rows: int, s: int, seed: int) -> Tensor | None:
    if pattern is None or pattern == "none":
        return None
    if pattern == "empty_rows" and rows < 2:
        pattern = "random"
    return make_mask(pattern, rows, s, seed=seed)


def _bool_mask(mask: Tensor | None, shape: Sequence[int]) -> Tensor:
    if mask is None:
        return torch.ones(tuple(shape), dtype=torch.bool)
    return (mask != 0).cpu().expand(tuple(shape))


def _none_inactive(tensor: Tensor) -> Tensor:
    return torch.zeros(tensor.shape[:-1], dtype=torch.bool)


def _max_abs(*tensors: Tensor) -> float:
    values = [t.detach().abs().max().item() for t in tensors if t.numel()]
    return max(values, default=0.0)


def _log_std_magnitude(stds: Tensor) -> float:
    """``sum_{s, e} |log sigma|`` of the largest sample (bounds every log-determinant term)."""
    if stds.numel() == 0:
        return 0.0
    return stds.detach().double().abs().log().abs().flatten(1).sum(1).max().item()


# ---------------------------------------------------------------------------------------------
# mutual_information_sub_batch (+ _estimate)
# ---------------------------------------------------------------------------------------------

MI_ARGS = ("means_tensor", "stds_tensor", "clean_input_embeddings", "noisy_input_embeddings")


def _build_mi(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (6, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    clean = data.clean((b, s, e), g)
    means, stds = data.means((b, s, e), g), data.stds((b, s, e), g)
    noisy = clean + means + stds * _randn((b, s, e), g)
    tensors = dict(zip(MI_ARGS, (means, stds, clean, noisy), strict=True))
    mask = _mask(variant.masks.get("noise_mask"), b, s, seed=data.seed + 1)
    return Case(tensors, {"noise_mask": mask}, dict(variant.options))


def _mi_inactive(case: Case) -> dict[str, Tensor]:
    """Positions MATH.md never reads: masked query positions, masked components when the
    masks are combined, and the whole noisy second half when it is never a query."""
    b, s, _ = case.tensors["means_tensor"].shape
    half = b // 2
    mask = _bool_mask(case.masks["noise_mask"], (b, s))
    combine = case.options.get(MI_FLAG, True)
    symmetric = case.options.get("symmetric", False)
    first, second = ~mask[:half], ~mask[half:]
    nothing = torch.zeros(half, s, dtype=torch.bool)
    everything = torch.ones(half, s, dtype=torch.bool)
    noisy = torch.cat([first, second if symmetric else everything])
    own = torch.cat(
        [first if (combine or not symmetric) else nothing, second if combine else nothing]
    )
    return {
        "noisy_input_embeddings": noisy,
        "clean_input_embeddings": own,
        "means_tensor": own,
        "stds_tensor": own,
    }


def _mi_magnitude(case: Case, reference: Outputs) -> float:
    """Softmax-weighted distances, own terms and log-normalisers of the reference."""
    weighted = sum(
        abs(float(reference[k]))
        for k in (ref.MAHALANOBIS_KEY, ref.LOG_CONSTANTS_KEY, ref.STD_LOG_KEY)
    )
    return weighted + 2.0 * _log_std_magnitude(case.tensors["stds_tensor"])


def _mi_reference(case: Case) -> Outputs:
    result = ref.mutual_information_sub_batch(**case.kwargs())
    return {"value": result.value, **result.components}


def _mi_evaluate(case: Case) -> Outputs:
    losses: dict[str, Tensor] = {}
    value = F.mutual_information_sub_batch(**case.kwargs(losses=losses))
    return {"value": value, **losses}


def _mi_estimate_evaluate(case: Case) -> Outputs:
    estimate = F.mutual_information_sub_batch_estimate(**case.kwargs())
    return {"value": estimate.value, **estimate.components}


def _mi_module(case: Case) -> Tensor:
    module = SubBatchMutualInformation(
        combine_noise_masks=case.options.get(MI_FLAG, True),
        granularity=case.options.get("granularity", "sequence"),
        symmetric=case.options.get("symmetric", False),
    )
    t = case.tensors
    return module(
        t["means_tensor"],
        t["stds_tensor"],
        case.masks["noise_mask"],
        t["clean_input_embeddings"],
        t["noisy_input_embeddings"],
    )


MI_VARIANTS = (
    *(
        Variant(
            f"{granularity}-{'combine' if combine else 'separate'}-"
            f"{'symmetric' if symmetric else 'forward'}",
            {"granularity": granularity, MI_FLAG: combine, "symmetric": symmetric},
            {"noise_mask": "empty_rows"},
        )
        for granularity, combine, symmetric in itertools.product(
            ("sequence", "token"), (True, False), (False, True)
        )
    ),
    Variant("unmasked", {}, {"noise_mask": "none"}),
    Variant("one-hot", {"granularity": "sequence"}, {"noise_mask": "one_hot"}),
    Variant("int-mask", {"granularity": "token", "symmetric": True}, {"noise_mask": "int01"}),
    Variant("all-masked", {"granularity": "token", "symmetric": True}, {"noise_mask": "all_empty"}),
)


def _mi_entry(name: str, evaluate: Callable[[Case], Outputs], flags: tuple[str, ...]) -> Entry:
    return Entry(
        name=name,
        evaluate=evaluate,
        reference=_mi_reference,
        build=_build_mi,
        variants=MI_VARIANTS,
        stds=("stds_tensor",),
        masks={"noise_mask": lambda c: tuple(c.tensors["means_tensor"].shape[:2])},
        inactive=_mi_inactive,
        flags=flags,
        module=_mi_module,
        magnitude=_mi_magnitude,
        empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
        key_variants=("token-combine-symmetric", "sequence-separate-forward"),
    )


# ---------------------------------------------------------------------------------------------
# gaussian_mixture_entropy (+ _estimate)
# ---------------------------------------------------------------------------------------------

ENTROPY_ARGS = ("clean_embeddings", "transformed_embeddings", "means", "stds")


def _build_entropy(data: Data, variant: Variant) -> Case:
    m, n, s, e = data.sizes or (4, 5, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    clean = data.clean((n, s, e), g)
    means, stds = data.means((n, s, e), g), data.stds((n, s, e), g)
    centres = clean + means
    if n:  # queries drawn from the mixture itself (near-duplicates of the components)
        pick = torch.randint(0, n, (m,), generator=g)
        transformed = centres[pick] + stds[pick] * _randn((m, s, e), g)
    else:
        transformed = data.clean((m, s, e), g)
    tensors = dict(zip(ENTROPY_ARGS, (clean, transformed, means, stds), strict=True))
    masks = {
        "mask": _mask(variant.masks.get("mask"), m, s, seed=data.seed + 1),
        "component_mask": _mask(variant.masks.get("component_mask"), n, s, seed=data.seed + 2),
    }
    return Case(tensors, masks, dict(variant.options))


def _entropy_inactive(case: Case) -> dict[str, Tensor]:
    m, s, _ = case.tensors["transformed_embeddings"].shape
    n = case.tensors["clean_embeddings"].shape[0]
    components = ~_bool_mask(case.masks["component_mask"], (n, s))
    return {
        "transformed_embeddings": ~_bool_mask(case.masks["mask"], (m, s)),
        "clean_embeddings": components,
        "means": components,
        "stds": components,
    }


def _entropy_magnitude(case: Case, reference: Outputs) -> float:
    """Softmax-weighted distances and log-normalisers of the reference."""
    weighted = sum(abs(float(reference[k])) for k in (ref.MAHALANOBIS_KEY, ref.LOG_CONSTANTS_KEY))
    return weighted + _log_std_magnitude(case.tensors["stds"])


def _entropy_reference(case: Case) -> Outputs:
    result = ref.gaussian_mixture_entropy(**case.kwargs())
    return {"value": result.value, **result.components}


def _entropy_evaluate(case: Case) -> Outputs:
    losses: dict[str, Tensor] = {}
    value = F.gaussian_mixture_entropy(**case.kwargs(losses=losses))
    return {"value": value, **losses}


def _entropy_estimate_evaluate(case: Case) -> Outputs:
    estimate = F.gaussian_mixture_entropy_estimate(**case.kwargs())
    return {"value": estimate.value, **estimate.components}


def _entropy_module(case: Case) -> Tensor:
    module = GaussianMixtureEntropy(granularity=case.options.get("granularity", "sequence"))
    t = case.tensors
    return module(
        *(t[k] for k in ENTROPY_ARGS),
        case.masks["mask"],
        component_mask=case.masks["component_mask"],
    )


ENTROPY_VARIANTS = (
    *(
        Variant(
            f"{granularity}-{query}-{component}",
            {"granularity": granularity},
            {"mask": query, "component_mask": component},
        )
        for granularity, (query, component) in itertools.product(
            ("sequence", "token"), (("empty_rows", "none"), ("random", "empty_rows"))
        )
    ),
    Variant("unmasked", {}, {"mask": "none", "component_mask": "none"}),
    Variant("disjoint", {}, {"mask": "one_hot", "component_mask": "one_hot"}),
    Variant(
        "all-masked", {"granularity": "token"}, {"mask": "all_empty", "component_mask": "random"}
    ),
)


def _entropy_entry(name: str, evaluate: Callable[[Case], Outputs], flags: tuple[str, ...]) -> Entry:
    return Entry(
        name=name,
        evaluate=evaluate,
        reference=_entropy_reference,
        build=_build_entropy,
        variants=ENTROPY_VARIANTS,
        stds=("stds",),
        masks={
            "mask": lambda c: tuple(c.tensors["transformed_embeddings"].shape[:2]),
            "component_mask": lambda c: tuple(c.tensors["clean_embeddings"].shape[:2]),
        },
        inactive=_entropy_inactive,
        flags=flags,
        module=_entropy_module,
        magnitude=_entropy_magnitude,
        empty_sizes=((4, 0, 3, 2), (0, 5, 3, 2), (4, 5, 0, 2), (4, 5, 3, 0)),
        key_variants=("token-random-empty_rows", "sequence-empty_rows-none"),
    )


# ---------------------------------------------------------------------------------------------
# square_mahalanobis_distance and pairwise_square_mahalanobis_distance
# ---------------------------------------------------------------------------------------------


def _build_distance(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (4, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    x = data.clean((b, s, e), g)
    stds = data.stds((b, s, e), g)
    y = x + data.means((b, s, e), g) + stds * _randn((b, s, e), g)
    tensors = {"x": x, "y": y, "stds": stds}
    mask = _mask(variant.masks.get("mask"), b, s, seed=data.seed + 1)
    if variant.options.get("broadcast"):  # (M, 1, S, E) against (1, N, S, E): the (M, N) matrix
        half = b // 2
        tensors = {"x": x[:half, None], "y": y[None, half:], "stds": stds[None, half:]}
        if mask is not None:
            mask = mask[:half, None] & mask[None, half:]
    return Case(tensors, {"mask": mask}, {})


def _any_to(active: Tensor, shape: Sequence[int]) -> Tensor:
    """Reduce a broadcast bool tensor to ``shape`` with ``any`` over the broadcast axes."""
    while active.ndim > len(shape):
        active = active.any(0)
    for dim, size in enumerate(shape):
        if size == 1 and active.shape[dim] != 1:
            active = active.any(dim, keepdim=True)
    return active


def _distance_inactive(case: Case) -> dict[str, Tensor]:
    t = case.tensors
    full = torch.broadcast_shapes(*(v.shape for v in t.values()))[:-1]
    active = _bool_mask(case.masks["mask"], full)
    return {k: ~_any_to(active, v.shape[:-1]) for k, v in t.items()}


def _distance_reference(case: Case) -> Outputs:
    return {"value": ref.square_mahalanobis_distance(**case.kwargs())}


def _elementwise_magnitude(case: Case, reference: Outputs) -> float:
    """Elementwise results: the tolerance is relative per element (``rtol``), no extra."""
    return 0.0


def _distance_module(case: Case) -> Tensor:
    t = case.tensors
    return MahalanobisDistance(reduction="none")(t["x"], t["y"], t["stds"], case.masks["mask"])


PAIRWISE_ARGS = ("queries", "centres", "stds")


def _build_pairwise(data: Data, variant: Variant) -> Case:
    m, n, s, e = data.sizes or (4, 5, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    centres, stds = data.clean((n, s, e), g), data.stds((n, s, e), g)
    if n:
        pick = torch.randint(0, n, (m,), generator=g)
        queries = centres[pick] + stds[pick] * _randn((m, s, e), g)
    else:
        queries = data.clean((m, s, e), g)
    masks = {
        "query_mask": _mask(variant.masks.get("query_mask"), m, s, seed=data.seed + 1),
        "component_mask": _mask(variant.masks.get("component_mask"), n, s, seed=data.seed + 2),
    }
    return Case(dict(zip(PAIRWISE_ARGS, (queries, centres, stds), strict=True)), masks, {})


def _pairwise_inactive(case: Case) -> dict[str, Tensor]:
    m, s, _ = case.tensors["queries"].shape
    n = case.tensors["centres"].shape[0]
    components = ~_bool_mask(case.masks["component_mask"], (n, s))
    return {
        "queries": ~_bool_mask(case.masks["query_mask"], (m, s)),
        "centres": components,
        "stds": components,
    }


def _pairwise_reference(case: Case) -> Outputs:
    return {"value": ref.pairwise_square_mahalanobis_distance(**case.kwargs())}


# ---------------------------------------------------------------------------------------------
# gaussian_entropy_log_loss
# ---------------------------------------------------------------------------------------------


def _build_gaussian_entropy(data: Data, variant: Variant) -> Case:
    b, s, e = data.sizes or (4, 3, 2)
    g = torch.Generator().manual_seed(data.seed)
    mask = _mask(variant.masks.get("noise_mask"), b, s, seed=data.seed + 1)
    return Case({"stds": data.stds((b, s, e), g)}, {"noise_mask": mask}, {})


def _gaussian_entropy_inactive(case: Case) -> dict[str, Tensor]:
    stds = case.tensors["stds"]
    return {"stds": ~_bool_mask(case.masks["noise_mask"], stds.shape[:-1])}


# ---------------------------------------------------------------------------------------------
# The registry: one entry per public function
# ---------------------------------------------------------------------------------------------

REGISTRY: tuple[Entry, ...] = (
    Entry(
        name="square_mahalanobis_distance",
        evaluate=lambda c: {"value": F.square_mahalanobis_distance(**c.kwargs())},
        reference=_distance_reference,
        build=_build_distance,
        variants=(
            Variant("unmasked", {}, {"mask": "none"}),
            Variant("masked", {}, {"mask": "empty_rows"}),
            Variant("int-mask", {}, {"mask": "int01"}),
            Variant("pairwise-broadcast", {"broadcast": True}, {"mask": "random"}),
        ),
        stds=("stds",),
        masks={"mask": lambda c: tuple(c.tensors["x"].shape[:-1])},
        inactive=_distance_inactive,
        flags=("validate_args",),
        module=lambda c: _distance_module(c),
        magnitude=_elementwise_magnitude,
        empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
        key_variants=("masked",),
        elementwise=True,
    ),
    Entry(
        name="pairwise_square_mahalanobis_distance",
        evaluate=lambda c: {"value": F.pairwise_square_mahalanobis_distance(**c.kwargs())},
        reference=_pairwise_reference,
        build=_build_pairwise,
        variants=(
            Variant("unmasked", {}, {}),
            Variant("masked", {}, {"query_mask": "empty_rows", "component_mask": "random"}),
            Variant("int-masks", {}, {"query_mask": "int01", "component_mask": "int01"}),
        ),
        stds=("stds",),
        masks={
            "query_mask": lambda c: tuple(c.tensors["queries"].shape[:2]),
            "component_mask": lambda c: tuple(c.tensors["centres"].shape[:2]),
        },
        inactive=_pairwise_inactive,
        flags=("validate_args",),
        module=None,
        magnitude=_elementwise_magnitude,
        empty_sizes=((0, 5, 3, 2), (4, 0, 3, 2), (4, 5, 0, 2), (4, 5, 3, 0)),
        key_variants=("masked",),
        elementwise=True,
    ),
    _entropy_entry("gaussian_mixture_entropy", _entropy_evaluate, ("validate_args",)),
    _entropy_entry(
        "gaussian_mixture_entropy_estimate",
        _entropy_estimate_evaluate,
        ("validate_args", "with_components"),
    ),
    _mi_entry(
        "mutual_information_sub_batch", _mi_evaluate, (MI_FLAG, "symmetric", "validate_args")
    ),
    _mi_entry(
        "mutual_information_sub_batch_estimate",
        _mi_estimate_evaluate,
        (MI_FLAG, "symmetric", "validate_args", "with_components"),
    ),
    Entry(
        name="gaussian_entropy_log_loss",
        evaluate=lambda c: {"value": F.gaussian_entropy_log_loss(**c.kwargs())},
        reference=lambda c: {"value": ref.gaussian_entropy_log_loss(**c.kwargs())},
        build=_build_gaussian_entropy,
        variants=(
            Variant("unmasked", {}, {}),
            Variant("masked", {}, {"noise_mask": "empty_rows"}),
            Variant("all-masked", {}, {"noise_mask": "all_empty"}),
        ),
        stds=("stds",),
        masks={"noise_mask": lambda c: tuple(c.tensors["stds"].shape[:-1])},
        inactive=_gaussian_entropy_inactive,
        flags=("validate_args",),
        module=None,
        magnitude=lambda c, r: _max_abs(c.tensors["stds"].detach().double().log()) + 2.0,
        empty_sizes=((0, 3, 2), (4, 0, 2), (4, 3, 0)),
        key_variants=("masked",),
    ),
)

BY_NAME = {entry.name: entry for entry in REGISTRY}


def entry_variants(
    select: Callable[[Entry, Variant], bool] = lambda e, v: True,
) -> list[Any]:
    """``pytest.param(entry, variant)`` for every registered pair that ``select`` keeps."""
    import pytest

    return [
        pytest.param(entry, variant, id=f"{entry.name}[{variant.id}]")
        for entry in REGISTRY
        for variant in entry.variants
        if select(entry, variant)
    ]


def entries(select: Callable[[Entry], bool] = lambda e: True) -> list[Any]:
    """``pytest.param(entry)`` for every registered entry that ``select`` keeps."""
    import pytest

    return [pytest.param(entry, id=entry.name) for entry in REGISTRY if select(entry)]


def masked_variant(entry: Entry) -> Variant:
    """The first variant that passes every mask argument as a tensor (for mask checks)."""
    for variant in entry.variants:
        masks = [entry.case(variant).masks.get(name) for name in entry.masks]
        if all(m is not None and bool(m.any()) for m in masks):
            return variant
    # none has every mask: take the first and fill the missing ones with a random pattern
    first = entry.variants[0]
    return replace(first, masks={**first.masks, **dict.fromkeys(entry.masks, "random")})


def active_position(entry: Entry, case: Case, name: str) -> tuple[int, ...]:
    """An index of ``case.tensors[name]`` that is read (not in ``entry.inactive``)."""
    inactive = entry.inactive(case)[name]
    positions = (~inactive).nonzero()
    assert len(positions), f"{entry.name}: no active position of {name}"
    return (*(int(i) for i in positions[0]), 0)


def float_names(case: Case) -> tuple[str, ...]:
    return tuple(case.tensors)


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
