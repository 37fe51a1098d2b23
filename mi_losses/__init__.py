"""Exact, memory-efficient mutual-information and entropy losses for noisy embeddings.

The library: :mod:`mi_losses.functional` (the math), :mod:`mi_losses.losses` (thin modules),
:mod:`mi_losses.metrics` and :mod:`mi_losses.callbacks` (torchmetrics / Lightning),
:mod:`mi_losses.noise` (a Gaussian noise layer). Applications built on it live in
:mod:`mi_losses.apps`. ``import mi_losses`` loads torch only; the Lightning parts are imported
on first use, so the losses can be used without paying for Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mi_losses import _moved, functional, keys
from mi_losses.losses import (
    ComponentLossModule,
    GaussianMixtureEntropy,
    MahalanobisDistance,
    MutualInformationLoss,
    SubBatchMutualInformation,
    VocabularyMutualInformation,
)
from mi_losses.noise import GaussianNoiseLayer, NoisyEmbeddings, SequenceGaussianNoiseLayer
from mi_losses.types import ComponentLossesDict, Estimate, Granularity, Reduction, Units

if TYPE_CHECKING:
    from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
    from mi_losses.apps.demo.task import ObfuscationTask
    from mi_losses.callbacks import ComponentLossLogger, TrainingSummary
    from mi_losses.metrics import ComponentLossMetrics

_LAZY = {
    "ComponentLossMetrics": "mi_losses.metrics",
    "ComponentLossLogger": "mi_losses.callbacks",
    "TrainingSummary": "mi_losses.callbacks",
    "SyntheticEmbeddingDataModule": "mi_losses.apps.demo.data",
    "ObfuscationTask": "mi_losses.apps.demo.task",
}

_moved.install()


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
    "Reduction",
    "SequenceGaussianNoiseLayer",
    "SubBatchMutualInformation",
    "SyntheticEmbeddingDataModule",
    "TrainingSummary",
    "Units",
    "VocabularyMutualInformation",
    "functional",
    "keys",
]
__version__ = "0.1.0"
