"""The test sets, scoring a model on each (masked CK+, TTA beside the plain figures), the evaluate params."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.config import build
from ferops.errors import ParamsError
from ferops.evaluation import (
    DEFAULT_GROUPS,
    EvaluateConfig,
    EvaluationSet,
    dataset_metrics,
    evaluate_dataset,
    evaluation_sets,
)
from ferops.inference import FER2013_CLASSES
from ferops.metrics import group_index

CLASSES = list(FER2013_CLASSES)


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


def test_ferplus_benchmark_set_moves_a_7_class_model_into_ferplus_classes_and_counts_contempt_wrong():
    from ferops.evaluation import ferplus_test_set
    from ferops.ferplus import VOTE_COLUMNS

    def votes(**counts):
        return [counts.get(name, 0) for name in VOTE_COLUMNS]

    private = {"images": np.zeros((3, 48, 48), np.uint8),
               "votes": np.array([votes(contempt=7, anger=3), votes(happiness=8, neutral=2), votes(NF=10)],
                                 np.uint8)}
    dataset = ferplus_test_set(private, CLASSES)
    assert dataset.classes[7] == "contempt" and dataset.label.tolist() == [7, 1]  # the NF row is left out
    assert "no contempt output" in dataset.description
    # The model answers angry for the contempt face and happy for the happy one.
    scores = np.array([[0.8, 0, 0, 0.1, 0, 0, 0.1], [0.1, 0, 0, 0.8, 0, 0, 0.1]])
    groups = group_index(CLASSES, DEFAULT_GROUPS)
    outcome = evaluate_dataset(FixedScores(scores, scores), dataset, CLASSES, groups)
    assert outcome.summary["n"] == 2 and outcome.summary["accuracy"] == pytest.approx(0.5)
    matrix = np.asarray(outcome.detail["confusion"])
    assert matrix.shape == (8, 8) and matrix[7, 4] == 1 and matrix[1, 1] == 1  # contempt > anger
    assert outcome.detail["plain"]["per_class"]["contempt"]["recall"] == 0.0
    assert outcome.summary["group3_accuracy"] == pytest.approx(0.5)  # contempt has no group to share
