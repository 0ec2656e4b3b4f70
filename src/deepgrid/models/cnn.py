"""A small LeNet-scale convolutional network."""

from __future__ import annotations

from torch import Tensor, nn

from deepgrid.models.base import Model, activation, init_linear
from deepgrid.models.registry import register


@register
class CNN(Model):
    """conv-pool blocks (``conv_channels``), then dense hidden layers, then n_out logits.

    Inputs arrive flat, (B, n_in), like every model's; ``forward`` reshapes them
    to ``input_shape`` (C, H, W).
    """

    name = "cnn"

    def build(self) -> nn.Module:
        c = self.conf
        channels, height, width = c.input_shape
        if channels * height * width != c.n_in:
            from deepgrid.errors import ConfigError, invalid

            raise ConfigError(invalid("input_shape", c.input_shape, f"channels*height*width equal to n_in={c.n_in}"))
        blocks: list[nn.Module] = []
        pad = c.kernel_size // 2
        for out_channels in c.conv_channels:
            blocks += [nn.Conv2d(channels, out_channels, c.kernel_size, padding=pad), nn.ReLU(), nn.MaxPool2d(2)]
            channels, height, width = out_channels, height // 2, width // 2
        flat = channels * height * width
        dense: list[nn.Module] = [nn.Flatten()]
        sizes = (flat, *c.hidden_layer_sizes)
        for i in range(len(c.hidden_layer_sizes)):
            layer = c.layer(i)
            dense += [init_linear(nn.Linear(sizes[i], sizes[i + 1]), "he"), activation(layer.activation)]
            if layer.dropout > 0:
                dense.append(nn.Dropout(layer.dropout))
        dense.append(init_linear(nn.Linear(sizes[-1], c.n_out), c.weight_init))
        return nn.Sequential(*blocks, *dense)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x.view(len(x), *self.conf.input_shape))  # (B, C, H, W) -> (B, n_out)
