"""Validate the raw datasets with Great Expectations (the library behind the `validate` stage).

Each dataset is turned into one or more pandas tables: the CSV files as read, tables of values
derived from them (pixel counts and statistics, duplicate links, per-split class shares), and
tables of image-file metadata for the image datasets. Every table is validated by GX against a
``critical`` suite (a failure makes the stage fail) and, where the data has known quirks, a
``warning`` suite (failures are reported and counted but never fail the stage).

Offending rows are named by the 0-based index of the CSV data row (the header line is not
counted, so row 0 is line 2 of the file), by the split name for the per-split table, and by the
file path relative to the raw-data directory for the image tables.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from ferops.errors import DataError, ParamsError

logger = logging.getLogger(__name__)

CRITICAL = "critical"
WARNING = "warning"
DOCS_SITE = "ferops_validation"

FER2013_FILE = "fer2013.csv"
FERPLUS_FILE = "fer2013new.csv"
CKPLUS_DIR = "ckplus"
JAFFE_DIR = "jaffe"

FER2013_COLUMNS = ("emotion", "pixels", "Usage")
FERPLUS_VOTES = (
    "neutral", "happiness", "surprise", "sadness", "anger",
    "disgust", "fear", "contempt", "unknown", "NF",
)
FERPLUS_COLUMNS = ("Usage", "Image name", *FERPLUS_VOTES)
# FER+ has 10 taggers per image (Barsoum et al. 2016); a row whose votes do not add up to that
# is worth a look but is still usable.
FERPLUS_TAGGERS = 10

# One pixel value 0..255 without leading zeros. [0-9] rather than \d: pandas then keeps the
# match in pyarrow (RE2) instead of falling back to Python's re for Unicode digits. Repeat
# counts above 1000 are rejected by RE2, so the number of values is checked separately.
_PIXEL = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PIXELS_REGEX = rf"^{_PIXEL}(?: {_PIXEL})*$"
VOTE_REGEX = r"^[0-9]+$"
FERPLUS_NAME_REGEX = r"^fer[0-9]{7}\.png$"
CKPLUS_NAME_REGEX = r"^S[0-9]{3}_[0-9]{3}_[0-9]{8}\.png$"
JAFFE_NAME_REGEX = r"^[A-Z]{2}\.[A-Z]{2}\d\.\d+\.tiff$"

CSV_ROW_INDEX = "0-based CSV data row; the header is not counted"
PATH_INDEX = "file path relative to the raw-data directory"
SPLIT_INDEX = "FER2013 split (Usage value)"

# Offending values longer than this (a whole pixel string is ~8 kB) are shortened in the summary.
_MAX_VALUE_CHARS = 60


@dataclass(frozen=True)
class ValidateConfig:
    """Thresholds and expected shapes, taken from the ``validate`` and ``base`` params.

    Attributes:
        classes: FER2013 class names; index i is label i.
        image_size: FER2013 image side in pixels (each row holds ``image_size**2`` values).
        split_rows: Expected FER2013 rows per ``Usage`` value.
        row_tolerance: Allowed relative deviation of each split's row count.
        class_share: Class name to allowed ``(min, max)`` share of a split's rows.
        blank_std_max: Images whose pixel standard deviation is below this are warned about.
        ckplus_files: Expected number of CK+ images.
        ckplus_size: CK+ image side in pixels.
        ckplus_classes: Expected CK+ emotion folders.
        jaffe_files: Expected number of JAFFE images.
        jaffe_size: JAFFE image side in pixels.
        sample_size: How many offending values/rows to report per expectation.
    """

    classes: tuple[str, ...]
    image_size: int
    split_rows: dict[str, int]
    row_tolerance: float
    class_share: dict[str, tuple[float, float]]
    blank_std_max: float
    ckplus_files: int
    ckplus_size: int
    ckplus_classes: tuple[str, ...]
    jaffe_files: int
    jaffe_size: int
    sample_size: int = 5

    @classmethod
    def from_params(cls, validate: Mapping[str, Any], base: Mapping[str, Any]) -> ValidateConfig:
        """Build the configuration from the ``validate`` and ``base`` params sections.

        Args:
            validate: The ``validate`` section of params.yaml.
            base: The ``base`` section (``classes``, ``image_size``).

        Returns:
            The configuration.

        Raises:
            ParamsError: A value is missing or has the wrong type or range.
        """
        try:
            fer, ck, jaffe = validate["fer2013"], validate["ckplus"], validate["jaffe"]
            classes = tuple(str(name) for name in base["classes"])
            split_rows = {str(k): int(v) for k, v in fer["rows"].items()}
            class_share = {
                str(k): (float(v[0]), float(v[1])) for k, v in fer["class_share"].items()
            }
            config = cls(
                classes=classes,
                image_size=int(base["image_size"]),
                split_rows=split_rows,
                row_tolerance=float(fer["row_tolerance"]),
                class_share=class_share,
                blank_std_max=float(fer["blank_std_max"]),
                ckplus_files=int(ck["files"]),
                ckplus_size=int(ck["image_size"]),
                ckplus_classes=tuple(str(name) for name in ck["classes"]),
                jaffe_files=int(jaffe["files"]),
                jaffe_size=int(jaffe["image_size"]),
                sample_size=int(validate.get("sample_size", 5)),
            )
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise ParamsError(f"validate params: missing or invalid value ({error!r})") from error
        unknown = sorted(set(config.class_share) - set(classes))
        if unknown:
            raise ParamsError(f"validate.fer2013.class_share: unknown classes {unknown}")
        if not 0 <= config.row_tolerance < 1:
            raise ParamsError("validate.fer2013.row_tolerance: must be in [0, 1)")
        if any(lo > hi for lo, hi in config.class_share.values()):
            raise ParamsError("validate.fer2013.class_share: each entry must be [min, max]")
        if config.sample_size < 1:
            raise ParamsError("validate.sample_size: must be at least 1")
        return config


@dataclass
class Table:
    """A pandas table to validate, with the GX expectations that apply to it.

    Attributes:
        dataset: Dataset the table describes (``fer2013``, ``ferplus``, ``ckplus``, ``jaffe``).
        name: Table (and GX data asset) name.
        frame: The data.
        row_index: How offending rows are named (one of the ``*_INDEX`` descriptions).
        index_columns: Columns that name an offending row; empty: the frame's 0-based index.
        expectations: GX expectations; each carries ``meta`` ``check`` and ``severity``.
    """

    dataset: str
    name: str
    frame: pd.DataFrame
    row_index: str
    index_columns: tuple[str, ...] = ()
    expectations: list[Any] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Loading the raw data into tables. No GX here: this runs in worker threads (validate_raw).


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with every value as text, so that nothing is coerced before it is checked."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (run the download stage first)")
    try:
        # pyarrow reads the 300 MB FER2013 file about 3x faster than the C engine.
        return pd.read_csv(path, dtype=str, keep_default_na=False, engine="pyarrow")
    except (ValueError, OSError) as error:
        message = str(error)
        if len(message) > 300:
            message = message[:300] + "..."
        raise DataError(f"{path}: not a readable CSV file ({message})") from error


def pixel_stats(pixels: pd.Series, values_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """Count the values of each pixel string and compute the pixel standard deviation.

    Args:
        pixels: Space-separated pixel strings.
        values_per_image: The expected number of values per string.

    Returns:
        ``(counts, stds)``: values per string (spaces + 1; 0 for an empty string), and the
        std of each well-formed string (NaN where the string has the wrong number of values or
        a token that is not 0..255: the format expectations report those rows).
    """
    strings = pa.array(pixels.array, type=pa.large_string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.fill_null("")
    # pyarrow kernels release the GIL (this runs in a worker thread) and are ~10x faster than
    # pandas' regex-based str.count on these 8 kB strings.
    spaces = pc.count_substring(strings, " ").to_numpy(zero_copy_only=False)
    lengths = pc.binary_length(strings).to_numpy(zero_copy_only=False)
    counts = np.where(lengths > 0, spaces + 1, 0).astype(np.int64)
    well_formed = (counts == values_per_image) & pc.match_substring_regex(
        strings, PIXELS_REGEX).to_numpy(zero_copy_only=False)
    stds = np.full(len(counts), np.nan)
    if well_formed.any():
        text = " ".join(strings.filter(pa.array(well_formed)).to_pylist())
        values = np.fromstring(text, dtype=np.int16, sep=" ").reshape(-1, values_per_image)
        stds[well_formed] = values.astype(np.float32).std(axis=1)
    return counts, stds


def _nullable_index(values: np.ndarray, mask: np.ndarray) -> pd.Series:
    """Row numbers where ``mask`` holds, missing elsewhere (an Int64 column)."""
    return pd.Series(pd.array(np.where(mask, values, 0), dtype="Int64")).mask(~mask)


def fer2013_rows(frame: pd.DataFrame, values_per_image: int) -> pd.DataFrame:
    """Derive per-row facts from the FER2013 table (same row order as the CSV).

    Args:
        frame: fer2013.csv as read (text columns ``emotion``, ``pixels``, ``Usage``).
        values_per_image: Expected pixel values per row (image side squared).

    Returns:
        One row per CSV row with columns ``Usage``, ``emotion``, ``pixel_count``,
        ``pixel_std`` (NaN for a malformed pixel string),
        ``duplicate_of`` (first earlier row with identical pixels), ``duplicate_labels``
        (the labels of a duplicate group whose rows disagree, e.g. ``"0,3"``) and
        ``training_twin`` (for a non-Training row, the first Training row with identical pixels).
    """
    n = len(frame)
    counts, stds = pixel_stats(frame["pixels"], values_per_image)
    codes, _ = pd.factorize(frame["pixels"])
    rows = np.arange(n)
    _, first = np.unique(codes, return_index=True)
    first_of_row = first[codes]
    duplicate_of = _nullable_index(first_of_row, first_of_row != rows)

    size = np.bincount(codes)
    in_group = size[codes] > 1
    labels = frame["emotion"].to_numpy(dtype=object)
    group_labels = (
        pd.Series(labels[in_group])
        .groupby(codes[in_group])
        .agg(lambda values: ",".join(sorted(set(values))))
    )
    conflicting = group_labels[group_labels.str.contains(",", regex=False)]
    duplicate_labels = pd.Series(codes).map(conflicting)

    usage = frame["Usage"].to_numpy(dtype=object)
    training = usage == "Training"
    train_first = np.full(len(size), -1)
    train_codes, train_at = np.unique(codes[training], return_index=True)
    train_first[train_codes] = rows[training][train_at]
    twin = train_first[codes]
    training_twin = _nullable_index(twin, ~training & (twin >= 0))

    return pd.DataFrame(
        {
            "Usage": frame["Usage"].to_numpy(),
            "emotion": frame["emotion"].to_numpy(),
            "pixel_count": counts,
            "pixel_std": stds,
            "duplicate_of": duplicate_of,
            "duplicate_labels": duplicate_labels,
            "training_twin": training_twin,
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
    votes = [pd.to_numeric(ferplus[c], errors="coerce") for c in FERPLUS_VOTES if c in ferplus]
    total = pd.concat(votes, axis=1).sum(axis=1, min_count=len(FERPLUS_VOTES)) if votes else None
    return pd.DataFrame(
        {
            "Usage": usage.to_numpy(),
            "fer2013_Usage": other.to_numpy(),
            "vote_total": total.to_numpy() if total is not None else np.full(n, np.nan),
        }
    )


def image_table(root: Path, raw_dir: Path) -> pd.DataFrame:
    """List every file under an image directory with its size and PIL mode.

    Args:
        root: The dataset directory (e.g. ``raw/ckplus``).
        raw_dir: The raw-data directory (paths are given relative to it).

    Returns:
        One row per file, sorted by path: ``path``, ``folder`` (parent folder relative to
        ``root``; empty for files directly in it), ``name``, ``width``, ``height``, ``mode``
        (missing size and mode when PIL cannot read the file).

    Raises:
        DataError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise DataError(f"{root}: directory not found (run the download stage first)")
    # os.walk with followlinks: DVC may link cached files or folders into the workspace.
    files = sorted(
        Path(folder, name)
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
    )
    records = []
    for path in files:
        width = height = mode = None
        try:
            # Image.open reads only the header, which is all this needs.
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
        except (UnidentifiedImageError, OSError):
            pass
        folder = path.parent.relative_to(root).as_posix()
        records.append(
            {
                "path": path.relative_to(raw_dir).as_posix(),
                "folder": "" if folder == "." else folder,
                "name": path.name,
                "width": width,
                "height": height,
                "mode": mode,
            }
        )
    frame = pd.DataFrame.from_records(
        records, columns=["path", "folder", "name", "width", "height", "mode"]
    )
    for column in ("width", "height"):
        frame[column] = frame[column].astype("Int64")
    return frame


