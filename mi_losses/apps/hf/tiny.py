"""Tiny randomly initialised ``transformers`` models to try ``mi-losses-hf`` offline.

    python -m mi_losses.apps.hf.tiny outputs/tiny_bert            # kind: bert (default)
    python -m mi_losses.apps.hf.tiny outputs/tiny_llama --kind llama
    mi-losses-hf fit --config configs/hf/encoder.yaml --model.model_name_or_path outputs/tiny_bert

Each is a ``save_pretrained`` directory (model and tokenizer), built without any download:

- ``bert``: a 1-layer BERT (``E = 32``) with a word-level tokenizer that adds ``[CLS]`` and
  ``[SEP]`` and pads with ``[PAD]``;
- ``llama``: a 1-layer Llama-style decoder with a word-level tokenizer that adds ``<s>`` (a special
  token, never noised) and has no padding token;
- ``gpt2``: a 1-layer GPT-2 with a word-level tokenizer that adds nothing (``<|endoftext|>`` is
  its unknown, begin and end token; no padding token).

The word-level vocabularies are the most frequent words of the default training text (CPython's
documentation). The models are untrained: the job runs, its numbers mean nothing.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from mi_losses.huggingface import import_transformers

KINDS = ("bert", "llama", "gpt2")
HIDDEN = 32


@lru_cache(maxsize=1)
def _words(count: int = 400) -> tuple[str, ...]:
    from mi_losses.apps.hf.data import split_texts

    train, _ = split_texts()
    counter = Counter(word for text in train for word in text.lower().split())
    return tuple(word for word, _ in counter.most_common(count))


def word_level_tokenizer(kind: str) -> Any:
    """A ``PreTrainedTokenizerFast`` over a word-level vocabulary, BERT-, Llama- or GPT-2-style."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = {
        "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
        "llama": ["<unk>", "<s>", "</s>"],
        "gpt2": ["<|endoftext|>"],
    }[kind]
    vocab = {token: index for index, token in enumerate([*specials, *_words()])}
    unknown = "[UNK]" if kind == "bert" else specials[0]
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unknown))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if kind == "bert":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
        )
    if kind == "llama":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )


def tiny_model(kind: str, vocab_size: int, seed: int = 0) -> Any:
    """A randomly initialised 1-layer model of ``kind`` (``E = 32``)."""
    transformers: Any = import_transformers()

    torch.manual_seed(seed)
    common = {"vocab_size": vocab_size}
    if kind == "bert":
        config = transformers.BertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            **common,
        )
        return transformers.BertModel(config)
    if kind == "llama":
        config = transformers.LlamaConfig(
            hidden_size=HIDDEN,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
            **common,
        )
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(
        n_embd=HIDDEN, n_layer=1, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0, **common
    )
    return transformers.GPT2LMHeadModel(config)


def save_tiny(kind: str, folder: Path) -> Path:
    """Save a tiny model of ``kind`` and its tokenizer with ``save_pretrained`` into ``folder``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tokenizer = word_level_tokenizer(kind)
    model = tiny_model(kind, len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main(args: list[str] | None = None) -> None:
    """``python -m mi_losses.apps.hf.tiny FOLDER [--kind bert|llama|gpt2] [--seed N]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m mi_losses.apps.hf.tiny",
        description="Save a tiny random transformers model and its tokenizer (no download).",
    )
    parser.add_argument("folder", type=Path, help="where save_pretrained writes")
    parser.add_argument("--kind", choices=KINDS, default="bert")
    options = parser.parse_args(args)
    folder = save_tiny(options.kind, options.folder)
    print(f"saved a tiny {options.kind} model to {folder}; try it with:")
    config = "encoder" if options.kind == "bert" else "causal_lm"
    print(
        f"  mi-losses-hf fit --config configs/hf/{config}.yaml --model.model_name_or_path {folder}"
    )


if __name__ == "__main__":
    main()
