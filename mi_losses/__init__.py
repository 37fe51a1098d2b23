"""Exact, memory-efficient mutual-information and entropy losses for noisy embeddings.

The library: :mod:`mi_losses.functional` (the math), :mod:`mi_losses.losses` (thin modules),
:mod:`mi_losses.options` (kernel and gather options), :mod:`mi_losses.metrics` and
:mod:`mi_losses.callbacks` (torchmetrics / Lightning), :mod:`mi_losses.noise` (noise layers).
Applications built on it live in :mod:`mi_losses.apps` and are not imported here.
``import mi_losses`` loads torch only; the Lightning parts are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mi_losses import functional, keys
from mi_losses.losses import (
    ComponentLossModule,
    GaussianMixtureEntropy,
    MahalanobisDistance,
    MixtureLossModule,
    MutualInformationLoss,
    SubBatchMutualInformation,
    VocabularyMutualInformation,
)
from mi_losses.noise import GaussianNoiseLayer, NoisyEmbeddings, SequenceGaussianNoiseLayer
from mi_losses.options import GatherOptions, KernelOptions
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Kernel, Reduction, Units

if TYPE_CHECKING:
    from mi_losses.callbacks import ComponentLossLogger, TrainingSummary
    from mi_losses.metrics import ComponentLossMetrics

_LAZY = {
    "ComponentLossMetrics": "mi_losses.metrics",
    "ComponentLossLogger": "mi_losses.callbacks",
    "TrainingSummary": "mi_losses.callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mi_losses' has no attribute {name!r}")


__all__ = [
    "ComponentLossLogger",
    "ComponentLossMetrics",
    "ComponentLossModule",
    "ComponentLossesDict",
    "Estimate",
    "GatherOptions",
    "GaussianMixtureEntropy",
    "GaussianNoiseLayer",
    "Granularity",
    "Kernel",
    "KernelOptions",
    "MahalanobisDistance",
    "MixtureLossModule",
    "MutualInformationLoss",
    "NoisyEmbeddings",
    "Reduction",
    "SequenceGaussianNoiseLayer",
    "SubBatchMutualInformation",
    "TrainingSummary",
    "Units",
    "VocabularyMutualInformation",
    "functional",
    "keys",
]
__version__ = "0.2.0"