@dataclass
class RawFiles:
    """The dataset files as read (see :func:`read_csvs` and :func:`image_table`).

    Attributes:
        fer2013: fer2013.csv, every value as text.
        ferplus: fer2013new.csv, every value as text (an empty ``Image name`` as missing).
        ckplus: CK+ file metadata (:func:`image_table`).
        jaffe: JAFFE file metadata.
    """

    fer2013: pd.DataFrame
    ferplus: pd.DataFrame
    ckplus: pd.DataFrame
    jaffe: pd.DataFrame


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


def read_csvs(raw_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read fer2013.csv and fer2013new.csv, every value as text.

    Args:
        raw_dir: The raw-data directory written by the download stage.

    Returns:
        ``(fer2013, ferplus)``; FER+'s empty ``Image name`` values are missing values.

    Raises:
        DataError: A file is missing or not a readable CSV.
    """
    fer = _read_csv(raw_dir / FER2013_FILE)
    ferplus = _read_csv(raw_dir / FERPLUS_FILE)
    if "Image name" in ferplus:
        # An empty name marks a FER+ row that is not a face: treat it as missing.
        ferplus["Image name"] = ferplus["Image name"].mask(ferplus["Image name"] == "")
    return fer, ferplus


def derive_tables(
    fer2013: pd.DataFrame, ferplus: pd.DataFrame, config: ValidateConfig
) -> DerivedTables:
    """Compute the derived tables (the slow part: parsing 83 million pixel values).

    Args:
        fer2013: fer2013.csv as read.
        ferplus: fer2013new.csv as read.
        config: Validation settings.

    Returns:
        The derived tables.
    """
    fer = fer2013 if all(column in fer2013 for column in FER2013_COLUMNS) else None
    return DerivedTables(
        fer2013_rows=fer2013_rows(fer, config.image_size**2) if fer is not None else None,
        fer2013_splits=fer2013_splits(fer, list(config.split_rows), config.classes)
        if fer is not None
        else None,
        ferplus_rows=ferplus_rows(ferplus, fer),
    )


# --------------------------------------------------------------------------------------------
# Expectations. great_expectations is imported inside the functions: importing it takes ~5 s,
# which the stage overlaps with reading the data, and importing ferops.validate stays cheap.


def _expect(kind: str, check: str, severity: str, description: str, **kwargs: Any) -> Any:
    """Build one GX expectation, tagged with our check name and severity in its meta."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, kind)
    return cls(meta={"check": check, "severity": severity}, description=description, **kwargs)


def _bounds(expected: int, tolerance: float) -> tuple[int, int]:
    return math.ceil(expected * (1 - tolerance)), math.floor(expected * (1 + tolerance))


def file_tables(raw: RawFiles, config: ValidateConfig) -> list[Table]:
    """The files as read, with their critical and warning expectations.

    Args:
        raw: The files as read.
        config: Validation settings.

    Returns:
        The tables to validate, in report order.
    """
    c, w = CRITICAL, WARNING
    lo, hi = _bounds(sum(config.split_rows.values()), config.row_tolerance)
    vote_checks = [
        _expect("ExpectColumnValuesToMatchRegex", f"votes_{vote}", c,
                f"{vote} votes are non-negative integers.", column=vote, regex=VOTE_REGEX)
        for vote in FERPLUS_VOTES
    ]
    return [
        Table(
            "fer2013", "fer2013", raw.fer2013, CSV_ROW_INDEX,
            expectations=[
                _expect("ExpectTableColumnsToMatchOrderedList", "columns", c,
                        "The header is exactly emotion,pixels,Usage.",
                        column_list=list(FER2013_COLUMNS)),
                _expect("ExpectTableRowCountToBeBetween", "row_count", c,
                        "Total rows match the sum of the expected split sizes.",
                        min_value=lo, max_value=hi),
                _expect("ExpectColumnValuesToBeInSet", "emotion_in_range", c,
                        f"Labels are 0..{len(config.classes) - 1}.", column="emotion",
                        value_set=[str(i) for i in range(len(config.classes))]),
                _expect("ExpectColumnValuesToBeInSet", "usage_known", c,
                        "Usage is one of the known splits.", column="Usage",
                        value_set=list(config.split_rows)),
                _expect("ExpectColumnValuesToMatchRegex", "pixels_format", c,
                        "Pixels are integers 0..255 separated by single spaces.",
                        column="pixels", regex=PIXELS_REGEX),
            ],
        ),
        Table(
            "ferplus", "ferplus", raw.ferplus, CSV_ROW_INDEX,
            expectations=[
                _expect("ExpectTableColumnsToMatchOrderedList", "columns", c,
                        "The header is exactly the FER+ columns.",
                        column_list=list(FERPLUS_COLUMNS)),
                _expect("ExpectTableRowCountToEqual", "row_count", c,
                        "FER+ has as many rows as fer2013.csv.", value=len(raw.fer2013)),
                *vote_checks,
                _expect("ExpectColumnValuesToNotBeNull", "empty_image_name", w,
                        "Every row names an image (empty: FER+ found no face).",
                        column="Image name"),
                _expect("ExpectColumnValuesToMatchRegex", "image_name_format", w,
                        "Image names look like fer0000000.png.", column="Image name",
                        regex=FERPLUS_NAME_REGEX),
                _expect("ExpectColumnValuesToBeUnique", "duplicate_image_name", w,
                        "Image names are unique.", column="Image name"),
            ],
        ),
        Table(
            "ckplus", "ckplus", raw.ckplus, PATH_INDEX, index_columns=("path",),
            expectations=[
                _expect("ExpectTableRowCountToEqual", "file_count", c,
                        f"CK+ has {config.ckplus_files} files.", value=config.ckplus_files),
                _expect("ExpectColumnDistinctValuesToEqualSet", "emotion_folders", c,
                        "Files sit in exactly the expected emotion folders.", column="folder",
                        value_set=list(config.ckplus_classes)),
                *_image_checks(config.ckplus_size),
                _expect("ExpectColumnValuesToMatchRegex", "file_name_format", w,
                        "File names look like S010_004_00000017.png.", column="name",
                        regex=CKPLUS_NAME_REGEX),
                _expect("ExpectColumnValuesToBeInSet", "grayscale", w,
                        "Images are 8-bit grayscale (PIL mode L).", column="mode",
                        value_set=["L"]),
            ],
        ),
        Table(
            "jaffe", "jaffe", raw.jaffe, PATH_INDEX, index_columns=("path",),
            expectations=[
                _expect("ExpectTableRowCountToEqual", "file_count", c,
                        f"JAFFE has {config.jaffe_files} files.", value=config.jaffe_files),
                _expect("ExpectColumnValuesToMatchRegex", "file_name_format", c,
                        "File names look like KA.AN1.39.tiff.", column="name",
                        regex=JAFFE_NAME_REGEX),
                *_image_checks(config.jaffe_size),
                _expect("ExpectColumnValuesToBeInSet", "grayscale", w,
                        "Images are 8-bit grayscale (PIL mode L; P with a grey palette is "
                        "convertible).", column="mode", value_set=["L"]),
            ],
        ),
    ]


def _image_checks(size: int) -> list[Any]:
    return [
        _expect("ExpectColumnValuesToNotBeNull", "readable", CRITICAL,
                "Every file is an image PIL can read.", column="width"),
        _expect("ExpectColumnValuesToBeBetween", "width", CRITICAL,
                f"Images are {size} pixels wide.", column="width", min_value=size,
                max_value=size),
        _expect("ExpectColumnValuesToBeBetween", "height", CRITICAL,
                f"Images are {size} pixels high.", column="height", min_value=size,
                max_value=size),
    ]


def derived_tables(derived: DerivedTables, config: ValidateConfig) -> list[Table]:
    """The derived tables, with their critical and warning expectations.

    Args:
        derived: The derived tables.
        config: Validation settings.

    Returns:
        The tables to validate, in report order.
    """
    from great_expectations.expectations.row_conditions import Column

    c, w = CRITICAL, WARNING
    tables = []
    if derived.fer2013_rows is not None:
        pixels = config.image_size**2
        tables.append(Table(
            "fer2013", "fer2013_rows", derived.fer2013_rows, CSV_ROW_INDEX,
            expectations=[
                _expect("ExpectColumnValuesToBeBetween", "pixel_count", c,
                        f"Every row holds exactly {pixels} pixel values.",
                        column="pixel_count", min_value=pixels, max_value=pixels),
                _expect("ExpectColumnValuesToBeBetween", "constant_images", w,
                        "Images are not a single grey level (pixel std > 0).",
                        column="pixel_std", min_value=0, strict_min=True),
                _expect("ExpectColumnValuesToBeBetween", "blank_images", w,
                        f"Images are not near-blank (pixel std >= {config.blank_std_max:g}).",
                        column="pixel_std", min_value=config.blank_std_max),
                _expect("ExpectColumnValuesToBeNull", "duplicate_pixels", w,
                        "No row repeats the pixels of an earlier row (value: that row).",
                        column="duplicate_of"),
                _expect("ExpectColumnValuesToBeNull", "duplicate_label_conflicts", w,
                        "Rows with identical pixels carry the same label (value: the labels).",
                        column="duplicate_labels"),
                _expect("ExpectColumnValuesToBeNull", "test_rows_in_training", w,
                        "No PublicTest/PrivateTest row has an identical Training row "
                        "(value: that Training row).",
                        column="training_twin"),
            ],
        ))
    if derived.fer2013_splits is not None:
        checks = []
        for split, expected in config.split_rows.items():
            s_lo, s_hi = _bounds(expected, config.row_tolerance)
            checks.append(_expect(
                "ExpectColumnValuesToBeBetween", f"rows_{split}", c,
                f"{split} has {expected} rows (relative tolerance {config.row_tolerance:g}).",
                column="rows", min_value=s_lo, max_value=s_hi,
                row_condition=Column("Usage") == split,
            ))
        for name, (s_min, s_max) in config.class_share.items():
            checks.append(_expect(
                "ExpectColumnValuesToBeBetween", f"share_{name}", c,
                f"Class {name} makes up {s_min:g}..{s_max:g} of each split.",
                column=f"share_{name}", min_value=s_min, max_value=s_max,
            ))
        tables.append(Table("fer2013", "fer2013_splits", derived.fer2013_splits, SPLIT_INDEX,
                            index_columns=("Usage",), expectations=checks))
    tables.append(Table(
        "ferplus", "ferplus_rows", derived.ferplus_rows, CSV_ROW_INDEX,
        expectations=[
            _expect("ExpectColumnPairValuesToBeEqual", "usage_matches_fer2013", c,
                    "Usage equals fer2013.csv's Usage at the same row position.",
                    column_A="Usage", column_B="fer2013_Usage"),
            _expect("ExpectColumnValuesToBeBetween", "vote_total", w,
                    f"Each row has {FERPLUS_TAGGERS} votes in total.", column="vote_total",
                    min_value=FERPLUS_TAGGERS, max_value=FERPLUS_TAGGERS),
        ],
    ))
    return tables


# --------------------------------------------------------------------------------------------
# Running GX and summarising its results.


def _plain(value: Any) -> Any:
    """Make a GX result value JSON-friendly, short and stable."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str) and len(value) > _MAX_VALUE_CHARS:
        return f"{value[:_MAX_VALUE_CHARS]}... ({len(value)} chars)"
    return value


def _index_values(index_list: list[Any], index_columns: Sequence[str]) -> list[Any]:
    if len(index_columns) == 1:
        name = index_columns[0]
        return [item.get(name) if isinstance(item, Mapping) else item for item in index_list]
    return list(index_list)


def _exception_message(info: Any) -> str | None:
    """The first exception message in a GX result's exception_info (flat or per metric)."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for item in info.values():
        if isinstance(item, Mapping) and item.get("raised_exception"):
            return str(item.get("exception_message"))
    return None


def _summarise_result(result: Any, table: Table, sample_size: int) -> dict[str, Any]:
    config = result.expectation_config
    details = dict(result.result or {})
    pair = [config.kwargs[k] for k in ("column_A", "column_B") if k in config.kwargs]
    entry: dict[str, Any] = {
        "check": config.meta["check"],
        "table": table.name,
        "severity": config.meta["severity"],
        "expectation": config.type,
        "column": config.kwargs.get("column") or ", ".join(pair) or None,
        "description": config.description,
        "success": bool(result.success),
    }
    for key in ("element_count", "unexpected_count", "unexpected_percent", "observed_value"):
        if details.get(key) is not None:
            entry[key] = _plain(details[key])
    if "partial_unexpected_list" in details:
        entry["unexpected_values"] = _plain(details["partial_unexpected_list"][:sample_size])
    if "partial_unexpected_index_list" in details:
        rows = _index_values(details["partial_unexpected_index_list"], table.index_columns)
        entry["unexpected_rows"] = _plain(rows[:sample_size])
    if "partial_missing_list" in details:
        # Set expectations list expected values that were not found (e.g. a missing folder).
        entry["missing_values"] = _plain(details["partial_missing_list"][:sample_size])
    message = _exception_message(result.exception_info)
    if message:
        entry["exception"] = _plain(message)
    return entry


class Validation:
    """One GX run: an in-memory context, a pandas data source, and a Data Docs site.

    Each table becomes a data asset with a whole-dataframe batch definition, one expectation
    suite and validation definition per severity, and a checkpoint that runs them.

    Args:
        docs_dir: Directory to write the Data Docs site into (None: no docs).
        sample_size: Offending values/rows to report per expectation.
    """

    def __init__(self, docs_dir: Path | None, sample_size: int = 5) -> None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import (
            DataContextConfig,
            InMemoryStoreBackendDefaults,
            ProgressBarsConfig,
        )

        self.docs_dir = docs_dir
        self.sample_size = sample_size
        self.datasets: dict[str, dict[str, Any]] = {}
        project = DataContextConfig(
            # No default temporary docs site: the only site is the one written to docs_dir.
            store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=project)
        if docs_dir is not None:
            self.context.add_data_docs_site(
                site_name=DOCS_SITE,
                site_config={
                    "class_name": "SiteBuilder",
                    # No "how to" buttons linking to GX tutorials: this is a report.
                    "show_how_to_buttons": False,
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(Path(docs_dir).resolve()),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )
        self.source = self.context.data_sources.add_pandas(name="raw")

    def validate(self, table: Table) -> None:
        """Run a table's suites through a checkpoint and add the results to the summary.

        Args:
            table: The table and its expectations.
        """
        import great_expectations as gx

        logger.debug("validating %s (%d rows)", table.name, len(table.frame))
        asset = self.source.add_dataframe_asset(name=table.name)
        batch = asset.add_batch_definition_whole_dataframe(name=f"{table.name} (whole table)")
        definitions = []
        for severity in (CRITICAL, WARNING):
            expectations = [e for e in table.expectations if e.meta["severity"] == severity]
            if not expectations:
                continue
            suite = self.context.suites.add(gx.ExpectationSuite(name=f"{table.name}.{severity}"))
            for expectation in expectations:
                suite.add_expectation(expectation)
            definitions.append(self.context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
            ))
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": self.sample_size,
        }
        if table.index_columns:
            result_format["unexpected_index_column_names"] = list(table.index_columns)
        checkpoint = self.context.checkpoints.add(gx.Checkpoint(
            name=table.name, validation_definitions=definitions, result_format=result_format
        ))
        outcome = checkpoint.run(batch_parameters={"dataframe": table.frame})
        results = [r for suite in outcome.run_results.values() for r in suite.results]
        # Report in the order the expectations were declared, whatever order GX returns.
        order = {e.meta["check"]: i for i, e in enumerate(table.expectations)}
        results.sort(key=lambda r: order[r.expectation_config.meta["check"]])

        dataset = self.datasets.setdefault(table.dataset, {
            "success": True, "critical_failures": [], "warnings": {}, "tables": {},
            "expectations": [],
        })
        dataset["tables"][table.name] = {"rows": len(table.frame), "row_index": table.row_index}
        for result in results:
            entry = _summarise_result(result, table, self.sample_size)
            dataset["expectations"].append(entry)
            if entry["success"]:
                continue
            if entry["severity"] == CRITICAL:
                dataset["success"] = False
                dataset["critical_failures"].append(f"{table.name}.{entry['check']}")
            else:
                # Rows flagged (1 for a failed table-level expectation).
                dataset["warnings"][entry["check"]] = int(entry.get("unexpected_count") or 1)

    def build_docs(self) -> None:
        """Write the Data Docs site (expectation suites and validation results)."""
        if self.docs_dir is not None:
            self.context.build_data_docs(site_names=[DOCS_SITE])

    def summary(self) -> dict[str, Any]:
        """The deterministic summary of everything validated so far.

        Returns:
            Overall ``success``, ``critical_failures`` (``dataset/table.check``),
            ``warning_count`` (warning checks that flagged something) and, per dataset, its
            ``success``, ``critical_failures``, ``warnings`` (check to number of flagged rows),
            ``tables`` (rows and row-index convention) and ``expectations`` (one entry each).
        """
        failures = [
            f"{name}/{label}"
            for name, dataset in self.datasets.items()
            for label in dataset["critical_failures"]
        ]
        return {
            "success": not failures,
            "critical_failures": failures,
            "warning_count": sum(len(d["warnings"]) for d in self.datasets.values()),
            "datasets": self.datasets,
        }


