"""Exact, memory-efficient mutual-information and entropy losses for noisy embeddings."""

from mi_losses import functional
from mi_losses.types import ComponentLossesDict, Estimate, Granularity

__all__ = ["ComponentLossesDict", "Estimate", "Granularity", "functional"]
__version__ = "0.1.0"
