"""Paired comparisons of two models on the same test images, with intervals that know the noise.

Two models scored on one test set differ image by image; what their accuracies' difference is
worth depends on how many images only one of them gets right, and on whether the images are
independent draws. JAFFE is 10 women with about 21 photos each, CK+ has several frames per
sequence of each person: a bootstrap over images would understate the noise there, so the
interval resamples whole people (subjects) when the test set has them, and images otherwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ferops.errors import DataError


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of a new model minus an old one's on the same images, in points.

    Attributes:
        difference: Mean difference (new - old) in percentage points.
        low: Lower end of the interval, in points.
        high: Upper end of the interval, in points.
        confidence: The interval's coverage (e.g. 0.95).
        n: Images compared.
        units: What the bootstrap resampled: ``subjects`` (people) or ``images``.
        n_units: How many of them.
        only_new: Images only the new model gets right.
        only_old: Images only the old model gets right.
        p_value: Exact McNemar test of the discordant images (two-sided binomial).
    """

    difference: float
    low: float
    high: float
    confidence: float
    n: int
    units: str
    n_units: int
    only_new: int
    only_old: int
    p_value: float

    def worse_beyond(self, allowed_drop: float) -> bool:
        """Whether the new model is worse by more than ``allowed_drop`` points beyond the interval.

        True only when the whole interval lies below ``-allowed_drop``: a drop that the test set's
        noise could explain does not count.
        """
        return self.high < -allowed_drop - 1e-9

    @property
    def interval(self) -> str:
        """The interval as text, e.g. ``[-3.12, +1.40]``."""
        return f"[{self.low:+.2f}, {self.high:+.2f}]"


def bootstrap_mean_difference(difference: np.ndarray, groups: np.ndarray | None, resamples: int,
                              confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean of per-image ``difference`` values, resampling ``groups``.

    Args:
        difference: Per-image values (e.g. new correct - old correct, or a share of runs).
        groups: Per-image group (person) ids: whole groups are drawn with replacement and each
            draw takes all of a group's images; None: images are drawn one by one.
        resamples: Bootstrap resamples.
        confidence: Interval coverage, e.g. 0.95.
        seed: Random seed (the interval is deterministic for a seed).

    Returns:
        (low, high) of the mean, in the units of ``difference``.
    """
    if resamples < 1:
        raise ValueError(f"resamples: expected a positive count, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a share between 0 and 1, got {confidence}")
    difference = np.asarray(difference, dtype=np.float64)
    if groups is None:
        groups = np.arange(len(difference))
    _, group_of = np.unique(groups, return_inverse=True)
    per_group = np.bincount(group_of, weights=difference)
    size_of = np.bincount(group_of).astype(np.float64)
    rng = np.random.default_rng(seed)
    # Drawn in chunks so that the index matrix stays small for image-level bootstraps.
    means = []
    for start in range(0, resamples, 1000):
        draws = rng.integers(0, len(per_group), size=(min(1000, resamples - start), len(per_group)))
        means.append(per_group[draws].sum(axis=1) / size_of[draws].sum(axis=1))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.concatenate(means), [tail, 100 - tail])
    return float(low), float(high)


def paired_difference(correct_new: np.ndarray, correct_old: np.ndarray,
                      subjects: np.ndarray | None = None, *, resamples: int = 10_000,
                      confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Compare two models' per-image correctness on the same images.

    Args:
        correct_new: Whether the new model gets each image right.
        correct_old: The same for the old model, same images in the same order.
        subjects: Per-image person ids, to bootstrap over people (None: over images).
        resamples: Bootstrap resamples.
        confidence: Interval coverage.
        seed: Bootstrap seed.

    Returns:
        The difference, its interval and the discordant counts.
    """
    from scipy.stats import binomtest

    new, old = np.asarray(correct_new, dtype=bool), np.asarray(correct_old, dtype=bool)
    if new.shape != old.shape or new.ndim != 1 or not len(new):
        raise DataError(f"paired comparison needs the same non-empty images for both models; got "
                        f"{new.shape} and {old.shape}")
    if subjects is not None and len(subjects) != len(new):
        raise DataError(f"paired comparison: {len(subjects)} subject ids for {len(new)} images")
    difference = new.astype(np.float64) - old.astype(np.float64)
    low, high = bootstrap_mean_difference(difference, subjects, resamples, confidence, seed)
    only_new, only_old = int((new & ~old).sum()), int((~new & old).sum())
    discordant = only_new + only_old
    p_value = float(binomtest(only_new, discordant).pvalue) if discordant else 1.0
    return PairedDifference(
        difference=100 * float(difference.mean()), low=100 * low, high=100 * high, confidence=confidence,
        n=len(new), units="subjects" if subjects is not None else "images",
        n_units=len(np.unique(subjects)) if subjects is not None else len(new),
        only_new=only_new, only_old=only_old, p_value=p_value)


def group_difference(correct_new: Sequence[np.ndarray], correct_old: Sequence[np.ndarray],
                     subjects: np.ndarray | None = None, *, resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean accuracy of one recipe's runs minus another's, with a bootstrap interval, in points.

    Per image, each recipe's share of runs (seeds) that got it right; the difference of the
    shares is averaged and bootstrapped like :func:`paired_difference`'s.

    Returns:
        (difference, low, high) in percentage points.
    """
    share_new = np.mean([np.asarray(c, dtype=np.float64) for c in correct_new], axis=0)
    share_old = np.mean([np.asarray(c, dtype=np.float64) for c in correct_old], axis=0)
    difference = share_new - share_old
    low, high = bootstrap_mean_difference(difference, subjects, resamples, confidence, seed)
    return 100 * float(difference.mean()), 100 * low, 100 * high


# Per-image results of the evaluate stage, logged to the training's MLflow run (never to git: CK+
# and JAFFE may not be redistributed, and labels per row are pieces of the datasets).
PER_IMAGE_ARTIFACT = "evaluate/per_image/per_image.npz"


def fingerprint(images: np.ndarray, label: np.ndarray) -> str:
    """A short digest of a test set's images and labels, in order: same digest, same test set."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.asarray(label, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def per_image_arrays(sets: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]
                     ) -> dict[str, np.ndarray]:
    """The arrays of :data:`PER_IMAGE_ARTIFACT`: per set, correctness, labels, subjects, digest.

    Args:
        sets: Set name to (images, label, predicted, subject ids or None).

    Returns:
        ``<set>.correct``, ``<set>.label``, ``<set>.fingerprint`` and, where known, ``<set>.subject``.
    """
    arrays: dict[str, np.ndarray] = {}
    for name, (images, label, predicted, subject) in sets.items():
        arrays[f"{name}.correct"] = np.asarray(predicted) == np.asarray(label)
        arrays[f"{name}.label"] = np.asarray(label, dtype=np.int16)
        arrays[f"{name}.fingerprint"] = np.asarray(fingerprint(images, label))
        if subject is not None:
            arrays[f"{name}.subject"] = np.asarray(subject).astype(str)
    return arrays
