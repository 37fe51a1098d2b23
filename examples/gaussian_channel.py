"""Sub-batch MI estimates on a Gaussian channel, beside the closed form.

``Y = X + N`` with ``X ~ N(0, s^2 I)`` and ``N ~ N(0, sigma^2 I)`` in ``E`` dimensions has
``I(X; Y) = E/2 * log(1 + s^2 / sigma^2)`` nats. The sub-batch (leave-one-out) estimator is an
upper bound in expectation, tight in low dimension with a large batch and loose where the mutual
information is large.

Run: ``python examples/gaussian_channel.py`` (a few seconds on a laptop CPU).
"""

from __future__ import annotations

import argparse
import math

import torch

from mi_losses.functional import mutual_information_sub_batch


def closed_form(signal_std: float, noise_std: float, dim: int) -> float:
    """``I(X; Y)`` in nats for the Gaussian channel."""
    return 0.5 * dim * math.log1p(signal_std**2 / noise_std**2)


def estimate(
    signal_std: float, noise_std: float, dim: int, batch_size: int, seeds: int
) -> tuple[float, float]:
    """Mean and standard error over seeds of the symmetric sub-batch estimate."""
    values = []
    for seed in range(seeds):
        generator = torch.Generator().manual_seed(seed)
        clean = signal_std * torch.randn(batch_size, 1, dim, generator=generator)
        stds = torch.full_like(clean, noise_std)
        means = torch.zeros_like(clean)
        noisy = clean + stds * torch.randn(clean.shape, generator=generator)
        mi = mutual_information_sub_batch(means, stds, None, clean, noisy, symmetric=True)
        values.append(float(mi))
    mean = sum(values) / seeds
    spread = math.sqrt(sum((v - mean) ** 2 for v in values) / max(seeds - 1, 1))
    return mean, spread / math.sqrt(seeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=2, help="E, the embedding dimension")
    parser.add_argument("--batch-size", type=int, default=2048, help="B (split in two halves)")
    parser.add_argument("--seeds", type=int, default=5, help="independent batches per level")
    args = parser.parse_args()

    print(f"Gaussian channel, E={args.dim}, B={args.batch_size}, s=1, {args.seeds} seeds")
    print(f"{'noise std':>10} {'closed form':>12} {'estimate':>10} {'std err':>8} {'ratio':>6}")
    for noise_std in (0.25, 0.5, 1.0, 2.0, 4.0):
        truth = closed_form(1.0, noise_std, args.dim)
        mean, stderr = estimate(1.0, noise_std, args.dim, args.batch_size, args.seeds)
        print(
            f"{noise_std:>10.2f} {truth:>12.4f} {mean:>10.4f} {stderr:>8.4f} {mean / truth:>6.3f}"
        )
    print("(nats; the estimate is an upper bound in expectation)")


if __name__ == "__main__":
    main()
