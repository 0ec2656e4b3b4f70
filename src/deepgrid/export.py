"""``deepgrid export MODEL_DIR --format onnx|torchscript``: a saved model as a file other runtimes load.

The exported graph is what ``deepgrid predict`` computes: features ``x`` of shape (batch, n_in),
float32, already prepared as training prepared them (bytes scaled to [0, 1], thresholded at 0.5
when the model was trained with ``binarize``), in; class probabilities (the softmax of the
model's logits) of shape (batch, n_out) out. The batch axis is dynamic in both formats.

Every built-in kind exports its classifier: the RBM, DBN and SDA export the forward pass through
their (pre)trained layers and the softmax layer fine-tuning trained on top, the same forward
``predict`` uses. A directory holding a user's torch module cannot be rebuilt from its files (its
code is not stored): that is one line saying to export it from Python with :func:`export_model`.

After writing, the file is loaded back and run on a batch of another size than the one it was
traced with; its probabilities must match the model's own to 1e-5, else nothing is left behind
and the error says by how much they differ. ONNX is checked with onnxruntime when it is installed
(the ``export`` extra).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deepgrid.atomic_files import atomic_write
from deepgrid.errors import ModelError
from deepgrid.models.base import Model

FORMATS: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME = "x"
OUTPUT_NAME = "probabilities"
TOLERANCE = 1e-5
# Traced with 2 rows and checked with 3: torch.export treats sizes 0 and 1 as fixed, and a check at
# another size than the trace's catches a batch size baked into the graph.
TRACE_ROWS, CHECK_ROWS = 2, 3


class ProbabilityModule(nn.Module):
    """x (B, n_in) float32 -> class probabilities (B, n_out): the forward ``deepgrid predict`` runs."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.net = model.module  # registered, so that the parameters travel with the export
        self._logits = logits_function(model)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self._logits(x), dim=1)  # (B, n_out)


def logits_function(model: Model) -> Callable[[Tensor], Tensor]:
    """The model's forward pass, written so that a trace keeps the batch size free."""
    from deepgrid.models.cnn import CNN

    if isinstance(model, CNN):
        shape = tuple(model.conf.input_shape)
        # CNN.forward reshapes with view(len(x), ...): a trace records len(x) as a constant, and the
        # exported graph would accept one batch size only. -1 keeps it free; the layers are the same.
        return lambda x: model.module(x.reshape(-1, *shape))
    return model.forward


def default_output(model_dir: str | Path, fmt: str) -> Path:
    return Path(model_dir) / FORMATS[fmt]


def export_saved(model_dir: str | Path, fmt: str, output: str | Path | None = None) -> dict[str, Any]:
    """Export the model ``deepgrid train`` saved in ``model_dir``; the command's ``--json`` result."""
    path = Path(output) if output else default_output(model_dir, fmt)
    model = Model.load(model_dir)
    checked = export_model(model, path, fmt)
    return {"model": model.name, "format": fmt, "output": str(path), "n_in": model.conf.n_in,
            "n_out": model.conf.n_out, "checked": checked}


def export_model(model: Model, path: str | Path, fmt: str) -> bool:
    """Write ``model`` (any deepgrid Model, a TorchModel too) to ``path`` as ``fmt``; True when the
    written file was run and matched the model (False: ONNX without onnxruntime to run it)."""
    if fmt not in FORMATS:
        raise ModelError(f"Unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}.")
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"--output {path} is a directory; give the file to write, e.g. {path / FORMATS[fmt]}.")
    model.to("cpu")
    module = ProbabilityModule(model).eval()
    example = torch.rand(TRACE_ROWS, model.conf.n_in)
    write = _torchscript_writer(module, example) if fmt == "torchscript" else _onnx_writer(module, example)
    checked: list[bool] = []

    def write_and_check(tmp: Path) -> None:
        write(tmp)
        # Checked before it is renamed into place: a file that computes something else never lands.
        checked.append(check_export(module, tmp, fmt, model.conf.n_in))

    try:
        atomic_write(path, write_and_check)
    except OSError as e:
        raise ModelError(f"Cannot write {path}: {e.strerror or e}.") from None
    return checked[0]


def _torchscript_writer(module: nn.Module, example: Tensor) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with _quiet_exporter(), torch.no_grad(), _failure_as_model_error("TorchScript"):
            traced = torch.jit.trace(module, example)
        traced.save(str(tmp))

    return write


def _onnx_writer(module: nn.Module, example: Tensor) -> Callable[[Path], None]:
    for package in ("onnx", "onnxscript"):
        try:
            __import__(package)
        except ImportError:
            raise ModelError(f"Exporting to ONNX needs the {package} package, which is not installed; "
                             "pip install 'deepgrid[export]' (onnx, onnxscript, onnxruntime).") from None

    def write(tmp: Path) -> None:
        batch = torch.export.Dim("batch")
        with _quiet_exporter(), torch.no_grad(), _failure_as_model_error("ONNX"):
            # external_data=False: the weights inside the one file (a file beside it would take the
            # temporary name); dynamic_shapes: any batch size, as `predict` takes any number of rows.
            torch.onnx.export(module, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={"x": {0: batch}})

    return write


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The ONNX exporter logs a warning per torchvision operator it cannot find (torchvision is not a
    dependency), and torch 2.13 calls TorchScript deprecated (it still traces, saves and loads): noise
    about torch's internals, not the user's model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


@contextmanager
def _failure_as_model_error(fmt: str) -> Iterator[None]:
    """A forward the exporter cannot follow (a user's module, mostly) as one line, not a traceback."""
    try:
        yield
    except ModelError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"Exporting the model to {fmt} failed ({type(e).__name__}: {first}).") from e


def check_export(module: nn.Module, path: Path, fmt: str, n_in: int) -> bool:
    """Run the written file on CHECK_ROWS random rows; ModelError when it differs from ``module``."""
    x = torch.rand(CHECK_ROWS, n_in, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(x).numpy()
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError:
            logging.getLogger("deepgrid").info("deepgrid: onnxruntime is not installed: the ONNX file was not "
                                               "run to check it (pip install 'deepgrid[export]')")
            return False
    try:
        if fmt == "torchscript":
            with _quiet_exporter(), torch.no_grad():
                got = torch.jit.load(str(path))(x).numpy()
        else:
            session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
            got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    except Exception as e:  # what the runtime says, as one line
        # TorchScript's interpreter says what failed on its last line, onnxruntime on its first.
        lines = str(e).strip().splitlines() or [type(e).__name__]
        said = (lines[-1] if fmt == "torchscript" else lines[0]).strip()
        raise ModelError(f"The exported {fmt} file fails on {CHECK_ROWS} rows after tracing with {TRACE_ROWS} "
                         f"({said}): the model's forward fixes the batch size, e.g. with len(x); "
                         "write it with x.shape[0] or x.reshape(-1, ...) to export it. Nothing was written.") from None
    if got.shape != expected.shape or not np.allclose(got, expected, atol=TOLERANCE, rtol=0):
        difference = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        raise ModelError(f"The exported {fmt} file does not compute the model's probabilities (shape "
                         f"{got.shape} against {expected.shape}, largest difference {difference:.2g}); "
                         "nothing was written.")
    return True
