"""Raise rare classes of the Training split (imbalanced-learn), keeping every per-image field.

Random oversampling resamples *row indices*, so soft labels, FER+ votes and row numbers travel
with each copied image. SMOTE synthesises new images by interpolating pixels between
neighbours of the same class; those rows get a one-hot soft label and ``row_index`` -1.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ferops.config import Section
from ferops.errors import ParamsError
from ferops.fer2013 import class_counts

logger = logging.getLogger(__name__)

METHODS = ("random", "smote", "none")


class OversampleConfig(Section):
    """The ``oversample`` params section.

    Attributes:
        method: ``random`` (copies, imbalanced-learn RandomOverSampler), ``smote`` or ``none``.
        classes: Class names that may be raised.
        target_ratio: Each listed class is raised to this multiple of the median class count.
        smote_k_neighbors: Neighbours SMOTE interpolates between.
    """

    method: Literal["random", "smote", "none"] = "random"
    classes: tuple[str, ...] = ()
    target_ratio: float = Field(0.5, gt=0, allow_inf_nan=False)
    smote_k_neighbors: int = Field(5, gt=0)


def sampling_targets(label: np.ndarray, raise_classes: Sequence[int], target_ratio: float
                     ) -> dict[int, int]:
    """Decide how many images each listed class should have after oversampling.

    The target is ``target_ratio`` × the median per-class count (over the classes present).
    Classes already at or above their target are left alone.

    Args:
        label: int class index per Training image (negative = no label, ignored).
        raise_classes: Class indices that may be oversampled.
        target_ratio: Multiple of the median class count.

    Returns:
        Class index to target count, for the classes that need raising.
    """
    if not target_ratio > 0:
        raise ParamsError(f"oversample.target_ratio: expected a positive number, got {target_ratio}")
    labelled = label[label >= 0]
    counts = np.bincount(labelled)
    present = counts[counts > 0]
    target = int(round(target_ratio * float(np.median(present)))) if len(present) else 0
    targets = {}
    for index in raise_classes:
        have = int(counts[index]) if index < len(counts) else 0
        if have == 0:
            raise ParamsError(f"oversample.classes: class {index} has no Training images to copy")
        if have < target:
            targets[int(index)] = target
    return targets


def oversample(
    arrays: Mapping[str, np.ndarray],
    *,
    classes: Sequence[str],
    method: str = "random",
    raise_classes: Sequence[str] = ("disgust",),
    target_ratio: float = 0.5,
    seed: int = 0,
    smote_k_neighbors: int = 5,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Oversample the listed classes of a Training split.

    Args:
        arrays: The split's arrays (``images``, ``label`` and any per-image fields; arrays whose
            first dimension is not the number of images, such as ``classes``, pass through).
        classes: Class names in label order.
        method: ``random`` (copy images), ``smote`` (synthesise images) or ``none``.
        raise_classes: Names of the classes to raise.
        target_ratio: Target size as a multiple of the median class count.
        seed: Random seed (same seed and input give the same output).
        smote_k_neighbors: Neighbours SMOTE interpolates between.

    Returns:
        The resampled arrays (originals first, in their order, then the added rows; a bool
        ``synthetic`` field marks SMOTE rows) and a JSON-ready report.
    """
    if method not in METHODS:
        raise ParamsError(f"oversample.method: {method!r} is not one of {', '.join(METHODS)}")
    unknown = [name for name in raise_classes if name not in classes]
    if unknown:
        raise ParamsError(f"oversample.classes: unknown class(es) {unknown}; known: {list(classes)}")
    label = np.asarray(arrays["label"])
    count = len(label)
    per_image = {key: value for key, value in arrays.items() if len(value) == count and key != "classes"}
    passthrough = {key: value for key, value in arrays.items() if key not in per_image}
    if (label < 0).any():
        raise ParamsError("oversample: the Training split has unlabelled rows (label -1)")

    targets = {} if method == "none" else sampling_targets(
        label, [classes.index(name) for name in raise_classes], target_ratio)
    out = dict(per_image)
    out["synthetic"] = np.zeros(count, dtype=bool)
    if targets and method == "random":
        from imblearn.over_sampling import RandomOverSampler

        sampler = RandomOverSampler(sampling_strategy=targets, random_state=seed)
        # Resample row indices, not pixels: every per-image field then follows its image.
        indices, _ = sampler.fit_resample(np.arange(count).reshape(-1, 1), label)
        indices = indices.ravel()
        out = {key: value[indices] for key, value in out.items()}
    elif targets and method == "smote":
        from imblearn.over_sampling import SMOTE

        images = np.asarray(arrays["images"])
        sampler = SMOTE(sampling_strategy=targets, k_neighbors=smote_k_neighbors, random_state=seed)
        flat, new_label = sampler.fit_resample(images.reshape(count, -1).astype(np.float32), label)
        added = len(new_label) - count
        new_images = np.clip(np.rint(flat[count:]), 0, 255).astype(np.uint8)
        out = _append_synthetic(out, new_images.reshape((added, *images.shape[1:])),
                                new_label[count:], len(classes))
    report = {
        "method": method,
        "seed": seed,
        "targets": {classes[index]: target for index, target in sorted(targets.items())},
        "rows_before": count,
        "rows_after": int(len(out["label"])),
        "class_counts_before": class_counts(label, classes),
        "class_counts_after": class_counts(out["label"], classes),
    }
    logger.info("oversample (%s): %d -> %d Training images; %s", method, count,
                report["rows_after"], report["targets"] or "no class below its target")
    out.update(passthrough)
    return out, report


def _append_synthetic(arrays: dict[str, np.ndarray], images: np.ndarray, label: np.ndarray,
                      n_classes: int) -> dict[str, np.ndarray]:
    """Append SMOTE rows; fields other than images/labels get neutral values (documented)."""
    added = len(label)
    out = {}
    for key, value in arrays.items():
        if key == "images":
            extra = images
        elif key.startswith("label"):
            extra = label.astype(value.dtype)
        elif key == "soft_label":
            extra = np.eye(n_classes, dtype=value.dtype)[label]
        elif key == "synthetic":
            extra = np.ones(added, dtype=bool)
        elif key == "row_index":
            extra = np.full(added, -1, dtype=value.dtype)
        else:
            extra = np.zeros((added, *value.shape[1:]), dtype=value.dtype)
        out[key] = np.concatenate([value, extra])
    return out
