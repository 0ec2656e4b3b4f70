"""The model interface every network implements, and the runtime drives.

A model owns one ``torch.nn.Module`` (all its parameters) and says how to
train it, phase by phase. The runtime needs only:

* ``phases()``: the training phases in order (DBN: ``pretrain:0`` ...
  ``pretrain:n-1``, then ``finetune``; MLP: ``finetune`` only);
* ``train_step(phase, batches)``: train one phase on a sequence of mini-batches
  (a ``deepgrid.data.dataset.Batches``: each gathered as it is read), returning
  the samples seen and their mean loss;
* ``get_flat_params()`` / ``set_flat_params()``: the parameters as one flat
  float32 vector (what workers exchange); optimizer state stays in the model,
  apart from the parameters, so each worker keeps its own.

A subclass writes ``build()``, ``forward()`` and ``batch_loss()``, and
``phases()``/``phase_parameters()`` when it has more than one phase. Model code
knows nothing of training loops, run checkpoints or distribution: training a
model is ``deepgrid.train.loop.fit(model, x, y)``, a layer above.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.data.arrays import as_features, as_labels
from deepgrid.errors import ModelError
from deepgrid.models.evaluation import Evaluation
from deepgrid.models.files import load_model_files, save_model_files
from deepgrid.models.optimizers import SGD, Adagrad, Adam, Optimizer

Batch = tuple[Tensor, Tensor]  # x: (B, n_in) float32, y: (B,) int64

FINETUNE = "finetune"


@dataclass(frozen=True)
class Phase:
    """One stage of training: its name, how many passes over the data, and whether it uses labels."""

    name: str
    epochs: int
    supervised: bool = True


@dataclass(frozen=True)
class StepResult:
    """What one call of ``train_step`` did."""

    n_samples: int
    loss: float  # mean over the samples


class Model:
    """Base class of deepgrid's networks. See the module docstring."""

    name: ClassVar[str] = ""

    def __init__(self, conf: NeuralNetConfiguration | None = None, **fields: Any) -> None:
        if conf is not None and fields:
            conf = conf.replace(**fields)
        self.conf = conf if conf is not None else NeuralNetConfiguration(**fields)
        torch.manual_seed(self.conf.seed)
        self.module = self.build()
        self._optimizers: dict[str, Optimizer] = {}

    # -- what a subclass writes ------------------------------------------------
    def build(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Class scores (logits), shape (B, n_out), for x of shape (B, n_in)."""
        raise NotImplementedError

    def batch_loss(self, phase: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(objective to differentiate, loss to report) for one mini-batch of ``phase``.

        The two differ where the objective is a surrogate (an RBM's contrastive
        divergence): the reported loss is then the reconstruction error.
        """
        loss = nn.functional.cross_entropy(self.forward(x), y)
        return loss, loss

    def phases(self, finetune_epochs: int | None = None) -> list[Phase]:
        return [Phase(FINETUNE, finetune_epochs or self.conf.finetune_epochs)]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return list(self.module.parameters())

    def phase_optimizer_settings(self, phase: str) -> tuple[str, float, float, float]:
        """(optimizer, learning rate, momentum, l2) for ``phase``."""
        c = self.conf
        return c.optimizer, c.finetune_lr, c.momentum, c.l2

    # -- the runtime interface ---------------------------------------------------
    def train_step(self, phase: str, batches: Sequence[Batch],
                   on_gradients: Callable[[int], None] | None = None) -> StepResult:
        """Train ``phase`` on ``batches`` in order: the inner reference loop.

        Every path (``deepgrid.train.loop.fit``, each distributed worker) trains through here.
        ``on_gradients(n_samples)`` runs after each backward pass, before the optimizer steps:
        a training strategy may combine gradients there (the model need not know).
        """
        optimizer = self.optimizer(phase)
        self.module.train()
        total = torch.zeros(())
        n = 0
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            objective, reported = self.batch_loss(phase, x, y)
            objective.backward()
            if on_gradients is not None:
                on_gradients(len(x))
            optimizer.step()
            total += reported.detach() * len(x)  # a tensor sum: no sync per batch
            n += len(x)
        return StepResult(n, float(total) / max(n, 1))

    def optimizer(self, phase: str) -> Optimizer:
        """The optimizer of ``phase``, made on first use and kept (its state is this worker's)."""
        if phase not in self._optimizers:
            self._optimizers[phase] = make_optimizer(
                self.phase_parameters(phase), *self.phase_optimizer_settings(phase)
            )
        return self._optimizers[phase]

    def reset_optimizers(self) -> None:
        self._optimizers.clear()

    def reset_momentum(self) -> None:
        """Forget SGD's momentum buffers (the velocity of the path these parameters were on); an
        adaptive optimizer's statistics (Adam's, Adagrad's) are kept. The next step starts its
        buffer from its own gradient, as the first step of a new optimizer does."""
        for optimizer in self._optimizers.values():
            for entry in optimizer.state.values():
                entry.pop("momentum_buffer", None)

    def get_flat_params(self) -> np.ndarray:
        """All parameters as one new float32 vector, in ``module.parameters()`` order."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1).cpu() for p in self.module.parameters()])
        return flat.numpy()

    def set_flat_params(self, flat: np.ndarray | Tensor) -> None:
        """Overwrite all parameters from a flat vector made by ``get_flat_params``."""
        vector = as_vector(flat)
        if vector.numel() != self.n_params:
            raise ModelError(
                f"Parameter vector has {vector.numel()} values but {self.name} has {self.n_params}; "
                "it was made by a different network."
            )
        with torch.no_grad():
            offset = 0
            for p in self.module.parameters():
                n = p.numel()
                p.copy_(vector[offset : offset + n].view_as(p))
                offset += n

    def holds_flat_params(self, flat: np.ndarray) -> bool:
        """True when ``flat`` (``get_flat_params``'s layout) holds exactly these parameters."""
        vector = as_vector(flat)
        if vector.numel() != self.n_params:
            return False
        offset = 0
        with torch.no_grad():
            for p in self.module.parameters():
                n = p.numel()
                if not torch.equal(p.detach().reshape(-1).cpu(), vector[offset : offset + n]):
                    return False
                offset += n
        return True

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def to(self, device: str | torch.device) -> Model:
        self.module.to(device)
        self._optimizers.clear()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    # -- user-facing ---------------------------------------------------------------
    def predict_proba(self, x: Any) -> np.ndarray:
        """Class probabilities, shape (N, n_out)."""
        features = as_features(x, self.conf.n_in)
        self.module.eval()
        out = []
        with torch.no_grad():
            for chunk in torch.split(features, 8192):
                out.append(torch.softmax(self.forward(chunk.to(self.device)), dim=1).cpu())
        return torch.cat(out).numpy()

    def predict(self, x: Any) -> np.ndarray:
        """Predicted class labels, shape (N,)."""
        return self.predict_proba(x).argmax(axis=1)

    def score(self, x: Any, y: Any) -> float:
        """Accuracy on (x, y)."""
        labels = as_labels(y, self.conf.n_out)
        return float((self.predict(x) == labels.numpy()).mean())

    def evaluate(self, x: Any, y: Any, labels: Sequence[str] | None = None) -> Evaluation:
        """Accuracy, per-class precision/recall/F1 and the confusion matrix (``labels`` name the classes)."""
        return Evaluation.from_predictions(as_labels(y, self.conf.n_out).numpy(), self.predict(x),
                                           n_classes=self.conf.n_out, labels=labels)

    # -- persistence: safetensors for weights, JSON for configuration; never pickle --
    def get_config(self) -> dict[str, Any]:
        return {"model": self.name, "network": self.conf.to_dict()}

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``model.json`` and ``weights.safetensors`` into ``directory``."""
        return save_model_files(self, Path(directory), extra or {})

    @classmethod
    def load(cls, directory: str | Path) -> Model:
        """Load a model saved by ``save``; the class comes from ``model.json``."""
        model = load_model_files(Path(directory))
        if cls is not Model and not isinstance(model, cls):
            raise ModelError(f"{directory} holds a {model.name!r} model, not a {cls.name!r} model.")
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.n_params} parameters, {json.dumps(self.conf.hidden_layer_sizes)})"


def as_vector(flat: np.ndarray | Tensor) -> Tensor:
    """A flat float32 parameter vector as a tensor, without a copy where it can be had."""
    array = np.asarray(flat, dtype=np.float32)
    with warnings.catch_warnings():
        # A zero-copy, read-only view from Ray's object store: torch warns that it cannot
        # write to it, but the vector is only read, into the parameters: no copy needed.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def make_optimizer(params: list[nn.Parameter], name: str, lr: float, momentum: float,
                   l2: float) -> Optimizer:
    """The optimizers a configuration may name (``models/optimizers.py``: torch.optim's maths)."""
    if name == "sgd":
        return SGD(params, lr=lr, momentum=momentum, weight_decay=l2)
    if name == "adagrad":
        return Adagrad(params, lr=lr, weight_decay=l2)
    if name == "adam":
        return Adam(params, lr=lr, weight_decay=l2)
    raise ModelError(f"Unknown optimizer {name!r}; expected one of 'sgd', 'adagrad', 'adam'.")


def activation(name: str) -> nn.Module:
    return {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}[name]()


def init_linear(layer: nn.Linear, scheme: str, nonlinearity: str = "sigmoid") -> nn.Linear:
    """Initialise weights by ``scheme``; biases start at zero."""
    with torch.no_grad():
        if scheme == "xavier":
            nn.init.xavier_uniform_(layer.weight)
        elif scheme == "he":
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        elif scheme == "normal":
            nn.init.normal_(layer.weight, std=0.01)
        else:
            nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer
