"""Stacked denoising autoencoders (Vincent et al., 2008): the ``sda`` model.

Each layer learns to reconstruct its clean input from a corrupted copy (a
``corruption_level`` fraction of the inputs set to zero), with tied weights:
the decoder is the encoder's W transposed. The layers pretrain greedily, as a
DBN's RBMs do, and the stack is then fine-tuned as a sigmoid MLP.

A layer's gradient is written by hand (``hand_step``), as an RBM's is: with plain SGD in float32
and no strategy hooking gradients, ``LayerwiseModel.train_step`` trains a layer through
``cd.train_by_hand`` (buffers reused from batch to batch, the tied weight's two gradients as one
product, SGD stepped by hand); otherwise through autograd on ``reconstruction_loss``. Both draw the
same corruption (``corrupt``). ``tests/unit/test_autoencoder.py`` checks the hand gradient against
autograd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepgrid.config.network import LayerConf
from deepgrid.models.base import init_linear
from deepgrid.models.cd import autocast, cached_scratch, new_bits, random16
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

    activation = "sigmoid"  # of the code, as for an RBM's binary hidden units (the DBN's fixed-layer loop)
    hand_bf16 = False  # hand_step is float32 only: in bf16 the layer trains through autograd (autocast)

    @property
    def loss_units(self) -> int:
        """What the summed loss of ``hand_step`` is divided by, per sample: the loss is per example."""
        return 1

    def reseed_sampler(self) -> np.random.PCG64:
        """Seed the corruption's sampler from torch's generator (called at the start of every
        ``train_step``: a job's corruption follows from torch's seed alone)."""
        bits = self.__dict__["_bits"] = new_bits()
        return bits

    def keep_mask(self, shape: torch.Size) -> np.ndarray:
        """Which inputs survive the masking noise, as a flat boolean array: 16 random bits k per input,
        kept where k >= ceil(65536 x corruption_level), so P(zeroed) = ceil(65536 c) / 65536. On the
        CPU this takes about a fifth of the time of ``torch.rand_like(x) >= c``."""
        bits = self.__dict__.get("_bits") or self.reseed_sampler()
        threshold = np.uint16(min(np.ceil(65536 * self.corruption_level), 65535))
        return random16(bits, shape.numel()) >= threshold

    def keep(self, x: Tensor) -> Tensor:
        """``keep_mask`` for a batch like x, as a boolean tensor on x's device."""
        return torch.from_numpy(self.keep_mask(x.shape)).view(x.shape).to(x.device)

    def corrupt(self, x: Tensor) -> Tensor:
        """x with each input zeroed with probability ``corruption_level`` (masking noise)."""
        if self.corruption_level == 0:
            return x
        return x * self.keep(x)

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

    # -- the hand-written step (cd.train_by_hand) ------------------------------------------
    def _scratch_for(self, x: Tensor, dtype: torch.dtype | None) -> DAEScratch:
        weight = self.linear.weight
        key = (x.shape[0], x.device, weight.data_ptr())
        return cached_scratch(self, key, lambda: DAEScratch(key, weight, self.linear.bias, self.visible_bias))

    def hand_step(self, x: Tensor, dtype: torch.dtype | None, momentum_buffers: Sequence[Tensor] | None = None,
                  momentum: float = 0.0, scratch: DAEScratch | None = None) -> DAEScratch:
        """One batch's gradient of ``reconstruction_loss(x, corrupt(x))`` (float32, under no_grad),
        into the scratch's ``grads`` (weight, hidden bias, visible bias), or into SGD's
        ``momentum_buffers`` as momentum x buffer + gradient; the summed loss is added to its ``error``.

        With x~ the corrupted input, h = sigmoid(x~ W^T + b_h) and a = h W + b_v, the loss's gradient
        with respect to a is dz = (sigmoid(a) - x) / B for binary units ((a - x) / B for gaussian),
        with respect to h's pre-activation dp = (dz W^T) h (1 - h), and the tied weight's gradient is
        the decoder's h^T dz plus the encoder's dp^T x~: one product of [h; dp]^T and [dz; x~]."""
        if dtype is not None:
            raise ValueError("hand_step runs in float32 only: bf16 trains through autograd")
        s = scratch or self._scratch_for(x, dtype)
        if self.corruption_level == 0:
            s.corrupted.copy_(x)
        elif s.numpy_mask and x.dtype == torch.float32 and x.is_contiguous():
            np.multiply(x.numpy().reshape(-1), self.keep_mask(x.shape), out=s.corrupted_np)
        else:
            torch.mul(x, self.keep(x), out=s.corrupted)
        torch.addmm(self.linear.bias, s.corrupted, s.weight_t, out=s.h).sigmoid_()
        torch.addmm(self.visible_bias, s.h, s.weight, out=s.pre)
        if self.visible_unit == "binary":
            # binary_cross_entropy_with_logits summed: softplus(a) - x a for each input
            s.error += F.softplus(s.pre).sum()
            s.error -= torch.dot(x.reshape(-1), s.flat_pre)
            torch.sigmoid(s.pre, out=s.dz).sub_(x)
        else:
            torch.sub(s.pre, x, out=s.dz)
            torch.addmv(s.error, s.row_dz, s.flat_dz, alpha=0.5, out=s.error)  # 0.5 (a - x)^2
        torch.mm(s.dz, s.weight_t, out=s.dp)
        s.dp.mul_(torch.addcmul(s.h, s.h, s.h, value=-1, out=s.slope))  # x h (1 - h)
        s.gradients(momentum_buffers, momentum)
        return s


