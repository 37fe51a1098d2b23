"""The calibration command on a tiny grid: files, table, and its InfoNCE against docs/math.md#the-sandwich-from-one-pass."""

from __future__ import annotations

import math

import pytest
import torch

from mi_losses.apps.calibrate import (
    calibrate,
    exact_mutual_information_1d,
    gaussian_rows,
    infonce_lower,
    summarise,
)
from mi_losses.functional import mutual_information_sub_batch


def test_infonce_matches_the_formula_and_its_cap() -> None:
    g = torch.Generator().manual_seed(0)
    clean = 3.0 * torch.randn(8, 1, 2, generator=g, dtype=torch.float64)
    stds = 0.5 + torch.rand(8, 1, 2, generator=g, dtype=torch.float64)
    noisy = clean + stds * torch.randn(8, 1, 2, generator=g, dtype=torch.float64)
    terms = []
    for i in range(4):

        def log_n(j: int, i: int = i) -> torch.Tensor:
            return (-0.5 * ((noisy[i, 0] - clean[j, 0]) / stds[j, 0]) ** 2 - stds[j, 0].log()).sum()

        ratios = [math.exp(float(log_n(j) - log_n(i))) for j in range(4, 8)]
        terms.append(-math.log((1 + sum(ratios)) / 5))
    value = float(infonce_lower(stds, clean, noisy))
    assert math.isclose(value, sum(terms) / 4, rel_tol=1e-10)
    assert value <= math.log(5) + 1e-12
    upper = float(mutual_information_sub_batch(torch.zeros_like(clean), stds, None, clean, noisy))
    assert value <= upper


def test_exact_1d_integral_of_two_far_points_is_the_prior_entropy() -> None:
    centres = torch.tensor([-50.0, 50.0], dtype=torch.float64)
    prior = torch.tensor([0.3, 0.7], dtype=torch.float64)
    exact = exact_mutual_information_1d(centres, torch.ones(2, dtype=torch.float64), prior)
    assert math.isclose(exact, float(-(prior * prior.log()).sum()), rel_tol=1e-6)


@pytest.mark.slow
def test_tiny_grid_writes_table_csv_and_plot(tmp_path, capsys) -> None:
    summary = calibrate(
        out=tmp_path,
        dims=[2],
        snrs=[1.0],
        batches=[16],
        vocab_batches=[16],
        seeds=2,
        truth_tokens=2000,
    )
    for name in ("calibration.csv", "calibration_table.md", "calibration.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| gaussian | 2 | 1 | 16 |" in capsys.readouterr().out
    gaussian = next(r for r in summary if r["channel"] == "gaussian")
    assert math.isclose(float(gaussian["truth"]), math.log(2.0), rel_tol=1e-12)
    for row in summary:
        assert float(row["infonce_lower"]) <= math.log(int(row["batch"]) // 2 + 1) + 1e-9
        assert float(row["kt_bhattacharyya_lower"]) <= float(row["kt_kl_upper"])


def test_seeded_gaussian_grid_sandwich() -> None:
    """On a seeded grid, InfoNCE and KT-Bhattacharyya <= truth <= L1Out within 3 standard
    errors over seeds (all three are bounds in expectation of the population MI)."""
    summary = summarise(gaussian_rows([1, 4], [0.5, 3.0], [32], seeds=8))
    assert len(summary) == 4
    for row in summary:
        truth = float(row["truth"])
        for lower in ("infonce_lower", "kt_bhattacharyya_lower"):
            assert float(row[lower]) <= truth + 3 * float(row[lower + "_se"]), (row, lower)
        assert float(row["l1out_upper"]) >= truth - 3 * float(row["l1out_upper_se"]), row
