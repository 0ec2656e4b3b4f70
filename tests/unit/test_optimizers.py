"""deepgrid's optimizers (models/optimizers.py) against torch.optim: the same floats to the bit, the
same state, a state_dict that carries a run on, and no import of torch's compiler stack."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from deepgrid.models import optimizers
from deepgrid.models.base import make_optimizer

CASES = [  # (name, deepgrid's, torch.optim's)
    ("sgd", lambda p: optimizers.SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd momentum", lambda p: optimizers.SGD(p, lr=0.05, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("sgd momentum l2", lambda p: optimizers.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-3),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=1e-3)),
    ("adagrad", lambda p: optimizers.Adagrad(p, lr=0.05), lambda p: torch.optim.Adagrad(p, lr=0.05)),
    ("adagrad l2", lambda p: optimizers.Adagrad(p, lr=0.05, weight_decay=1e-3),
     lambda p: torch.optim.Adagrad(p, lr=0.05, weight_decay=1e-3)),
    ("adam", lambda p: optimizers.Adam(p, lr=1e-3), lambda p: torch.optim.Adam(p, lr=1e-3)),
    ("adam l2", lambda p: optimizers.Adam(p, lr=1e-3, weight_decay=1e-3),
     lambda p: torch.optim.Adam(p, lr=1e-3, weight_decay=1e-3)),
]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))


def train(module: nn.Module, optimizer, steps: int, skip: int = 0) -> None:
    """``steps`` steps on random batches of a fixed stream, the first ``skip`` of its batches left out."""
    generator = torch.Generator().manual_seed(1)
    for step in range(skip + steps):
        x, y = torch.randn(8, 12, generator=generator), torch.randint(0, 3, (8,), generator=generator)
        if step < skip:
            continue
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize(("name", "ours", "theirs"), CASES, ids=[c[0] for c in CASES])
def test_the_same_floats_as_torch_optim(name, ours, theirs):
    a, b = net(), net()
    opt_a, opt_b = ours(a.parameters()), theirs(b.parameters())
    train(a, opt_a, 6)
    train(b, opt_b, 6)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(a.parameters(), b.parameters(), strict=True):  # the state, entry by entry
        mine, torchs = opt_a.state[p], opt_b.state[q]
        assert mine.keys() == torchs.keys()
        for key in mine:
            assert torch.equal(mine[key], torchs[key]), (name, key)


@pytest.mark.parametrize(("name", "ours", "theirs"), CASES, ids=[c[0] for c in CASES])
def test_a_state_dict_carries_the_run_on(name, ours, theirs):
    """Three steps, the state copied into a fresh optimizer of a copy of the network, three more on
    each: the same parameters as six steps on one (as allreduce's rank-0 state and a broken group's
    rollback use it)."""
    whole, half = net(), net()
    opt_whole, opt_half = ours(whole.parameters()), ours(half.parameters())
    train(whole, opt_whole, 6)
    train(half, opt_half, 3)
    saved = copy.deepcopy(opt_half.state_dict())
    resumed = copy.deepcopy(half)
    opt_resumed = ours(resumed.parameters())
    opt_resumed.load_state_dict(saved)
    train(resumed, opt_resumed, 3, skip=3)  # steps 4-6
    for p, q in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_load_state_dict_refuses_other_parameters():
    opt = optimizers.SGD(net().parameters(), lr=0.1, momentum=0.9)
    other = optimizers.SGD([nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="do not match"):
        opt.load_state_dict(other.state_dict())


def test_zero_grad():
    module = net()
    opt = optimizers.SGD(module.parameters(), lr=0.1)
    module(torch.randn(2, 12)).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in module.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in module.parameters())


def test_an_empty_parameter_list_is_refused():
    with pytest.raises(ValueError, match="empty"):
        make_optimizer([], "adam", 0.1, 0.0, 0.0)


def test_training_does_not_import_torchs_compiler_stack():
    """The point of these classes: a worker that builds a model and trains it never imports
    torch._dynamo (about 1.2 s of CPU per process in torch 2.13, which torch.optim pays)."""
    code = """
import sys
import torch
from deepgrid.models.mlp import MLP
for optimizer in ("sgd", "adagrad", "adam"):
    model = MLP(n_in=12, n_out=3, hidden_layer_sizes=(8,), optimizer=optimizer, momentum=0.9)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    model.train_step("finetune", [(x[:16], y[:16]), (x[16:], y[16:])])
    model.optimizer("finetune").state_dict()
print("torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
