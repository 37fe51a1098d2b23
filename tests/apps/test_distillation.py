"""The utility losses against direct evaluations, masks and the case study's retrieval utility."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mi_losses.losses import HiddenStateDistillation, LogitDistillation, RetrievalDistillation
from mi_losses.losses.distillation import DISTILLATION


def _mask() -> torch.Tensor:
    return torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)


def test_logit_distillation_is_the_masked_mean_kl() -> None:
    torch.manual_seed(0)
    noisy, clean = (
        torch.randn(2, 4, 7, dtype=torch.float64),
        torch.randn(2, 4, 7, dtype=torch.float64),
    )
    mask = _mask()
    t = 2.0
    expected = []
    for b, s in mask.nonzero().tolist():
        p = torch.softmax(clean[b, s] / t, -1)
        q = torch.softmax(noisy[b, s] / t, -1)
        expected.append((p * (p.log() - q.log())).sum())
    loss = LogitDistillation(temperature=t)
    value = loss(noisy, clean, mask)
    torch.testing.assert_close(value.double(), torch.stack(expected).mean() * t * t)
    assert int(loss.last_num_queries) == 5 and DISTILLATION in loss.component_losses
    changed = noisy.clone()
    changed[~mask] = 1e3  # masked positions are never read
    torch.testing.assert_close(loss(changed, clean, mask), value)
    assert float(loss(clean, clean, mask)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "mse"])
def test_hidden_state_distillation(metric: str) -> None:
    torch.manual_seed(0)
    noisy, clean = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    mask = _mask()
    loss = HiddenStateDistillation(metric=metric)  # type: ignore[arg-type]
    pooled = [(noisy[b][mask[b]].mean(0), clean[b][mask[b]].mean(0)) for b in range(2)]
    tokens = [(noisy[b, s], clean[b, s]) for b, s in mask.nonzero().tolist()]

    def distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return (
            1 - F.cosine_similarity(u, v, dim=0) if metric == "cosine" else (u - v).square().mean()
        )

    torch.testing.assert_close(
        loss(noisy, clean, mask), torch.stack([distance(u, v) for u, v in pooled]).mean()
    )
    per_token = HiddenStateDistillation(metric=metric, pooling="token")  # type: ignore[arg-type]
    torch.testing.assert_close(
        per_token(noisy, clean, mask), torch.stack([distance(u, v) for u, v in tokens]).mean()
    )
    assert int(per_token.last_num_queries) == 5


def test_retrieval_distillation_is_the_batch_retrieval_cross_entropy() -> None:
    torch.manual_seed(0)
    noisy, clean = torch.randn(4, 3, 6, requires_grad=True), torch.randn(4, 3, 6)
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[1, 2] = False
    weights = mask.float().unsqueeze(-1)
    pool = lambda h: (h * weights).sum(1) / weights.sum(1)  # noqa: E731
    value = RetrievalDistillation(temperature=0.05)(noisy, clean, mask)
    u = torch.nn.functional.normalize(pool(noisy).double(), dim=-1)
    v = torch.nn.functional.normalize(pool(clean).double(), dim=-1)
    logits = u @ v.T / 0.05
    expected = -(logits.diagonal() - logits.logsumexp(-1)).mean()
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-5)
    value.backward()
    assert noisy.grad is not None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: LogitDistillation(temperature=0.0), "temperature must be a positive number"),
        (lambda: HiddenStateDistillation(metric="l1"), "metric must be 'cosine' or 'mse'"),
        (lambda: HiddenStateDistillation(pooling="max"), "pooling must be 'mean' or 'token'"),
        (lambda: RetrievalDistillation(temperature=-1.0), "temperature must be a positive"),
    ],
)
def test_bad_options(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        LogitDistillation()(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 3\)"):
        HiddenStateDistillation()(torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 4))
