"""A trained layer is a directory: ``save_pretrained(path)`` and ``from_pretrained(path)``.

The directory holds ``config.json`` (the class and every argument its constructor was called
with, defaults included, so the bounds ``min_std``, ``max_std``, ``init_std`` and ``mean_scale``
travel with the weights) and ``model.safetensors`` (the ``state_dict``), the layout of
``huggingface_hub``'s ``PyTorchModelHubMixin``. Tensor arguments of a constructor (a ``(V,)``
count vector, say) go to ``arguments.safetensors``; any other argument must be plain JSON data.

The arguments are recorded when the object is built, by every subclass's ``__init__``, with no
code in the subclass: a class opts in by inheriting :class:`PretrainedMixin`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import reprlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TENSOR_ARGUMENTS_NAME = "arguments.safetensors"

_ARGUMENTS = "_pretrained_arguments"
"""The instance attribute (in ``__dict__``) that holds the recorded constructor arguments."""

Layer = TypeVar("Layer", bound="PretrainedMixin")


class PretrainedMixin(nn.Module):
    """Gives a module ``save_pretrained(path)`` and ``from_pretrained(path)``.

    Inherit it (``class MyLayer(PretrainedMixin)``, or next to ``nn.Module``) and nothing else
    is needed: the arguments of ``MyLayer(...)``, defaults included, are recorded when it is built
    and written to ``config.json``; ``from_pretrained`` calls the constructor with them and loads
    the weights, so the loaded layer is the saved one (same outputs for the same seed).

    Example:
        >>> import tempfile
        >>> from mi_losses.noise import GaussianNoiseLayer
        >>> layer = GaussianNoiseLayer(embedding_dim=8, hidden_dim=16, max_std=2.0)
        >>> folder = layer.save_pretrained(tempfile.mkdtemp())
        >>> loaded = GaussianNoiseLayer.from_pretrained(folder)
        >>> loaded.config["max_std"], sorted(p.name for p in folder.iterdir())
        (2.0, ['config.json', 'model.safetensors'])
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _recording(cls, init)  # type: ignore[method-assign]

    @property
    def config(self) -> dict[str, Any]:
        """The arguments this layer was built with, by name (defaults included)."""
        arguments = self.__dict__.get(_ARGUMENTS)
        if arguments is None:
            raise TypeError(
                f"{type(self).__name__} was not built by a constructor that records its "
                f"arguments (its class or a parent defines __init__ and inherits PretrainedMixin)"
            )
        return dict(arguments)

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into the directory ``path``.

        The directory is created if needed; files of an earlier save are overwritten. Returns the
        directory. Raises ``TypeError`` naming an argument JSON cannot hold (a module, a callable).
        """
        directory = Path(path)
        owner = f"{type(self).__name__}.save_pretrained"
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"{owner}: {directory} exists and is not a directory")
        arguments, tensors = _split_arguments(owner, self.config)
        config = {
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "arguments": arguments,
            "tensor_arguments": sorted(tensors),
            "mi_losses_version": _version(),
        }
        text = json.dumps(config, indent=2, allow_nan=False)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(_plain_tensors(self.state_dict()), directory / WEIGHTS_NAME, {"format": "pt"})
        if tensors:
            save_file(_plain_tensors(tensors), directory / TENSOR_ARGUMENTS_NAME)
        (directory / CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        return directory

    @classmethod
    def from_pretrained(
        cls: type[Layer], path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
    ) -> Layer:
        """The layer saved in the directory ``path`` by :meth:`save_pretrained`, in eval mode.

        Called on a class, the directory must hold that class or a subclass of it; called on
        ``PretrainedMixin``, any layer. The weights keep the dtype they were saved in and are put
        on ``device``.
        """
        owner = f"{cls.__name__}.from_pretrained"
        directory = Path(path)
        if not directory.is_dir():
            state = "is not a directory" if directory.exists() else "does not exist"
            raise FileNotFoundError(
                f"{owner}: {directory} {state}; expected a directory written by "
                f"save_pretrained ({CONFIG_NAME}, {WEIGHTS_NAME})"
            )
        config = _read_config(owner, _required(owner, directory, CONFIG_NAME))
        layer_class = _layer_class(owner, cls, config["class"], directory / CONFIG_NAME)
        arguments = dict(config["arguments"])
        if config["tensor_arguments"]:
            file = _required(owner, directory, TENSOR_ARGUMENTS_NAME)
            stored = _load_tensors(owner, file, "cpu")
            missing = sorted(set(config["tensor_arguments"]) - set(stored))
            if missing:
                raise ValueError(f"{owner}: {file} lacks the tensor arguments {missing}")
            arguments.update({name: stored[name] for name in config["tensor_arguments"]})
        weights = _load_tensors(owner, _required(owner, directory, WEIGHTS_NAME), device)
        try:
            layer = layer_class(**arguments)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{owner}: the arguments in {directory / CONFIG_NAME} do not build a "
                f"{layer_class.__name__}: {error}"
            ) from error
        try:
            layer.load_state_dict(weights, strict=True, assign=True)
        except RuntimeError as error:
            raise ValueError(
                f"{owner}: {directory / WEIGHTS_NAME} does not hold the weights of the "
                f"{layer_class.__name__} its {CONFIG_NAME} describes: {error}"
            ) from error
        return layer.to(device).eval()


def _recording(owner: type, init: Callable[..., None]) -> Callable[..., None]:
    """``init`` that records its arguments, by name, when it is the outermost ``__init__``."""
    signature = inspect.signature(init)
    parameters = list(signature.parameters.values())[1:]
    for parameter in parameters:
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.VAR_POSITIONAL):
            raise TypeError(
                f"{owner.__name__}: PretrainedMixin rebuilds a layer from keyword arguments; "
                f"the constructor's argument {parameter.name!r} cannot be passed by keyword"
            )

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        outermost = _ARGUMENTS not in self.__dict__
        if outermost:
            self.__dict__[_ARGUMENTS] = None  # the inner constructors record nothing
        init(self, *args, **kwargs)
        if outermost:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments: dict[str, Any] = {}
            for parameter in parameters:
                value = bound.arguments[parameter.name]
                if parameter.kind is parameter.VAR_KEYWORD:
                    arguments.update(value)
                else:
                    arguments[parameter.name] = value
            self.__dict__[_ARGUMENTS] = arguments

    return __init__


def _required(owner: str, directory: Path, name: str) -> Path:
    """``directory / name``, or a ``FileNotFoundError`` naming both."""
    if not (directory / name).is_file():
        raise FileNotFoundError(
            f"{owner}: {directory} has no {name}; expected a directory written by "
            f"save_pretrained ({CONFIG_NAME}, {WEIGHTS_NAME})"
        )
    return directory / name


def _load_tensors(owner: str, file: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors ``file`` on ``device``, or a ``ValueError`` naming it."""
    try:
        return load_file(file, device=str(torch.device(device)))
    except SafetensorError as error:
        raise ValueError(f"{owner}: {file} is not a readable safetensors file: {error}") from error


