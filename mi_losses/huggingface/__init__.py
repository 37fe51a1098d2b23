"""Noise layers in front of any ``transformers`` model's input embeddings.

- :class:`NoisyInputEmbeddingsModel`: a frozen model run on ``noise_layer(get_input_embeddings()(ids))``
  through ``inputs_embeds``, with the means and stds the privacy losses need.
- :func:`noise_mask`, :func:`tokenize_with_noise_mask`: special tokens and padding are never noised.

``transformers`` is an optional extra (``pip install 'mi-losses[hf]'``), imported only when a
model is loaded by name (:meth:`NoisyInputEmbeddingsModel.from_pretrained`).
"""

from mi_losses.huggingface.masks import noise_mask, tokenize_with_noise_mask
from mi_losses.huggingface.model import (
    NoisyForward,
    NoisyInputEmbeddingsModel,
    import_transformers,
    load_pretrained,
)

__all__ = [
    "NoisyForward",
    "NoisyInputEmbeddingsModel",
    "import_transformers",
    "load_pretrained",
    "noise_mask",
    "tokenize_with_noise_mask",
]
