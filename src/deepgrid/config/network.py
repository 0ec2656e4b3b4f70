"""NeuralNetConfiguration: everything about the network, nothing about the cluster.

Built with keywords or with the seed's builder::

    NeuralNetConfiguration.builder().n_in(784).n_out(10).hidden_layer_sizes(500, 250, 100).k(1).build()

Frozen once built; ``to_dict``/``from_dict`` round-trip through JSON and YAML.
Per-layer overrides (the seed's layer configs) live in ``layers``: a mapping
from layer index to the fields that differ for that layer, e.g.
``{0: {"visible_unit": "gaussian", "k": 2}}``; ``layer(i)`` gives the
effective values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

from deepgrid.config.validation import (
    FRACTION,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    Rule,
    check,
    reject_unknown_keys,
)
from deepgrid.errors import ConfigError, invalid

ACTIVATIONS = ("sigmoid", "relu", "tanh", "leaky_relu")
OPTIMIZERS = ("sgd", "adagrad", "adam")
WEIGHT_INITS = ("xavier", "he", "normal", "zeros")
LOSSES = ("cross_entropy", "mse")
# The most parameters a network may have: 2**31 float32 values are 8 GiB, each copy (every worker
# holds the parameters, its optimizer state and gradients; the master several more). A size beyond
# it is a typing mistake, refused before anything is allocated instead of failing deep inside torch.
MAX_PARAMETERS = 2**31

RULES: dict[str, Rule] = {
    "n_in": POSITIVE_INT,
    "n_out": POSITIVE_INT,
    "hidden_layer_sizes": Rule("sizes"),
    "activation": Rule("choice", choices=ACTIVATIONS),
    "visible_unit": Rule("choice", choices=("binary", "gaussian")),
    "hidden_unit": Rule("choice", choices=("binary", "rectified")),
    "k": POSITIVE_INT,
    "persistent": Rule("bool"),
    "pretrain_lr": POSITIVE_FLOAT,
    "finetune_lr": POSITIVE_FLOAT,
    "pretrain_epochs": NON_NEGATIVE_INT,
    "finetune_epochs": POSITIVE_INT,
    "momentum": Rule("float", low=0, high=1),
    "l2": NON_NEGATIVE_FLOAT,
    "sparsity_target": FRACTION,
    "sparsity_cost": NON_NEGATIVE_FLOAT,
    "dropout": Rule("float", low=0, high=0.95),
    "corruption_level": Rule("float", low=0, high=0.95),
    "optimizer": Rule("choice", choices=OPTIMIZERS),
    "pretrain_optimizer": Rule("choice", choices=OPTIMIZERS),
    "weight_init": Rule("choice", choices=WEIGHT_INITS),
    "seed": NON_NEGATIVE_INT,
    "loss": Rule("choice", choices=LOSSES),
    "input_shape": Rule("sizes"),
    "conv_channels": Rule("sizes"),
    "kernel_size": POSITIVE_INT,
    "precision": Rule("choice", choices=("float32", "bf16")),
}

# Fields a layer may override; the rest are properties of the whole network.
LAYER_FIELDS = (
    "activation",
    "visible_unit",
    "hidden_unit",
    "k",
    "persistent",
    "pretrain_lr",
    "momentum",
    "l2",
    "sparsity_target",
    "sparsity_cost",
    "dropout",
    "corruption_level",
    "weight_init",
)


@dataclass(frozen=True)
class LayerConf:
    """The effective settings of one hidden layer (network values + overrides)."""

    index: int
    n_in: int
    n_out: int
    activation: str
    visible_unit: str
    hidden_unit: str
    k: int
    persistent: bool
    pretrain_lr: float
    momentum: float
    l2: float
    sparsity_target: float
    sparsity_cost: float
    dropout: float
    corruption_level: float
    weight_init: str


@dataclass(frozen=True)
class NeuralNetConfiguration:
    """The network: sizes, unit types, learning rates, regularisation, seed."""

    n_in: int = 784
    n_out: int = 10
    hidden_layer_sizes: tuple[int, ...] = (500, 250, 100)
    activation: str = "sigmoid"
    visible_unit: str = "binary"
    hidden_unit: str = "binary"
    k: int = 1  # contrastive-divergence Gibbs steps
    persistent: bool = False  # persistent CD (PCD) instead of CD-k
    pretrain_lr: float = 0.05
    finetune_lr: float = 0.1
    pretrain_epochs: int = 1  # passes over the data for each pretrained layer
    finetune_epochs: int = 10
    momentum: float = 0.9
    l2: float = 0.0
    sparsity_target: float = 0.0  # 0 turns the sparsity penalty off
    sparsity_cost: float = 0.0
    dropout: float = 0.0
    corruption_level: float = 0.3  # denoising autoencoders: fraction of inputs zeroed
    optimizer: str = "sgd"  # for fine-tuning / supervised training
    pretrain_optimizer: str = "sgd"
    weight_init: str = "xavier"
    seed: int = 123
    loss: str = "cross_entropy"
    input_shape: tuple[int, ...] = (1, 28, 28)  # CNN only: (channels, height, width)
    conv_channels: tuple[int, ...] = (32, 64)  # CNN only
    kernel_size: int = 5  # CNN only
    precision: str = "float32"  # bf16: rbm, dbn and sda train their products in bfloat16 (docs/precision.md)
    layers: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    # model pkg.module:ClassOrFactory (a user's torch module): the keyword arguments it is built
    # with. Here, not in the Conf, so they travel with the network to every worker and into model.json.
    model_args: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        # The one place every value is checked; frozen, so set through object.__setattr__.
        for name, rule in RULES.items():
            object.__setattr__(self, name, check(name, getattr(self, name), rule))
        if len(self.input_shape) != 3:
            raise ConfigError(invalid("input_shape", self.input_shape, "three sizes: channels, height, width"))
        object.__setattr__(self, "layers", MappingProxyType(self._check_layers(self.layers)))
        object.__setattr__(self, "model_args", MappingProxyType(check_model_args(self.model_args)))
        self._check_size()

    def estimated_parameters(self) -> int:
        """About how many parameters the network has: its dense layers (n_in, the hidden sizes, n_out)
        or, for a CNN, its convolutions and the dense layers after them, whichever is more."""
        def dense(sizes: tuple[int, ...]) -> int:
            return sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))

        channels, height, width = self.input_shape
        conv = 0
        for out_channels in self.conv_channels:
            conv += (channels * self.kernel_size**2 + 1) * out_channels
            channels, height, width = out_channels, height // 2, width // 2
        cnn = conv + dense((channels * height * width, *self.hidden_layer_sizes, self.n_out))
        return max(dense((self.n_in, *self.hidden_layer_sizes, self.n_out)), cnn)

    def _check_size(self) -> None:
        n = self.estimated_parameters()  # Python integers: no overflow, however absurd the sizes
        if n > MAX_PARAMETERS:
            raise ConfigError(
                f"The network would have about {n:.3g} parameters (n_in={self.n_in}, hidden_layer_sizes="
                f"{list(self.hidden_layer_sizes)}, n_out={self.n_out}, conv_channels={list(self.conv_channels)}, "
                f"input_shape={list(self.input_shape)}), more than the {MAX_PARAMETERS:,} deepgrid accepts; "
                "use smaller layer sizes.")

    def _check_layers(self, layers: Any) -> dict[int, dict[str, Any]]:
        if not hasattr(layers, "items"):
            raise ConfigError(invalid("layers", layers, "a mapping from layer index to overrides"))
        out: dict[int, dict[str, Any]] = {}
        for key, overrides in layers.items():
            try:
                index = int(key)
            except (TypeError, ValueError):
                index = -1
            if not 0 <= index < len(self.hidden_layer_sizes):
                raise ConfigError(
                    invalid("layers", key, f"a layer index from 0 to {len(self.hidden_layer_sizes) - 1}")
                )
            if not hasattr(overrides, "items"):
                raise ConfigError(invalid(f"layers.{index}", overrides, "a mapping of field to value"))
            reject_unknown_keys(f"layers.{index}", overrides, LAYER_FIELDS)
            out[index] = {k: check(f"layers.{index}.{k}", v, RULES[k]) for k, v in overrides.items()}
        return out

    # -- derived -------------------------------------------------------------
    def layer(self, index: int) -> LayerConf:
        """Effective settings of hidden layer ``index``."""
        sizes = (self.n_in, *self.hidden_layer_sizes)
        values = {name: getattr(self, name) for name in LAYER_FIELDS}
        values.update(self.layers.get(index, {}))
        if index > 0 and "visible_unit" not in self.layers.get(index, {}):
            # Layers above the first see hidden probabilities, which are binary-like.
            values["visible_unit"] = "binary"
        return LayerConf(index=index, n_in=sizes[index], n_out=sizes[index + 1], **values)

    def replace(self, **changes: Any) -> NeuralNetConfiguration:
        """A copy with some fields changed (validated again)."""
        reject_unknown_keys("NeuralNetConfiguration", changes, self.field_names())
        return dataclasses.replace(self, **changes)

    # -- serialisation ---------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            elif name == "layers":
                value = {str(i): dict(o) for i, o in value.items()}
            elif name == "model_args":
                value = dict(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> NeuralNetConfiguration:
        if not isinstance(data, dict):
            raise ConfigError(invalid("network", data, "a mapping of network fields"))
        reject_unknown_keys("network", data, cls.field_names())
        return cls(**data)

    get_config = to_dict  # Keras' names, for readers who know them
    from_config = from_dict

    @staticmethod
    def builder() -> Builder:
        return Builder()


def check_model_args(args: Any) -> dict[str, Any]:
    """``model_args`` as a plain dict of JSON values (it is saved in model.json), or a ConfigError."""
    if args is None:
        return {}
    if not hasattr(args, "items") or not all(isinstance(k, str) and k.isidentifier() for k in args):
        raise ConfigError(invalid("model_args", args, "a mapping of keyword-argument names to values"))
    try:
        # A copy through JSON: nested values can no longer change under the frozen configuration.
        return json.loads(json.dumps(dict(args), allow_nan=False))
    except (TypeError, ValueError):
        raise ConfigError(invalid("model_args", args, "JSON values (numbers, strings, booleans, lists, "
                                  "mappings): they are saved in model.json")) from None


class Builder:
    """The seed's fluent builder: every field is a method; ``build()`` validates."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name not in NeuralNetConfiguration.field_names():
            reject_unknown_keys("NeuralNetConfiguration.builder()", {name: None},
                                NeuralNetConfiguration.field_names())

        def setter(*values: Any) -> Builder:
            self._values[name] = values[0] if len(values) == 1 else tuple(values)
            return self

        return setter

    def layer(self, index: int, **overrides: Any) -> Builder:
        """Override settings of one hidden layer (the seed's per-layer configs)."""
        layers = dict(self._values.get("layers", {}))
        layers[index] = {**layers.get(index, {}), **overrides}
        self._values["layers"] = layers
        return self

    def build(self) -> NeuralNetConfiguration:
        return NeuralNetConfiguration(**self._values)
