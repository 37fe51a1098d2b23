"""A trained layer is a directory: save_pretrained / from_pretrained restore the exact layer."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mi_losses.noise import (
    GaussianNoiseLayer,
    PretrainedMixin,
    SequenceGaussianNoiseLayer,
)
from tests.noise.test_layers import E, randomise_heads

# Every argument away from its default, the bounds included.
NON_DEFAULT: dict[str, dict[str, Any]] = {
    "gaussian": {
        "embedding_dim": E,
        "hidden_dim": 12,
        "min_std": 0.02,
        "max_std": 0.7,
        "init_std": 0.3,
        "mean_scale": 0.125,
    },
    "sequence": {
        "embedding_dim": E,
        "hidden_dim": 12,
        "num_layers": 1,
        "num_heads": 3,
        "feedforward_dim": 20,
        "dropout": 0.25,
        "min_std": 0.02,
        "max_std": 0.7,
        "init_std": 0.3,
        "mean_scale": 0.125,
    },
}
CLASSES: dict[str, type[PretrainedMixin]] = {
    "gaussian": GaussianNoiseLayer,
    "sequence": SequenceGaussianNoiseLayer,
}


def _trained(kind: str, **arguments: Any) -> PretrainedMixin:
    """A layer of ``kind`` whose every parameter is away from its initial value."""
    torch.manual_seed(0)
    layer = CLASSES[kind](**(NON_DEFAULT[kind] | arguments))
    randomise_heads(layer, scale=0.5)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return layer


def _outputs(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(7)
    return tuple(layer(x, mask))


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_round_trip_restores_the_exact_layer(kind: str, tmp_path: Path) -> None:
    layer = _trained(kind).eval()
    folder = layer.save_pretrained(tmp_path / "layer")
    assert folder == tmp_path / "layer"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["class"] == f"mi_losses.noise.{kind}.{CLASSES[kind].__name__}"
    assert config["arguments"] == NON_DEFAULT[kind]  # every argument, by name, as given
    weights = load_file(folder / "model.safetensors")
    assert sorted(weights) == sorted(layer.state_dict())

    loaded = CLASSES[kind].from_pretrained(folder)
    assert type(loaded) is CLASSES[kind] and not loaded.training
    assert loaded.config == layer.config == NON_DEFAULT[kind]
    for (name, value), (loaded_name, loaded_value) in zip(
        layer.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert name == loaded_name and torch.equal(value, loaded_value), name
    x = torch.randn(3, 5, E)
    mask = torch.tensor([[1, 1, 0, 1, 0]] * 3, dtype=torch.bool)
    for before, after in zip(_outputs(layer, x, mask), _outputs(loaded, x, mask), strict=True):
        assert torch.equal(before, after)
    # The same seed, the same draw, in train mode too (dropout included) once both train.
    train_before, train_after = _outputs(layer.train(), x, mask), _outputs(loaded.train(), x, mask)
    for before, after in zip(train_before, train_after, strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_the_bounds_survive_and_are_not_in_the_state_dict(kind: str, tmp_path: Path) -> None:
    """Weights that saturate both heads: the loaded layer clamps at the saved bounds."""
    bounds = {"min_std": 0.05, "max_std": 0.3, "init_std": 0.1, "mean_scale": 0.02}
    layer = _trained(kind, **bounds).eval()
    randomise_heads(layer, scale=50.0)
    loaded = CLASSES[kind].from_pretrained(layer.save_pretrained(tmp_path))
    assert {key: loaded.config[key] for key in bounds} == bounds
    x = 10 * torch.randn(4, 7, E)
    with torch.no_grad():
        out = loaded(x)
        assert torch.equal(out.stds, layer(x).stds)
        torch.testing.assert_close(float(out.stds.max()), 0.3)
        torch.testing.assert_close(float(out.stds.min()), 0.05)
        torch.testing.assert_close(float(out.means.abs().max()), 0.02)
        # Only the config carries them: the same weights in a default layer clamp elsewhere.
        default = CLASSES[kind](**{k: v for k, v in layer.config.items() if k not in bounds})
        default.load_state_dict(layer.state_dict())
        assert float(default.eval()(x).stds.max()) > 3.0


def test_dtype_and_frozen_mean_head_are_kept(tmp_path: Path) -> None:
    layer = GaussianNoiseLayer(embedding_dim=E, hidden_dim=16, mean_scale=0.0).double()
    loaded = GaussianNoiseLayer.from_pretrained(layer.save_pretrained(tmp_path))
    assert all(p.dtype == torch.float64 for p in loaded.parameters())
    assert not any(p.requires_grad for p in loaded.head.mean_head.parameters())
    assert all(p.requires_grad for p in loaded.head.std_head.parameters())


def test_saving_again_overwrites_and_any_layer_loads_from_the_mixin(tmp_path: Path) -> None:
    GaussianNoiseLayer(embedding_dim=E, hidden_dim=16).save_pretrained(tmp_path)
    layer = _trained("sequence")
    layer.save_pretrained(tmp_path)
    loaded = PretrainedMixin.from_pretrained(tmp_path)
    assert isinstance(loaded, SequenceGaussianNoiseLayer) and loaded.config == layer.config


def test_copies_keep_the_config() -> None:
    layer = GaussianNoiseLayer(embedding_dim=E, max_std=2.0)
    assert copy.deepcopy(layer).config == layer.config
    assert pickle.loads(pickle.dumps(layer)).config["max_std"] == 2.0


class _CountedNoise(PretrainedMixin):
    """A layer built from a tensor and keyword arguments, like the frequency rule."""

    def __init__(self, counts: torch.Tensor, k: int = 2, **options: float) -> None:
        super().__init__()
        self.k, self.options = k, options
        stds = torch.full(counts.shape, options.get("small", 0.1))
        stds[torch.argsort(counts, descending=True)[:k]] = options.get("large", 1.0)
        self.register_buffer("token_stds", stds)


class _WideGaussian(GaussianNoiseLayer):
    """A subclass with a constructor of its own: only its arguments are recorded."""

    def __init__(self, width: int = 4) -> None:
        super().__init__(embedding_dim=E, hidden_dim=width * E, max_std=1.5)


class _PlainSubclass(GaussianNoiseLayer):
    """A subclass without a constructor: the parent's arguments are recorded."""


