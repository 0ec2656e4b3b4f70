"""The class names of each data set, for evaluations' reports (``labels=`` of ``model.evaluate``).

The statistics themselves (``Evaluation``) are in deepgrid.models.evaluation: a model evaluates its
own predictions, and the models layer does not reach up here.
"""

from __future__ import annotations

FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MNIST_LABELS: tuple[str, ...] = tuple(str(d) for d in range(10))
DATASET_LABELS: dict[str, tuple[str, ...]] = {"fashion-mnist": FASHION_MNIST_LABELS, "mnist": MNIST_LABELS}
