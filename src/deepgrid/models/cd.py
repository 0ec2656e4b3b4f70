"""What makes a pretraining layer's step cheap (an RBM's CD, a denoising autoencoder's
reconstruction): buffers reused from batch to batch, plain SGD stepped by hand, random bits from
numpy's PCG64, and the precision of the products (``precision: bf16``, RBMs only).

The products of one step are its floor: ``bench/bench_rbm.py`` times them bare, beside the whole
step. What remains is kept small here. ``Scratch`` (the RBM's; the autoencoder's is
``DAEScratch``) holds every intermediate, so no batch allocates; ``train_by_hand`` steps plain SGD
by hand (``optimizers.sgd_update``, the SGD optimizer's own update; from the second step the
momentum update is fused into the gradients' products), keeping the momentum buffers in the
optimizer's state so that ``state_dict`` and the strategies that move optimizer state see them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from deepgrid.errors import ConfigError
from deepgrid.models.base import Batch, Model, StepResult
from deepgrid.models.optimizers import SGD, Optimizer, sgd_update

if TYPE_CHECKING:
    from deepgrid.models.autoencoder import DenoisingAutoencoderLayer
    from deepgrid.models.rbm import RBMLayer

    HandLayer = RBMLayer | DenoisingAutoencoderLayer

PRECISIONS = {"float32": None, "bf16": torch.bfloat16}


@functools.cache
def native_bf16_cpu() -> bool:
    """True when this CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16).

    Without them PyTorch emulates bf16 products by converting to float32 around every one,
    slower than float32 itself: ``precision: bf16`` is refused there (docs/precision.md).
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:  # not Linux: ask oneDNN, which checks the same instructions
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return " avx512_bf16" in flags or " amx_bf16" in flags


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of the training products for ``precision`` on ``device``: None for float32.

    Raises ConfigError where the device has no native bf16."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return None
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError(f"precision: bf16 needs a GPU with bf16 support; {torch.cuda.get_device_name(device)} "
                              "has none: use precision: float32.")
    elif device.type != "cpu" or not native_bf16_cpu():
        raise ConfigError(f"precision: bf16 needs native bf16 ({'AVX512-BF16 or AMX on the CPU' if device.type == 'cpu' else 'a CUDA GPU'}); "
                          f"this {device.type} has none (emulated bf16 is slower than float32): use precision: float32.")
    return dtype


