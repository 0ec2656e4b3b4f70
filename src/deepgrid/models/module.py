"""Any ``torch.nn.Module`` a user brings, trained through the same interface."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from deepgrid.config.network import NeuralNetConfiguration
from deepgrid.models.base import Model
from deepgrid.models.files import USER_MODULE, load_model_files, network_from_meta, read_model_meta

LossFn = Callable[[Tensor, Tensor], Tensor]


class TorchModel(Model):
    """Wraps ``module`` (x of shape (B, n_in) -> logits (B, n_out)) and a loss.

    The network configuration still gives n_in, n_out, the optimizer and its
    learning rate; the layers are the module's own::

        model = TorchModel(nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)),
                           optimizer="adam", finetune_lr=1e-3)

    Its code is not saved, so loading and resuming need the module again (``TorchModel.load(dir,
    module=...)``, a runner's ``model_factory``). Named in a Conf instead (``model: pkg.module:Class``,
    deepgrid.models.user.UserModel), it is imported again by name wherever it is needed.
    """

    name = USER_MODULE

    def __init__(self, module: nn.Module, loss: LossFn | None = None,
                 conf: NeuralNetConfiguration | None = None, **fields: Any) -> None:
        self._user_module = module
        self._loss: LossFn = loss or nn.functional.cross_entropy
        super().__init__(conf, **fields)

    def build(self) -> nn.Module:
        return self._user_module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)

    def batch_loss(self, phase: str, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        loss = self._loss(self.forward(x), y)
        return loss, loss

    @classmethod
    def load(cls, directory: str | Path, module: nn.Module | None = None,  # type: ignore[override]
             loss: LossFn | None = None) -> TorchModel:
        """Load weights saved by ``save`` into ``module`` (its code is the user's, not stored)."""
        directory = Path(directory)
        meta = read_model_meta(directory)
        if module is None or meta["model"] != USER_MODULE:
            # Another kind loads as Model.load loads it; a user's module without `module` is refused there.
            return load_model_files(directory)  # type: ignore[return-value]
        model = TorchModel(module, loss, network_from_meta(meta, directory))
        return load_model_files(directory, model=model)  # type: ignore[return-value]
