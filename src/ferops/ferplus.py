"""FER+ relabelling: the crowd votes of ``fer2013new.csv`` turned into labels and soft targets.

FER+ (Barsoum et al., 2016) had 10 taggers vote per image over 8 emotions plus "unknown" and
"not a face". Its file has the same rows in the same order as fer2013.csv; it is joined **by
row position**: the numbers in its ``Image name`` column are not fer2013 row numbers.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd

from ferops.errors import DataError

logger = logging.getLogger(__name__)

VOTE_COLUMNS = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
    "unknown", "NF",
)
COLUMNS = ("Usage", "Image name", *VOTE_COLUMNS)
# Ten taggers voted on each image (Barsoum et al. 2016), so a row's votes add up to this.
TAGGERS = 10
# Image names as the FER+ generation script writes them; non-faces have an empty name. The
# number is not a fer2013 row number (see the module docstring).
IMAGE_NAME_REGEX = r"^fer[0-9]{7}\.png$"
UNKNOWN = VOTE_COLUMNS.index("unknown")
NOT_A_FACE = VOTE_COLUMNS.index("NF")
CONTEMPT = VOTE_COLUMNS.index("contempt")
# FER+ emotion column -> FER2013 class index (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
# 5 surprise, 6 neutral). Contempt has no FER2013 class.
TO_FER2013 = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5,
              "neutral": 6}
NO_MAJORITY = -1

# Why a row has no 7-class FER+ label (the `status` codes of :func:`relabel`).
STATUS_NAMES = ("labelled", "no_majority", "unknown", "not_a_face", "contempt")


def read_ferplus(path: str | os.PathLike[str], expected_usage: pd.Series | np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Read ``fer2013new.csv`` and check it lines up with FER2013 row by row.

    Args:
        path: The FER+ CSV.
        expected_usage: FER2013's ``Usage`` strings in row order; when given, the row count and
            every row's Usage must match.

    Returns:
        ``votes`` (uint8, shape (n, 10), columns as :data:`VOTE_COLUMNS`) and ``has_name``
        (bool: the row has an ``Image name``; FER+ leaves it empty for non-faces).

    Raises:
        DataError: Missing file, wrong columns, negative votes, or rows that do not line up.
    """
    source = os.fspath(path)
    try:
        frame = pd.read_csv(path, dtype={"Usage": "string", "Image name": "string"})
    except FileNotFoundError as error:
        raise DataError(f"{source}: file not found") from error
    if tuple(frame.columns) != COLUMNS:
        raise DataError(f"{source}: expected columns {list(COLUMNS)}, found {list(frame.columns)}")
    if expected_usage is not None:
        expected = np.asarray(expected_usage, dtype=str)
        if len(frame) != len(expected):
            raise DataError(
                f"{source}: {len(frame)} rows, but fer2013.csv has {len(expected)}; "
                "the two files must have the same rows in the same order"
            )
        differs = frame["Usage"].fillna("").to_numpy(dtype=str) != expected
        if differs.any():
            rows = np.flatnonzero(differs)[:5].tolist()
            raise DataError(f"{source}: column 'Usage' differs from fer2013.csv at rows {rows}")
    votes = frame[list(VOTE_COLUMNS)]
    if votes.isna().to_numpy().any() or (votes.to_numpy() < 0).any():
        rows = np.flatnonzero(votes.isna().any(axis=1) | (votes < 0).any(axis=1))[:5].tolist()
        raise DataError(f"{source}: vote columns must be non-negative integers, rows {rows}")
    has_name = frame["Image name"].fillna("").str.len().to_numpy() > 0
    return votes.to_numpy(dtype=np.uint8), has_name


def clean_votes(votes: np.ndarray, drop_single_votes: bool = True) -> np.ndarray:
    """Return the votes with single votes zeroed (FER+ treats a lone vote as tagger noise)."""
    votes = np.asarray(votes, dtype=np.int32)
    return np.where(votes <= 1, 0, votes) if drop_single_votes else votes.copy()


