"""What makes an RBM's training step cheap: buffers reused from batch to batch, plain SGD stepped by
hand, and the precision of its products (``precision: bf16``).

The products of one CD-1 step (up, down, up, and the outer products as one product) are the step's
floor: ``bench/bench_rbm.py`` times them bare, beside the whole step. What remains is kept small
here. ``Scratch`` holds every intermediate, so no batch allocates; ``sgd_step`` applies momentum and
weight decay with the very operations of ``torch.optim.SGD`` (the same floats), without its per-step
bookkeeping, keeping the momentum buffers in the optimizer's state so that ``state_dict`` and the
strategies that move optimizer state see them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from deepgrid.errors import ConfigError

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


def autocast(dtype: torch.dtype | None, device: torch.device) -> torch.autocast:
    """Autocast to ``dtype`` for autograd steps (fine-tuning, autoencoders); a no-op for float32."""
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def hand_sgd(optimizer: torch.optim.Optimizer, on_gradients: Callable[[int], None] | None) -> tuple[float, float, float] | None:
    """(lr, momentum, weight decay) when ``sgd_step`` may stand in for ``optimizer.step()``, else None.

    Only plain SGD (no Nesterov, dampening or maximize) qualifies, and only without a gradient hook:
    a strategy that combines gradients goes through the optimizer as every model does."""
    if on_gradients is not None or type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    if group["nesterov"] or group["dampening"] or group["maximize"] or isinstance(group["lr"], Tensor):
        return None
    return group["lr"], group["momentum"], group["weight_decay"]


@torch.no_grad()
def sgd_step(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], lr: float, momentum: float,
             weight_decay: float) -> None:
    """One step of torch.optim.SGD's single-tensor path (its CPU default), the same operations in the
    same order, so the same floats; weight decay goes into ``.grad`` in place (the CD buffers are ours)."""
    for p in params:
        grad = p.grad
        assert grad is not None
        if weight_decay != 0:
            grad = grad.add_(p, alpha=weight_decay)
        if momentum != 0:
            state = optimizer.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1)
            grad = buf
        p.add_(grad, alpha=-lr)


class Scratch:
    """The tensors one RBM's CD step reuses from batch to batch, for one (batch size, device, dtype).

    Allocating them afresh every batch cost more than the sigmoids (profiled with torch.profiler
    at batch 64). With ``dtype`` below the parameters' (bf16), the products run on copies of the
    parameters in that dtype, made once per batch; the gradients come back in the parameters' dtype.
    """

    def __init__(self, key: tuple[int, torch.device, torch.dtype], n_visible: int, n_hidden: int,
                 param_dtype: torch.dtype) -> None:
        b, device, dtype = key
        self.key, self.dtype, self.cast = key, dtype, dtype != param_dtype

        def new(*shape: int, dt: torch.dtype = dtype) -> Tensor:
            return torch.empty(shape, device=device, dtype=dt)

        self.hiddens = new(2 * b, n_hidden)  # rows :b the negative phase, b: the positive
        self.visibles = new(2 * b, n_visible)
        self.sample = new(b, n_hidden)
        self.diff = new(b, n_visible)  # v_neg - v0
        self.reconstruction = new(b, n_visible)  # PCD's E[v | E[h | v0]]
        self.grads = (new(n_hidden, n_visible, dt=param_dtype), new(n_hidden, dt=param_dtype),
                      new(n_visible, dt=param_dtype))
        if self.cast:
            self.weight, self.hidden_bias, self.visible_bias = new(n_hidden, n_visible), new(n_hidden), new(n_visible)
            self.product = new(n_hidden, n_visible)

    def load(self, weight: Tensor, hidden_bias: Tensor, visible_bias: Tensor) -> None:
        """The parameters the products use this batch: themselves, or their copies in ``dtype``."""
        if self.cast:
            self.weight.copy_(weight)
            self.hidden_bias.copy_(hidden_bias)
            self.visible_bias.copy_(visible_bias)
        else:
            self.weight, self.hidden_bias, self.visible_bias = weight, hidden_bias, visible_bias

    def squared_error(self, v: Tensor, v0: Tensor) -> Tensor:
        """Mean squared error per unit (a 0-d float tensor); leaves v - v0 in ``diff``."""
        d = torch.sub(v, v0, out=self.diff).view(-1)
        if self.cast:
            d = d.float()
        return torch.dot(d, d) / d.numel()

    def gradients(self, hiddens: Tensor, visibles: Tensor) -> None:
        """``grads`` = (hiddens^T visibles, column sums of hiddens, column means of ``diff``)."""
        weight, hidden_bias, visible_bias = self.grads
        if self.cast:
            weight.copy_(torch.mm(hiddens.t(), visibles, out=self.product))
        else:
            torch.mm(hiddens.t(), visibles, out=weight)
        torch.sum(hiddens, dim=0, dtype=weight.dtype, out=hidden_bias)
        torch.mean(self.diff, dim=0, dtype=weight.dtype, out=visible_bias)
