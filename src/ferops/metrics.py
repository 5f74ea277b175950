"""Classification metrics: pure functions, numpy in, plain numbers out.

Checked against hand-computed cases (tests/test_metrics.py); nothing here runs a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ferops.errors import DataError, ParamsError


def masked_argmax(probabilities: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Argmax over the ``allowed`` classes only (e.g. the 6 classes CK+ has).

    Args:
        probabilities: (n, classes) scores.
        allowed: Class indices that may be predicted.

    Returns:
        Predicted class index per row, always one of ``allowed``.
    """
    allowed = np.asarray(sorted(allowed), dtype=int)
    if allowed.size == 0:
        raise ValueError("masked_argmax: no allowed classes")
    return allowed[np.argmax(np.asarray(probabilities)[:, allowed], axis=1)]


def restrict(probabilities: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Zero the classes a dataset cannot contain and renormalise each row.

    Used for datasets without some classes (CK+ has no neutral), so their calibration is
    measured on the probabilities the masked argmax actually chooses from.

    Args:
        probabilities: (n, classes) predicted probabilities.
        allowed: Class indices the dataset can contain.

    Returns:
        (n, classes) probabilities, zero outside ``allowed``, rows summing to 1.
    """
    kept = np.zeros_like(probabilities)
    index = list(allowed)
    kept[:, index] = probabilities[:, index]
    return kept / np.maximum(kept.sum(axis=1, keepdims=True), 1e-12)


def group_index(classes: Sequence[str], groups: Mapping[str, Sequence[str]]) -> np.ndarray:
    """Map each class index to the index of its group (groups must cover every class once)."""
    lookup = {}
    for position, members in enumerate(groups.values()):
        for member in members:
            if member not in classes:
                raise ParamsError(f"evaluate.groups: {member!r} is not a class ({', '.join(classes)})")
            if member in lookup:
                raise ParamsError(f"evaluate.groups: {member!r} is in more than one group")
            lookup[member] = position
    missing = [name for name in classes if name not in lookup]
    if missing:
        raise ParamsError(f"evaluate.groups: classes in no group: {', '.join(missing)}")
    return np.asarray([lookup[name] for name in classes], dtype=int)


def group_accuracy(y_true: np.ndarray, y_pred: np.ndarray, mapping: np.ndarray) -> float:
    """Accuracy after mapping classes to groups (a fear/sad confusion counts as right)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(mapping[y_true] == mapping[y_pred]))


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str],
                          present: Sequence[int] | None = None) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support.

    Args:
        y_true: True class indices.
        y_pred: Predicted class indices.
        classes: Class names (index -> name).
        present: Classes the dataset can contain; macro-F1 averages over these (default: all).
            CK+ has no neutral: averaging a class with no examples would only add a zero.

    Returns:
        ``{"accuracy", "macro_f1", "n", "per_class": {name: {precision, recall, f1, support}}}``.
    """
    from sklearn.metrics import precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"labels {y_true.shape} and predictions {y_pred.shape} differ in shape")
    if y_true.size == 0:
        raise DataError("cannot evaluate an empty dataset")
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=indices, zero_division=0)
    averaged = list(present) if present is not None else indices
    return {
        "n": int(y_true.size),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": float(np.mean(f1[averaged])),
        "per_class": {
            classes[i]: {"precision": float(precision[i]), "recall": float(recall[i]),
                         "f1": float(f1[i]), "support": int(support[i])}
            for i in indices
        },
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Confusion counts: rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def calibration(probabilities: np.ndarray, y_true: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and the reliability-diagram data (equal-width confidence bins).

    ECE = sum over bins of (bin share of samples) x |accuracy in bin - mean confidence in bin|.

    Args:
        probabilities: (n, classes) predicted probabilities (rows sum to 1).
        y_true: True class indices; the prediction is the row's argmax.
        bins: Number of equal-width bins over [0, 1].

    Returns:
        ``{"ece", "bins": [{"lower", "upper", "count", "confidence", "accuracy"}]}``.
    """
    if bins < 1:
        raise ParamsError(f"evaluate.calibration_bins must be at least 1, got {bins}")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(y_true)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, with confidence 0 in the first bin.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    total, ece, rows = len(confidence), 0.0, []
    for index in range(bins):
        members = which == index
        count = int(members.sum())
        row = {"lower": float(edges[index]), "upper": float(edges[index + 1]), "count": count,
               "confidence": float(confidence[members].mean()) if count else None,
               "accuracy": float(correct[members].mean()) if count else None}
        if count:
            ece += count / total * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return {"ece": float(ece), "bins": rows}


def confident_mistakes(probabilities: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                       per_class: int) -> dict[int, np.ndarray]:
    """Row indices of the most confident wrong predictions, per true class (most confident first)."""
    confidence = np.asarray(probabilities)[np.arange(len(y_pred)), y_pred]
    picked = {}
    for klass in np.unique(y_true):
        rows = np.flatnonzero((y_true == klass) & (y_pred != klass))
        order = np.argsort(-confidence[rows], kind="stable")
        picked[int(klass)] = rows[order[:per_class]]
    return picked
