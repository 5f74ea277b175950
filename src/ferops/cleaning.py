"""Find images that should not be trained on: non-faces, blanks, conflicting duplicates, leakage.

Every function returns boolean masks over the whole dataset so the caller decides which
split a rule is applied to (by default only Training is cleaned; test rows are only flagged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

_HASH_CHUNK = 2048

# The rules that make a test row "unclean" (FER+ labelling aside): the prepare report's
# clean_rows count and the evaluate stage's clean PrivateTest both use them.
QUALITY_RULES = ("non_faces", "blank", "conflicting_duplicates", "leakage")


@dataclass(frozen=True)
class Duplicates:
    """Exact-duplicate structure of an image array.

    Attributes:
        group: int32 group id per image; images with identical pixels share an id.
        size: int32 number of images in each image's group.
    """

    group: np.ndarray
    size: np.ndarray

    @property
    def duplicated(self) -> np.ndarray:
        """Bool per image: at least one other image has the same pixels."""
        return self.size > 1

    def summary(self) -> dict[str, int]:
        """Counts of duplicate groups and redundant copies."""
        groups = np.unique(self.group[self.duplicated])
        return {
            "duplicate_groups": int(len(groups)),
            "rows_in_duplicate_groups": int(self.duplicated.sum()),
            "redundant_rows": int(self.duplicated.sum() - len(groups)),
        }


def find_duplicates(images: np.ndarray) -> Duplicates:
    """Group images with byte-identical pixels.

    Args:
        images: uint8 array of shape (n, height, width).

    Returns:
        The group id and group size of every image (group ids are deterministic: the order of
        first appearance in sorted pixel order).
    """
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    # A void view makes each image one sortable scalar, so np.unique groups whole images.
    rows = flat.view(np.dtype((np.void, flat.shape[1]))).ravel()
    _, inverse, counts = np.unique(rows, return_inverse=True, return_counts=True)
    inverse = inverse.astype(np.int32)
    return Duplicates(group=inverse, size=counts[inverse].astype(np.int32))


def first_in_group(duplicates: Duplicates, member: np.ndarray | None = None) -> np.ndarray:
    """For every image, the first image of its duplicate group that is in ``member``.

    Args:
        duplicates: Output of :func:`find_duplicates`.
        member: Bool per image: which images may be named (None: all of them).

    Returns:
        int64 position per image (the image itself when it is the first), -1 when no image of
        its group is in ``member``.
    """
    positions = np.arange(len(duplicates.group)) if member is None else np.flatnonzero(member)
    n_groups = int(duplicates.group.max()) + 1 if len(duplicates.group) else 0
    first = np.full(n_groups, -1, dtype=np.int64)
    # positions are ascending, so np.unique's first occurrence is the earliest image.
    groups, at = np.unique(duplicates.group[positions], return_index=True)
    first[groups] = positions[at]
    return first[duplicates.group]


def pixel_std(images: np.ndarray) -> np.ndarray:
    """The standard deviation of each image's pixels (float32, as the blank rule measures it).

    Args:
        images: uint8 array of shape (n, height, width).

    Returns:
        float32 array of length n.
    """
    return images.reshape(len(images), -1).astype(np.float32).std(axis=1)


def blank_mask(images: np.ndarray, std_max: float) -> np.ndarray:
    """Flag constant or near-blank images (pixel standard deviation below ``std_max``)."""
    return pixel_std(images) < std_max


def conflicting_duplicates_mask(duplicates: Duplicates, label: np.ndarray) -> np.ndarray:
    """Flag every copy of an image whose copies carry different labels.

    Args:
        duplicates: Output of :func:`find_duplicates`.
        label: int label per image; negative values (no label) are ignored.

    Returns:
        Bool per image.
    """
    labelled = label >= 0
    group = duplicates.group[labelled]
    lab = label[labelled].astype(np.int64)
    n_groups = int(duplicates.group.max()) + 1 if len(duplicates.group) else 0
    low = np.full(n_groups, np.iinfo(np.int64).max)
    high = np.full(n_groups, np.iinfo(np.int64).min)
    np.minimum.at(low, group, lab)
    np.maximum.at(high, group, lab)
    conflicting_group = high > low
    return conflicting_group[duplicates.group] & duplicates.duplicated


def exact_twins_mask(duplicates: Duplicates, in_a: np.ndarray, in_b: np.ndarray) -> np.ndarray:
    """Flag images in set A or B whose exact copy exists in the other set.

    Args:
        duplicates: Output of :func:`find_duplicates`.
        in_a: Bool membership of set A (e.g. Training).
        in_b: Bool membership of set B (e.g. the test splits).

    Returns:
        Bool per image: in A with a twin in B, or in B with a twin in A.
    """
    n_groups = int(duplicates.group.max()) + 1 if len(duplicates.group) else 0
    group_in_a = np.bincount(duplicates.group[in_a], minlength=n_groups) > 0
    group_in_b = np.bincount(duplicates.group[in_b], minlength=n_groups) > 0
    return (in_a & group_in_b[duplicates.group]) | (in_b & group_in_a[duplicates.group])


def perceptual_hashes(images: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Compute a DCT perceptual hash (imagehash.phash) per image, packed into uint64.

    Args:
        images: uint8 array of shape (n, height, width).
        hash_size: Hash side; 8 gives 64-bit hashes.

    Returns:
        uint64 array of length n.
    """
    import imagehash
    from PIL import Image

    if hash_size != 8:
        raise ValueError("only 64-bit hashes (hash_size=8) are supported")
    weights = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)
    hashes = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), _HASH_CHUNK):
        stop = min(start + _HASH_CHUNK, len(images))
        bits = np.stack([
            imagehash.phash(Image.fromarray(image), hash_size=hash_size).hash.ravel()
            for image in images[start:stop]
        ])
        hashes[start:stop] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        logger.info("perceptual hashes: %d/%d", stop, len(images))
    return hashes


def near_twins_mask(hashes: np.ndarray, in_a: np.ndarray, in_b: np.ndarray, max_distance: int
                    ) -> np.ndarray:
    """Flag images in A or B with a perceptual near-duplicate in the other set.

    Args:
        hashes: uint64 perceptual hash per image (see :func:`perceptual_hashes`).
        in_a: Bool membership of set A.
        in_b: Bool membership of set B.
        max_distance: Largest Hamming distance between hashes that counts as a near-duplicate.

    Returns:
        Bool per image.
    """
    index_a, index_b = np.flatnonzero(in_a), np.flatnonzero(in_b)
    flagged = np.zeros(len(hashes), dtype=bool)
    hash_b = hashes[index_b]
    for start in range(0, len(index_a), _HASH_CHUNK):
        chunk = index_a[start:start + _HASH_CHUNK]
        distance = np.bitwise_count(hashes[chunk, None] ^ hash_b[None, :])
        close = distance <= max_distance
        flagged[chunk[close.any(axis=1)]] = True
        flagged[index_b[close.any(axis=0)]] = True
    return flagged


def flagged_by_quality_rules(flags: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows any of :data:`QUALITY_RULES` flags.

    Args:
        flags: Rule name to a bool mask over the same rows (as ``ferops.prepare.flag_rows``
            returns).
    """
    return np.logical_or.reduce([np.asarray(flags[rule], dtype=bool) for rule in QUALITY_RULES])
