"""Exact, memory-efficient mutual-information and entropy losses for noisy embeddings.

``import mi_losses`` loads torch only; the Lightning parts (callbacks, data, task, CLI) are
imported on first use, so the losses can be used without paying for Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mi_losses import functional
from mi_losses.losses import (
    ComponentLossModule,
    GaussianMixtureEntropy,
    MahalanobisDistance,
    MutualInformationLoss,
    SubBatchMutualInformation,
)
from mi_losses.noise import GaussianNoiseLayer, NoisyEmbeddings
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

if TYPE_CHECKING:
    from mi_losses.callbacks import ComponentLossLogger, TrainingSummary
    from mi_losses.data import SyntheticEmbeddingDataModule
    from mi_losses.metrics import ComponentLossMetrics
    from mi_losses.task import ObfuscationTask

_LAZY = {
    "ComponentLossMetrics": "mi_losses.metrics",
    "ComponentLossLogger": "mi_losses.callbacks",
    "TrainingSummary": "mi_losses.callbacks",
    "SyntheticEmbeddingDataModule": "mi_losses.data",
    "ObfuscationTask": "mi_losses.task",
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
    "GaussianMixtureEntropy",
    "GaussianNoiseLayer",
    "Granularity",
    "MahalanobisDistance",
    "MutualInformationLoss",
    "NoisyEmbeddings",
    "ObfuscationTask",
    "SubBatchMutualInformation",
    "SyntheticEmbeddingDataModule",
    "TrainingSummary",
    "functional",
]
__version__ = "0.1.0"
