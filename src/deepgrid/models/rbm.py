"""Restricted Boltzmann machines: one layer (``RBMLayer``) and the ``rbm`` model.

An RBM has visible units v (the data) and hidden units h, joined by weights W.
It is trained by contrastive divergence (CD-k) or persistent CD (PCD): the
gradient of the data's log-likelihood is approximated by the difference of the
statistics <h v^T> under the data (positive phase) and under samples from a
short Gibbs chain (negative phase).

That gradient is the gradient of a surrogate objective,
``free_energy(v0).mean() - free_energy(v_neg).mean()`` with ``v_neg`` held
constant. We write it by hand instead of asking autograd for it: the hand
version reuses the pre-activations the sampler has already computed and does
the two outer products as one matrix product, about 1.9x faster than autograd
on the surrogate on a 2-core CPU (the RBM benchmark, bench/bench_rbm.py,
counts every microsecond). ``batch_loss`` writes the gradient into each
parameter's ``.grad`` and returns an objective whose ``backward()`` does
nothing, so the base class's ``train_step`` (zero_grad, backward,
optimizer.step with momentum and weight decay) trains an RBM like any model.
With plain SGD and no strategy hooking gradients, ``train_step`` takes a
faster road to the same maths (``models/cd.py``: reused buffers, SGD stepped
by hand), measured against the bare matrix products in bench/bench_rbm.py.
``tests/unit/test_rbm.py`` checks the hand gradient against autograd on the
surrogate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from deepgrid.config.network import LayerConf
from deepgrid.data.arrays import as_features
from deepgrid.models.base import FINETUNE, Batch, Model, Phase, StepResult, init_linear
from deepgrid.models.cd import (
    Scratch,
    autocast,
    cached_scratch,
    check_precision,
    new_bits,
    precision,
    train_by_hand,
)
from deepgrid.models.registry import register

PRETRAIN = "pretrain"


def pretrain_phase(index: int) -> str:
    return f"{PRETRAIN}:{index}"


def layer_index(phase: str) -> int | None:
    """The layer a ``pretrain:i`` phase trains; None for fine-tuning."""
    if phase.startswith(PRETRAIN + ":"):
        return int(phase.split(":", 1)[1])
    return None


class RBMLayer(nn.Module):
    """One RBM: binary or gaussian visible units, binary or rectified hidden units.

    ``linear`` holds W, shape (n_hidden, n_visible), and the hidden bias, so a
    DBN can reuse it as a feed-forward layer when fine-tuning; ``visible_bias``
    is a separate parameter. Gaussian visible units assume unit variance
    (standardise the data first). Rectified hidden units are Nair & Hinton's
    noisy rectified linear units (NReLU).
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        *,
        visible_unit: str = "binary",
        hidden_unit: str = "binary",
        k: int = 1,
        persistent: bool = False,
        sparsity_target: float = 0.0,
        sparsity_cost: float = 0.0,
        weight_init: str = "xavier",
    ) -> None:
        super().__init__()
        if visible_unit not in ("binary", "gaussian"):
            raise ValueError(f"visible_unit must be 'binary' or 'gaussian', not {visible_unit!r}")
        if hidden_unit not in ("binary", "rectified"):
            raise ValueError(f"hidden_unit must be 'binary' or 'rectified', not {hidden_unit!r}")
        self.visible_unit, self.hidden_unit = visible_unit, hidden_unit
        self.k, self.persistent = k, persistent
        self.sparsity_target, self.sparsity_cost = sparsity_target, sparsity_cost
        self.linear = init_linear(nn.Linear(n_visible, n_hidden), weight_init)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible))
        # PCD's fantasy particles: hidden states (n_chains, n_hidden). A buffer,
        # not a parameter, and not saved: it is training state of this worker.
        self.register_buffer("chains", None, persistent=False)
        self.chains: Tensor | None

    @classmethod
    def from_conf(cls, layer: LayerConf) -> RBMLayer:
        return cls(layer.n_in, layer.n_out, visible_unit=layer.visible_unit, hidden_unit=layer.hidden_unit,
                   k=layer.k, persistent=layer.persistent, sparsity_target=layer.sparsity_target,
                   sparsity_cost=layer.sparsity_cost, weight_init=layer.weight_init)

    @property
    def n_visible(self) -> int:
        return self.linear.in_features

    @property
    def activation(self) -> str:
        """What ``mean_hiddens`` applies to the pre-activation: the DBN's fixed-layer loop reads it."""
        return "sigmoid" if self.hidden_unit == "binary" else "relu"

    @property
    def loss_units(self) -> int:
        """What the summed error of ``cd_step`` is divided by, per sample: the reported loss is per unit."""
        return self.n_visible

    @property
    def n_hidden(self) -> int:
        return self.linear.out_features

    # -- conditional distributions --------------------------------------------------
    def hidden_preactivation(self, v: Tensor) -> Tensor:
        return self.linear(v)  # (B, n_hidden) = v W^T + b_h

    def _hidden_mean(self, pre: Tensor) -> Tensor:
        # NReLU's mean is approximately max(0, x), the gradient of its free energy below.
        return torch.sigmoid(pre) if self.hidden_unit == "binary" else torch.relu(pre)

    def _hidden_sample(self, pre: Tensor, mean: Tensor) -> Tensor:
        if self.hidden_unit == "binary":
            # rand < p, in place on the random tensor: cheaper than torch.bernoulli.
            return torch.rand_like(mean).lt_(mean)
        # NReLU: max(0, x + N(0, sigmoid(x))).
        return torch.relu(pre + torch.randn_like(pre) * torch.sigmoid(pre).sqrt())

    def _visible_mean(self, h: Tensor) -> Tensor:
        pre = torch.addmm(self.visible_bias, h, self.linear.weight)  # (B, n_visible) = h W + b_v
        return pre.sigmoid_() if self.visible_unit == "binary" else pre

    def mean_hiddens(self, v: Tensor) -> Tensor:
        """E[h | v], shape (B, n_hidden): the features a DBN passes up."""
        return self._hidden_mean(self.hidden_preactivation(v))

    def sample_hiddens(self, v: Tensor) -> Tensor:
        """A sample of h | v, shape (B, n_hidden)."""
        pre = self.hidden_preactivation(v)
        return self._hidden_sample(pre, self._hidden_mean(pre))

    def mean_visibles(self, h: Tensor) -> Tensor:
        """E[v | h], shape (B, n_visible)."""
        return self._visible_mean(h)

    def sample_visibles(self, h: Tensor) -> Tensor:
        """A sample of v | h, shape (B, n_visible)."""
        mean = self._visible_mean(h)
        if self.visible_unit == "binary":
            return torch.rand_like(mean).lt_(mean)
        return mean + torch.randn_like(mean)

    def forward(self, v: Tensor) -> Tensor:
        return self.mean_hiddens(v)

    # -- monitoring -----------------------------------------------------------------------
    def free_energy(self, v: Tensor) -> Tensor:
        """F(v), shape (B,): p(v) is proportional to exp(-F(v)). Differentiable."""
        pre = self.hidden_preactivation(v)  # (B, n_hidden)
        if self.hidden_unit == "binary":
            hidden_term = F.softplus(pre).sum(dim=1)
        else:
            # NReLU as infinitely many tied binary units: sum_i softplus(x - i + 0.5) ~ relu(x)^2 / 2.
            hidden_term = 0.5 * torch.relu(pre).square().sum(dim=1)
        if self.visible_unit == "binary":
            visible_term = -(v @ self.visible_bias)
        else:
            visible_term = 0.5 * (v - self.visible_bias).square().sum(dim=1)
        return visible_term - hidden_term

    def reconstruction_error(self, v: Tensor) -> Tensor:
        """Mean squared error per visible unit of the mean-field reconstruction E[v | E[h | v]]."""
        with torch.no_grad():
            return (self.mean_visibles(self.mean_hiddens(v)) - v).square().mean()

    def pseudo_likelihood(self, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Per-example pseudo-log-likelihood, shape (B,), as scikit-learn's ``BernoulliRBM.score_samples``.

        Flips one random visible unit of each example and compares free energies;
        meaningful for binary visible units only.
        """
        if self.visible_unit != "binary":
            raise ValueError("pseudo_likelihood needs binary visible units; use reconstruction_error instead.")
        with torch.no_grad():
            rows = torch.arange(len(v))
            cols = torch.randint(0, self.n_visible, (len(v),), generator=generator)
            flipped = v.clone()
            flipped[rows, cols] = 1 - flipped[rows, cols]
            return self.n_visible * F.logsigmoid(self.free_energy(flipped) - self.free_energy(v))

    # -- training ---------------------------------------------------------------------------
    def _scratch_for(self, v0: Tensor, dtype: torch.dtype | None) -> Scratch:
        weight = self.linear.weight
        key = (len(v0), v0.device, dtype or weight.dtype, weight.data_ptr())
        return cached_scratch(self, key, lambda: Scratch(key, weight, self.linear.bias, self.visible_bias))

    def _up(self, v: Tensor, out: Tensor, s: Scratch) -> tuple[Tensor | None, Tensor]:
        """(pre-activation or None, E[h | v]) with the mean written into ``out``: binary units need no pre."""
        torch.addmm(s.hidden_bias, v, s.weight_t, out=out)
        if self.hidden_unit == "binary":
            return None, out.sigmoid_()
        pre = out.clone()
        return pre, out.clamp_min_(0)

    def _sample(self, pre: Tensor | None, mean: Tensor, s: Scratch) -> Tensor:
        if pre is None:
            return s.bernoulli(mean, self.__dict__.get("_bits") or self.reseed_sampler())
        return self._hidden_sample(pre, mean)

    def reseed_sampler(self) -> np.random.PCG64:
        """Seed the training step's sampler (``Scratch.bernoulli``) from torch's generator. Called at
        the start of every ``train_step``, so a job's samples follow from torch's seed alone, as
        every other random draw of training does (a retried job draws the same)."""
        bits = self.__dict__["_bits"] = new_bits()
        return bits

    def _down(self, h: Tensor, out: Tensor, s: Scratch) -> Tensor:
        torch.addmm(s.visible_bias, h, s.weight, out=out)
        return out.sigmoid_() if self.visible_unit == "binary" else out

    @torch.no_grad()
    def contrastive_divergence(self, v0: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Write the CD-k (or PCD-k) gradient into ``.grad``; return (negative particles, reconstruction error).

        The gradient is that of ``free_energy(v0).mean() - free_energy(v_neg).mean()``
        (plus the sparsity penalty's when ``sparsity_target > 0``, see ``_sparsity``).
        The reconstruction error is the mean squared error per visible unit of one
        Gibbs step from v0: the first step of the CD chain, or, for PCD, whose
        chain does not start at v0, E[v | E[h | v0]].

        Every intermediate lives in buffers kept from batch to batch (``Scratch``): the
        negative particles returned, and the ``.grad`` tensors, are overwritten by the next
        call. ``dtype`` (torch.bfloat16 for ``precision: bf16``) is the dtype of the
        products; the gradients stay in the parameters' dtype.
        """
        s = self._scratch_for(v0, dtype)
        s.error.zero_()
        self.cd_step(v0, dtype)
        self.linear.weight.grad, self.linear.bias.grad, self.visible_bias.grad = s.grads
        return s.v_neg, s.error[0] / v0.numel()

    def cd_step(self, v0: Tensor, dtype: torch.dtype | None, momentum_buffers: Sequence[Tensor] | None = None,
                momentum: float = 0.0, scratch: Scratch | None = None) -> Scratch:
        """``contrastive_divergence`` without setting ``.grad`` (under no_grad): the gradients are in
        the returned scratch's ``grads``, the summed squared reconstruction error in its ``error``.
        With SGD's ``momentum_buffers`` (weight, hidden bias, visible bias), the gradients go into
        them instead (``Scratch.gradients``). ``scratch``: this batch's, when the caller has it already."""
        s = scratch or self._scratch_for(v0, dtype)
        if s.cast:
            s.load()
        if v0.dtype != s.dtype:
            v0 = s.v_pos.copy_(v0)
        pre0, h0 = self._up(v0, s.h_pos, s)  # shared by the positive phase and the first sample
        if self.persistent:
            if self.chains is None or self.chains.shape != h0.shape or self.chains.dtype != h0.dtype:
                # Start the fantasy particles at the data (better than zeros), then never restart them.
                self.chains = self._sample(pre0, h0, s).clone()
            hidden = self.chains
        else:
            hidden = self._sample(pre0, h0, s)
        for step in range(self.k):
            # Visible probabilities, not samples, as Hinton's practical guide advises: less noise.
            v_neg = self._down(hidden, s.v_neg, s)  # (B, n_visible)
            pre_neg, h_neg = self._up(v_neg, s.h_neg, s)  # the last step's probabilities: no sampling noise
            if step < self.k - 1 or self.persistent:
                hidden = self._sample(pre_neg, h_neg, s)
            if step == 0 and not self.persistent:
                s.add_squared_error(v_neg, v0)
        if self.persistent:
            assert self.chains is not None
            self.chains.copy_(hidden)
            s.add_squared_error(self._down(h0, s.reconstruction, s), v0)

        if self.k > 1 or self.persistent:  # CD-1's s.diff already holds v_neg - v0, from its error
            torch.sub(v_neg, v0, out=s.diff)
        # The weight gradient (h_neg^T v_neg - h0^T v0) / B as one (n_hidden, 2B) x (2B, n_visible)
        # product of s.hiddens = [h_neg; h0] and s.visibles = [v_neg; -v0], faster than two half-size
        # ones; 1/B is the product's alpha. The negation is the copy of v0 that the product needs anyway.
        sparsity = self._sparsity(h0)
        if sparsity is not None:
            h0.sub_(sparsity)  # the product then adds the penalty's weight gradient, sparsity x mean(v0)
        torch.neg(v0, out=s.v_pos)  # (2B, n_visible); in place where v0 is s.v_pos (bf16)
        s.gradients(momentum_buffers, momentum)
        return s

    hand_step = cd_step  # the step cd.train_by_hand runs
    hand_bf16 = True  # it casts its products itself (Scratch.load): bf16 trains by hand too

    def _sparsity(self, h0: Tensor) -> Tensor | None:
        """The sparsity penalty's gradient w.r.t. each hidden pre-activation, shape (n_hidden,), or None.

        The penalty is ``sparsity_cost`` times the cross-entropy between the target
        activation and the batch's mean activation q; its derivative w.r.t. a unit's
        total input is cost * (q - target) (Hinton's practical guide, section 11).
        """
        if self.sparsity_target <= 0 or self.sparsity_cost <= 0:
            return None
        q = h0.mean(dim=0)  # (n_hidden,)
        return self.sparsity_cost * (q - self.sparsity_target)

    def pretrain_loss(self, v: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """(objective, reported loss) for one batch: see the module docstring."""
        _, error = self.contrastive_divergence(v, dtype)
        # The gradient is already in .grad; backward() of a fresh leaf touches no parameter.
        return torch.zeros((), requires_grad=True), error


@register
class RBM(Model):
    """One RBM (n_in visible units, hidden_layer_sizes[0] hidden units) + a softmax on its features.

    Phases: ``pretrain:0`` trains the RBM without labels; ``finetune`` trains only
    the softmax layer on the frozen hidden features, as scikit-learn's
    ``Pipeline([BernoulliRBM, LogisticRegression])`` does.
    """

    name = "rbm"

    def build(self) -> nn.Module:
        c = self.conf
        check_precision(c.precision)
        rbm = RBMLayer.from_conf(c.layer(0))
        output = init_linear(nn.Linear(rbm.n_hidden, c.n_out), c.weight_init)
        return nn.ModuleDict({"rbm": rbm, "output": output})

    @property
    def rbm(self) -> RBMLayer:
        return self.module["rbm"]  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        return self.module["output"](self.rbm.mean_hiddens(x))  # (B, n_out)

    def phases(self, finetune_epochs: int | None = None) -> list[Phase]:
        c = self.conf
        pretrain = [Phase(pretrain_phase(0), c.pretrain_epochs, supervised=False)] if c.pretrain_epochs else []
        return [*pretrain, Phase(FINETUNE, finetune_epochs or c.finetune_epochs)]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if layer_index(phase) is not None:
            return list(self.rbm.parameters())
        return list(self.module["output"].parameters())

    def phase_optimizer_settings(self, phase: str) -> tuple[str, float, float, float]:
        if layer_index(phase) is not None:
            layer = self.conf.layer(0)
            return self.conf.pretrain_optimizer, layer.pretrain_lr, layer.momentum, layer.l2
        return super().phase_optimizer_settings(phase)

    def train_step(self, phase: str, batches: Sequence[Batch],
                   on_gradients: Callable[[int], None] | None = None) -> StepResult:
        if layer_index(phase) is None:
            return super().train_step(phase, batches, on_gradients)
        self.rbm.reseed_sampler()
        step = train_by_hand(self, self.rbm, phase, batches, lambda x: x, on_gradients)
        return step or super().train_step(phase, batches, on_gradients)

    def batch_loss(self, phase: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        dtype = precision(self)
        if layer_index(phase) is not None:
            return self.rbm.pretrain_loss(x, dtype)
        with torch.no_grad():  # the features are frozen: no gradient through the RBM
            features = self.rbm.mean_hiddens(x)
        with autocast(dtype, x.device):
            logits = self.module["output"](features)
        loss = F.cross_entropy(logits.float(), y)
        return loss, loss

    def transform(self, x: Any) -> np.ndarray:
        """Hidden features E[h | x], shape (N, n_hidden)."""
        return transform(self.module, self.rbm.mean_hiddens, x, self.conf.n_in)


def transform(module: nn.Module, features: Any, x: Any, n_in: int) -> np.ndarray:
    """``features`` (a function of a (B, n_in) tensor) over x in chunks, as one NumPy array."""
    data = as_features(x, n_in)
    device = next(module.parameters()).device
    module.eval()
    with torch.no_grad():
        out = [features(chunk.to(device)).cpu() for chunk in torch.split(data, 8192)]
    return torch.cat(out).numpy()
