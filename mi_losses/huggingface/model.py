"""A noise layer in front of a frozen ``transformers`` model's input embeddings."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from mi_losses._validation import as_bool_mask
from mi_losses.huggingface.masks import noise_mask as build_noise_mask
from mi_losses.mechanisms import LearnedSubstitution, Release
from mi_losses.noise import NoisyEmbeddings, PretrainedMixin

Head = Literal["base", "causal_lm", "masked_lm"]
"""Which ``transformers`` auto class loads the model: ``AutoModel``, ``AutoModelForCausalLM``,
``AutoModelForMaskedLM``."""

INSTALL_HINT = "mi_losses.huggingface needs the optional extra: pip install 'mi-losses[hf]'"


def import_transformers() -> Any:
    """``transformers``, quiet, or an ``ImportError`` with the install command."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    logging: Any = transformers.utils.logging
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    return transformers


def load_pretrained(model_name_or_path: str, head: Head = "base", **kwargs: Any) -> Any:
    """The model at ``model_name_or_path`` through the auto class of ``head``."""
    transformers = import_transformers()
    classes = {
        "base": transformers.AutoModel,
        "causal_lm": transformers.AutoModelForCausalLM,
        "masked_lm": transformers.AutoModelForMaskedLM,
    }
    if head not in classes:
        raise ValueError(f"head must be one of {sorted(classes)}, got {head!r}")
    return classes[head].from_pretrained(model_name_or_path, **kwargs)


def frozen_model(owner: str, model: nn.Module) -> nn.Module:
    """``model``, checked to be a ``transformers`` model (``get_input_embeddings()``), with its
    parameters frozen."""
    if not hasattr(model, "get_input_embeddings"):
        raise TypeError(
            f"{owner}: model must be a transformers model with get_input_embeddings(), got "
            f"{type(model).__name__}"
        )
    return model.requires_grad_(False)


class NoisyForward(NamedTuple):
    """What :class:`NoisyInputEmbeddingsModel` returns.

    Attributes:
        output: the model's output (a ``transformers`` ``ModelOutput``) on the noisy embeddings.
        clean_input_embeddings: ``x``, ``(B, S, E)``, the rows of the input embedding table.
        noisy: the noise layer's :class:`~mi_losses.noise.NoisyEmbeddings` (``noisy``, ``means``,
            ``stds``), the arguments the privacy losses take; for a substitution layer its
            :class:`~mi_losses.mechanisms.Release` (``noisy``, ``released`` token ids).
        noise_mask: ``(B, S)`` bool, the noised positions.
    """

    output: Any
    clean_input_embeddings: torch.Tensor
    noisy: NoisyEmbeddings | Release
    noise_mask: torch.Tensor