def majority_winner(votes: np.ndarray, drop_single_votes: bool = True, majority: float = 0.5
                    ) -> np.ndarray:
    """Apply the FER+ majority rule.

    After dropping single votes, the winner is the column with strictly more than ``majority``
    of the remaining votes.

    Args:
        votes: Vote counts, shape (n, 10), columns as :data:`VOTE_COLUMNS`.
        drop_single_votes: Zero out counts of 1 first.
        majority: Required share (strictly greater than).

    Returns:
        int8 index into :data:`VOTE_COLUMNS` per row, or :data:`NO_MAJORITY` (-1).
    """
    kept = clean_votes(votes, drop_single_votes)
    total = kept.sum(axis=1)
    winner = kept.argmax(axis=1)
    top = kept.max(axis=1)
    has_majority = (total > 0) & (top > majority * total)
    return np.where(has_majority, winner, NO_MAJORITY).astype(np.int8)


def relabel(votes: np.ndarray, drop_single_votes: bool = True, majority: float = 0.5
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn FER+ votes into 7-class FER2013-ordered labels and soft targets.

    Args:
        votes: Vote counts, shape (n, 10), columns as :data:`VOTE_COLUMNS`.
        drop_single_votes: Zero out counts of 1 first (FER+ paper).
        majority: The winner needs strictly more than this share of the remaining votes.

    Returns:
        ``label`` (int8 FER2013 index, -1 where there is no usable label), ``status`` (uint8
        index into :data:`STATUS_NAMES`: why a label is missing) and ``soft`` (float32, shape
        (n, 7), the emotion vote distribution in FER2013 order; all zeros when no emotion vote
        remains).
    """
    winner = majority_winner(votes, drop_single_votes, majority)
    to_fer = np.full(len(VOTE_COLUMNS), -1, dtype=np.int8)
    for name, index in TO_FER2013.items():
        to_fer[VOTE_COLUMNS.index(name)] = index
    label = np.where(winner >= 0, to_fer[np.maximum(winner, 0)], -1).astype(np.int8)
    status = np.zeros(len(winner), dtype=np.uint8)
    status[winner == NO_MAJORITY] = STATUS_NAMES.index("no_majority")
    status[winner == UNKNOWN] = STATUS_NAMES.index("unknown")
    status[winner == NOT_A_FACE] = STATUS_NAMES.index("not_a_face")
    status[winner == CONTEMPT] = STATUS_NAMES.index("contempt")

    kept = clean_votes(votes, drop_single_votes).astype(np.float32)
    soft = np.zeros((len(winner), len(TO_FER2013)), dtype=np.float32)
    for name, index in TO_FER2013.items():
        soft[:, index] = kept[:, VOTE_COLUMNS.index(name)]
    total = soft.sum(axis=1, keepdims=True)
    soft = np.divide(soft, total, out=np.zeros_like(soft), where=total > 0)
    return label, status, soft


# The FER+ benchmark's eight classes, in the order of its vote columns (microsoft/FERPlus).
FERPLUS_CLASSES = VOTE_COLUMNS[:8]
# A model's class name (this project's FER2013 names, or FER+'s own) -> its FER+ class.
FERPLUS_NAME = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                "sad": "sadness", "surprise": "surprise", "neutral": "neutral", "contempt": "contempt",
                **{name: name for name in FERPLUS_CLASSES}}


def protocol_labels(votes: np.ndarray) -> np.ndarray:
    """The FER+ benchmark's labels, exactly as microsoft/FERPlus defines them.

    Its ``majority`` mode (``src/ferplus.py``): single votes are dropped as noise; the label is
    the column with strictly more than half of the remaining votes; an image whose winner is
    *unknown* or *not a face*, or that has no such majority, is left out. Eight classes remain
    (:data:`FERPLUS_CLASSES`), contempt among them.

    Args:
        votes: Vote counts, shape (n, 10), columns as :data:`VOTE_COLUMNS`.

    Returns:
        int8 index into :data:`FERPLUS_CLASSES` per row, or -1 for a row the protocol leaves out.
    """
    winner = majority_winner(votes)
    return np.where((winner >= 0) & (winner < len(FERPLUS_CLASSES)), winner, -1).astype(np.int8)


def output_map(classes: tuple[str, ...] | list[str]) -> np.ndarray:
    """For each of a model's classes, the index of its FER+ class (a 7-class model has no contempt).

    Raises:
        DataError: A class has no FER+ counterpart.
    """
    unknown = [name for name in classes if name not in FERPLUS_NAME]
    if unknown:
        raise DataError(f"base.classes: {unknown} have no FER+ class; known: {sorted(FERPLUS_NAME)}")
    return np.asarray([FERPLUS_CLASSES.index(FERPLUS_NAME[name]) for name in classes], dtype=np.int64)

