"""Token-release mechanisms from the metric-DP literature, the baselines of the privacy frontier.

:mod:`mi_losses.mechanisms.metric_dp`: multivariate Laplace with nearest-token projection
(Feyisetan et al. 2020) and SanText (Yue et al. 2021), with their channels and Bayes posterior.
:mod:`mi_losses.mechanisms.substitution`: a learned substitution channel over each token's
nearest candidates (its exact MI as a loss module: :class:`~mi_losses.losses.SubstitutionMutualInformation`); saved and loaded as a directory.
"""

from mi_losses.mechanisms.metric_dp import (
    channel_mutual_information,
    laplace_channel_log_probabilities,
    laplace_release,
    release_log_posterior,
    sample_multivariate_laplace,
    santext_log_probabilities,
    santext_release,
)
from mi_losses.mechanisms.substitution import (
    LearnedSubstitution,
    Release,
    nearest_candidates,
)

__all__ = [
    "LearnedSubstitution",
    "Release",
    "channel_mutual_information",
    "laplace_channel_log_probabilities",
    "laplace_release",
    "nearest_candidates",
    "release_log_posterior",
    "sample_multivariate_laplace",
    "santext_log_probabilities",
    "santext_release",
]