class NoisyInputEmbeddingsModel(nn.Module):
    """Run a frozen ``transformers`` model on noised input embeddings.

    ``x = model.get_input_embeddings()(input_ids)``, ``(y, mu, sigma) = noise_layer(x,
    noise_mask)``, then ``model(inputs_embeds=y, attention_mask=...)``. The model is frozen
    (``requires_grad=False``) and stays in eval mode whatever ``.train()`` is called with;
    gradients flow through it into the noise layer. Works for encoders (BERT) and decoders
    (GPT-2, Llama): anything that accepts ``inputs_embeds``. The noise mask defaults to the
    attended non-special tokens (:func:`~mi_losses.huggingface.noise_mask`).

    Args:
        model: a ``transformers`` model (``get_input_embeddings()``, ``inputs_embeds``).
        noise_layer: called as ``noise_layer(x, noise_mask)`` (and ``attention_mask=`` if its
            ``forward`` takes it), returning :class:`~mi_losses.noise.NoisyEmbeddings`; or the
            directory of a layer saved with ``save_pretrained`` (loaded with
            :meth:`~mi_losses.noise.PretrainedMixin.from_pretrained`, whatever its class, on the
            model's device). A layer with an ``embedding_dim`` must have the model's. A
            :class:`~mi_losses.mechanisms.LearnedSubstitution` (its output vocabulary the model's
            vocabulary) releases tokens instead: the released token's embedding row replaces the
            clean one (:meth:`~mi_losses.mechanisms.LearnedSubstitution.release`, a
            straight-through draw that trains through the model).
        special_token_ids: token ids never noised (e.g. ``tokenizer.all_special_ids``).

    Example:
        >>> from transformers import BertConfig, BertModel  # doctest: +SKIP
        >>> bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1,  # doctest: +SKIP
        ...                             num_attention_heads=2, intermediate_size=64))
        >>> wrapped = NoisyInputEmbeddingsModel(bert, GaussianNoiseLayer(32))  # doctest: +SKIP
        >>> run = wrapped(torch.tensor([[101, 2023, 102]]))  # doctest: +SKIP
        >>> run.output.last_hidden_state.shape, run.noisy.stds.shape  # doctest: +SKIP
        (torch.Size([1, 3, 32]), torch.Size([1, 3, 32]))

    A trained layer saved with ``wrapped.noise_layer.save_pretrained("layer/")`` comes back in
    front of the model with ``NoisyInputEmbeddingsModel(bert, "layer/")`` (docs/layers.md).
    """

    model: Any

    def __init__(
        self,
        model: nn.Module,
        noise_layer: nn.Module | str | os.PathLike[str],
        special_token_ids: tuple[int, ...] | list[int] = (),
    ) -> None:
        super().__init__()
        self.model = frozen_model(type(self).__name__, model)
        if isinstance(noise_layer, (str, os.PathLike)):
            device = self.embedding_table.device
            noise_layer = PretrainedMixin.from_pretrained(noise_layer, device=device)
        width = getattr(noise_layer, "embedding_dim", None)
        if width is not None and width != self.embedding_dim:
            raise ValueError(
                f"noise_layer has embedding_dim={width}, but the model's input embeddings have "
                f"width {self.embedding_dim}"
            )
        if isinstance(noise_layer, LearnedSubstitution):
            vocab_size = int(self.embedding_table.shape[0])
            if (noise_layer.vocab_size, noise_layer.num_outputs) != (vocab_size, vocab_size):
                raise ValueError(
                    f"noise_layer (LearnedSubstitution) must have vocab_size = num_outputs = "
                    f"{vocab_size}, the model's vocabulary (it releases the model's tokens), got "
                    f"vocab_size={noise_layer.vocab_size}, num_outputs={noise_layer.num_outputs}"
                )
        self.noise_layer = noise_layer
        self.special_token_ids = tuple(int(i) for i in special_token_ids)
        parameters = inspect.signature(noise_layer.forward).parameters
        self._layer_reads_attention = "attention_mask" in parameters
        self.model.train(False)

    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str,
        noise_layer: nn.Module | str | os.PathLike[str] | Callable[[int], nn.Module],
        *,
        head: Head = "base",
        special_token_ids: tuple[int, ...] | list[int] = (),
        **kwargs: Any,
    ) -> NoisyInputEmbeddingsModel:
        """Load the model (``kwargs`` go to ``from_pretrained``) and put ``noise_layer`` in front.

        ``noise_layer`` may be a module, the directory of a saved layer, or a callable taking the
        embedding width ``E`` (e.g. the class ``GaussianNoiseLayer``).
        """
        model = load_pretrained(model_name_or_path, head, **kwargs)
        if not isinstance(noise_layer, (nn.Module, str, os.PathLike)):
            noise_layer = noise_layer(int(model.get_input_embeddings().embedding_dim))
        return cls(model, noise_layer, special_token_ids)

    def train(self, mode: bool = True) -> NoisyInputEmbeddingsModel:
        """Train mode for the noise layer only: the frozen model always stays in eval mode."""
        super().train(mode)
        self.model.train(False)
        return self

    @property
    def embedding_table(self) -> torch.Tensor:
        """The input embedding table ``(V, E)`` (a frozen parameter)."""
        return self.model.get_input_embeddings().weight  # type: ignore[no-any-return]

    @property
    def embedding_dim(self) -> int:
        """``E``, the width of the input embeddings."""
        return int(self.embedding_table.shape[1])

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Clean input embeddings ``(B, S, E)`` of ``input_ids`` ``(B, S)``.

        In the noise layer's dtype (e.g. float32 for a bfloat16 model: the layer and the losses
        work in their own precision; :meth:`run` casts back to the model's).
        """
        embeddings: torch.Tensor = self.model.get_input_embeddings()(input_ids)
        dtype = next(
            (p.dtype for p in self.noise_layer.parameters() if p.is_floating_point()), None
        )
        return embeddings if dtype is None else embeddings.to(dtype)

    def noise_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`~mi_losses.huggingface.noise_mask` with this wrapper's special token ids."""
        return build_noise_mask(
            input_ids, attention_mask, special_tokens_mask, self.special_token_ids
        )

    def add_noise(
        self,
        clean_input_embeddings: torch.Tensor,
        noise_mask: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
    ) -> NoisyEmbeddings:
        """The noise layer's output on ``(B, S, E)`` embeddings at ``noise_mask``."""
        if self.releases_tokens:
            raise TypeError(
                "add_noise: a LearnedSubstitution reads token ids, not embeddings; use release"
            )
        if self._layer_reads_attention:
            return self.noise_layer(  # type: ignore[no-any-return]
                clean_input_embeddings, noise_mask, attention_mask=attention_mask
            )
        return self.noise_layer(clean_input_embeddings, noise_mask)  # type: ignore[no-any-return]

    @property
    def releases_tokens(self) -> bool:
        """Whether the layer releases tokens (a substitution layer) rather than adding noise."""
        return isinstance(self.noise_layer, LearnedSubstitution)

    def release(self, input_ids: torch.Tensor, noise_mask: torch.Tensor) -> Release:
        """A substitution layer's release of ``input_ids`` ``(B, S)`` at ``noise_mask``, embedded
        by the model's table (in the layer's dtype, as :meth:`embed`)."""
        if not isinstance(self.noise_layer, LearnedSubstitution):
            raise TypeError(
                f"release needs a LearnedSubstitution noise layer, got "
                f"{type(self.noise_layer).__name__} (use add_noise)"
            )
        table = self.embedding_table.to(self.noise_layer.logits.dtype)
        return self.noise_layer.release(input_ids, table, noise_mask)

    def run(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """The frozen model on ``inputs_embeds`` ``(B, S, E)`` (cast to its dtype)."""
        dtype = self.embedding_table.dtype
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask.long()
        return self.model(inputs_embeds=inputs_embeds.to(dtype), **kwargs)

    @torch.no_grad()
    def clean_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> Any:
        """The frozen model on the clean embeddings, without gradients (the distillation target)."""
        return self.run(self.embed(input_ids), attention_mask, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        noise_mask: torch.Tensor | None = None,
        special_tokens_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> NoisyForward:
        """Noise the embeddings of ``input_ids`` ``(B, S)`` and run the model on them.

        ``noise_mask`` defaults to :meth:`noise_mask` of the attention and special-tokens masks;
        other ``kwargs`` (``output_hidden_states``, ...) go to the model.
        """
        shape, device = input_ids.shape, input_ids.device
        if attention_mask is not None:
            attention_mask = as_bool_mask(
                "attention_mask", attention_mask, shape, device, validate_values=True
            )
        if noise_mask is None:
            noise_mask = self.noise_mask(input_ids, attention_mask, special_tokens_mask)
        noise_mask = as_bool_mask("noise_mask", noise_mask, shape, device, validate_values=True)
        clean = self.embed(input_ids)
        noisy: NoisyEmbeddings | Release
        if self.releases_tokens:
            noisy = self.release(input_ids, noise_mask)
        else:
            noisy = self.add_noise(clean, noise_mask, attention_mask)
        output = self.run(noisy.noisy, attention_mask, **kwargs)
        return NoisyForward(output, clean, noisy, noise_mask)
