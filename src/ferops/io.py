"""Atomic, deterministic file output and the array container used between stages.

Every stage writes through these helpers so that a failure never leaves a half-written
output behind (write to a temporary sibling, then rename), and so that rerunning a stage on
the same inputs produces byte-identical files (DVC and users can then trust the hashes).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ferops.errors import DataError

logger = logging.getLogger(__name__)

# A fixed timestamp inside zip archives: numpy's own savez stamps the current time, which
# would make every rerun of a stage produce a different file.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CHUNK = 1 << 20


def _default_mode(directory: bool) -> int:
    """Permissions a plain open()/mkdir() would give (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Return the hex digest of a file (``sha256`` for downloads; ``md5`` is what DVC records)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


# Temporary siblings of an output: ``.<name>.<random>.tmp`` (the output being written),
# ``.<name>.old-<pid>`` (the previous output during the swap) and ``.<name>.<random>.scratch``
# (work space). A process killed with SIGKILL cannot remove its own, so the next writer of the
# same output does: DVC's repository lock means no other writer is at work on it.
_OUTPUT_TEMPORARIES = (".{name}.*.tmp", ".{name}.old-*")
_SCRATCH_TEMPORARIES = (".{name}.*.scratch",)


def _remove_stale(final: Path, patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        for stale in sorted(final.parent.glob(pattern.format(name=glob.escape(final.name)))):
            logger.info("removing %s, left behind by an interrupted run", stale)
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _new_sibling_directory(final: Path, suffix: str, stale: tuple[str, ...]) -> Path:
    """A new empty ``.<name>.<random><suffix>`` directory beside ``final``, after removing stale ones."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final, stale)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent))


@contextlib.contextmanager
def scratch_directory(next_to: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a work directory beside ``next_to`` (same file system), removed afterwards."""
    scratch = _new_sibling_directory(Path(next_to), ".scratch", _SCRATCH_TEMPORARIES)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success.

    Args:
        path: The final file path.

    Yields:
        A temporary path in the same directory (so the final rename is atomic).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final, _OUTPUT_TEMPORARIES)
    handle, temp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        os.chmod(temp, _default_mode(directory=False))
        os.replace(temp, final)
    finally:
        temp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces ``path`` only on success.

    The previous directory (if any) is kept until the new one is complete, then swapped out
    with two renames, so a failure at any point leaves the previous outputs intact.

    Args:
        path: The final directory path.

    Yields:
        A temporary directory in the same parent directory.
    """
    final = Path(path)
    temp = _new_sibling_directory(final, ".tmp", _OUTPUT_TEMPORARIES)
    try:
        yield temp
        os.chmod(temp, _default_mode(directory=True))
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(temp, final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if temp.exists():
            shutil.rmtree(temp)


def to_jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths (recursively) into plain JSON types."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    return value


def read_json(path: str | os.PathLike[str], produced_by: str, what: str = "report") -> dict[str, Any]:
    """Read a JSON file an earlier stage wrote.

    Args:
        path: The file.
        produced_by: The stage that writes it (named in the error, with the command to run).
        what: What the file is, for the error message.

    Raises:
        DataError: The file is missing or not valid JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; the {produced_by} stage writes it "
                        f"(run `dvc repro {produced_by}`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from error


def write_json(path: str | os.PathLike[str], data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON with sorted keys, atomically.

    Args:
        path: Destination file.
        data: A mapping of JSON-serialisable values (numpy types are converted).
    """
    text = json.dumps(to_jsonable(data), indent=2, sort_keys=True) + "\n"
    with atomic_file(path) as temp:
        temp.write_text(text, encoding="utf-8")


def save_arrays(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Save named arrays as an ``.npz`` that is byte-identical for identical inputs.

    The file is a standard uncompressed npz (``numpy.load`` reads it) written with a fixed
    timestamp and sorted member names, atomically.

    Args:
        path: Destination ``.npz`` file.
        arrays: Name to array. Object arrays are refused (they would need pickling).
    """
    with atomic_file(path) as temp:
        with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name in sorted(arrays):
                array = np.asarray(arrays[name])
                if array.dtype == object:
                    raise TypeError(f"array {name!r} has dtype object; use a fixed-width dtype")
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
                info.external_attr = 0o644 << 16
                zf.writestr(info, buffer.getvalue())


def load_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` written by :func:`save_arrays`.

    Args:
        path: The ``.npz`` file.

    Returns:
        Name to array.

    Raises:
        DataError: The file is missing or is not a readable npz.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (run the stage that produces it, e.g. `dvc repro`)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npz array file ({error})") from error