def _split_arguments(
    owner: str, arguments: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON arguments and the tensor arguments; ``TypeError`` for anything else."""
    plain: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, value in arguments.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif _is_json(value):
            plain[name] = value
        else:
            raise TypeError(
                f"{owner}: the constructor argument {name!r} = {reprlib.repr(value)} cannot be "
                f"saved: {CONFIG_NAME} holds finite numbers, strings, booleans, None and lists "
                f"or dicts of them (tensors go to {TENSOR_ARGUMENTS_NAME})"
            )
    return plain, tensors


def _is_json(value: object) -> bool:
    """Whether JSON writes ``value`` and reads it back equal (finite floats, str keys)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, (list, tuple)):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def _plain_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies that share no memory (what ``save_file`` writes)."""
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}


def _read_config(owner: str, file: Path) -> dict[str, Any]:
    """The parsed ``config.json``, or a ``ValueError`` naming the file and what is wrong."""
    try:
        config: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{owner}: {file} is not valid JSON: {error}") from error
    expected = {"class": str, "arguments": dict, "tensor_arguments": list}
    for key, kind in expected.items():
        if not isinstance(config, dict) or not isinstance(config.get(key), kind):
            raise ValueError(
                f"{owner}: {file} must hold {key!r} ({kind.__name__}) as save_pretrained writes "
                f"it, got {config.get(key) if isinstance(config, dict) else config!r}"
            )
    return config


def _layer_class(owner: str, cls: type[Layer], name: str, file: Path) -> type[Layer]:
    """The class named ``module.qualname`` in the config; it must be ``cls`` or a subclass."""
    if name == f"{cls.__module__}.{cls.__qualname__}":
        return cls
    module_name, _, qualname = name.rpartition(".")
    found: Any = None
    if module_name:
        try:
            found = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError):
            found = None
    expected = "a saved layer" if cls is PretrainedMixin else f"a {cls.__name__} or a subclass"
    if not isinstance(found, type):
        raise ValueError(
            f"{owner}: {file} names the class {name!r}, which cannot be imported; "
            f"expected {expected}"
        )
    if not issubclass(found, cls):
        raise ValueError(
            f"{owner}: {file} holds a {found.__name__} ({name}); expected {expected} "
            f"(load it with {found.__name__}.from_pretrained)"
        )
    return found


def _version() -> str:
    from mi_losses import __version__

    return __version__
