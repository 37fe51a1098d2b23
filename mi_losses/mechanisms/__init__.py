"""Token-release mechanisms from the metric-DP literature, the baselines of the privacy frontier.

:mod:`mi_losses.mechanisms.metric_dp`: multivariate Laplace with nearest-token projection
(Feyisetan et al. 2020) and SanText (Yue et al. 2021), with their channels and Bayes posterior.
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

__all__ = [
    "channel_mutual_information",
    "laplace_channel_log_probabilities",
    "laplace_release",
    "release_log_posterior",
    "sample_multivariate_laplace",
    "santext_log_probabilities",
    "santext_release",
]
