"""Which tokens to noise: attended, and not a special token of the tokenizer."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def noise_mask(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    special_tokens_mask: torch.Tensor | None = None,
    special_token_ids: Iterable[int] = (),
) -> torch.Tensor:
    """``(B, S)`` bool: true at the tokens to obfuscate.

    A token is noised when it is attended (``attention_mask``; padding never is) and is neither
    marked by ``special_tokens_mask`` (the tokenizer's ``return_special_tokens_mask=True``) nor one
    of ``special_token_ids`` (e.g. ``tokenizer.all_special_ids``, which also catches special tokens
    typed in the text). Missing masks mark nothing.

    Example:
        >>> ids = torch.tensor([[101, 7592, 102, 0]])
        >>> noise_mask(ids, ids != 0, special_token_ids=[101, 102]).tolist()
        [[False, True, False, False]]
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (B, S), got {tuple(input_ids.shape)}")
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    for name, extra in (
        ("attention_mask", attention_mask),
        ("special_tokens_mask", special_tokens_mask),
    ):
        if extra is not None and extra.shape != input_ids.shape:
            raise ValueError(
                f"{name} must have shape {tuple(input_ids.shape)} like input_ids, "
                f"got {tuple(extra.shape)}"
            )
    if attention_mask is not None:
        mask &= attention_mask.bool()
    if special_tokens_mask is not None:
        mask &= ~special_tokens_mask.bool()
    ids = sorted(set(special_token_ids))
    if ids:
        mask &= ~torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
    return mask


def tokenize_with_noise_mask(
    tokenizer: Any, texts: Sequence[str], **kwargs: Any
) -> dict[str, torch.Tensor]:
    """``tokenizer(texts, ...)`` as tensors, with ``noise_mask`` added (see :func:`noise_mask`).

    ``kwargs`` go to the tokenizer (``padding``, ``truncation``, ``max_length``, ...); the
    special-tokens mask is always requested and returned.
    """
    encoded = tokenizer(list(texts), return_special_tokens_mask=True, return_tensors="pt", **kwargs)
    batch = {key: value for key, value in encoded.items()}
    batch["noise_mask"] = noise_mask(
        batch["input_ids"],
        batch.get("attention_mask"),
        batch["special_tokens_mask"],
        tokenizer.all_special_ids,
    )
    return batch
