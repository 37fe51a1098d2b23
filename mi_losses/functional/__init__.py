"""The math: every estimator of ``MATH.md`` as a function of tensors (nats throughout)."""

from mi_losses.functional.attack import bayes_token_attack, fano_error_floor
from mi_losses.functional.bounds import MutualInformationBounds, mutual_information_bounds
from mi_losses.functional.closed_form import (
    gaussian_channel_mutual_information,
    gaussian_differential_entropy,
)
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
from mi_losses.functional.vocabulary import (
    vocabulary_mutual_information,
    vocabulary_mutual_information_estimate,
)
from mi_losses.functional.vocabulary_parameters import (
    prior_entropy,
    token_prior,
    vocabulary_noise_parameters,
)

__all__ = [
    "MutualInformationBounds",
    "bayes_token_attack",
    "fano_error_floor",
    "gaussian_channel_mutual_information",
    "gaussian_differential_entropy",
    "gaussian_entropy_log_loss",
    "gaussian_mixture_entropy",
    "gaussian_mixture_entropy_estimate",
    "mutual_information_bounds",
    "mutual_information_sub_batch",
    "mutual_information_sub_batch_estimate",
    "pairwise_square_mahalanobis_distance",
    "prior_entropy",
    "square_mahalanobis_distance",
    "token_prior",
    "vocabulary_mutual_information",
    "vocabulary_mutual_information_estimate",
    "vocabulary_noise_parameters",
]
