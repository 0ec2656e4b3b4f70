"""Evaluation checked against scikit-learn on random predictions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from deepgrid.errors import DataError
from deepgrid.models.evaluation import Evaluation
from deepgrid.train.evaluation import FASHION_MNIST_LABELS, MNIST_LABELS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 10, 500)
    # mostly right, some noise, and class 9 never predicted: precision 0 without warnings
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 9, 500))
    y_pred[y_pred == 9] = 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = Evaluation.from_predictions(y_true, y_pred, n_classes=10)
        report = ev.stats()
    labels = list(range(10))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    np.testing.assert_allclose([ev.precision(c) for c in labels], p)
    np.testing.assert_allclose([ev.recall(c) for c in labels], r)
    np.testing.assert_allclose([ev.f1(c) for c in labels], f)
    assert [ev.support(c) for c in labels] == s.tolist()
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    assert ev.macro_precision == pytest.approx(mp)
    assert ev.macro_recall == pytest.approx(mr)
    assert ev.macro_f1 == pytest.approx(mf)
    assert ev.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    cm = ev.confusion_matrix
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, confusion_matrix(y_true, y_pred, labels=labels))
    assert ev.precision(9) == 0.0 and "accuracy" in report


def test_stats_names_classes_and_accuracy():
    y_true = np.array([0, 1, 2, 9, 9, 3])
    y_pred = np.array([0, 1, 2, 9, 8, 3])
    ev = Evaluation.from_predictions(y_true, y_pred, labels=list(FASHION_MNIST_LABELS))
    report = ev.stats()
    for name in FASHION_MNIST_LABELS:
        assert name in report
    assert "accuracy" in report and f"{5 / 6:.4f}" in report
    assert "macro avg" in report and "Confusion matrix" in report
    assert ev.n_classes == 10 and ev.n_examples == 6
    assert ev.precision("Ankle boot") == 1.0 and ev.recall("Ankle boot") == 0.5


def test_n_classes_inferred_and_default_labels():
    ev = Evaluation.from_predictions([0, 2, 1], [0, 1, 1])
    assert ev.n_classes == 3 and ev.labels == ("0", "1", "2")
    assert MNIST_LABELS == tuple("0123456789")


def test_score_rows_are_argmaxed():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    ev = Evaluation.from_predictions(np.array([0, 1, 1]), scores)
    assert ev.confusion_matrix.tolist() == [[1, 0], [1, 1]]


def test_to_dict_is_json_and_round_trips():
    rng = np.random.default_rng(3)
    ev = Evaluation.from_predictions(rng.integers(0, 4, 50), rng.integers(0, 4, 50), labels=["a", "b", "c", "d"])
    data = json.loads(json.dumps(ev.to_dict()))
    assert data["accuracy"] == pytest.approx(ev.accuracy)
    assert [c["label"] for c in data["per_class"]] == ["a", "b", "c", "d"]
    back = Evaluation.from_dict(data)
    np.testing.assert_array_equal(back.confusion_matrix, ev.confusion_matrix)
    assert back.labels == ev.labels


def test_merge_equals_evaluating_everything():
    rng = np.random.default_rng(4)
    t, p = rng.integers(0, 5, 100), rng.integers(0, 5, 100)
    whole = Evaluation.from_predictions(t, p, n_classes=5)
    merged = Evaluation.from_predictions(t[:40], p[:40], n_classes=5).merge(
        Evaluation.from_predictions(t[40:], p[40:], n_classes=5))
    np.testing.assert_array_equal(merged.confusion_matrix, whole.confusion_matrix)


def test_confusion_matrix_cannot_be_changed_from_outside():
    ev = Evaluation.from_predictions([0, 1], [0, 1])
    ev.confusion_matrix[0, 0] = 99
    assert ev.confusion_matrix[0, 0] == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        (([0, 1], [0]), {}, "y_true has 2 entries but y_pred has 1"),
        (([0, 5], [0, 1]), {"n_classes": 3}, r"Class index 5 found but n_classes is 3"),
        (([0, -1], [0, 1]), {}, "negative class index"),
        (([0, 1.5], [0, 1]), {}, "whole class indices"),
        (([], []), {}, "zero examples"),
        (([0, 1], [0, 1]), {"labels": ["a"]}, "Class index 1 found but n_classes is 1"),
        (([0, 1], [0, 1]), {"n_classes": 3, "labels": ["a", "b"]}, "must agree"),
    ],
)
def test_bad_input_is_one_clear_line(args, kwargs, pattern):
    with pytest.raises(DataError, match=pattern) as e:
        Evaluation.from_predictions(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_unknown_class():
    ev = Evaluation.from_predictions([0, 1], [0, 1], labels=["cat", "dog"])
    with pytest.raises(DataError, match="Unknown class label 'cow'"):
        ev.precision("cow")
    with pytest.raises(DataError, match="Class 2 does not exist"):
        ev.recall(2)