def validate_raw(raw_dir: Path, config: ValidateConfig, docs_dir: Path | None) -> dict[str, Any]:
    """Validate the whole raw-data directory (FER2013, FER+, CK+, JAFFE).

    Args:
        raw_dir: The raw-data directory written by the download stage.
        config: Validation settings.
        docs_dir: Directory to write the Data Docs site into (None: no docs).

    Returns:
        The summary (see :meth:`Validation.summary`).

    Raises:
        DataError: A dataset file or directory is missing or unreadable.
    """
    raw_dir = Path(raw_dir)
    # Worker threads overlap the slow parts: pyarrow reads the CSVs while GX is imported (pure
    # Python, ~5 s), and the derived tables are computed while GX validates the files (mostly in
    # pyarrow and numpy, which release the GIL). Deriving during the import was tried: both
    # then fight for the GIL and the whole run gets slower.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        reading = pool.submit(read_csvs, raw_dir)
        validation = Validation(docs_dir, config.sample_size)
        fer2013, ferplus = reading.result()
        deriving = pool.submit(derive_tables, fer2013, ferplus, config)
        ckplus = image_table(raw_dir / CKPLUS_DIR, raw_dir)
        jaffe = image_table(raw_dir / JAFFE_DIR, raw_dir)
        for table in file_tables(RawFiles(fer2013, ferplus, ckplus, jaffe), config):
            validation.validate(table)
        for table in derived_tables(deriving.result(), config):
            validation.validate(table)
    validation.build_docs()
    return validation.summary()


