"""``precision: bf16`` (issue 13): validated, refused without native bf16, and training in bf16 where the CPU has it;
the hand-stepped SGD of the RBM's pretraining against the SGD optimizer's step."""

from __future__ import annotations

import pytest
import torch

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.errors import ConfigError
from deepgrid.models import cd
from deepgrid.models.autoencoder import StackedDenoisingAutoencoder
from deepgrid.models.base import make_optimizer
from deepgrid.models.dbn import DBN, LayerwiseModel
from deepgrid.models.rbm import RBM, RBMLayer
from tests.helpers import PROTOTYPE_CLASSES as N_CLASSES
from tests.helpers import PROTOTYPE_FEATURES as N_IN
from tests.helpers import batches, prototypes_data

native = pytest.mark.skipif(not cd.native_bf16_cpu(), reason="this CPU has no native bf16")


def settings(**fields) -> dict:
    return {**dict(n_in=N_IN, n_out=N_CLASSES, hidden_layer_sizes=(16, 12), pretrain_lr=0.05, momentum=0.5,
                   finetune_lr=0.5), **fields}


def test_precision_is_validated():
    assert NeuralNetConfiguration().precision == "float32"
    assert NeuralNetConfiguration(precision="bf16").to_dict()["precision"] == "bf16"
    with pytest.raises(ConfigError, match="precision"):
        NeuralNetConfiguration(precision="fp16")


def test_bf16_is_refused_in_one_line_without_native_support(monkeypatch):
    monkeypatch.setattr(cd, "native_bf16_cpu", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for model in (RBM, DBN, StackedDenoisingAutoencoder):
        with pytest.raises(ConfigError, match="bf16") as caught:
            model(**settings(precision="bf16"))
        assert "\n" not in str(caught.value)
    assert cd.compute_dtype("float32", torch.device("cpu")) is None  # float32 is never refused


@native
@pytest.mark.parametrize("model", [RBM, DBN, StackedDenoisingAutoencoder])
@pytest.mark.parametrize("pretrain_optimizer", ["sgd", "adam"])  # the hand-stepped path and the generic one
def test_bf16_training_lowers_the_loss_and_keeps_float32_parameters(model, pretrain_optimizer):
    x, y = prototypes_data()
    net = model(**settings(precision="bf16", pretrain_optimizer=pretrain_optimizer, pretrain_lr=0.02))
    data = batches(x, y)
    for phase in [p.name for p in net.phases()]:
        first = net.train_step(phase, data).loss
        for _ in range(8):
            last = net.train_step(phase, data).loss
        assert last < 0.9 * first, phase
    assert all(p.dtype == torch.float32 for p in net.module.parameters())
    assert net.score(x, y) > 0.5


@native
def test_bf16_gradient_is_close_to_float32():
    torch.manual_seed(0)
    layer = RBMLayer(N_IN, 8)
    v0, _ = prototypes_data(32)
    torch.manual_seed(1)
    layer.reseed_sampler()
    layer.contrastive_divergence(v0)
    exact = [p.grad.clone() for p in layer.parameters()]
    torch.manual_seed(1)  # the same random bits, compared with probabilities computed in bf16
    layer.reseed_sampler()
    layer.contrastive_divergence(v0, torch.bfloat16)
    for p, g in zip(layer.parameters(), exact, strict=True):
        assert p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, g, rtol=0.1, atol=0.02)


@pytest.mark.parametrize("l2", [0.0, 1e-3])
@pytest.mark.parametrize("momentum", [0.0, 0.5])
def test_hand_sgd_matches_torch_sgd(momentum, l2):
    """The RBM pretraining's own SGD step (cd.train_cd) against the generic loop with SGD.step: the
    same parameters and momentum buffers, to float rounding (the fused momentum updates round differently)."""
    x, y = prototypes_data()
    data = batches(x, y)
    fast, slow = (RBM(**settings(hidden_layer_sizes=(16,), momentum=momentum, l2=l2)) for _ in range(2))
    torch.manual_seed(3)
    for _ in range(3):
        fast.train_step("pretrain:0", data)
    torch.manual_seed(3)
    for _ in range(3):
        slow.rbm.reseed_sampler()  # as RBM.train_step does first
        super(RBM, slow).train_step("pretrain:0", data)  # Model.train_step: zero_grad, backward, optimizer.step
    for a, b in zip(fast.module.parameters(), slow.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if momentum:
        opt_fast, opt_slow = fast.optimizer("pretrain:0"), slow.optimizer("pretrain:0")
        for a, b in zip(opt_fast.param_groups[0]["params"], opt_slow.param_groups[0]["params"], strict=True):
            torch.testing.assert_close(opt_fast.state[a]["momentum_buffer"], opt_slow.state[b]["momentum_buffer"],
                                       rtol=1e-5, atol=1e-6)


def test_hand_sgd_of_an_upper_dbn_layer_matches_the_generic_loop():
    """A DBN's second layer: its inputs through the first layer's fixed views (DBN.train_step) and its
    hand-stepped SGD against the generic loop (``_below``, then SGD.step), from the same first layer."""
    x, y = prototypes_data()
    data = batches(x, y)
    fast, slow = (DBN(**settings(hidden_layer_sizes=(16, 12), l2=1e-3)) for _ in range(2))
    slow.module.load_state_dict(fast.module.state_dict())
    for model in (fast, slow):
        torch.manual_seed(2)
        model.train_step("pretrain:0", data)
    torch.manual_seed(3)
    for _ in range(3):
        fast.train_step("pretrain:1", data)
    torch.manual_seed(3)
    for _ in range(3):
        slow.layers[1].reseed_sampler()
        super(LayerwiseModel, slow).train_step("pretrain:1", data)  # Model.train_step: the generic loop
    for a, b in zip(fast.module.parameters(), slow.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hand_sgd_only_for_plain_sgd():
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert cd.hand_sgd(make_optimizer(params, "sgd", 0.1, 0.5, 0.0), None) == (0.1, 0.5, 0.0)
    assert cd.hand_sgd(make_optimizer(params, "adam", 0.1, 0.5, 0.0), None) is None
    assert cd.hand_sgd(make_optimizer(params, "sgd", 0.1, 0.5, 0.0), lambda n: None) is None  # a strategy's hook


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_bf16_is_refused_for_a_model_that_would_train_in_float32_anyway(model: str) -> None:
    from deepgrid import Conf

    with pytest.raises(ConfigError, match=r"network\.precision.*bf16 is for the pretraining models"):
        Conf(model=model, network={"precision": "bf16"})
    assert Conf(model="dbn", network={"precision": "bf16"}).network.precision == "bf16"
