"""Attackers that try to recover clean tokens from what a noise layer releases.

- :mod:`mi_losses.attacks.nearest`: nearest vocabulary row (cosine or L2), torch only.
- :mod:`mi_losses.attacks.posterior`: the one-token Bayes posterior of a context-free Gaussian
  layer over candidate tokens (the scores of :func:`~mi_losses.functional.bayes_token_attack`).
- :mod:`mi_losses.attacks.inversion`: a learned transformer that reads the whole sequence
  (a Lightning module; imported on its own so that this package loads without Lightning).

docs/math.md ("Attackers and baselines on one frontier") defines what each one is judged by.
"""

from mi_losses.attacks.nearest import nearest_token_ids, recovered_tokens, recovery_rate
from mi_losses.attacks.posterior import gaussian_token_log_posterior

__all__ = [
    "gaussian_token_log_posterior",
    "nearest_token_ids",
    "recovered_tokens",
    "recovery_rate",
]
