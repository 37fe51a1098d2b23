"""Device and dtype fixtures: every matrix test runs on each available device.

``device`` is ``cpu``, plus ``cuda`` where ``torch.cuda.is_available()``: the CUDA run is the
same matrix on another device. ``dtype`` is float32 and float64; ``half_dtype`` float16 and
bfloat16 (computed in float32 and returned in the input dtype).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def half_dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def fresh_dynamo() -> Iterator[None]:
    """A clean ``torch._dynamo`` cache before and after a compile test."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
