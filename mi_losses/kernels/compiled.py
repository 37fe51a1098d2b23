"""The factors through ``torch.compile`` (``KernelOptions(compiled_factors=True)``).

The streaming path makes its factors with eager, in-place PyTorch operations: one pass over
the ``(rows, S, E)`` inputs per operation. Compiled (Inductor: generated C++ with a compiler at
run time on the CPU), each of :func:`~mi_losses.kernels.factors.sides`,
:func:`~mi_losses.kernels.factors.query_factors` and
:func:`~mi_losses.kernels.factors.component_factors` becomes a few fused loops. The first call
of each shape family compiles (seconds); where compilation fails, a warning says so and the
eager functions run. Used where no graph is being built (the streaming path's passes).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import torch

from mi_losses.kernels import factors

F = TypeVar("F", bound=Callable[..., Any])


class Makers(NamedTuple):
    """The functions that make a direction's factors (the signatures of
    :mod:`~mi_losses.kernels.factors`)."""

    sides: Callable[..., factors.Sides]
    queries: Callable[..., factors.Queries]
    components: Callable[..., factors.Components]


EAGER = Makers(factors.sides, factors.query_factors, factors.component_factors)


# Graphs per maker: dynamo compiles one for every combination of the makers' flags (``check``,
# ``values``, ``dense``, a frame given) and shape family (sizes that happen to be equal are
# guarded as equal), and past its default limit of 8 it runs the function eagerly, with a log
# line only: two sequence shapes in one process reached it.
RECOMPILE_LIMIT = 64


def compiled(function: F, backend: str | Callable[..., Any] = "inductor") -> F:
    """``function`` compiled by ``backend`` with dynamic shapes where no graph is being built
    (up to :data:`RECOMPILE_LIMIT` graphs); the eager ``function`` (with a warning, once) where
    compilation fails."""
    graph = torch.compile(function, dynamic=True, backend=backend)
    failed = False

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal failed
        if failed or torch.is_grad_enabled():
            return function(*args, **kwargs)
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                return graph(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as error:
            failed = True
            warnings.warn(
                f"KernelOptions(compiled_factors=True): torch.compile failed, the factors are "
                f"made eagerly ({type(error.inner_exception).__name__}: {error.inner_exception})",
                RuntimeWarning,
                stacklevel=2,
            )
            return function(*args, **kwargs)

    return run  # type: ignore[return-value]


_COMPILED: list[Makers] = []  # made at the first call that asks (torch.compile imports dynamo)


def makers(compile: bool) -> Makers:
    """The eager makers, or (``compile``) the compiled ones, made once per process."""
    if not compile:
        return EAGER
    if not _COMPILED:
        _COMPILED.append(
            Makers(compiled(EAGER.sides), compiled(EAGER.queries), compiled(EAGER.components))
        )
    return _COMPILED[0]