def check_precision(precision: str) -> None:
    """Refuse, when the model is built, a precision this machine's training device cannot run."""
    compute_dtype(precision, torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """Autocast to ``dtype`` for autograd steps (fine-tuning, autoencoders); a no-op for float32."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def hand_sgd(optimizer: Optimizer, on_gradients: Callable[[int], None] | None) -> tuple[float, float, float] | None:
    """(lr, momentum, weight decay) when ``sgd_update`` may stand in for ``optimizer.step()``, else None.

    Only SGD qualifies, and only without a gradient hook: a strategy that combines gradients goes
    through the optimizer as every model does."""
    if on_gradients is not None or type(optimizer) is not SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    return group["lr"], group["momentum"], group["weight_decay"]


def precision(model: Model) -> torch.dtype | None:
    """The dtype of ``model``'s training products (None: float32); ConfigError without bf16 hardware."""
    return compute_dtype(getattr(model.conf, "precision", "float32"), model.device)


def new_bits() -> np.random.PCG64:
    """A sampler's bit generator for one ``train_step``, seeded from torch's generator, so a job's
    samples follow from torch's seed alone, as every other random draw of training does (a retried
    job draws the same)."""
    return np.random.PCG64(int(torch.randint(0, 2**62, (1,)).item()))


def random16(bits: np.random.PCG64, n: int) -> np.ndarray:
    """``n`` random 16-bit integers (four per 64 bits of ``bits``): uniforms k / 65536 without a
    float conversion, about 2.5x cheaper than torch.rand's mt19937 floats at these sizes."""
    return bits.random_raw((n + 3) // 4).view(np.uint16)[:n]


def cached_scratch(layer: Any, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The layer's scratch for ``key``, made by ``build`` when the layer has none or one for another key
    (batch size, device, dtype, parameter storage). Kept in the instance's ``__dict__``, not as a
    buffer: no state_dict entry, and a new one when the parameters move or change storage."""
    scratch = layer.__dict__.get("_scratch")
    if scratch is None or scratch.key != key:
        scratch = layer.__dict__["_scratch"] = build()
    return scratch


def train_by_hand(model: Model, layer: HandLayer, phase: str, batches: Sequence[Batch],
                  inputs: Callable[[Tensor], Tensor], on_gradients: Callable[[int], None] | None) -> StepResult | None:
    """``Model.train_step`` for a layer's pretraining phase (an RBM's CD, a denoising autoencoder's
    reconstruction), with plain SGD stepped by hand (the maths of the SGD optimizer, without its
    bookkeeping; the floats round differently only where the momentum update is fused into the
    gradients' products); None where the phase needs the generic loop (another optimizer, or a
    strategy's gradient hook). ``inputs(x)``: the layer's input."""
    optimizer = model.optimizer(phase)
    settings = hand_sgd(optimizer, on_gradients)
    if settings is None:
        return None
    lr, momentum, weight_decay = settings
    dtype, params = precision(model), [layer.linear.weight, layer.linear.bias, layer.visible_bias]  # s.grads' order
    states = [optimizer.state[p] for p in params]
    model.module.train()
    total, n, fused, s = torch.zeros(()), 0, None, None
    with torch.no_grad():
        for x, _ in batches:
            v = inputs(x)
            if fused is None or v.shape[0] != fused[0]:
                if s is not None:
                    total += s.error[0]
                s = layer._scratch_for(v, dtype)
                s.error.zero_()
                bufs = [state.get("momentum_buffer") for state in states]
                # Once SGD has its momentum buffers (from its first step), the momentum update goes into
                # the gradients' products (float32; the scratch's ``gradients``).
                fused = (v.shape[0], bufs) if momentum != 0 and dtype is None and None not in bufs else None
            if fused is None:
                layer.hand_step(v, dtype, scratch=s)
                # s.grads are the step's own buffers, rewritten every batch: weight decay may go
                # into them in place.
                sgd_update(optimizer.state, params, s.grads, *settings, grads_are_scratch=True)
                fused = None
            else:
                bufs = fused[1]
                layer.hand_step(v, dtype, bufs, momentum, s)  # bufs = momentum x bufs + gradients
                if weight_decay != 0:
                    torch._foreach_add_(bufs, params, alpha=weight_decay)
                torch._foreach_add_(params, bufs, alpha=-lr)
            n += v.shape[0]  # (shape, not len: Tensor.__len__ is Python, a microsecond a call)
        if s is not None:
            total += s.error[0]
    return StepResult(n, float(total) / max(n * layer.loss_units, 1))


class Scratch:
    """The tensors one RBM's CD step reuses from batch to batch, for one (batch size, device, dtype,
    parameter storage): every intermediate and its views, made once, so a batch allocates nothing
    and slices nothing (at batch 64, allocations and views cost more than the sigmoids).

    With ``dtype`` below the parameters' (bf16), the products run on copies of the parameters in
    that dtype, refreshed each batch by ``load``; the gradients come back in the parameters' dtype.
    """

    def __init__(self, key: tuple[Any, ...], weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> None:
        b, device, dtype = key[:3]
        (n_hidden, n_visible), param_dtype = weight.shape, weight.dtype
        self.key, self.dtype, self.cast = key, dtype, dtype != param_dtype

        def new(*shape: int, dt: torch.dtype = dtype) -> Tensor:
            return torch.empty(shape, device=device, dtype=dt)

        self.hiddens = new(2 * b, n_hidden)  # rows :b the negative phase, b: the positive
        self.hiddens_t = self.hiddens.t()
        self.visibles = new(2 * b, n_visible)
        self.h_neg, self.h_pos = self.hiddens[:b], self.hiddens[b:]
        self.v_neg, self.v_pos = self.visibles[:b], self.visibles[b:]
        self.sample = new(b, n_hidden)
        # Binary samples on the CPU compare uniforms k / 65536 with the means, k 16 random bits (four per
        # 64 of numpy's PCG64, the layer's ``bits``), made into float32 by numpy: about 20 us for 64 x 256
        # units where torch.rand's mt19937 floats take 50-85 (measured on this project's EPYC; torch's
        # own int16-to-float conversion inside a comparison took 28). P(sample = 1) = ceil(65536 p) / 65536.
        self.fast_bernoulli = device.type == "cpu"
        if self.fast_bernoulli:
            self.uniform_np = np.empty(b * n_hidden, dtype=np.float32)
            self.uniform = torch.from_numpy(self.uniform_np).view(b, n_hidden)  # the same memory
        # Column sums as matrix-vector products: a third of the time of torch.sum(dim=0) at these shapes.
        # (2B,): 1/B for the negative rows, -1/B for the positive: mean(h_neg) - mean(h0) in one product.
        self.signed = torch.cat((torch.ones(b), -torch.ones(b))).mul_(1.0 / b).to(device, dtype)
        self.means = torch.full((b,), 1.0 / b, device=device, dtype=dtype)
        self.scale = 1.0 / b  # of the weight gradient's product
        self.diff = new(b, n_visible)  # v_neg - v0
        self.flat_diff, self.row_diff, self.diff_t = self.diff.view(-1), self.diff.view(1, -1), self.diff.t()
        self.error = torch.zeros(1, device=device)  # summed squared errors, added to by each batch
        self.reconstruction = new(b, n_visible)  # PCD's E[v | E[h | v0]]
        self.grads = (new(n_hidden, n_visible, dt=param_dtype), new(n_hidden, dt=param_dtype),
                      new(n_visible, dt=param_dtype))
        self.params = (weight, hidden_bias, visible_bias)
        if self.cast:
            self.weight, self.hidden_bias, self.visible_bias = new(n_hidden, n_visible), new(n_hidden), new(n_visible)
            self.product = new(n_hidden, n_visible)
        else:  # the parameters themselves: updated in place, so these stay current
            self.weight, self.hidden_bias, self.visible_bias = weight, hidden_bias, visible_bias
        self.weight_t = self.weight.t()

    def bernoulli(self, mean: Tensor, bits: np.random.PCG64) -> Tensor:
        """A 0/1 sample of each unit with probability ``mean``, into ``sample``."""
        if not self.fast_bernoulli:  # a GPU draws its own uniforms fast
            return self.sample.uniform_().lt_(mean)
        np.multiply(random16(bits, self.uniform_np.size), np.float32(1.0 / 65536), out=self.uniform_np)
        return torch.lt(self.uniform, mean, out=self.sample)

    def load(self) -> None:
        """Refresh the parameters' copies in ``dtype`` (bf16 only: float32 uses the parameters)."""
        if self.cast:
            torch._foreach_copy_((self.weight, self.hidden_bias, self.visible_bias), self.params)

    def add_squared_error(self, v: Tensor, v0: Tensor) -> None:
        """Add the summed squared error of v to ``error`` (one matrix-vector product); leaves v - v0 in ``diff``."""
        torch.sub(v, v0, out=self.diff)
        if self.cast:
            d = self.flat_diff.float()
            self.error += torch.dot(d, d)
        else:
            torch.addmv(self.error, self.row_diff, self.flat_diff, out=self.error)

    def gradients(self, momentum_buffers: Sequence[Tensor] | None = None, momentum: float = 0.0) -> None:
        """``grads`` = (hiddens^T visibles / B, hiddens^T ``signed``, column means of ``diff``): with
        ``visibles`` = [v_neg; -v0], the CD gradient of the weight, the hidden and the visible biases.

        Given SGD's ``momentum_buffers`` (in ``grads``' order), the gradients go straight into them
        instead, as momentum x buffer + gradient: the update SGD makes, without writing each gradient
        out and reading it back (about 60 us a batch at 784x256; floats round differently from the
        optimizer's separate passes in the last bits)."""
        hiddens_t = self.hiddens_t
        if momentum_buffers is not None:
            weight, hidden_bias, visible_bias = momentum_buffers
            torch.addmm(weight, hiddens_t, self.visibles, beta=momentum, alpha=self.scale, out=weight)
            torch.addmv(hidden_bias, hiddens_t, self.signed, beta=momentum, out=hidden_bias)
            torch.addmv(visible_bias, self.diff_t, self.means, beta=momentum, out=visible_bias)
            return
        weight, hidden_bias, visible_bias = self.grads
        if self.cast:  # bf16 products, float32 sums
            weight.copy_(torch.addmm(self.product, hiddens_t, self.visibles, beta=0, alpha=self.scale, out=self.product))
            torch.sum(self.h_neg, dim=0, dtype=weight.dtype, out=hidden_bias)
            hidden_bias.sub_(torch.sum(self.h_pos, dim=0, dtype=weight.dtype))
            hidden_bias.mul_(self.scale)
            torch.mean(self.diff, dim=0, dtype=weight.dtype, out=visible_bias)
        else:
            torch.addmm(weight, hiddens_t, self.visibles, beta=0, alpha=self.scale, out=weight)
            torch.mv(hiddens_t, self.signed, out=hidden_bias)
            torch.mv(self.diff_t, self.means, out=visible_bias)
