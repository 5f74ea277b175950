"""Evaluation: the ``evaluate`` settings, the test sets, and scoring a model on each of them.

The pieces live in their own modules: the metrics (:mod:`ferops.metrics`), test-time augmentation
(:mod:`ferops.tta`), Grad-CAM (:mod:`ferops.grad_cam`) and the writing of reports and galleries
(:mod:`ferops.evaluation_reports`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ferops import ferplus
from ferops.cleaning import QUALITY_RULES, flagged_by_quality_rules
from ferops.config import Section
from ferops.errors import DataError
from ferops.inference import FER2013_CLASSES
from ferops.metrics import (
    calibration,
    classification_report,
    confusion,
    group_accuracy,
    masked_argmax,
    restrict,
)
from ferops.tta import predict_probabilities

logger = logging.getLogger(__name__)

# The coarse grouping often reported beside 7-class accuracy: valence of the expression.
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "positive": ("happy", "surprise"),
    "neutral": ("neutral",),
    "negative": ("angry", "disgust", "fear", "sad"),
}


class EvaluateConfig(Section):
    """The ``evaluate`` params section.

    Attributes:
        tta: Test-time augmentation reported beside the plain figures (see :data:`ferops.tta.TTA_MODES`).
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
        subject: The person in each image, where the set records it (CK+, JAFFE): paired
            comparisons bootstrap over people there (:mod:`ferops.paired`).
        classes: The set's own class names when they are not the model's (FER+'s eight), with
            ``output_map``; ``label`` and ``allowed`` then index these.
        output_map: For each model output, the index of its class among ``classes``.
    """

    name: str
    images: np.ndarray
    label: np.ndarray
    allowed: tuple[int, ...]
    mask_predictions: bool = False
    description: str = ""
    subject: np.ndarray | None = None
    classes: tuple[str, ...] | None = None
    output_map: np.ndarray | None = None

    def in_set_classes(self, probabilities: np.ndarray) -> np.ndarray:
        """The model's probabilities moved into the set's classes (a class it lacks gets 0)."""
        if self.output_map is None:
            return probabilities
        moved = np.zeros((len(probabilities), len(self.classes)), dtype=probabilities.dtype)
        moved[:, self.output_map] = probabilities
        return moved

    def set_groups(self, groups: np.ndarray) -> np.ndarray:
        """The 3-group mapping in the set's classes: a class the model lacks is a group of its own."""
        if self.output_map is None:
            return groups
        moved = np.full(len(self.classes), -1, dtype=np.asarray(groups).dtype)
        moved[self.output_map] = groups
        return moved


def dataset_metrics(probabilities: np.ndarray, dataset: EvaluationSet, classes: Sequence[str],
                    groups: np.ndarray) -> dict[str, Any]:
    """Every metric of one dataset from its predicted probabilities.

    Args:
        probabilities: (n, classes) raw model probabilities (not restricted to the dataset's
            classes: the masked argmax is taken here).
        dataset: The evaluated set.
        classes: Class names, one per model output.
        groups: Class-to-group mapping (see :func:`ferops.metrics.group_index`).

    Returns:
        The :func:`ferops.metrics.classification_report` plus ``group3_accuracy`` and, for masked datasets,
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
        groups: Class-to-group mapping (see :func:`ferops.metrics.group_index`).
        tta: Test-time augmentation reported beside the plain figures (see :data:`ferops.tta.TTA_MODES`).
        batch_size: Prediction batch size.
        bins: Calibration bins.
    """
    logger.info("evaluating %s: %s images", dataset.name, f"{len(dataset.label):,}")
    model_raw = predict_probabilities(model, dataset.images, batch_size=batch_size)
    raw = dataset.in_set_classes(model_raw)
    classes, groups = dataset.classes or classes, dataset.set_groups(groups)
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
        augmented = dataset.in_set_classes(predict_probabilities(model, dataset.images, tta=tta,
                                                                 batch_size=batch_size, plain=model_raw))
        tta_report = dataset_metrics(augmented, dataset, classes, groups)
        summary[f"tta_{tta}"] = {key: tta_report[key] for key in ("accuracy", "macro_f1", "group3_accuracy")}
        detail[f"tta_{tta}"] = tta_report
    extra = f", {tta} TTA accuracy {summary[f'tta_{tta}']['accuracy']:.4f}" if tta != "none" else ""
    logger.info("%s: accuracy %.4f, macro-F1 %.4f, 3-group %.4f, ECE %.3f%s", dataset.name,
                summary["accuracy"], summary["macro_f1"], summary["group3_accuracy"], summary["ece"], extra)
    return DatasetEvaluation(dataset, probabilities, predicted, summary, detail)


def _flagged(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows of a prepared test split that a data-quality rule of the prepare stage flags."""
    missing = [rule for rule in QUALITY_RULES if f"flag_{rule}" not in arrays]
    if missing:
        raise DataError(f"the prepared test split has no flag_{missing[0]} array; rerun the prepare stage")
    return flagged_by_quality_rules({rule: arrays[f"flag_{rule}"] for rule in QUALITY_RULES})


def evaluation_sets(public_test: Mapping[str, np.ndarray], private_test: Mapping[str, np.ndarray],
                    ckplus: Mapping[str, np.ndarray], jaffe: Mapping[str, np.ndarray],
                    n_classes: int, ferplus: bool, classes: Sequence[str] | None = None
                    ) -> list[EvaluationSet]:
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
        classes: The model's class names (default: FER2013's seven), for the FER+ benchmark set.

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
                                          f"{len(present)} classes CK+ has",
                              subject=ckplus["subject"][known] if "subject" in ckplus else None))
    sets.append(EvaluationSet("jaffe", jaffe["images"], jaffe["label"], every,
                              description="JAFFE zero-shot, faces detected and cropped by prepare",
                              subject=jaffe.get("subject")))
    if "votes" in private_test:
        sets.append(ferplus_test_set(private_test, classes or FER2013_CLASSES[:n_classes]))
    for dataset in sets:
        if len(dataset.label) == 0:
            raise DataError(f"evaluation set {dataset.name} is empty")
    return sets


FERPLUS_TEST = "ferplus_test"


def ferplus_test_set(private_test: Mapping[str, np.ndarray], classes: Sequence[str]) -> EvaluationSet:
    """The FER+ benchmark's test set: PrivateTest under the FER+ protocol, eight classes.

    Labels by :func:`ferplus.protocol_labels` from the split's ``votes`` (3,153 of 3,589 images
    keep one), scored by argmax over the eight FER+ classes. A model without a contempt output
    cannot answer contempt: those images count as wrong, as the published protocol has it.
    """
    label = ferplus.protocol_labels(private_test["votes"])
    rows = label >= 0
    mapping = ferplus.output_map(tuple(classes))
    lacking = [name for index, name in enumerate(ferplus.FERPLUS_CLASSES) if index not in mapping]
    note = (f"; the model has no {', '.join(lacking)} output: those images count as wrong" if lacking else "")
    return EvaluationSet(FERPLUS_TEST, private_test["images"][rows], label[rows],
                         tuple(range(len(ferplus.FERPLUS_CLASSES))),
                         description="FER+ benchmark: PrivateTest, FER+ protocol labels (single votes "
                                     "dropped, > 50 % of the rest; unknown, not-a-face and no-majority "
                                     f"images left out), argmax over FER+'s 8 classes{note}",
                         classes=tuple(ferplus.FERPLUS_CLASSES), output_map=mapping)

