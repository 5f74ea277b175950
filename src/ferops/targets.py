"""Training targets and the rows they are built from: one-hot labels, FER+ votes, blends.

Pure NumPy functions over the arrays of the prepare stage (``label``, ``soft_label``): which
rows train, what each row's target distribution is, and how classes are weighted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from ferops.errors import DataError

logger = logging.getLogger(__name__)


def subsample(arrays: Mapping[str, np.ndarray], limit: int | None, seed: int) -> dict[str, np.ndarray]:
    """Keep a seeded, class-stratified random subset of ``limit`` images (None: keep all)."""
    count = len(arrays["label"])
    if limit is None or limit >= count:
        return dict(arrays)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(count), train_size=limit, random_state=seed,
                               stratify=arrays["label"])
    return _rows(arrays, np.sort(keep))


def _rows(arrays: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The ``keep`` rows (indices or a mask) of every per-image array; other entries as they are."""
    count = len(arrays["label"])
    return {key: (value[keep] if len(value) == count else value) for key, value in arrays.items()}


def match_prior(distributions: np.ndarray, counts: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Rescale per-image class distributions so that their class totals approach ``counts``.

    Alternately scales each class (column) to its wanted total and renormalises each image
    (row) to sum to 1 (iterative proportional fitting). Every scaling multiplies a whole class
    column by one factor, so the odds of one class against another keep their order across
    images (and a class an image had no mass on stays at 0 for it) while the split as a whole
    gets the wanted class balance. An image's own ranking of its classes may change.

    Args:
        distributions: (images, classes) non-negative rows summing to 1.
        counts: Wanted total per class (for example the one-hot label counts of the same images).
        iterations: Fitting rounds; a few are enough for the totals to agree to within 1 %.

    Returns:
        float32 rows summing to 1; a class with no mass at all stays at 0.
    """
    fitted = np.asarray(distributions, dtype=np.float64).copy()
    wanted = np.asarray(counts, dtype=np.float64)
    for _ in range(iterations):
        totals = fitted.sum(axis=0)
        fitted *= np.divide(wanted, totals, out=np.ones_like(totals), where=totals > 0)
        rows = fitted.sum(axis=1, keepdims=True)
        fitted = np.divide(fitted, rows, out=np.zeros_like(fitted), where=rows > 0)
    return fitted.astype(np.float32)


def targets_for(arrays: Mapping[str, np.ndarray], target: str, n_classes: int, where: str,
                blend_alpha: float = 0.5, blend_match_prior: bool = False) -> np.ndarray:
    """Training targets, float32, one row per image.

    Args:
        arrays: A split with ``label`` (and ``soft_label``, the FER+ vote distributions).
        target: ``hard`` (one-hot labels), ``soft`` (FER+ vote distributions) or ``blend``
            (``blend_alpha`` x FER+ distribution + (1 - ``blend_alpha``) x one-hot label; images
            without FER+ votes keep their one-hot label).
        n_classes: Number of classes.
        where: Names the split in errors.
        blend_alpha: The FER+ share of a ``blend`` target.
        blend_match_prior: Before blending, rescale the vote distributions of the voted images
            so that their class totals match those images' label counts (:func:`match_prior`).
    """
    label = np.asarray(arrays["label"])
    if (label < 0).any():
        raise DataError(f"{where}: {(label < 0).sum()} images have no label (-1)")
    one_hot = np.eye(n_classes, dtype=np.float32)[label]
    if target == "blend":
        if "soft_label" not in arrays:
            raise DataError(f"{where}: no FER+ vote distributions (soft_label); train.target=blend "
                            "needs the arrays of the prepare stage")
        soft = np.asarray(arrays["soft_label"], dtype=np.float32)
        voted = (soft.sum(axis=1) > 0)[:, None]
        if blend_match_prior and voted.any():
            rows = voted[:, 0]
            soft[rows] = match_prior(soft[rows], one_hot[rows].sum(axis=0))
        blended = blend_alpha * soft + (1 - blend_alpha) * one_hot
        return np.where(voted, blended, one_hot).astype(np.float32)
    if target == "soft":
        soft = np.asarray(arrays["soft_label"], dtype=np.float32)
        empty = soft.sum(axis=1) <= 0
        if empty.any():
            raise DataError(f"{where}: {empty.sum()} images have no FER+ vote distribution; "
                            "train.target=soft needs prepare.labels=ferplus")
        return soft
    return one_hot


def labelled_only(arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Drop the images without a label (-1: no FER+ majority), saying how many.

    With ``prepare.labels: ferplus`` and ``prepare.clean_test: false`` PublicTest keeps the rows
    whose FER+ votes have no majority; they cannot be scored, so validation skips them.
    """
    label = np.asarray(arrays["label"])
    keep = label >= 0
    if keep.all():
        return dict(arrays)
    if not keep.any():
        raise DataError(f"{where}: none of the {len(label)} images has a label")
    logger.warning("%s: %d of %d images have no label (no FER+ majority); validating on the other %d",
                   where, (~keep).sum(), len(label), keep.sum())
    return _rows(arrays, keep)


def balanced_class_weight(label: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency class weights (scikit-learn's "balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=label)
    return {index: float(weight) for index, weight in enumerate(weights)}
