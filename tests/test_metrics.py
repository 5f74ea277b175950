"""Metric functions against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.errors import DataError, ParamsError
from ferops.evaluation import (
    DEFAULT_GROUPS,
)
from ferops.inference import FER2013_CLASSES
from ferops.metrics import (
    calibration,
    classification_report,
    confident_mistakes,
    confusion,
    group_accuracy,
    group_index,
    masked_argmax,
    restrict,
)

CLASSES = list(FER2013_CLASSES)


def test_restrict_zeroes_missing_classes_and_renormalises():
    probabilities = np.array([[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.4], [0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]])
    kept = restrict(probabilities, range(6))
    assert kept[:, 6].tolist() == [0.0, 0.0]
    assert kept.sum(axis=1) == pytest.approx([1.0, 1.0])
    assert kept[0, :6] == pytest.approx([1 / 6] * 6) and kept[1, 0] == pytest.approx(1.0)


def test_masked_argmax_ignores_classes_the_dataset_lacks():
    # Row 0: neutral (6) is the plain argmax, but CK+ has no neutral -> best allowed is happy (3).
    probabilities = np.array([[0.1, 0.0, 0.0, 0.3, 0.0, 0.0, 0.6],
                              [0.5, 0.1, 0.0, 0.1, 0.0, 0.2, 0.1]])
    assert masked_argmax(probabilities, range(6)).tolist() == [3, 0]
    assert masked_argmax(probabilities, [5, 6]).tolist() == [6, 5]


def test_three_group_accuracy_counts_confusions_within_a_group_as_right():
    mapping = group_index(CLASSES, DEFAULT_GROUPS)
    # positive = {happy, surprise} -> 0, neutral -> 1, negative = {angry, disgust, fear, sad} -> 2
    assert mapping.tolist() == [2, 2, 2, 0, 2, 0, 1]
    y_true = np.array([2, 3, 6, 0])      # fear, happy, neutral, angry
    y_pred = np.array([4, 5, 3, 6])      # sad (ok), surprise (ok), happy (wrong), neutral (wrong)
    assert group_accuracy(y_true, y_pred, mapping) == pytest.approx(0.5)


def test_groups_must_cover_every_class_once():
    with pytest.raises(ParamsError, match="classes in no group: neutral"):
        group_index(CLASSES, {"positive": ["happy", "surprise"],
                              "negative": ["angry", "disgust", "fear", "sad"]})
    with pytest.raises(ParamsError, match="'sad' is in more than one group"):
        group_index(CLASSES, {**DEFAULT_GROUPS, "neutral": ["neutral", "sad"]})
    with pytest.raises(ParamsError, match="'calm' is not a class"):
        group_index(CLASSES, {**DEFAULT_GROUPS, "neutral": ["neutral", "calm"]})


def test_classification_report_matches_hand_computation():
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    report = classification_report(y_true, y_pred, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    # a: precision 1/2, recall 1/2; b: precision 2/3, recall 1; c: 0, 0.
    expected = {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["per_class"]["a"] == pytest.approx(expected)
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # Averaging only over the classes a dataset has (c absent from the average):
    partial = classification_report(y_true, y_pred, ["a", "b", "c"], present=[0, 1])
    assert partial["macro_f1"] == pytest.approx(0.65)
    with pytest.raises(DataError, match="empty"):
        classification_report(np.array([], int), np.array([], int), ["a"])


def test_confusion_counts_rows_true_columns_predicted():
    matrix = confusion(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_expected_calibration_error_by_hand():
    # Two samples at confidence 0.9 (one right), two at 0.6 (both right), 2 bins [0, .5], (.5, 1].
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y_true = np.array([0, 0, 0, 1])
    result = calibration(probabilities, y_true, bins=2)
    # One bin holds all four: mean confidence 0.75, accuracy 3/4 -> ECE 0.
    assert result["ece"] == pytest.approx(0.0)
    result = calibration(probabilities, y_true, bins=10)
    # bin (0.8, 0.9]: conf 0.9, acc 0.5 (2 samples); bin (0.5, 0.6]: conf 0.6, acc 1.0 (2 samples).
    assert result["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    counts = [b["count"] for b in result["bins"]]
    assert counts[8] == 2 and counts[5] == 2 and sum(counts) == 4


def test_confident_mistakes_are_sorted_by_confidence():
    probabilities = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.9, 0.1], [0.7, 0.3]])
    y_true = np.array([0, 0, 0, 1, 1])
    y_pred = probabilities.argmax(axis=1)
    picked = confident_mistakes(probabilities, y_true, y_pred, per_class=2)
    assert picked[0].tolist() == [2, 0]  # wrong with 0.9, then 0.8
    assert picked[1].tolist() == [3, 4]