class DAEScratch:
    """The tensors one denoising autoencoder layer's ``hand_step`` reuses from batch to batch, for one
    (batch size, device, parameter storage): no batch allocates but the loss's softplus."""

    def __init__(self, key: tuple[Any, ...], weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> None:
        b, device = key[:2]
        n_hidden, n_visible = weight.shape
        self.key, self.scale = key, 1.0 / b

        def new(*shape: int) -> Tensor:
            return torch.empty(shape, device=device, dtype=weight.dtype)

        # [h; dp] and [dz; x~]: the weight gradient h^T dz + dp^T x~ is hiddens^T visibles.
        self.hiddens, self.visibles = new(2 * b, n_hidden), new(2 * b, n_visible)
        self.hiddens_t = self.hiddens.t()
        self.h, self.dp = self.hiddens[:b], self.hiddens[b:]
        self.dz, self.corrupted = self.visibles[:b], self.visibles[b:]
        self.dp_t, self.dz_t = self.dp.t(), self.dz.t()
        self.flat_dz, self.row_dz = self.dz.view(-1), self.dz.view(1, -1)
        self.numpy_mask = device.type == "cpu"  # the mask is made by numpy: multiply there, into shared memory
        self.corrupted_np = self.corrupted.numpy().reshape(-1) if self.numpy_mask else None
        self.pre, self.slope = new(b, n_visible), new(b, n_hidden)
        self.flat_pre = self.pre.view(-1)
        self.means = torch.full((b,), 1.0 / b, device=device, dtype=weight.dtype)
        self.error = torch.zeros(1, device=device)
        self.grads = (new(n_hidden, n_visible), new(n_hidden), new(n_visible))
        self.weight, self.weight_t = weight, weight.t()

    def gradients(self, momentum_buffers: Sequence[Tensor] | None = None, momentum: float = 0.0) -> None:
        """``grads`` = (hiddens^T visibles / B, column means of dp, column means of dz), or, given
        SGD's ``momentum_buffers``, momentum x buffer + each of them, straight into the buffers."""
        weight, hidden_bias, visible_bias = self.grads if momentum_buffers is None else momentum_buffers
        beta = momentum if momentum_buffers is not None else 0.0
        torch.addmm(weight, self.hiddens_t, self.visibles, beta=beta, alpha=self.scale, out=weight)
        torch.addmv(hidden_bias, self.dp_t, self.means, beta=beta, out=hidden_bias)
        torch.addmv(visible_bias, self.dz_t, self.means, beta=beta, out=visible_bias)


@register
class StackedDenoisingAutoencoder(LayerwiseModel):
    """Denoising autoencoders pretrained greedily (``pretrain:i``), then fine-tuned as a sigmoid MLP."""

    name = "sda"

    def make_layer(self, layer: LayerConf) -> nn.Module:
        return DenoisingAutoencoderLayer.from_conf(layer)
