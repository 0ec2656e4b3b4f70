"""The optimizers a network configuration may name (``sgd``, ``adagrad``, ``adam``): torch.optim's
maths and the part of its interface that deepgrid uses, without torch.optim itself.

Why not torch.optim: in torch 2.13, making or stepping any torch.optim optimizer imports torch's
compiler stack (``torch._dynamo``, about 1.2 s of CPU) for steps that never compile. Each worker
process makes its optimizers as it starts, so that import was on every run's way to its first
round: with two workers on a 2-core machine, about 1.1 s of the start-up (bench/README.md, "Start-up").

The same floats: each update runs the operations of torch.optim's single-tensor path (its CPU
default) in the same order, for the settings a configuration can give (no Nesterov, dampening,
maximize, amsgrad or learning-rate decay). ``tests/unit/test_optimizers.py`` checks each against
torch.optim to the bit.

The interface: ``param_groups``, ``state`` (per parameter), ``zero_grad``, ``step``, and
``state_dict``/``load_state_dict`` in torch.optim's layout (parameters numbered in group order).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class Optimizer:
    """Parameters in groups with their settings, and per-parameter state; ``_update`` steps a group."""

    def __init__(self, params: Iterable[Tensor], defaults: dict[str, Any]) -> None:
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        self.defaults = dict(defaults)
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = [{"params": params, **self.defaults}]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                elif p.grad.grad_fn is not None:
                    p.grad.detach_().zero_()
                else:
                    p.grad.requires_grad_(False).zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, [p.grad for p in params])

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's layout: state keyed by each parameter's number, groups list their numbers.
        The tensors are the live state, as torch.optim's are (deep-copy to keep a snapshot)."""
        numbers: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                numbers.setdefault(id(p), len(numbers))
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": [numbers[id(p)] for p in group["params"]]})
        return {"state": {numbers[id(p)]: entry for p, entry in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """State and settings from ``state_dict`` (as ``state_dict`` gives them) for these parameters,
        tensors moved to each parameter's device and (floating ones, except ``step``) its dtype."""
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded state dict's parameter groups do not match this optimizer's")
        by_number = {n: p for old, group in zip(saved, self.param_groups, strict=True)
                     for n, p in zip(old["params"], group["params"], strict=True)}
        self.state = defaultdict(dict)
        for number, entry in state_dict["state"].items():
            p = by_number[int(number)]
            self.state[p] = {name: _like(p, name, value) for name, value in entry.items()}
        self.param_groups = [{**old, "params": group["params"]} for old, group in zip(saved, self.param_groups,
                                                                                        strict=True)]

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
        return f"{type(self).__name__}({settings})"


def _like(p: Tensor, name: str, value: Any) -> Any:
    if not torch.is_tensor(value):
        return value
    if name == "step":  # a float32 counter on the CPU, as torch.optim keeps it
        return value
    return value.to(dtype=p.dtype, device=p.device) if value.is_floating_point() else value.to(device=p.device)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay (torch.optim.SGD's maths)."""

    def __init__(self, params: Iterable[Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        sgd_update(self.state, params, grads, group["lr"], group["momentum"], group["weight_decay"])


@torch.no_grad()
def sgd_update(state: defaultdict[Tensor, dict[str, Any]], params: Sequence[Tensor], grads: Sequence[Tensor],
               lr: float, momentum: float, weight_decay: float, *, grads_are_scratch: bool = False) -> None:
    """One SGD step of ``params`` along ``grads``, momentum buffers in ``state``. With
    ``grads_are_scratch`` the weight decay is added to ``grads`` in place (the caller's own buffers,
    rewritten every batch); otherwise they are left as they were, as torch.optim leaves ``p.grad``.

    Tensor by tensor, as torch.optim's single-tensor path: a parameter, its gradient and its buffer
    are still in cache for the next pass over them (foreach calls, three passes over all of them,
    took 177-267 us a step of the bench's MLP against 103 us this way and 124 us for torch.optim)."""
    for p, grad in zip(params, grads, strict=True):
        if weight_decay != 0:
            grad = grad.add_(p, alpha=weight_decay) if grads_are_scratch else grad.add(p, alpha=weight_decay)
        if momentum != 0:
            entry = state[p]
            buf = entry.get("momentum_buffer")
            if buf is None:  # the first step: the buffer starts as the gradient
                buf = entry["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1)
            grad = buf
        p.add_(grad, alpha=-lr)


class Adagrad(Optimizer):
    """Adagrad with L2 weight decay (torch.optim.Adagrad's maths, its eps of 1e-10)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 0.01, weight_decay: float = 0.0, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "eps": eps})
        for p in self.param_groups[0]["params"]:  # torch.optim.Adagrad makes its state up front too
            self.state[p] = {"step": torch.tensor(0.0), "sum": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        for p, grad in zip(params, grads, strict=True):
            entry = self.state[p]
            entry["step"] += 1
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            entry["sum"].addcmul_(grad, grad, value=1)
            std = entry["sum"].sqrt().add_(eps)
            p.addcdiv_(grad, std, value=-lr)


class Adam(Optimizer):
    """Adam with L2 weight decay (torch.optim.Adam's maths: betas 0.9 and 0.999, eps 1e-8)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps})

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        lr, weight_decay, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, grad in zip(params, grads, strict=True):
            entry = self.state[p]
            if not entry:  # made at the first step, as torch.optim.Adam makes it
                entry.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                             exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
            entry["step"] += 1
            if weight_decay != 0:
                grad = grad.add(p, alpha=weight_decay)
            entry["exp_avg"].lerp_(grad, 1 - beta1)
            entry["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = entry["step"].item()
            step_size = lr / (1 - beta1**step)
            denom = (entry["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(entry["exp_avg"], denom, value=-step_size)
