"""The expectations: which Great Expectations checks apply to which table, and how severe.

Declarative lists only; :mod:`ferops.validate.runner` runs them. Each expectation carries our
own check name and severity in its ``meta``: ``critical`` (a failure fails the stage) or
``warning`` (known quirks of the original data: reported and counted, never fatal).
``great_expectations`` is imported inside the functions: it takes ~5 s to import, which the
runner overlaps with reading the data, so importing ferops.validate stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ferops.fer2013 import COLUMNS as FER2013_COLUMNS
from ferops.fer2013 import PIXELS_REGEX, USAGES
from ferops.ferplus import COLUMNS as FERPLUS_COLUMNS
from ferops.ferplus import IMAGE_NAME_REGEX as FERPLUS_NAME_REGEX
from ferops.ferplus import TAGGERS as FERPLUS_TAGGERS
from ferops.ferplus import VOTE_COLUMNS as FERPLUS_VOTES
from ferops.validate.config import ValidationSettings
from ferops.validate.files import RawFiles
from ferops.validate.tables import DerivedTables

CRITICAL = "critical"
WARNING = "warning"

VOTE_REGEX = r"^[0-9]+$"
CKPLUS_NAME_REGEX = r"^S[0-9]{3}_[0-9]{3}_[0-9]{8}\.png$"
JAFFE_NAME_REGEX = r"^[A-Z]{2}\.[A-Z]{2}\d\.\d+\.tiff$"

# How each table names an offending row (reported with every failure).
CSV_ROW_INDEX = "0-based CSV data row; the header is not counted"
PATH_INDEX = "file path relative to the raw-data directory"
SPLIT_INDEX = "FER2013 split (Usage value)"


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


def _expect(kind: str, check: str, severity: str, description: str, **kwargs: Any) -> Any:
    """Build one GX expectation, tagged with our check name and severity in its meta."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, kind)
    return cls(meta={"check": check, "severity": severity}, description=description, **kwargs)


def _bounds(expected: int, tolerance: float) -> tuple[int, int]:
    return math.ceil(expected * (1 - tolerance)), math.floor(expected * (1 + tolerance))


def file_tables(raw: RawFiles, settings: ValidationSettings) -> list[Table]:
    """The files as read, with their critical and warning expectations.

    Args:
        raw: The files as read.
        settings: Validation settings.

    Returns:
        The tables to validate, in report order.
    """
    c, w = CRITICAL, WARNING
    fer, ckplus, jaffe = settings.params.fer2013, settings.params.ckplus, settings.params.jaffe
    lo, hi = _bounds(sum(fer.rows.values()), fer.row_tolerance)
    fer2013_rows = len(raw.fer2013)
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
                        f"The header is exactly {','.join(FER2013_COLUMNS)}.",
                        column_list=list(FER2013_COLUMNS)),
                _expect("ExpectTableRowCountToBeBetween", "row_count", c,
                        "Total rows match the sum of the expected split sizes.",
                        min_value=lo, max_value=hi),
                _expect("ExpectColumnValuesToBeInSet", "emotion_in_range", c,
                        f"Labels are 0..{len(settings.classes) - 1}.", column="emotion",
                        value_set=[str(i) for i in range(len(settings.classes))]),
                _expect("ExpectColumnValuesToBeInSet", "usage_known", c,
                        "Usage is one of the known splits.", column="Usage",
                        value_set=list(USAGES)),
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
                        f"FER+ has {fer2013_rows:,} rows, as many as fer2013.csv.",
                        value=fer2013_rows),
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
                        f"CK+ has {ckplus.files} files.", value=ckplus.files),
                _expect("ExpectColumnDistinctValuesToEqualSet", "emotion_folders", c,
                        "Files sit in exactly the expected emotion folders.", column="folder",
                        value_set=list(ckplus.classes)),
                *_image_checks(ckplus.image_size),
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
                        f"JAFFE has {jaffe.files} files.", value=jaffe.files),
                _expect("ExpectColumnValuesToMatchRegex", "file_name_format", c,
                        "File names look like KA.AN1.39.tiff.", column="name",
                        regex=JAFFE_NAME_REGEX),
                *_image_checks(jaffe.image_size),
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


def derived_tables(derived: DerivedTables, settings: ValidationSettings) -> list[Table]:
    """The derived tables, with their critical and warning expectations.

    Args:
        derived: The derived tables.
        settings: Validation settings.

    Returns:
        The tables to validate, in report order.
    """
    from great_expectations.expectations.row_conditions import Column

    c, w = CRITICAL, WARNING
    fer = settings.params.fer2013
    tables = []
    if derived.fer2013_rows is not None:
        pixels = settings.image_size**2
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
                        f"Images are not near-blank (pixel std >= {fer.blank_std_max:g}).",
                        column="pixel_std", min_value=fer.blank_std_max),
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
        for split, expected in fer.rows.items():
            s_lo, s_hi = _bounds(expected, fer.row_tolerance)
            checks.append(_expect(
                "ExpectColumnValuesToBeBetween", f"rows_{split}", c,
                f"{split} has {expected} rows (relative tolerance {fer.row_tolerance:g}).",
                column="rows", min_value=s_lo, max_value=s_hi,
                row_condition=Column("Usage") == split,
            ))
        for name, (s_min, s_max) in fer.class_share.items():
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
