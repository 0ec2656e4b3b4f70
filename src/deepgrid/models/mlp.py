"""The seed's multilayer network trained by backpropagation."""

from __future__ import annotations

from torch import Tensor, nn

from deepgrid.models.base import Model, activation, init_linear
from deepgrid.models.registry import register


@register
class MLP(Model):
    """n_in -> hidden layers (activation, dropout) -> n_out logits."""

    name = "mlp"

    def build(self) -> nn.Module:
        c = self.conf
        sizes = (c.n_in, *c.hidden_layer_sizes)
        layers: list[nn.Module] = []
        for i in range(len(c.hidden_layer_sizes)):
            layer = c.layer(i)
            layers += [init_linear(nn.Linear(sizes[i], sizes[i + 1]), layer.weight_init), activation(layer.activation)]
            if layer.dropout > 0:
                layers.append(nn.Dropout(layer.dropout))
        layers.append(init_linear(nn.Linear(sizes[-1], c.n_out), c.weight_init))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)  # (B, n_out)