def test_tensor_and_keyword_arguments(tmp_path: Path) -> None:
    counts = torch.tensor([3.0, 9.0, 1.0, 7.0])
    layer = _CountedNoise(counts, k=1, large=2.5)
    assert set(layer.config) == {"counts", "k", "large"}
    folder = layer.save_pretrained(tmp_path)
    assert (folder / "arguments.safetensors").is_file()
    assert json.loads((folder / "config.json").read_text())["tensor_arguments"] == ["counts"]
    counts.zero_()  # the saved file holds its own copy
    loaded = _CountedNoise.from_pretrained(folder)
    assert torch.equal(loaded.config["counts"], torch.tensor([3.0, 9.0, 1.0, 7.0]))
    assert loaded.k == 1 and loaded.options == {"large": 2.5}
    assert torch.equal(loaded.token_stds, torch.tensor([0.1, 2.5, 0.1, 0.1]))


def test_subclasses(tmp_path: Path) -> None:
    wide = _WideGaussian(width=3)
    assert wide.config == {"width": 3}
    loaded = GaussianNoiseLayer.from_pretrained(wide.save_pretrained(tmp_path / "wide"))
    assert type(loaded) is _WideGaussian and loaded.hidden[1].out_features == 3 * E
    plain = _PlainSubclass(embedding_dim=E, hidden_dim=4)
    assert plain.config["hidden_dim"] == 4 and plain.config["max_std"] == 4.0
    assert type(GaussianNoiseLayer.from_pretrained(plain.save_pretrained(tmp_path / "p"))) is (
        _PlainSubclass
    )
    with pytest.raises(ValueError, match=r"holds a GaussianNoiseLayer .*expected a _WideGaussian"):
        _WideGaussian.from_pretrained(GaussianNoiseLayer(E).save_pretrained(tmp_path / "base"))


def test_a_constructor_that_cannot_be_called_by_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match=r"_Positional: .*argument 'sizes' cannot be passed"):

        class _Positional(PretrainedMixin):
            def __init__(self, *sizes: int) -> None:
                super().__init__()


def _saved(tmp_path: Path) -> Path:
    return GaussianNoiseLayer(embedding_dim=E, hidden_dim=16).save_pretrained(tmp_path / "layer")


