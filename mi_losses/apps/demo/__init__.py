"""The synthetic demo: learn a noise layer on random token embeddings against a frozen encoder."""

from mi_losses.apps.demo.data import SyntheticEmbeddingDataModule
from mi_losses.apps.demo.downstream import FrozenDownstreamEncoder
from mi_losses.apps.demo.task import ObfuscationTask

__all__ = ["FrozenDownstreamEncoder", "ObfuscationTask", "SyntheticEmbeddingDataModule"]
