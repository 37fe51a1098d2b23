"""Names of the component losses, the keys of ``losses`` dicts and of logged metrics.

Defined once here; every estimator, module, metric and test imports them. The values are the
names of the reference API (Stained Glass Core's ``loss.entropy``).
"""

from __future__ import annotations

MAHALANOBIS = "gaussian_mixture_mahalanobis_distance_loss"
"""``mean_i sum_j w_ij D_ij``: the softmax-weighted Mahalanobis part of the mixture entropy."""

LOG_CONSTANTS = "gaussian_mixture_log_constants_and_determinant_loss"
"""The log-normaliser part of the mixture entropy, with ``log |V_i| - Entropy(w_i)``."""

MIXTURE_ENTROPY = "gaussian_mixture_entropy_loss"
"""``MAHALANOBIS + LOG_CONSTANTS``: the estimate of ``H(Y)``."""

STD_LOG = "std_log_loss"
"""Minus the estimate of the conditional entropy ``H(Y | X)``."""

MUTUAL_INFORMATION = "mutual_information_loss"
"""``MIXTURE_ENTROPY + STD_LOG``: the mutual-information estimate itself."""

MIXTURE_KEYS = (MAHALANOBIS, LOG_CONSTANTS)
"""Components of :func:`mi_losses.functional.gaussian_mixture_entropy`."""

MUTUAL_INFORMATION_KEYS = (MAHALANOBIS, LOG_CONSTANTS, MIXTURE_ENTROPY, STD_LOG, MUTUAL_INFORMATION)
"""Components of :func:`mi_losses.functional.mutual_information_sub_batch`."""

MUTUAL_INFORMATION_LOWER_BOUND = "mutual_information_lower_bound_loss"
"""The InfoNCE estimate of :func:`mi_losses.functional.mutual_information_bounds`: a lower bound
on the mutual information in expectation (logged next to the upper bound ``MUTUAL_INFORMATION``)."""
