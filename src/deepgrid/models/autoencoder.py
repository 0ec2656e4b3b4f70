"""Stacked denoising autoencoders (Vincent et al., 2008): the ``sda`` model.

Each layer learns to reconstruct its clean input from a corrupted copy (a
``corruption_level`` fraction of the inputs set to zero), with tied weights:
the decoder is the encoder's W transposed. The layers pretrain greedily, as a
DBN's RBMs do, and the stack is then fine-tuned as a sigmoid MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepgrid.config.network import LayerConf
from deepgrid.models.base import init_linear
from deepgrid.models.cd import autocast
from deepgrid.models.dbn import LayerwiseModel
from deepgrid.models.registry import register


class DenoisingAutoencoderLayer(nn.Module):
    """x -> sigmoid(W x~ + b_h) -> x^ = decode(W^T h + b_v), with x~ a corrupted x.

    Binary visible units (inputs in [0, 1]) decode through a sigmoid and are
    scored by cross-entropy; gaussian ones (real-valued, standardised inputs)
    decode linearly and are scored by squared error.
    """

    def __init__(self, n_visible: int, n_hidden: int, *, visible_unit: str = "binary",
                 corruption_level: float = 0.3, weight_init: str = "xavier") -> None:
        super().__init__()
        if visible_unit not in ("binary", "gaussian"):
            raise ValueError(f"visible_unit must be 'binary' or 'gaussian', not {visible_unit!r}")
        if not 0 <= corruption_level < 1:
            raise ValueError(f"corruption_level must be in [0, 1), not {corruption_level!r}")
        self.visible_unit, self.corruption_level = visible_unit, corruption_level
        self.linear = init_linear(nn.Linear(n_visible, n_hidden), weight_init)  # W: (n_hidden, n_visible)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))

    @classmethod
    def from_conf(cls, layer: LayerConf) -> DenoisingAutoencoderLayer:
        return cls(layer.n_in, layer.n_out, visible_unit=layer.visible_unit,
                   corruption_level=layer.corruption_level, weight_init=layer.weight_init)

    def mean_hiddens(self, x: Tensor) -> Tensor:
        """The code, shape (B, n_hidden)."""
        return torch.sigmoid(self.linear(x))

    encode = mean_hiddens

    def decode_preactivation(self, h: Tensor) -> Tensor:
        return torch.addmm(self.visible_bias, h, self.linear.weight)  # (B, n_visible): tied weights

    def decode(self, h: Tensor) -> Tensor:
        pre = self.decode_preactivation(h)
        return torch.sigmoid(pre) if self.visible_unit == "binary" else pre

    def forward(self, x: Tensor) -> Tensor:
        return self.mean_hiddens(x)

    def corrupt(self, x: Tensor) -> Tensor:
        """x with each input zeroed with probability ``corruption_level`` (masking noise)."""
        if self.corruption_level == 0:
            return x
        return x * (torch.rand_like(x) >= self.corruption_level)

    def reconstruction_loss(self, x: Tensor, corrupted: Tensor | None = None) -> Tensor:
        """Per-example reconstruction loss (summed over inputs), averaged over the batch.

        Summed, not averaged, over inputs so the gradient's scale does not shrink
        with the layer's width (as an RBM's CD gradient does not).
        """
        pre = self.decode_preactivation(self.encode(x if corrupted is None else corrupted))  # (B, n_visible)
        if self.visible_unit == "binary":
            # From the logits: stable where a sigmoid output saturates.
            per_input = F.binary_cross_entropy_with_logits(pre, x, reduction="none")
        else:
            per_input = 0.5 * (pre - x).square()
        return per_input.sum(dim=1).mean()

    def pretrain_loss(self, x: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(objective, reported loss): the reconstruction loss of x from its corrupted copy
        (the products in ``dtype``, bf16 for ``precision: bf16``, under autocast)."""
        with autocast(dtype, x.device):
            loss = self.reconstruction_loss(x, self.corrupt(x))
        return loss, loss.detach()


@register
class StackedDenoisingAutoencoder(LayerwiseModel):
    """Denoising autoencoders pretrained greedily (``pretrain:i``), then fine-tuned as a sigmoid MLP."""

    name = "sda"

    def make_layer(self, layer: LayerConf) -> nn.Module:
        return DenoisingAutoencoderLayer.from_conf(layer)
