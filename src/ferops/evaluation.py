"""Evaluation: metrics, test-time augmentation, calibration, confident mistakes and Grad-CAM.

Metric functions are pure (numpy in, plain numbers out) so they can be checked against
hand-computed cases; the functions that run a model take it as an argument.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ferops.cleaning import QUALITY_RULES, flagged_by_quality_rules
from ferops.config import Section
from ferops.errors import DataError, ParamsError
from ferops.io import atomic_file, write_json

logger = logging.getLogger(__name__)

TTA_MODES = ("none", "flip", "tencrop")
# The coarse grouping often reported beside 7-class accuracy: valence of the expression.
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "positive": ("happy", "surprise"),
    "neutral": ("neutral",),
    "negative": ("angry", "disgust", "fear", "sad"),
}


class EvaluateConfig(Section):
    """The ``evaluate`` params section.

    Attributes:
        tta: Test-time augmentation reported beside the plain figures (see :data:`TTA_MODES`).
        batch_size: Prediction batch size.
        calibration_bins: Equal-width confidence bins of the reliability diagram and ECE.
        mistakes_per_class: Images per true class in the most-confident-mistakes galleries.
        gradcam_per_class: Images per class in the Grad-CAM sheets.
        groups: The 3-group accuracy's groups: group name to its classes (every class once).
    """

    tta: Literal["none", "flip", "tencrop"] = "flip"
    batch_size: int = Field(256, gt=0)
    calibration_bins: int = Field(15, gt=0)
    mistakes_per_class: int = Field(6, gt=0)
    gradcam_per_class: int = Field(6, gt=0)
    groups: dict[str, tuple[str, ...]] = Field(default_factory=lambda: dict(DEFAULT_GROUPS))


@dataclass(frozen=True)
class EvaluationSet:
    """One labelled test set.

    Attributes:
        name: Key used in metric names (``private_test``, ``ckplus``, ...).
        images: uint8 images, shape (n, size, size).
        label: Class index per image (into the model's classes).
        allowed: Class indices the dataset can contain; predictions are restricted to these
            (argmax over the allowed classes) when ``mask_predictions`` is true.
        mask_predictions: Restrict the argmax to ``allowed`` (CK+ has no neutral class).
        description: What the set is, for reports.
    """

    name: str
    images: np.ndarray
    label: np.ndarray
    allowed: tuple[int, ...]
    mask_predictions: bool = False
    description: str = ""


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


def _as_model_input(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.float32)


def ten_crops(images: np.ndarray, fraction: float = 0.9) -> list[np.ndarray]:
    """The classic ten-crop views: 4 corners + centre, and their mirror images.

    Each crop has ``fraction`` of the side and is resized back to the full side (the model's
    input size).

    Args:
        images: (n, size, size[, 1]) pixels.
        fraction: Side of a crop relative to the image.

    Returns:
        Ten float32 arrays shaped like the model input.
    """
    import cv2

    batch = _as_model_input(images)[..., 0]
    size = batch.shape[1]
    crop = max(1, round(size * fraction))
    offsets = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop),
               ((size - crop) // 2, (size - crop) // 2)]
    views = []
    for top, left in offsets:
        cropped = batch[:, top:top + crop, left:left + crop]
        resized = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
                            for image in cropped])[..., None]
        views.extend([resized, resized[:, :, ::-1]])
    return views


def predict_probabilities(model: Any, images: np.ndarray, *, tta: str = "none",
                          batch_size: int = 256, plain: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities, optionally averaged over test-time augmented views.

    Args:
        model: A Keras model taking float32 pixels 0..255 of shape (n, size, size, 1).
        images: (n, size, size) uint8 images.
        tta: ``none``; ``flip`` (image + mirror image); ``tencrop`` (see :func:`ten_crops`).
        batch_size: Prediction batch size.
        plain: The model's probabilities for the un-augmented images, when the caller already
            has them; ``flip`` reuses them instead of predicting that view a second time.

    Returns:
        (n, classes) float64 probabilities.
    """
    if tta not in TTA_MODES:
        raise ParamsError(f"evaluate.tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    batch = _as_model_input(images)
    if tta == "none":
        views = [batch]
    elif tta == "flip":
        views = [batch, batch[:, :, ::-1]]
    else:
        views = ten_crops(batch)
    total = None
    if plain is not None and tta == "flip":
        if plain.shape[0] != batch.shape[0]:
            raise ValueError(f"plain probabilities have {plain.shape[0]} rows for {batch.shape[0]} images")
        total = np.asarray(plain, dtype=np.float64)
        views = views[1:]
        divisor = 2
    else:
        divisor = len(views)
    for view in views:
        probabilities = np.asarray(model.predict(np.ascontiguousarray(view), batch_size=batch_size,
                                                 verbose=0), dtype=np.float64)
        total = probabilities if total is None else total + probabilities
    return total / divisor


def dataset_metrics(probabilities: np.ndarray, dataset: EvaluationSet, classes: Sequence[str],
                    groups: np.ndarray) -> dict[str, Any]:
    """Every metric of one dataset from its predicted probabilities.

    Args:
        probabilities: (n, classes) raw model probabilities (not restricted to the dataset's
            classes: the masked argmax is taken here).
        dataset: The evaluated set.
        classes: Class names, one per model output.
        groups: Class-to-group mapping (see :func:`group_index`).

    Returns:
        The :func:`classification_report` plus ``group3_accuracy`` and, for masked datasets,
        ``accuracy_unmasked`` (plain argmax over all classes).
    """
    label = np.asarray(dataset.label, dtype=int)
    if dataset.mask_predictions:
        predicted = masked_argmax(probabilities, dataset.allowed)
    else:
        predicted = np.argmax(probabilities, axis=1)
    report = classification_report(label, predicted, classes, present=dataset.allowed)
    report["group3_accuracy"] = group_accuracy(label, predicted, groups)
    if dataset.mask_predictions:
        report["accuracy_unmasked"] = float(np.mean(np.argmax(probabilities, axis=1) == label))
    return report


@dataclass(frozen=True)
class DatasetEvaluation:
    """What the evaluate stage reports about one dataset.

    Attributes:
        dataset: The evaluated set.
        probabilities: Plain (no TTA) probabilities, restricted to the dataset's classes for
            masked sets.
        predicted: Predicted class per image (argmax of ``probabilities``).
        summary: Headline figures (``reports/metrics.json``): n, accuracy, macro-F1, 3-group
            accuracy, ECE, ``accuracy_unmasked`` for masked sets and ``tta_<mode>`` figures.
        detail: The full per-dataset report: description, plain classification report,
            calibration bins, confusion counts and the TTA report.
    """

    dataset: EvaluationSet
    probabilities: np.ndarray
    predicted: np.ndarray
    summary: dict[str, Any]
    detail: dict[str, Any]


def evaluate_dataset(model: Any, dataset: EvaluationSet, classes: Sequence[str], groups: np.ndarray, *,
                     tta: str = "none", batch_size: int = 256, bins: int = 15) -> DatasetEvaluation:
    """Score ``model`` on one dataset: plain figures, and test-time-augmented ones beside them.

    Args:
        model: A Keras model taking float32 pixels 0..255 of shape (n, size, size, 1).
        dataset: The set to evaluate.
        classes: Class names, one per model output.
        groups: Class-to-group mapping (see :func:`group_index`).
        tta: Test-time augmentation reported beside the plain figures (see :data:`TTA_MODES`).
        batch_size: Prediction batch size.
        bins: Calibration bins.
    """
    logger.info("evaluating %s: %s images", dataset.name, f"{len(dataset.label):,}")
    raw = predict_probabilities(model, dataset.images, batch_size=batch_size)
    # The metrics get the raw probabilities: restricted ones would make the "unmasked" argmax
    # the masked one (CK+'s accuracy_unmasked would always equal its accuracy).
    report = dataset_metrics(raw, dataset, classes, groups)
    probabilities = restrict(raw, dataset.allowed) if dataset.mask_predictions else raw
    predicted = np.argmax(probabilities, axis=1)
    calibrated = calibration(probabilities, dataset.label, bins)
    summary = {key: report[key] for key in ("n", "accuracy", "macro_f1", "group3_accuracy")}
    summary["ece"] = calibrated["ece"]
    if "accuracy_unmasked" in report:
        summary["accuracy_unmasked"] = report["accuracy_unmasked"]
    detail = {"description": dataset.description, "plain": report, "calibration": calibrated,
              "confusion": confusion(dataset.label, predicted, len(classes)).tolist()}
    if tta != "none":
        augmented = predict_probabilities(model, dataset.images, tta=tta, batch_size=batch_size, plain=raw)
        tta_report = dataset_metrics(augmented, dataset, classes, groups)
        summary[f"tta_{tta}"] = {key: tta_report[key] for key in ("accuracy", "macro_f1", "group3_accuracy")}
        detail[f"tta_{tta}"] = tta_report
    extra = f", {tta} TTA accuracy {summary[f'tta_{tta}']['accuracy']:.4f}" if tta != "none" else ""
    logger.info("%s: accuracy %.4f, macro-F1 %.4f, 3-group %.4f, ECE %.3f%s", dataset.name,
                summary["accuracy"], summary["macro_f1"], summary["group3_accuracy"], summary["ece"], extra)
    return DatasetEvaluation(dataset, probabilities, predicted, summary, detail)


def last_feature_map_layer(model: Any) -> str:
    """Name of the last layer with a spatial (4-D) output: where Grad-CAM looks.

    Raises:
        ValueError: The model has no such layer.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and (shape[1] or 0) > 1 and layer.name != "pixels":
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a spatial output for Grad-CAM")


def _class_score_gradient(head: Any, features: np.ndarray, class_index: np.ndarray) -> np.ndarray:
    """Gradient of each row's class probability with respect to the feature maps, per backend."""
    import keras

    backend = keras.backend.backend()
    rows = np.arange(len(class_index))
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            probabilities = head(inputs, training=False)
            score = tf.reduce_sum(tf.gather_nd(probabilities, np.stack([rows, class_index], axis=1)))
        gradient = tape.gradient(score, inputs)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(inputs: Any) -> Any:
            return jnp.sum(head(inputs, training=False)[rows, class_index])

        gradient = jax.grad(score)(jnp.asarray(features))
    elif backend == "torch":
        import torch

        inputs = torch.tensor(features, requires_grad=True, device=keras.backend.get_device() or "cpu")
        head(inputs, training=False)[rows, class_index].sum().backward()
        gradient = inputs.grad
    else:
        raise ValueError(f"Grad-CAM does not support the {backend} backend")
    if gradient is None:
        raise ValueError("no gradient flows from the class score to the feature maps")
    return np.asarray(keras.ops.convert_to_numpy(gradient), dtype=np.float32)


def grad_cam(model: Any, images: np.ndarray, class_index: np.ndarray,
             layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (Selvaraju et al. 2017): where the network looks for a class.

    The feature maps of ``layer_name`` are weighted by the spatial mean of the class score's
    gradient, summed over channels, passed through ReLU and resized to the image. Works under
    every Keras backend: the model is split at the feature maps and the head's gradient is taken
    with the backend's own autodiff.

    Args:
        model: A Functional Keras classifier.
        images: (n, size, size) uint8 images.
        class_index: The class to explain, per image.
        layer_name: Layer to explain (default: :func:`last_feature_map_layer`).

    Returns:
        (n, size, size) heatmaps scaled to 0..1 per image.
    """
    import keras

    name = layer_name or last_feature_map_layer(model)
    feature_tensor = model.get_layer(name).output
    body = keras.Model(model.inputs, feature_tensor)
    head = keras.Model(feature_tensor, model.output)
    batch = _as_model_input(images)
    # Mixed-precision models have bfloat16/float16 feature maps: combine them in float32.
    features = np.asarray(keras.ops.convert_to_numpy(body([batch], training=False)), dtype=np.float32)
    gradients = _class_score_gradient(head, features, np.asarray(class_index, dtype=np.int64))
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * features).sum(axis=-1), 0)[..., None]
    cam = keras.ops.convert_to_numpy(keras.ops.image.resize(cam, batch.shape[1:3], interpolation="bilinear"))
    cam = np.asarray(cam, dtype=np.float32)[..., 0]
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)


def _flagged(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of a prepared test split that a data-quality rule of the prepare stage flags."""
    missing = [rule for rule in QUALITY_RULES if f"flag_{rule}" not in arrays]
    if missing:
        raise DataError(f"the prepared test split has no flag_{missing[0]} array; rerun the prepare stage")
    return flagged_by_quality_rules({rule: arrays[f"flag_{rule}"] for rule in QUALITY_RULES})


def evaluation_sets(public_test: Mapping[str, np.ndarray], private_test: Mapping[str, np.ndarray],
                    ckplus: Mapping[str, np.ndarray], jaffe: Mapping[str, np.ndarray],
                    n_classes: int, ferplus: bool) -> list[EvaluationSet]:
    """The test sets the evaluate stage reports, built from the prepared arrays.

    FER2013 figures use the original labels (``label_fer2013``) whatever the training labels;
    with ``ferplus`` the FER+ majority labels of the test splits are reported too (rows without
    a FER+ label are left out). CK+ has no neutral and its contempt has no FER2013 class:
    contempt images are left out and predictions are restricted to the six classes CK+ has.

    Args:
        public_test: Arrays of ``public_test.npz``.
        private_test: Arrays of ``private_test.npz``.
        ckplus: Arrays of ``ckplus.npz``.
        jaffe: Arrays of ``jaffe.npz``.
        n_classes: Number of model classes.
        ferplus: Also report the FER+ labels.

    Returns:
        The sets, PrivateTest (the headline) first.
    """
    every = tuple(range(n_classes))
    clean = ~_flagged(private_test)
    sets = [
        EvaluationSet("private_test", private_test["images"], private_test["label_fer2013"], every,
                      description="FER2013 PrivateTest, original labels (the headline)"),
        EvaluationSet("private_test_clean", private_test["images"][clean],
                      private_test["label_fer2013"][clean], every,
                      description="FER2013 PrivateTest without the rows prepare flagged "
                                  "(duplicates of Training images, non-faces, blank), original labels"),
        EvaluationSet("public_test", public_test["images"], public_test["label_fer2013"], every,
                      description="FER2013 PublicTest (used for model selection), original labels"),
    ]
    if ferplus:
        for name, split in (("private_test", private_test), ("public_test", public_test)):
            rows = split["label_ferplus"] >= 0
            sets.append(EvaluationSet(f"{name}_ferplus", split["images"][rows], split["label_ferplus"][rows],
                                      every, description=f"FER2013 {name}, FER+ majority labels"))
    known = ckplus["label"] < n_classes  # contempt (index 7) has no FER2013 class
    present = tuple(sorted(int(i) for i in np.unique(ckplus["label"][known])))
    sets.append(EvaluationSet("ckplus", ckplus["images"][known], ckplus["label"][known], present,
                              mask_predictions=True,
                              description="CK+48 zero-shot, contempt excluded; argmax over the "
                                          f"{len(present)} classes CK+ has"))
    sets.append(EvaluationSet("jaffe", jaffe["images"], jaffe["label"], every,
                              description="JAFFE zero-shot, faces detected and cropped by prepare"))
    for dataset in sets:
        if len(dataset.label) == 0:
            raise DataError(f"evaluation set {dataset.name} is empty")
    return sets


def sample_per_class(label: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Seeded random rows, up to ``per_class`` of each class present, in class order."""
    rng = np.random.default_rng(seed)
    picked = []
    for klass in np.unique(label):
        rows = np.flatnonzero(label == klass)
        picked.extend(np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)))
    return np.asarray(picked, dtype=int)


# CK+ and JAFFE may not be redistributed: even a label-per-row file of them stays out of git
# (their confusion matrices are in the figures and the per-dataset JSON reports).
NO_LABEL_FILES = ("ckplus", "jaffe")
# Datasets whose Grad-CAM sheet is drawn: the headline and the most different faces.
GRAD_CAM_SETS = ("private_test", "jaffe")


def headline_metrics(outcomes: Mapping[str, DatasetEvaluation], tta: str) -> dict[str, Any]:
    """``reports/metrics.json``: each dataset's summary, and which labels and TTA they use."""
    metrics: dict[str, Any] = {
        "labels": "original FER2013 labels, except *_ferplus (FER+ majority labels)",
        "tta": tta,
    }
    for name, outcome in outcomes.items():
        metrics[name] = outcome.summary
    return metrics


def per_class_metrics(outcomes: Mapping[str, DatasetEvaluation]) -> dict[str, float]:
    """Per-class precision, recall and F1 as flat MLflow metric names (``ckplus.recall.happy``)."""
    return {
        f"{name}.{measure}.{klass}": values[measure]
        for name, outcome in outcomes.items()
        for klass, values in outcome.detail["plain"]["per_class"].items() if values["support"]
        for measure in ("precision", "recall", "f1")
    }


def write_confusion_csv(path: Path, label: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> None:
    """Confusion data for `dvc plots show`: one (actual, predicted) row per image, sorted.

    Sorting keeps only the counts (no image order), so the file is an aggregate of the test
    set, not a copy of its labels.
    """
    pairs = sorted(zip(np.asarray(label).tolist(), np.asarray(predicted).tolist(), strict=True))
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in pairs)


def mistakes_sheet(outcome: DatasetEvaluation, classes: Sequence[str], per_class: int, path: Path) -> None:
    """Gallery of the most confident mistakes, one row per true class (blank cells pad short rows)."""
    from ferops.figures import image_grid

    dataset, probabilities, predicted = outcome.dataset, outcome.probabilities, outcome.predicted
    picks = confident_mistakes(probabilities, dataset.label, predicted, per_class)
    blank = np.full(dataset.images.shape[1:], 255, dtype=np.uint8)
    images, titles = [], []
    for klass, rows in picks.items():
        for row in rows:
            images.append(dataset.images[row])
            confidence = probabilities[row, predicted[row]]
            titles.append(f"{classes[klass]}>{classes[predicted[row]]} {confidence:.2f}")
        images.extend([blank] * (per_class - len(rows)))
        titles.extend([""] * (per_class - len(rows)))
    image_grid(np.asarray(images), titles, path, columns=per_class,
               title=f"{dataset.name}: most confident mistakes per true class (true>predicted confidence)")


def grad_cam_sheet(model: Any, outcome: DatasetEvaluation, classes: Sequence[str], per_class: int,
                   seed: int, path: Path) -> None:
    """Grad-CAM heatmaps of a seeded sample of each class, for the predicted class."""
    from ferops.figures import heatmap_grid

    dataset, predicted = outcome.dataset, outcome.predicted
    rows = sample_per_class(dataset.label, per_class, seed)
    heatmaps = grad_cam(model, dataset.images[rows], predicted[rows])
    titles = [f"{classes[dataset.label[r]]}>{classes[predicted[r]]}" for r in rows]
    heatmap_grid(dataset.images[rows], heatmaps, titles, path, columns=per_class,
                 title=f"Grad-CAM on {dataset.name}: where the model looks for its prediction "
                       "(true>predicted)")


def write_evaluation(outcomes: Mapping[str, DatasetEvaluation], model: Any, classes: Sequence[str],
                     config: EvaluateConfig, seed: int, *, details: Path, plots: Path, figures: Path,
                     galleries: Path) -> None:
    """Write every per-dataset output of the evaluate stage into the given (empty) folders.

    Args:
        outcomes: Dataset name to its evaluation.
        model: The evaluated model (for Grad-CAM).
        classes: Class names, one per model output.
        config: The ``evaluate`` params.
        seed: Seed of the Grad-CAM samples.
        details: Per-dataset JSON reports.
        plots: Confusion CSVs of the FER2013 splits (`dvc plots show`).
        figures: Confusion matrices and the reliability diagram.
        galleries: Figures that show dataset images (mistakes, Grad-CAM).
    """
    from ferops.figures import confusion_matrix_figure, reliability_figure

    for name, outcome in outcomes.items():
        write_json(details / f"{name}.json", outcome.detail)
        if not name.startswith(NO_LABEL_FILES):
            write_confusion_csv(plots / f"confusion_{name}.csv", outcome.dataset.label, outcome.predicted,
                                classes)
        confusion_matrix_figure(
            np.asarray(outcome.detail["confusion"]), classes, figures / f"confusion_{name}.png",
            title=f"{name}: accuracy {outcome.summary['accuracy']:.4f} "
                  f"(n={outcome.summary['n']:,}; rows sum to 1)")
        mistakes_sheet(outcome, classes, config.mistakes_per_class, galleries / f"mistakes_{name}.png")
    reliability_figure({name: outcome.detail["calibration"] for name, outcome in outcomes.items()},
                       figures / "reliability.png", title="Reliability (plain predictions)")
    for name in GRAD_CAM_SETS:
        grad_cam_sheet(model, outcomes[name], classes, config.gradcam_per_class, seed,
                       galleries / f"gradcam_{name}.png")
