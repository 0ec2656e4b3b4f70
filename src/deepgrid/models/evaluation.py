"""Evaluation: accuracy, per-class precision/recall/F1 and the confusion matrix.

Modelled on DL4J's ``Evaluation``: everything is derived from one confusion
matrix (rows = true class, columns = predicted class), so evaluations of
shards computed by different workers add up exactly with :meth:`merge`.

Ratios whose denominator is zero (a class never predicted, a class absent
from the data) are 0.0, as scikit-learn's ``zero_division=0``; macro averages
are plain means over all classes, as scikit-learn's ``average="macro"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from deepgrid.errors import DataError


def _as_classes(values: Any, what: str) -> np.ndarray:
    """A vector of class indices; rows of scores or one-hot vectors are reduced by argmax."""
    a = np.asarray(values)
    if a.ndim == 2:
        a = a.argmax(axis=1)
    if a.ndim != 1:
        raise DataError(f"{what} has shape {a.shape}; expected a vector of class indices or (N, n_classes) scores.")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all() or not np.array_equal(a, np.round(a)):
            raise DataError(f"{what} must hold whole class indices; found non-integer or NaN values.")
    elif a.dtype.kind not in "iub":
        raise DataError(f"{what} has dtype {a.dtype}; expected integer class indices.")
    a = a.astype(np.int64)
    if len(a) and a.min() < 0:
        raise DataError(f"{what} holds the negative class index {int(a.min())}; class indices start at 0.")
    return a


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


class Evaluation:
    """Classification statistics from a confusion matrix. Build with :meth:`from_predictions`."""

    def __init__(self, confusion_matrix: Any, labels: Sequence[str] | None = None) -> None:
        cm = np.array(confusion_matrix, dtype=np.int64)  # a private copy: nobody else can change it
        if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
            raise DataError(f"A confusion matrix must be square with at least one class; got shape {cm.shape}.")
        if (cm < 0).any():
            raise DataError("A confusion matrix holds counts; found negative entries.")
        n = cm.shape[0]
        if labels is None:
            labels = [str(i) for i in range(n)]
        if len(labels) != n:
            raise DataError(
                f"{len(labels)} class labels were given for {n} classes; pass one label per class "
                "or leave labels out."
            )
        cm.setflags(write=False)
        self._cm = cm
        self._labels = tuple(str(s) for s in labels)

    @classmethod
    def from_predictions(
        cls,
        y_true: np.ndarray,
        y_pred: np.ndarray,
        n_classes: int | None = None,
        labels: Sequence[str] | None = None,
    ) -> Evaluation:
        """Compare true and predicted class indices (or (N, n_classes) score rows, taken by argmax).

        ``n_classes`` defaults to ``len(labels)``, else to the largest index seen plus one.
        """
        t = _as_classes(y_true, "y_true")
        p = _as_classes(y_pred, "y_pred")
        if len(t) != len(p):
            raise DataError(f"y_true has {len(t)} entries but y_pred has {len(p)}; pass one prediction per example.")
        if len(t) == 0:
            raise DataError("Cannot evaluate zero examples; pass at least one prediction.")
        seen = int(max(t.max(), p.max())) + 1
        if n_classes is None:
            n_classes = len(labels) if labels is not None else seen
        elif labels is not None and len(labels) != n_classes:
            raise DataError(f"{len(labels)} class labels were given for n_classes={n_classes}; they must agree.")
        if seen > n_classes:
            raise DataError(
                f"Class index {seen - 1} found but n_classes is {n_classes}; "
                f"class indices must lie in [0, {n_classes - 1}]. Pass the right n_classes or labels."
            )
        # One pass: each (true, predicted) pair is a cell of the flattened matrix.
        cm = np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
        return cls(cm, labels)

    # -- the numbers -----------------------------------------------------------
    @property
    def confusion_matrix(self) -> np.ndarray:
        """int64 counts, shape (n_classes, n_classes): rows = true class, columns = predicted."""
        return self._cm.copy()

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def n_classes(self) -> int:
        return int(self._cm.shape[0])

    @property
    def n_examples(self) -> int:
        return int(self._cm.sum())

    @property
    def accuracy(self) -> float:
        return _ratio(np.trace(self._cm), self._cm.sum())

    def _index(self, c: int | str) -> int:
        """A class given by index or by label."""
        if isinstance(c, str):
            if c not in self._labels:
                raise DataError(f"Unknown class label {c!r}; expected one of {', '.join(self._labels)}.")
            return self._labels.index(c)
        if isinstance(c, bool) or not isinstance(c, int | np.integer) or not 0 <= c < self.n_classes:
            raise DataError(f"Class {c} does not exist; expected an index in [0, {self.n_classes - 1}] or a label.")
        return int(c)

    def support(self, c: int | str) -> int:
        """How many examples truly belong to class ``c``."""
        return int(self._cm[self._index(c)].sum())

    def precision(self, c: int | str) -> float:
        """Of the examples predicted as ``c``, the fraction that are ``c`` (0.0 when none were)."""
        i = self._index(c)
        return _ratio(self._cm[i, i], self._cm[:, i].sum())

    def recall(self, c: int | str) -> float:
        """Of the examples that are ``c``, the fraction predicted as ``c`` (0.0 when there are none)."""
        i = self._index(c)
        return _ratio(self._cm[i, i], self._cm[i].sum())

    def f1(self, c: int | str) -> float:
        """Harmonic mean of precision and recall, as 2TP / (2TP + FP + FN)."""
        i = self._index(c)
        tp = self._cm[i, i]
        return _ratio(2 * tp, self._cm[:, i].sum() + self._cm[i].sum())

    def _macro(self, metric: Any) -> float:
        return float(np.mean([metric(c) for c in range(self.n_classes)]))

    @property
    def macro_precision(self) -> float:
        return self._macro(self.precision)

    @property
    def macro_recall(self) -> float:
        return self._macro(self.recall)

    @property
    def macro_f1(self) -> float:
        return self._macro(self.f1)

    # -- combining and reporting -------------------------------------------------
    def merge(self, other: Evaluation) -> Evaluation:
        """The evaluation of both sets of examples together (e.g. shards scored by different workers)."""
        if other.n_classes != self.n_classes:
            raise DataError(
                f"Cannot merge an evaluation of {other.n_classes} classes into one of {self.n_classes}; "
                "evaluate both with the same n_classes."
            )
        return Evaluation(self._cm + other._cm, self._labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain ints, floats, strings and lists: ready for ``json.dumps``."""
        return {
            "n_examples": self.n_examples,
            "n_classes": self.n_classes,
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "per_class": [
                {
                    "label": label,
                    "precision": self.precision(i),
                    "recall": self.recall(i),
                    "f1": self.f1(i),
                    "support": self.support(i),
                }
                for i, label in enumerate(self._labels)
            ],
            "labels": list(self._labels),
            "confusion_matrix": self._cm.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evaluation:
        """Rebuild from :meth:`to_dict` output; only the confusion matrix and labels are read."""
        if not isinstance(data, dict) or "confusion_matrix" not in data:
            raise DataError("An evaluation record must be a mapping with a 'confusion_matrix' key, as to_dict() writes.")
        return cls(data["confusion_matrix"], data.get("labels"))

    def stats(self) -> str:
        """A readable report: per-class table, macro averages, accuracy and the confusion matrix."""
        name_w = max(len("macro avg"), *(len(s) for s in self._labels))
        lines = [
            f"Evaluation of {self.n_examples} examples, {self.n_classes} classes",
            "",
            f"{'class':<{name_w}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>8}",
        ]
        for i, label in enumerate(self._labels):
            lines.append(
                f"{label:<{name_w}}  {self.precision(i):>9.4f}  {self.recall(i):>9.4f}  "
                f"{self.f1(i):>9.4f}  {self.support(i):>8d}"
            )
        lines += [
            "",
            f"{'macro avg':<{name_w}}  {self.macro_precision:>9.4f}  {self.macro_recall:>9.4f}  "
            f"{self.macro_f1:>9.4f}  {self.n_examples:>8d}",
            f"{'accuracy':<{name_w}}  {'':>9}  {'':>9}  {self.accuracy:>9.4f}  {self.n_examples:>8d}",
            "",
            "Confusion matrix (rows = true class, columns = predicted class):",
        ]
        # Columns are headed by class index: label names are too wide to sit side by side.
        cell_w = max(4, len(str(int(self._cm.max()))) + 1)
        row_names = [f"{i:>2}" if label == str(i) else f"{i:>2} {label}" for i, label in enumerate(self._labels)]
        row_w = max(len(s) for s in row_names)
        lines.append(" " * row_w + " |" + "".join(f"{i:>{cell_w}}" for i in range(self.n_classes)))
        lines.append("-" * row_w + "-+" + "-" * (cell_w * self.n_classes))
        for name, row in zip(row_names, self._cm, strict=True):
            lines.append(f"{name:<{row_w}} |" + "".join(f"{int(v):>{cell_w}}" for v in row))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Evaluation(n_examples={self.n_examples}, n_classes={self.n_classes}, accuracy={self.accuracy:.4f})"
