"""The component half of a mixture gathered across data-parallel ranks.

Semantics: docs/math.md#distributed-evaluation.

Under data parallelism every rank holds a slice of the global batch. With gathering on, a rank
keeps its queries and evaluates them against the components of *all* ranks: each rank sends its
component half (centres, stds, component mask) through one autograd-aware all-gather
(:func:`torch.distributed.nn.functional.all_gather`), whose backward sums the gradients that
every rank's value sends to a component back onto the rank that produced it. So the input
gradients on a rank are those of the **sum** of the ranks' values, and DDP's averaging of
parameter gradients yields the gradient of their mean. Every rank must therefore run backward
when one does (DDP does).

Ranks may differ in batch size, sequence length ``S`` and number of active tokens: each rank
sends only its valid components (sequences with an active position, or active tokens), padded
to the largest count and length (centres ``0``, stds ``1``, mask false; padding is dropped on
arrival and never read). Components come back in the layout the estimators expect,
``(N', S, E)`` with the *local* ``S``:

- sequence granularity: a remote sequence is cut or padded (masked) to the local ``S``; the
  positions it loses lie outside every local query, so ``P(i, j)`` is unchanged;
- token granularity: the gathered tokens are laid out ``S`` per row (a token's position does
  not matter, docs/math.md#granularity-what-one-sample-is), the last row padded with masked
  tokens.

Memory: ``max_gathered_components=K`` bounds what each rank sends to ``K`` components (``K``
sequences, or ``K`` tokens at token granularity) drawn uniformly without replacement. Every
rank then sees the same random subset of at most ``W * K`` components: the estimate stays an
upper bound in expectation (``-log`` of a subsample mean is, by Jensen, no smaller in
expectation) with more variance the smaller ``K``.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from mi_losses.types import Granularity

__all__ = ["gather_components", "world_size"]


def world_size(process_group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks in ``process_group`` (the default group when None); 1 when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def gather_components(
    centres: torch.Tensor,
    stds: torch.Tensor,
    component_mask: torch.Tensor,
    *,
    granularity: Granularity = "sequence",
    process_group: dist.ProcessGroup | None = None,
    max_gathered_components: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The components of every rank, for this rank's queries.

    Args:
        centres: ``c = x + mu`` of this rank's components, ``(N, S, E)``.
        stds: their ``sigma > 0``, ``(N, S, E)``.
        component_mask: ``(N, S)`` bool.
        granularity: ``"sequence"`` (a component is a sequence) or ``"token"`` (an active token).
        process_group: the ranks to gather over; ``None`` means the default group.
        max_gathered_components: at most this many components per rank, drawn at random
            (``torch.randperm`` on the default generator); ``None`` sends all.

    Returns:
        ``(centres, stds, component_mask)`` of all ranks' valid components, ``(N', S, E)``,
        ``(N', S, E)`` and ``(N', S)`` with this rank's ``S``, in rank order; the inputs
        unchanged without an initialised process group or with a single rank.

    Example:
        >>> c, s, m = torch.zeros(2, 3, 4), torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
        >>> gather_components(c, s, m)[0] is c  # not distributed: nothing to gather
        True
    """
    if world_size(process_group) == 1:
        return centres, stds, component_mask
    length, features = centres.shape[1:]
    if granularity == "token":
        # Active tokens as one-position samples (n, 1, E): only they are components.
        local = (centres[component_mask], stds[component_mask])
        sent_centres, sent_stds = (t.unsqueeze(1) for t in local)
        sent_mask = component_mask.new_ones(sent_centres.shape[:2])
    else:
        rows = component_mask.any(-1)  # a sequence without active positions is never valid
        sent_centres, sent_stds, sent_mask = centres[rows], stds[rows], component_mask[rows]
    count = sent_centres.shape[0]
    if max_gathered_components is not None and count > max_gathered_components:
        keep = torch.randperm(count, device=centres.device)[:max_gathered_components]
        keep = keep.sort().values
        sent_centres, sent_stds, sent_mask = sent_centres[keep], sent_stds[keep], sent_mask[keep]

    sizes = _all_sizes(sent_centres.shape[:2], centres.device, process_group)
    # At least one padded row and position: collectives of empty tensors are not portable.
    rows_max = max(1, max(n for n, _ in sizes))
    length_max = max(1, max(s for _, s in sizes))
    packed = torch.cat(
        [
            _pad(sent_centres, rows_max, length_max, 0.0),
            _pad(sent_stds, rows_max, length_max, 1.0),
            _pad(sent_mask.to(centres.dtype).unsqueeze(-1), rows_max, length_max, 0.0),
        ],
        dim=-1,
    )
    parts = []
    for (rows_r, length_r), received in zip(sizes, _all_gather(packed, process_group), strict=True):
        parts.append(received[:rows_r, :length_r])
    if granularity == "token":
        tokens = torch.cat(parts)  # (T, 1, 2E + 1)
        extra = -tokens.shape[0] % length
        tokens = torch.cat([tokens, _packed_padding(tokens, extra, 1, features)])
        gathered = tokens.reshape(-1, length, 2 * features + 1)
    else:
        gathered = torch.cat([_fit_length(part, length, features) for part in parts])
    return (
        gathered[..., :features],
        gathered[..., features : 2 * features],
        gathered[..., -1] > 0.5,
    )


