"""Options that travel together, as small frozen objects checked once when they are made.

:class:`KernelOptions` says how the pair terms are evaluated, :class:`GatherOptions` how
components are gathered under data parallelism. Every estimator takes them as the keyword
arguments ``kernel`` and ``gather``; a loss module builds them from its plain YAML values.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, get_args

from mi_losses._validation import check_bool, check_choice, check_positive_int
from mi_losses.types import Kernel

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

DEFAULT_MAX_BLOCK_BYTES = 256 * 2**20
"""Default memory budget of the kernel's blocks: 256 MiB."""


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    """How the pair terms are evaluated; results do not depend on it beyond rounding.

    Attributes:
        kernel: ``"auto"`` (Triton on CUDA, streaming elsewhere, reference under ``torch.func``
            and ``torch.compile``), ``"reference"`` (plain PyTorch, all scores at once,
            autograd for every derivative), ``"streaming"`` (blocks with a running
            log-sum-exp, written-out first derivatives: memory linear in the number of
            samples) or ``"triton"`` (fused kernels, CUDA tensors only). An explicit choice
            that cannot run raises.
        max_block_bytes: memory budget of one block of pair scores (default 256 MiB), and of
            the factors the streaming path keeps between its forward and backward passes
            (beyond it they are made again in the backward pass).
        accuracy_check: check the rounding of the expanded squares and re-evaluate flagged
            pairs in float64 from their differences (one host synchronisation per call).
        keep_factors: the streaming path keeps every chunk's factors (about eight
            ``(rows, S, E)`` tensors per direction) for its backward pass instead of making
            them again: about a fifth less time on sequence rows, memory no longer linear.
            Only where a direction's scores fit one block (else it has no effect).

    Example:
        >>> KernelOptions(kernel="streaming", max_block_bytes=2**20)
        KernelOptions(kernel='streaming', max_block_bytes=1048576, accuracy_check=True, keep_factors=False)
    """

    kernel: Kernel = "auto"
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES
    accuracy_check: bool = True
    keep_factors: bool = False

    def __post_init__(self) -> None:
        check_choice("KernelOptions", "kernel", self.kernel, get_args(Kernel))
        check_positive_int("KernelOptions", "max_block_bytes", self.max_block_bytes)
        check_bool("KernelOptions", "accuracy_check", self.accuracy_check)
        check_bool("KernelOptions", "keep_factors", self.keep_factors)


@dataclasses.dataclass(frozen=True)
class GatherOptions:
    """Component gathering under data parallelism (see docs/distributed.md).

    With these options a rank's queries are evaluated against the component halves of every
    rank of ``process_group`` (an autograd-aware all-gather). Nothing changes without an
    initialised process group or with one rank. The same names everywhere: an estimator takes
    ``gather=GatherOptions(...)`` (``None``: off), a loss module the plain values
    ``gather: bool`` and ``max_gathered_components`` (its ``process_group`` is an attribute).

    Attributes:
        max_gathered_components: each rank sends at most this many components (sequences, or
            tokens at token granularity), drawn at random; ``None`` sends all.
        process_group: the ranks to gather over; ``None`` means the default group.

    Example:
        >>> GatherOptions(max_gathered_components=512)
        GatherOptions(max_gathered_components=512, process_group=None)
    """

    max_gathered_components: int | None = None
    process_group: ProcessGroup | None = None

    def __post_init__(self) -> None:
        check_positive_int(
            "GatherOptions", "max_gathered_components", self.max_gathered_components, optional=True
        )


def check_options(kernel: object, gather: object) -> tuple[KernelOptions, GatherOptions | None]:
    """An estimator's ``kernel`` as :class:`KernelOptions` (a kernel name is shorthand for its
    default options) and its ``gather``, checked."""
    if gather is not None and not isinstance(gather, GatherOptions):
        raise ValueError(f"gather must be a GatherOptions or None, got {type(gather).__name__}")
    if isinstance(kernel, KernelOptions):
        return kernel, gather
    if isinstance(kernel, str):
        return KernelOptions(kernel=kernel), gather  # type: ignore[arg-type]
    raise ValueError(
        f"kernel must be one of {', '.join(repr(k) for k in get_args(Kernel))} or a "
        f"KernelOptions, got {type(kernel).__name__}"
    )
