"""Deep belief networks: RBMs pretrained greedily, layer by layer, then fine-tuned as one MLP.

``LayerwiseModel`` is the shared shape of a DBN and a stacked denoising
autoencoder (``models/autoencoder.py``): a stack of layers that each pretrain
without labels, a phase per layer (``pretrain:0`` ... ``pretrain:{n-1}``),
then ``finetune``, which trains the stack as a feed-forward network with a
softmax output layer by backpropagation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepgrid.config.network import LayerConf
from deepgrid.models.base import FINETUNE, Batch, Model, Phase, StepResult, init_linear
from deepgrid.models.cd import autocast, check_precision
from deepgrid.models.rbm import RBMLayer, layer_index, precision, pretrain_phase, train_by_hand, transform
from deepgrid.models.registry import register


class LayerwiseModel(Model):
    """A stack of pretrainable layers (sizes n_in, *hidden_layer_sizes) and a softmax output layer.

    A subclass names ``make_layer``. Each layer is an ``nn.Module`` with
    ``linear`` (its nn.Linear encoder), ``mean_hiddens(x)`` (the activations it
    passes up, differentiable) and ``pretrain_loss(x)`` (objective, reported
    loss) for one batch of its inputs.
    """

    def make_layer(self, layer: LayerConf) -> nn.Module:
        raise NotImplementedError

    def build(self) -> nn.Module:
        c = self.conf
        check_precision(c.precision)
        layers = nn.ModuleList(self.make_layer(c.layer(i)) for i in range(len(c.hidden_layer_sizes)))
        output = init_linear(nn.Linear(c.hidden_layer_sizes[-1], c.n_out), c.weight_init)
        return nn.ModuleDict({"layers": layers, "output": output})

    @property
    def layers(self) -> nn.ModuleList:
        return self.module["layers"]  # type: ignore[return-value]

    def features(self, x: Tensor, depth: int | None = None) -> Tensor:
        """Activations of hidden layer ``depth - 1`` (all layers when None), shape (B, size)."""
        h = x  # (B, n_in)
        for i, layer in enumerate(self.layers[:depth]):
            h = layer.mean_hiddens(h)
            dropout = self.conf.layer(i).dropout
            if dropout > 0 and self.module.training:
                h = F.dropout(h, dropout)
        return h

    def forward(self, x: Tensor) -> Tensor:
        return self.module["output"](self.features(x))  # (B, n_out)

    def phases(self, finetune_epochs: int | None = None) -> list[Phase]:
        c = self.conf
        pretrain = [Phase(pretrain_phase(i), c.pretrain_epochs, supervised=False)
                    for i in range(len(c.hidden_layer_sizes))] if c.pretrain_epochs > 0 else []
        return [*pretrain, Phase(FINETUNE, finetune_epochs or c.finetune_epochs)]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        index = layer_index(phase)
        if index is None:
            return list(self.module.parameters())
        return list(self.layers[index].parameters())

    def phase_optimizer_settings(self, phase: str) -> tuple[str, float, float, float]:
        index = layer_index(phase)
        if index is None:
            return super().phase_optimizer_settings(phase)
        layer = self.conf.layer(index)
        return self.conf.pretrain_optimizer, layer.pretrain_lr, layer.momentum, layer.l2

    def train_step(self, phase: str, batches: Sequence[Batch],
                   on_gradients: Callable[[int], None] | None = None) -> StepResult:
        index = layer_index(phase)
        if index is None:
            return super().train_step(phase, batches, on_gradients)
        layer, dtype = self.layers[index], precision(self)
        if hasattr(layer, "reseed_sampler"):
            layer.reseed_sampler()
        step = None
        # A layer with a hand-written step (an RBM, a denoising autoencoder): SGD stepped by hand.
        if hasattr(layer, "hand_step") and (dtype is None or layer.hand_bf16):
            below = self.layers[:index]
            if dtype is None and all(getattr(lower, "activation", None) in ("sigmoid", "relu") for lower in below):
                # Per batch only the products and activations of the layers below, into reused buffers.
                # Their parameters stay fixed for the phase: their views are taken once, not per batch.
                fixed = [(lower.linear.bias, lower.linear.weight.t(), lower.activation == "sigmoid") for lower in below]

                def inputs(x: Tensor) -> Tensor:
                    for i, (bias, weight_t, binary) in enumerate(fixed):
                        x = torch.addmm(bias, x, weight_t, out=self._buffer(i, x))
                        x = x.sigmoid_() if binary else x.clamp_min_(0)
                    return x
            else:
                def inputs(x: Tensor) -> Tensor:
                    return self._below(index, x, dtype)
            step = train_by_hand(self, layer, phase, batches, inputs, on_gradients)
        return step or super().train_step(phase, batches, on_gradients)

    def _below(self, index: int, x: Tensor, dtype: torch.dtype | None) -> Tensor:
        """The input of layer ``index``: x through the (fixed) layers below, in ``dtype``'s precision."""
        with torch.no_grad(), autocast(dtype, x.device):
            h = x
            for layer in self.layers[:index]:
                h = layer.mean_hiddens(h)  # (B, size of layer below)
        return h

    def _buffer(self, index: int, h: Tensor) -> Tensor:
        """The reused output of layer ``index`` for a batch like ``h``."""
        buffers = self.__dict__.setdefault("_outputs", {})
        key = (index, h.shape[0], h.device)  # (not a buffer of the module: no state_dict entry)
        out = buffers.get(key)
        if out is None:
            out = buffers[key] = torch.empty(h.shape[0], self.conf.hidden_layer_sizes[index], device=h.device, dtype=h.dtype)
        return out

    def batch_loss(self, phase: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        index, dtype = layer_index(phase), precision(self)
        if index is None:
            with autocast(dtype, x.device):
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            return loss, loss
        return self.layers[index].pretrain_loss(self._below(index, x, dtype), dtype)

    def transform(self, x: Any) -> np.ndarray:
        """The top hidden layer's activations, shape (N, hidden_layer_sizes[-1])."""
        return transform(self.module, self.features, x, self.conf.n_in)


@register
class DBN(LayerwiseModel):
    """RBMs stacked greedily (``pretrain:i`` trains RBM i on the mean activations of those below),
    then fine-tuned as a sigmoid MLP that reuses each RBM's W and hidden bias.

    Hidden layers whose ``hidden_unit`` is ``rectified`` pass up max(0, x), so
    their fine-tuning activation is ReLU instead of the sigmoid.
    """

    name = "dbn"

    def make_layer(self, layer: LayerConf) -> nn.Module:
        return RBMLayer.from_conf(layer)