def _all_sizes(
    shape: torch.Size, device: torch.device, process_group: dist.ProcessGroup | None
) -> list[tuple[int, int]]:
    """``(rows, length)`` of what every rank sends (one small all-gather, no autograd)."""
    size = torch.tensor(list(shape), dtype=torch.int64, device=device)
    sizes = [torch.empty_like(size) for _ in range(world_size(process_group))]
    dist.all_gather(sizes, size, group=process_group)
    return [(int(s[0]), int(s[1])) for s in sizes]


def _all_gather(
    tensor: torch.Tensor, process_group: dist.ProcessGroup | None
) -> tuple[torch.Tensor, ...]:
    """Autograd-aware all-gather: the backward sums every rank's gradient onto the sender."""
    group = dist.group.WORLD if process_group is None else process_group
    with warnings.catch_warnings():
        # Deprecated in favour of a functional collective that is not autograd-aware on every
        # backend; this one is, on gloo and NCCL alike.
        warnings.simplefilter("ignore", FutureWarning)
        gathered: tuple[torch.Tensor, ...] = dist_nn.all_gather(tensor, group=group)  # type: ignore[no-untyped-call]
    return gathered


def _pad(tensor: torch.Tensor, rows: int, length: int, value: float) -> torch.Tensor:
    """``(n, s, E)`` padded with ``value`` to ``(rows, length, E)`` (``n <= rows``, ``s <= length``)."""
    n, s = tensor.shape[:2]
    return F.pad(tensor, (0, 0, 0, length - s, 0, rows - n), value=value)


def _packed_padding(like: torch.Tensor, rows: int, length: int, features: int) -> torch.Tensor:
    """Masked packed components ``(rows, length, 2E + 1)``: centres 0, stds 1, mask 0."""
    pad = like.new_zeros((rows, length, 2 * features + 1))
    pad[..., features : 2 * features] = 1.0
    return pad


def _fit_length(part: torch.Tensor, length: int, features: int) -> torch.Tensor:
    """Packed sequences ``(n, s, 2E + 1)`` cut or padded (masked) to ``length`` positions."""
    if part.shape[1] >= length:
        return part[:, :length]
    pad = _packed_padding(part, part.shape[0], length - part.shape[1], features)
    return torch.cat([part, pad], dim=1)


def with_gathered_components(
    tensors: tuple[torch.Tensor, ...],
    halves: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    directions: list[tuple[int, int, int, int]],
    *,
    granularity: Granularity,
    process_group: dist.ProcessGroup | None,
    max_gathered_components: int | None,
    dtype: torch.dtype,
) -> tuple[tuple[torch.Tensor, ...], list[tuple[int, int, int, int]]]:
    """The streaming kernel's inputs with every direction's components gathered from all ranks.

    ``tensors`` are the kernel's sample-form inputs ``(noisy, clean, means, stds, query_mask,
    component_mask)``; ``halves[d]`` the component half of direction ``d`` as ``(clean, means,
    stds, mask)`` of shape ``(n, S, E)``. The gathered components (centres ``x + mu``, stds,
    masks) are appended after the local rows (as ``clean`` with zero ``means``) and each
    direction's component range points at its gathered block; queries and their own terms stay
    where they are.
    """
    from mi_losses.functional._pairs import as_samples  # the kernel imports this module

    noisy, clean, means, stds, query_mask, component_mask = tensors
    noisy, clean, means, stds = (t.to(dtype) for t in (noisy, clean, means, stds))
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    gathered_directions = []
    offset = clean.shape[0]
    for (q0, q1, _, _), (half_clean, half_means, half_stds, half_mask) in zip(
        directions, halves, strict=True
    ):
        gathered = gather_components(
            half_clean.to(dtype) + half_means.to(dtype),
            half_stds.to(dtype),
            half_mask,
            granularity=granularity,
            process_group=process_group,
            max_gathered_components=max_gathered_components,
        )
        centres, gathered_stds, gathered_mask = (as_samples(t, granularity) for t in gathered)
        parts.append((centres, gathered_stds, gathered_mask))
        gathered_directions.append((q0, q1, offset, offset + centres.shape[0]))
        offset += centres.shape[0]
    clean = torch.cat([clean, *(c for c, _, _ in parts)])
    means = torch.cat([means, *(torch.zeros_like(c) for c, _, _ in parts)])
    stds = torch.cat([stds, *(s for _, s, _ in parts)])
    component_mask = torch.cat([component_mask, *(m for _, _, m in parts)])
    return (noisy, clean, means, stds, query_mask, component_mask), gathered_directions
