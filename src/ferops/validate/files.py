"""Read the raw datasets into text tables, as they are on disk (the I/O edge of validation).

Nothing is coerced or checked here beyond "the file can be read": every CSV value stays text, so
that the expectations see (and can report) exactly what the file holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError

from ferops.errors import DataError

# Names inside the raw-data directory, as the download stage writes them.
FER2013_FILE = "fer2013.csv"
FERPLUS_FILE = "fer2013new.csv"
CKPLUS_DIR = "ckplus"
JAFFE_DIR = "jaffe"


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

