"""Read the Kaggle FER2013 CSV into arrays, vectorised, with errors that name the bad row.

Row numbers in messages are 0-based data rows (the header is not counted); the CSV line
number is the row number + 2.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ferops.errors import DataError

logger = logging.getLogger(__name__)

# The file format, declared once: ferops.validate checks files against these and
# read_fer2013 parses them, so the two cannot disagree about what a well-formed file is.
COLUMNS = ("emotion", "pixels", "Usage")
USAGES = ("Training", "PublicTest", "PrivateTest")
# One pixel value 0..255 without leading zeros. [0-9] rather than \d: pandas then keeps the match
# in pyarrow (RE2) instead of falling back to Python's re for Unicode digits. RE2 rejects repeat
# counts above 1000, so the number of values per row is counted separately (PixelScan.counts).
PIXEL_VALUE_REGEX = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PIXELS_REGEX = rf"^{PIXEL_VALUE_REGEX}(?: {PIXEL_VALUE_REGEX})*$"
# Integers of 1-3 digits: used only to tell "a value above 255" from other format errors.
_SHORT_INTEGERS = re.compile(r"^\d{1,3}(?: \d{1,3})*$")
_MAX_SHOWN = 5


@dataclass(frozen=True)
class Fer2013:
    """FER2013 as arrays, one entry per CSV data row, in file order.

    Attributes:
        images: uint8, shape (n, size, size).
        label: int8 emotion index (0..6).
        usage: uint8 index into :data:`USAGES`.
        row_index: int32 0-based data-row number in the CSV (stays attached through cleaning).
    """

    images: np.ndarray
    label: np.ndarray
    usage: np.ndarray
    row_index: np.ndarray

    def __len__(self) -> int:
        """Number of images."""
        return len(self.label)


def _rows(mask: np.ndarray | pd.Series) -> str:
    rows = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(str(r) for r in rows[:_MAX_SHOWN])
    more = f" and {len(rows) - _MAX_SHOWN} more" if len(rows) > _MAX_SHOWN else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


@dataclass(frozen=True)
class PixelScan:
    """What :func:`scan_pixels` found in a column of pixel strings.

    Attributes:
        counts: int64 number of values per string (spaces + 1; 0 for an empty string).
        valid: bool per string: exactly ``image_size**2`` values matching :data:`PIXELS_REGEX`.
        images: uint8 images of the valid rows only, in row order, shape
            (valid.sum(), image_size, image_size).
    """

    counts: np.ndarray
    valid: np.ndarray
    images: np.ndarray


def scan_pixels(pixels: pd.Series, image_size: int = 48) -> PixelScan:
    """Check every pixel string and parse the well-formed ones, without a per-row loop.

    Never raises on bad rows: :func:`parse_pixels` (which refuses them) and ``ferops.validate``
    (which reports them row by row) share this one definition of a well-formed row.

    Args:
        pixels: One string per image, ``image_size**2`` integers 0..255 separated by spaces
            (missing values count as empty strings).
        image_size: Side of the square images.

    Returns:
        Per-row value counts and validity, and the images of the valid rows.
    """
    expected = image_size * image_size
    strings = pa.array(pixels.astype("string[pyarrow]").fillna("").array, type=pa.large_string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    # Arrow compute kernels: pandas' own str.count is ~15x slower on these 8 kB strings, and
    # they release the GIL (ferops.validate scans in a worker thread).
    spaces = pc.count_substring(strings, " ").to_numpy(zero_copy_only=False)
    lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False)
    counts = np.where(lengths > 0, spaces + 1, 0).astype(np.int64)
    valid = (counts == expected) & pc.match_substring_regex(
        strings, PIXELS_REGEX).to_numpy(zero_copy_only=False)
    # One C-level parse of all valid rows; the regex has already checked every token.
    text = " ".join(strings.filter(pa.array(valid)).to_pylist())
    values = np.fromstring(text, dtype=np.uint8, sep=" ") if text else np.empty(0, np.uint8)
    images = values.reshape(int(valid.sum()), image_size, image_size)
    return PixelScan(counts=counts, valid=valid, images=images)


def _above_255(text: str) -> bool:
    """A string of short integers with one above 255 (only called on rejected rows)."""
    return bool(_SHORT_INTEGERS.match(text)) and any(int(v) > 255 for v in text.split(" "))


def parse_pixels(pixels: pd.Series, image_size: int = 48, source: str = "pixels") -> np.ndarray:
    """Parse space-separated pixel strings into a uint8 image array (see :func:`scan_pixels`).

    Args:
        pixels: One string per image, ``image_size**2`` integers in 0..255 separated by spaces.
        image_size: Side of the square images.
        source: File name used in error messages.

    Returns:
        uint8 array of shape (n, image_size, image_size).

    Raises:
        DataError: A row has the wrong number of values, a token that is not an integer
            0..255 (without leading zeros), or a value above 255; the message names the rows.
    """
    expected = image_size * image_size
    scan = scan_pixels(pixels, image_size)
    wrong_count = scan.counts != expected
    if wrong_count.any():
        first = int(np.flatnonzero(wrong_count)[0])
        raise DataError(
            f"{source}: column 'pixels': expected {expected} space-separated values per row, "
            f"{_rows(wrong_count)} (e.g. row {first} has {scan.counts[first]})"
        )
    rejected = ~scan.valid
    if rejected.any():
        too_big = np.zeros(len(rejected), dtype=bool)
        for row in np.flatnonzero(rejected):
            too_big[row] = _above_255(str(pixels.iloc[row]))
        if (rejected & ~too_big).any():
            raise DataError(
                f"{source}: column 'pixels': expected integers 0..255 separated by single "
                f"spaces, {_rows(rejected & ~too_big)} do not match"
            )
        raise DataError(f"{source}: column 'pixels': values above 255 in {_rows(too_big)}")
    return scan.images


def class_counts(label: np.ndarray, classes: Sequence[str]) -> dict[str, int]:
    """Count images per class name, plus ``(no label)`` for negative labels when there are any.

    Args:
        label: int class index per image (negative: no label).
        classes: Class names in label order.

    Returns:
        Class name to count, in class order (the prepare and oversample reports use this).
    """
    counts = {name: int((label == index).sum()) for index, name in enumerate(classes)}
    unlabelled = int((label < 0).sum())
    if unlabelled:
        counts["(no label)"] = unlabelled
    return counts


def read_fer2013(path: str | os.PathLike[str], image_size: int = 48, n_classes: int = 7) -> Fer2013:
    """Read and check the Kaggle ``fer2013.csv``.

    Args:
        path: The CSV (header ``emotion,pixels,Usage``).
        image_size: Side of the square images.
        n_classes: Number of emotion classes (labels must lie in 0..n_classes-1).

    Returns:
        The images, labels, usages and row numbers.

    Raises:
        DataError: The file is missing or any row is malformed (the message names the rows).
    """
    source = os.fspath(path)
    logger.info("reading %s", source)
    try:
        frame = pd.read_csv(path, dtype={"pixels": "string", "Usage": "string"}, engine="pyarrow")
    except FileNotFoundError as error:
        raise DataError(f"{source}: file not found") from error
    except (ValueError, pd.errors.ParserError) as error:
        raise DataError(f"{source}: not a readable CSV ({error})") from error
    if tuple(frame.columns) != COLUMNS:
        raise DataError(f"{source}: expected columns {list(COLUMNS)}, found {list(frame.columns)}")
    emotion = pd.to_numeric(frame["emotion"], errors="coerce")
    bad_label = (emotion.isna() | (emotion < 0) | (emotion >= n_classes)).to_numpy()
    if bad_label.any():
        first = int(np.flatnonzero(bad_label)[0])
        raise DataError(
            f"{source}: column 'emotion': expected an integer in 0..{n_classes - 1}, "
            f"{_rows(bad_label)} (e.g. row {first} has {frame['emotion'].iloc[first]!r})"
        )
    usage = frame["Usage"].fillna("")
    bad_usage = (~usage.isin(USAGES)).to_numpy()
    if bad_usage.any():
        first = int(np.flatnonzero(bad_usage)[0])
        raise DataError(
            f"{source}: column 'Usage': expected one of {list(USAGES)}, "
            f"{_rows(bad_usage)} (e.g. row {first} has {usage.iloc[first]!r})"
        )
    images = parse_pixels(frame["pixels"], image_size, source)
    usage_index = pd.Categorical(usage, categories=list(USAGES)).codes.astype(np.uint8)
    logger.info("parsed %d images (%s)", len(frame), ", ".join(
        f"{name} {int((usage_index == i).sum())}" for i, name in enumerate(USAGES)))
    return Fer2013(
        images=images,
        label=emotion.to_numpy(dtype=np.int8),
        usage=usage_index,
        row_index=np.arange(len(frame), dtype=np.int32),
    )
