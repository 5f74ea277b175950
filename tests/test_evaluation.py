"""Metric functions against hand-computed cases; Grad-CAM and test-time views on real faces."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.config import build
from ferops.errors import DataError, ParamsError
from ferops.evaluation import (
    DEFAULT_GROUPS,
    EvaluateConfig,
    EvaluationSet,
    calibration,
    classification_report,
    confident_mistakes,
    confusion,
    dataset_metrics,
    evaluate_dataset,
    evaluation_sets,
    group_accuracy,
    group_index,
    masked_argmax,
    predict_probabilities,
    restrict,
    ten_crops,
)

CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


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


def test_dataset_metrics_masks_ckplus_and_reports_the_unmasked_figure():
    probabilities = np.array([[0.1, 0, 0, 0.3, 0, 0, 0.6], [0.6, 0, 0, 0.3, 0, 0, 0.1]])
    dataset = EvaluationSet("ckplus", np.zeros((2, 48, 48), np.uint8), np.array([3, 0]), tuple(range(6)),
                            mask_predictions=True)
    report = dataset_metrics(probabilities, dataset, CLASSES, group_index(CLASSES, DEFAULT_GROUPS))
    assert report["accuracy"] == 1.0          # masked: happy, angry
    assert report["accuracy_unmasked"] == 0.5  # plain argmax says neutral for the first


def _split(labels: list[int], flags: list[bool]) -> dict[str, np.ndarray]:
    n = len(labels)
    return {"images": np.zeros((n, 48, 48), np.uint8), "label_fer2013": np.array(labels),
            "label_ferplus": np.array([-1] + labels[1:]), "flag_leakage": np.array(flags),
            "flag_non_faces": np.zeros(n, bool), "flag_blank": np.zeros(n, bool),
            "flag_conflicting_duplicates": np.zeros(n, bool)}


def test_evaluation_sets_leave_out_contempt_flagged_rows_and_unlabelled_ferplus_rows():
    public, private = _split([0, 1, 2], [False] * 3), _split([3, 4, 5, 6], [True, False, False, False])
    ckplus = {"images": np.zeros((4, 48, 48), np.uint8), "label": np.array([0, 7, 3, 5])}
    jaffe = {"images": np.zeros((2, 48, 48), np.uint8), "label": np.array([6, 1])}
    sets = {s.name: s for s in evaluation_sets(public, private, ckplus, jaffe, 7, ferplus=True)}
    assert list(sets)[0] == "private_test"
    assert len(sets["private_test"].label) == 4 and len(sets["private_test_clean"].label) == 3
    assert sets["ckplus"].label.tolist() == [0, 3, 5] and sets["ckplus"].allowed == (0, 3, 5)
    assert sets["ckplus"].mask_predictions and not sets["jaffe"].mask_predictions
    assert len(sets["private_test_ferplus"].label) == 3  # the first row has no FER+ label
    assert "public_test_ferplus" not in {s.name for s in evaluation_sets(public, private, ckplus, jaffe, 7,
                                                                         ferplus=False)}


class LeftBrightness:
    """A predictor whose 'probability' of class 0 is the brightness of the image's left half."""

    def predict(self, batch, batch_size, verbose):
        left = batch[:, :, :24].mean(axis=(1, 2, 3)) / 255
        return np.stack([left, 1 - left], axis=1)


def test_ten_crops_are_corners_centre_and_mirrors():
    images = np.tile(np.arange(48, dtype=np.uint8) * 5, (3, 48, 1))  # brighter to the right
    views = ten_crops(images)
    assert len(views) == 10 and all(v.shape == (3, 48, 48, 1) for v in views)
    for even in range(0, 10, 2):
        assert np.array_equal(views[even + 1], views[even][:, :, ::-1])
    assert views[0].mean() < views[2].mean()  # top-left crop is darker than top-right


def test_flip_tta_averages_the_image_and_its_mirror():
    images = np.tile(np.arange(48, dtype=np.uint8) * 5, (2, 48, 1))
    left, right = images[:, :, :24].mean() / 255, images[:, :, 24:].mean() / 255
    plain = predict_probabilities(LeftBrightness(), images)
    flipped = predict_probabilities(LeftBrightness(), images, tta="flip")
    assert plain[:, 0] == pytest.approx([left, left])
    assert flipped[:, 0] == pytest.approx([(left + right) / 2] * 2)
    # Reusing the plain view's probabilities gives the same average without predicting it again.
    reused = predict_probabilities(LeftBrightness(), images, tta="flip", plain=plain)
    assert reused == pytest.approx(flipped)
    with pytest.raises(ValueError, match="1 rows for 2 images"):
        predict_probabilities(LeftBrightness(), images, tta="flip", plain=plain[:1])
    with pytest.raises(ParamsError, match="evaluate.tta"):
        predict_probabilities(LeftBrightness(), images, tta="mirror")


class FixedScores:
    """A predictor that returns given scores for the plain view and for the mirrored view."""

    def __init__(self, plain, mirrored):
        self.plain, self.mirrored = np.asarray(plain), np.asarray(mirrored)

    def predict(self, batch, batch_size, verbose):
        # The test images are dark on the left (column 0 = 0), so the mirror is bright there.
        return self.mirrored if batch[0, 0, 0, 0] > 0 else self.plain


def test_evaluate_dataset_reports_the_raw_argmax_as_unmasked_also_under_tta():
    # Regression: the scores were restricted (neutral zeroed) before the "unmasked" argmax, so
    # ckplus.accuracy_unmasked always equalled ckplus.accuracy.
    images = np.tile(np.arange(48, dtype=np.uint8), (2, 48, 1))
    neutral_first = [[0.1, 0, 0, 0.3, 0, 0, 0.6], [0.6, 0, 0, 0.3, 0, 0, 0.1]]
    dataset = EvaluationSet("ckplus", images, np.array([3, 0]), tuple(range(6)), mask_predictions=True)
    outcome = evaluate_dataset(FixedScores(neutral_first, neutral_first), dataset, CLASSES,
                               group_index(CLASSES, DEFAULT_GROUPS), tta="flip")
    assert outcome.summary["accuracy"] == 1.0
    assert outcome.summary["accuracy_unmasked"] == 0.5
    assert outcome.detail["tta_flip"]["accuracy_unmasked"] == 0.5
    assert outcome.predicted.tolist() == [3, 0]
    assert outcome.probabilities[:, 6].tolist() == [0, 0]  # calibration uses the restricted scores


def test_evaluate_params_are_checked():
    with pytest.raises(ParamsError, match="evaluate.tta: Input should be 'none', 'flip' or 'tencrop'"):
        build(EvaluateConfig, {"tta": "flipp"}, "evaluate")
    with pytest.raises(ParamsError, match="evaluate.batchsize: unknown key"):
        build(EvaluateConfig, {"batchsize": 3}, "evaluate")
    assert build(EvaluateConfig, {}, "evaluate").groups["neutral"] == ("neutral",)
