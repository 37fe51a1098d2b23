"""The pairwise kernel: a per-query log-sum-exp of quadratic pair scores, three ways to run it.

- :mod:`~mi_losses.kernels.directions`: the rows and effective masks of each direction, block ranges.
- :mod:`~mi_losses.kernels.factors`: the scores as products of per-sample factors.
- :mod:`~mi_losses.kernels.scores`: a block's scores, the rounding check, the statistics.
- :mod:`~mi_losses.kernels.chain`: the factors' gradients back to the inputs.
- :mod:`~mi_losses.kernels.reference`: plain PyTorch, all scores at once, autograd throughout
  (also the distance matrix of ``pairwise_square_mahalanobis_distance``).
- :mod:`~mi_losses.kernels.streaming`: blocks with a running log-sum-exp, linear memory.
- :mod:`~mi_losses.kernels.triton`: the same blocks as fused Triton kernels (CUDA).
- :mod:`~mi_losses.kernels.memory`: temporaries below glibc's fresh-page size on the CPU, the
  gradient buffers on huge pages.
- :mod:`~mi_losses.kernels.accuracy`: the float64 fallback around any of them.
- :mod:`~mi_losses.kernels.dispatch`: which path runs a call (``KernelOptions.kernel``).
- :mod:`~mi_losses.kernels.vocabulary`: the same factors against a vocabulary table, plus a
  log prior per row (the vocabulary MI, the Bayes attack, the token posterior).

Every Gaussian pair score of the library is made here; the Kolchinsky-Tracey KL bound runs
through :func:`stream` on augmented features. Only the Bhattacharyya distance (no product form)
is evaluated elsewhere (``functional/pairwise_bounds.py``).
"""

from mi_losses.kernels.dispatch import Plan, choose, make_plan, stream
from mi_losses.kernels.factors import HALF_LOG_TWO_PI
from mi_losses.kernels.reference import Result

__all__ = ["HALF_LOG_TWO_PI", "Plan", "Result", "choose", "make_plan", "stream"]