def _edit_config(folder: Path, edit: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_loading_errors_name_the_path_and_what_was_expected(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist; expected a directory"):
        GaussianNoiseLayer.from_pretrained(missing)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match=rf"{a_file} is not a directory"):
        GaussianNoiseLayer.from_pretrained(a_file)
    for name in ("config.json", "model.safetensors"):
        folder = _saved(tmp_path / name)
        (folder / name).unlink()
        with pytest.raises(FileNotFoundError, match=rf"{folder} has no {name}"):
            GaussianNoiseLayer.from_pretrained(folder)

    folder = SequenceGaussianNoiseLayer(E, hidden_dim=16, num_heads=2).save_pretrained(
        tmp_path / "s"
    )
    with pytest.raises(ValueError, match=r"holds a SequenceGaussianNoiseLayer .*expected a Gauss"):
        GaussianNoiseLayer.from_pretrained(folder)

    folder = _saved(tmp_path / "unknown")
    _edit_config(folder, lambda c: c.update({"class": "mi_losses.noise.NoSuchLayer"}))
    with pytest.raises(ValueError, match=r"'mi_losses.noise.NoSuchLayer', which cannot be imp"):
        PretrainedMixin.from_pretrained(folder)

    folder = _saved(tmp_path / "json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{folder / 'config.json'} is not valid JSON"):
        GaussianNoiseLayer.from_pretrained(folder)
    _edit_config(_saved(tmp_path / "keys"), lambda c: c.pop("arguments"))
    with pytest.raises(ValueError, match=r"must hold 'arguments' \(dict\)"):
        GaussianNoiseLayer.from_pretrained(tmp_path / "keys" / "layer")

    folder = _saved(tmp_path / "bounds")
    _edit_config(folder, lambda c: c["arguments"].update({"min_std": 0.5}))
    with pytest.raises(ValueError, match=r"do not build a GaussianNoiseLayer: .*min_std <= init"):
        GaussianNoiseLayer.from_pretrained(folder)

    folder = _saved(tmp_path / "corrupt")
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"model.safetensors is not a readable safetensors file"):
        GaussianNoiseLayer.from_pretrained(folder)

    folder = _CountedNoise(torch.ones(3)).save_pretrained(tmp_path / "counted")
    (folder / "arguments.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{folder} has no arguments.safetensors"):
        _CountedNoise.from_pretrained(folder)

    folder = _saved(tmp_path / "shape")
    _edit_config(folder, lambda c: c["arguments"].update({"hidden_dim": 8}))
    with pytest.raises(ValueError, match=r"model.safetensors does not hold the weights of the Ga"):
        GaussianNoiseLayer.from_pretrained(folder)


def test_saving_errors_name_the_argument(tmp_path: Path) -> None:
    layer = _CountedNoise(torch.ones(3), k=1, large=float("nan"))
    with pytest.raises(
        TypeError, match=r"argument 'large' = nan cannot be saved: config.json holds finite"
    ):
        layer.save_pretrained(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()  # nothing written
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match=rf"{a_file} exists and is not a directory"):
        GaussianNoiseLayer(E).save_pretrained(a_file)


def test_token_layers_round_trip(tmp_path: Path) -> None:
    """The token layers (baselines and the learned one) are directories too, tensors included."""
    from mi_losses.noise import FrequencyRuleNoise, IsotropicNoise, LearnedTokenNoise, TokenNoise

    torch.manual_seed(0)
    table = torch.randn(11, E)
    counts = torch.randint(0, 50, (11,)).float()
    learned = LearnedTokenNoise(E, hidden_dim=6, min_std=0.01, max_std=1.5, vocab_size=11)
    learned.warm_start(torch.tensor([2, 5]), std=0.9)
    with torch.no_grad():
        for parameter in learned.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    layers: list[TokenNoise] = [
        IsotropicNoise(0.3),
        FrequencyRuleNoise(counts, k=3, large_std=1.7, small_std=0.04),
        learned,
    ]
    for index, layer in enumerate(layers):
        loaded = TokenNoise.from_pretrained(layer.save_pretrained(tmp_path / str(index)))
        assert type(loaded) is type(layer)
        if not isinstance(layer, FrequencyRuleNoise):  # its counts tensor: compared below
            assert loaded.config == layer.config
        for want, got in zip(
            layer.vocabulary_parameters(table), loaded.vocabulary_parameters(table), strict=True
        ):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    loaded_rule = FrequencyRuleNoise.from_pretrained(tmp_path / "1")
    torch.testing.assert_close(loaded_rule.config["counts"], counts, rtol=0, atol=0)
    with pytest.raises(ValueError, match="LearnedTokenNoise"):
        LearnedTokenNoise.from_pretrained(tmp_path / "0")