def summary_lines(summary: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Short human-readable lines for the log: critical failures and warnings.

    Args:
        summary: A summary from :func:`validate_raw`.

    Returns:
        ``(failures, warnings)``, one line per failed expectation.
    """
    failures, warns = [], []
    for name, dataset in summary["datasets"].items():
        row_index = {t: info["row_index"] for t, info in dataset["tables"].items()}
        for entry in dataset["expectations"]:
            if entry["success"]:
                continue
            where = f" column {entry['column']}" if entry.get("column") else ""
            parts = [f"{name}: {entry['severity']} {entry['table']}.{entry['check']} "
                     f"({entry['expectation']}{where}) failed"]
            if "unexpected_count" in entry:
                parts.append(f"{entry['unexpected_count']} of {entry.get('element_count')} "
                             "values unexpected")
            if entry.get("unexpected_rows"):
                parts.append(f"rows ({row_index[entry['table']]}): {entry['unexpected_rows']}")
            if entry.get("unexpected_values"):
                parts.append(f"values: {entry['unexpected_values']}")
            if entry.get("missing_values"):
                parts.append(f"missing: {entry['missing_values']}")
            if "observed_value" in entry:
                parts.append(f"observed: {entry['observed_value']}")
            if entry.get("exception"):
                parts.append(f"error: {entry['exception']}")
            (failures if entry["severity"] == CRITICAL else warns).append("; ".join(parts))
    return failures, warns
