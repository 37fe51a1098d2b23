"""The math: every estimator of ``MATH.md`` as a function of tensors (nats throughout)."""

from mi_losses.functional.bounds import MutualInformationBounds as MutualInformationBounds
from mi_losses.functional.bounds import mutual_information_bounds
from mi_losses.functional.distance import (
    pairwise_square_mahalanobis_distance,
    square_mahalanobis_distance,
)
from mi_losses.functional.gaussian_entropy import gaussian_entropy_log_loss
from mi_losses.functional.mixture_entropy import (
    gaussian_mixture_entropy,
    gaussian_mixture_entropy_estimate,
)
from mi_losses.functional.mutual_information import (
    mutual_information_sub_batch,
    mutual_information_sub_batch_estimate,
)

__all__ = [
    "gaussian_entropy_log_loss",
    "gaussian_mixture_entropy",
    "gaussian_mixture_entropy_estimate",
    "mutual_information_bounds",
    "mutual_information_sub_batch",
    "mutual_information_sub_batch_estimate",
    "pairwise_square_mahalanobis_distance",
    "square_mahalanobis_distance",
]
