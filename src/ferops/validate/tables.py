"""Tables derived from the raw files for validation: pure functions of the text tables.

What a well-formed pixel row, a duplicate, a label conflict and a train/test leak are is
decided by :mod:`ferops.fer2013` and :mod:`ferops.cleaning`, the code the prepare stage runs,
so validation and preparation always agree. The extra work here is tolerance: a malformed row
gets missing values (the format expectations report it) instead of stopping the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ferops import cleaning
from ferops.fer2013 import COLUMNS as FER2013_COLUMNS
from ferops.fer2013 import scan_pixels
from ferops.ferplus import VOTE_COLUMNS
from ferops.validate.config import ValidationSettings


@dataclass
class DerivedTables:
    """Tables computed from the files (see :func:`derive_tables`).

    Attributes:
        fer2013_rows: :func:`fer2013_rows`, or None when fer2013.csv lacks its columns.
        fer2013_splits: :func:`fer2013_splits`, or None when fer2013.csv lacks its columns.
        ferplus_rows: :func:`ferplus_rows`.
    """

    fer2013_rows: pd.DataFrame | None
    fer2013_splits: pd.DataFrame | None
    ferplus_rows: pd.DataFrame


def _nullable_index(values: np.ndarray, mask: np.ndarray) -> pd.Series:
    """Row numbers where ``mask`` holds, missing elsewhere (an Int64 column)."""
    return pd.Series(pd.array(np.where(mask, values, 0), dtype="Int64")).mask(~mask)


def _labels(emotion: np.ndarray, n_classes: int) -> np.ndarray:
    """Label per row from the ``emotion`` text; -1 for anything but ``"0"``..``str(n - 1)``."""
    codes = {str(index): index for index in range(n_classes)}
    return np.array([codes.get(value, -1) for value in emotion], dtype=np.int64)


def fer2013_rows(frame: pd.DataFrame, image_size: int, n_classes: int) -> pd.DataFrame:
    """Derive per-row facts from the FER2013 table (same row order as the CSV).

    Rows whose pixels are malformed (see :func:`ferops.fer2013.scan_pixels`) have no image, so
    they get no std and take no part in the duplicate columns.

    Args:
        frame: fer2013.csv as read (text columns ``emotion``, ``pixels``, ``Usage``).
        image_size: Image side in pixels (each row holds its square of values).
        n_classes: Number of classes; ``emotion`` must be ``"0"``..``str(n_classes - 1)`` to
            count in a label conflict.

    Returns:
        One row per CSV row with columns ``Usage``, ``emotion``, ``pixel_count``,
        ``pixel_std`` (NaN for a malformed pixel string),
        ``duplicate_of`` (first earlier row with identical pixels), ``duplicate_labels``
        (the labels of a duplicate group whose rows disagree, e.g. ``"0,3"``) and
        ``training_twin`` (for a non-Training row, the first Training row with identical pixels).
    """
    n = len(frame)
    scan = scan_pixels(frame["pixels"], image_size)
    # Everything below is computed over the well-formed rows; `rows` maps back to CSV rows.
    rows = np.flatnonzero(scan.valid)
    stds = np.full(n, np.nan)
    stds[rows] = cleaning.pixel_std(scan.images)

    duplicates = cleaning.find_duplicates(scan.images)
    first = cleaning.first_in_group(duplicates)
    is_copy = np.zeros(n, dtype=bool)
    is_copy[rows] = first != np.arange(len(rows))
    duplicate_of = np.zeros(n, dtype=np.int64)
    duplicate_of[rows] = rows[first]

    label = _labels(frame["emotion"].to_numpy(dtype=object)[rows], n_classes)
    conflicting = cleaning.conflicting_duplicates_mask(duplicates, label)
    labelled = conflicting & (label >= 0)
    group_labels = (
        pd.Series(label[labelled]).groupby(duplicates.group[labelled])
        .agg(lambda values: ",".join(str(value) for value in sorted(set(values))))
    )
    duplicate_labels = np.full(n, None, dtype=object)
    duplicate_labels[rows[conflicting]] = group_labels.reindex(
        duplicates.group[conflicting]).to_numpy()

    training = frame["Usage"].to_numpy(dtype=object)[rows] == "Training"
    leaked = cleaning.exact_twins_mask(duplicates, training, ~training) & ~training
    twin_of = cleaning.first_in_group(duplicates, training)
    has_twin = np.zeros(n, dtype=bool)
    has_twin[rows] = leaked
    training_twin = np.zeros(n, dtype=np.int64)
    training_twin[rows] = np.where(leaked, rows[twin_of], 0)

    return pd.DataFrame(
        {
            "Usage": frame["Usage"].to_numpy(),
            "emotion": frame["emotion"].to_numpy(),
            "pixel_count": scan.counts,
            "pixel_std": stds,
            "duplicate_of": _nullable_index(duplicate_of, is_copy),
            "duplicate_labels": pd.Series(duplicate_labels, dtype="str"),
            "training_twin": _nullable_index(training_twin, has_twin),
        }
    )


def fer2013_splits(
    frame: pd.DataFrame, splits: Sequence[str], classes: Sequence[str]
) -> pd.DataFrame:
    """Summarise FER2013 per split: row count and each class's share of the split's rows.

    Args:
        frame: fer2013.csv as read.
        splits: Expected ``Usage`` values (a missing split gets a row with 0 rows).
        classes: Class names; label ``str(i)`` is ``classes[i]``.

    Returns:
        One row per split: ``Usage``, ``rows``, ``share_<class>`` for every class.
    """
    rows = frame["Usage"].value_counts().reindex(list(splits), fill_value=0)
    table = pd.DataFrame({"Usage": list(splits), "rows": rows.to_numpy(dtype=np.int64)})
    for label, name in enumerate(classes):
        is_class = frame["emotion"] == str(label)
        count = frame.loc[is_class, "Usage"].value_counts().reindex(list(splits), fill_value=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            table[f"share_{name}"] = count.to_numpy(dtype=np.float64) / table["rows"].to_numpy()
    return table


def ferplus_rows(ferplus: pd.DataFrame, fer2013: pd.DataFrame | None) -> pd.DataFrame:
    """Derive per-row facts from the FER+ table (same row order as the CSV).

    Args:
        ferplus: fer2013new.csv as read.
        fer2013: fer2013.csv as read, or None when it lacks the expected columns.

    Returns:
        ``Usage``, ``fer2013_Usage`` (FER2013's Usage at the same row position; missing past its
        end) and ``vote_total`` (missing when a vote is not a number).
    """
    n = len(ferplus)
    usage = ferplus["Usage"] if "Usage" in ferplus else pd.Series([None] * n, dtype="str")
    other = pd.Series([None] * n, dtype="str")
    if fer2013 is not None:
        other = fer2013["Usage"].reset_index(drop=True).reindex(range(n))
    votes = [pd.to_numeric(ferplus[c], errors="coerce") for c in VOTE_COLUMNS if c in ferplus]
    total = pd.concat(votes, axis=1).sum(axis=1, min_count=len(VOTE_COLUMNS)) if votes else None
    return pd.DataFrame(
        {
            "Usage": usage.to_numpy(),
            "fer2013_Usage": other.to_numpy(),
            "vote_total": total.to_numpy() if total is not None else np.full(n, np.nan),
        }
    )


def derive_tables(
    fer2013: pd.DataFrame, ferplus: pd.DataFrame, settings: ValidationSettings
) -> DerivedTables:
    """Compute the derived tables (the slow part: parsing 83 million pixel values).

    Args:
        fer2013: fer2013.csv as read.
        ferplus: fer2013new.csv as read.
        settings: Validation settings.

    Returns:
        The derived tables.
    """
    fer = fer2013 if all(column in fer2013 for column in FER2013_COLUMNS) else None
    if fer is None:
        return DerivedTables(None, None, ferplus_rows(ferplus, None))
    return DerivedTables(
        fer2013_rows=fer2013_rows(fer, settings.image_size, len(settings.classes)),
        fer2013_splits=fer2013_splits(fer, list(settings.params.fer2013.rows), settings.classes),
        ferplus_rows=ferplus_rows(ferplus, fer),
    )
