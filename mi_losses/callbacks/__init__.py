"""Lightning callbacks: per-step component-loss logging and an end-of-fit summary."""

from mi_losses.callbacks.logger import ComponentLossLogger
from mi_losses.callbacks.summary import TrainingSummary

__all__ = ["ComponentLossLogger", "TrainingSummary"]
