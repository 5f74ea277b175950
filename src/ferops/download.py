"""Locate, fetch, verify and unpack the datasets the pipeline needs.

Each dataset is declared (in params.yaml) with its file name and sha256. A file is looked for
in each location in turn (a mirror directory or an http(s) URL), then at its public origin
where one exists. Whatever the source, nothing is used unless its checksum matches.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import Field, field_validator

from ferops.config import Section
from ferops.errors import DataError
from ferops.io import file_digest

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
_PROGRESS_STEP = 0.1
_SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"


class Origin(Section):
    """A dataset's public origin: a URL, or a Kaggle dataset (and file) fetched with kagglehub."""

    url: str | None = None
    kaggle_dataset: str | None = None
    kaggle_file: str | None = None


class DatasetSpec(Section):
    """One dataset file as declared in params.yaml (``download.datasets.<name>``).

    Attributes:
        name: Short name (``fer2013``, ``ferplus``, ``ckplus``, ``jaffe``): the mapping key.
        file: File name to look for (e.g. ``fer2013.csv.gz``).
        sha256: Expected sha256 of ``file``.
        output: Name of the output under the raw-data directory (a file, or a directory for zips).
        plain_file: An uncompressed alternative to a ``.gz`` file (optional).
        plain_sha256: Expected sha256 of ``plain_file`` (and of ``file`` once decompressed).
        origin: Public origin (None: only mirrors).
        how_to_get: What to tell the user when the file cannot be found anywhere.
    """

    name: str
    file: str = Field(min_length=1)
    sha256: str = Field(pattern=_SHA256_PATTERN)
    output: str = Field(min_length=1)
    plain_file: str | None = None
    plain_sha256: str | None = Field(None, pattern=_SHA256_PATTERN)
    origin: Origin = Origin()
    how_to_get: str = ""

    @field_validator("sha256", "plain_sha256")
    @classmethod
    def _lower(cls, value: str | None) -> str | None:
        return value.lower() if value else value

    @field_validator("origin", mode="before")
    @classmethod
    def _no_origin(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("how_to_get")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @property
    def kind(self) -> str:
        """How the verified file becomes an output: ``zip``, ``gzip`` or ``copy``."""
        if self.file.endswith(".zip"):
            return "zip"
        if self.file.endswith(".gz"):
            return "gzip"
        return "copy"


@dataclass(frozen=True)
class Location:
    """A place to look for dataset files.

    Attributes:
        label: Where this location came from (shown in messages), e.g. ``FEROPS_DATA_MIRROR``.
        address: A directory path or an http(s) URL.
    """

    label: str
    address: str

    @property
    def is_url(self) -> bool:
        """True when the address is an http(s) URL."""
        return urllib.parse.urlparse(self.address).scheme in ("http", "https")

    def describe(self, file: str) -> str:
        """Return where ``file`` would be in this location (for messages)."""
        if self.is_url:
            return f"{self.address.rstrip('/')}/{file} ({self.label})"
        return f"{Path(self.address) / file} ({self.label})"


class DownloadConfig(Section):
    """The ``download`` params section.

    Attributes:
        mirror: Directory or http(s) URL to look in first (``FEROPS_DATA_MIRROR`` overrides it).
        datasets: Dataset name to its declaration.
    """

    mirror: str | None = None
    datasets: dict[str, DatasetSpec] = Field(min_length=1)

    @field_validator("datasets", mode="before")
    @classmethod
    def _name_datasets(cls, value: Any) -> Any:
        # The dataset's name is its key; a `name:` written inside an entry would be ignored.
        if not isinstance(value, Mapping):
            return value
        named = {}
        for name, entry in value.items():
            if isinstance(entry, Mapping):
                if "name" in entry:
                    raise ValueError(f"{name}.name: not a params key (a dataset is named by its key)")
                entry = {**entry, "name": str(name)}
            named[name] = entry
        return named

    @property
    def specs(self) -> list[DatasetSpec]:
        """The datasets, in the order params.yaml lists them."""
        return list(self.datasets.values())


def mirror_locations(env_mirror: str | None, params_mirror: str | None, root: Path) -> list[Location]:
    """Return the mirror locations to search, most specific first.

    Args:
        env_mirror: Value of ``FEROPS_DATA_MIRROR`` (or None).
        params_mirror: ``download.mirror`` from params.yaml (or None).
        root: Directory that relative mirror paths are resolved against (the repository root).

    Returns:
        The locations, without duplicates.
    """
    locations: list[Location] = []
    for label, address in (("FEROPS_DATA_MIRROR", env_mirror), ("download.mirror", params_mirror)):
        if not address:
            continue
        location = Location(label, address)
        if not location.is_url:
            path = Path(address).expanduser()
            location = Location(label, str(path if path.is_absolute() else (root / path).resolve()))
        if all(existing.address != location.address for existing in locations):
            locations.append(location)
    return locations


def _log_progress(name: str, done: int, total: int | None, next_mark: float) -> float:
    if not total:
        return next_mark
    fraction = done / total
    if fraction >= next_mark:
        logger.info("%s: %3.0f%% of %.1f MB", name, 100 * fraction, total / 1e6)
        while fraction >= next_mark:
            next_mark += _PROGRESS_STEP
    return next_mark


def _fetch_url(url: str, destination: Path) -> bool:
    """Download ``url`` to ``destination``; return False on HTTP 404, raise on other errors."""
    try:
        response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - http(s) only, checked
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        raise DataError(f"{url}: cannot connect ({error})") from error
    with response, open(destination, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        done, next_mark = 0, _PROGRESS_STEP
        while chunk := response.read(_CHUNK):
            out.write(chunk)
            done += len(chunk)
            next_mark = _log_progress(destination.name, done, total, next_mark)
    if total is not None and done != total:
        raise DataError(f"{url}: download truncated ({done} of {total} bytes)")
    return True


def _fetch_kaggle(dataset: str, file: str, destination: Path) -> None:
    """Download one file of a Kaggle dataset with kagglehub (needs the user's credentials)."""
    try:
        import kagglehub
    except ImportError as error:  # pragma: no cover - kagglehub is a declared dependency
        raise DataError("kagglehub is not installed (pip install kagglehub)") from error
    try:
        local = kagglehub.dataset_download(dataset, path=file)
    except Exception as error:  # kagglehub raises many types (auth, HTTP, not found)
        raise DataError(f"Kaggle dataset {dataset}/{file}: {error}") from error
    shutil.copyfile(local, destination)


def _diagnose(path: Path) -> str:
    """Explain why a file with a wrong checksum is wrong, where that can be told."""
    name = path.name
    try:
        if name.endswith(".gz"):
            with gzip.open(path, "rb") as stream:
                while stream.read(_CHUNK * 8):
                    pass
        elif name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
                if bad:
                    return f"; member {bad} of the zip is corrupt"
    except EOFError:
        return "; the gzip stream is truncated (an interrupted download or copy?)"
    except (OSError, zlib.error, zipfile.BadZipFile) as error:
        return f"; the file is not a valid {name.rsplit('.', 1)[-1]} archive ({error})"
    return ""


def _verify(path: Path, expected: str, source: str) -> None:
    actual = file_digest(path)
    if actual != expected:
        raise DataError(
            f"{source}: sha256 mismatch: expected {expected}, got {actual} "
            f"({path.stat().st_size:,} bytes){_diagnose(path)}. "
            "Replace the file with an intact copy or fix the checksum in params.yaml."
        )


def _candidates(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(file name, expected sha256) pairs to look for, the declared file first."""
    pairs = [(spec.file, spec.sha256)]
    if spec.plain_file and spec.plain_sha256:
        pairs.append((spec.plain_file, spec.plain_sha256))
    return pairs


def acquire(spec: DatasetSpec, locations: Sequence[Location], workdir: Path) -> tuple[Path, str]:
    """Find the dataset file, copy or download it into ``workdir`` and verify its checksum.

    Args:
        spec: The dataset.
        locations: Mirrors to search, in order.
        workdir: A scratch directory for the fetched file.

    Returns:
        The verified local file and a description of where it came from.

    Raises:
        DataError: The file is nowhere to be found, or a found copy fails its checksum.
    """
    looked: list[str] = []
    for location in locations:
        for file, expected in _candidates(spec):
            target = workdir / file
            where = location.describe(file)
            looked.append(where)
            if location.is_url:
                url = f"{location.address.rstrip('/')}/{urllib.parse.quote(file)}"
                logger.info("%s: downloading %s", spec.name, url)
                if not _fetch_url(url, target):
                    continue
            else:
                source = Path(location.address) / file
                if not source.is_file():
                    continue
                logger.info("%s: copying %s", spec.name, source)
                shutil.copyfile(source, target)
            _verify(target, expected, where)
            return target, where
    origin = spec.origin
    if origin.url:
        target = workdir / spec.file
        looked.append(f"{origin.url} (public origin)")
        logger.info("%s: downloading from its public origin %s", spec.name, origin.url)
        if _fetch_url(origin.url, target):
            _verify(target, spec.sha256, origin.url)
            return target, origin.url
    elif origin.kaggle_dataset:
        file = origin.kaggle_file or spec.plain_file or spec.file
        expected = spec.plain_sha256 if file == spec.plain_file else spec.sha256
        target = workdir / file
        where = f"kaggle:{origin.kaggle_dataset}/{file}"
        looked.append(f"{where} (public origin)")
        logger.info("%s: downloading %s with kagglehub", spec.name, where)
        try:
            _fetch_kaggle(origin.kaggle_dataset, file, target)
        except DataError as error:
            looked[-1] += f": {error}"
        else:
            _verify(target, expected or spec.sha256, where)
            return target, where
    searched = "\n  ".join(looked) if looked else "(no mirror configured and no public origin)"
    hint = f"\nHow to get it: {spec.how_to_get}" if spec.how_to_get else ""
    raise DataError(
        f"dataset {spec.name!r} ({spec.file}) not found. Looked in:\n  {searched}{hint}\n"
        "Point the pipeline at your copy with FEROPS_DATA_MIRROR=/path/to/dir "
        "(or download.mirror in params.yaml)."
    )


def _safe_members(archive: zipfile.ZipFile, source: str) -> list[zipfile.ZipInfo]:
    members = []
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.filename.startswith("/") or ".." in parts:
            raise DataError(f"{source}: unsafe path in zip: {info.filename!r}")
        if info.is_dir() or parts[-1].startswith(".") or "__MACOSX" in parts:
            continue
        members.append(info)
    return members


def extract_zip(archive_path: Path, destination: Path, source: str) -> int:
    """Extract a zip into ``destination``, dropping a single top-level folder if there is one.

    Args:
        archive_path: The zip file.
        destination: Directory to create and fill.
        source: Where the zip came from (for messages).

    Returns:
        The number of files extracted.
    """
    try:
        archive = zipfile.ZipFile(archive_path)
    except zipfile.BadZipFile as error:
        raise DataError(f"{source}: not a zip archive ({error})") from error
    with archive:
        members = _safe_members(archive, source)
        tops = {PurePosixPath(info.filename).parts[0] for info in members}
        strip = 1 if len(tops) == 1 and all(
            len(PurePosixPath(info.filename).parts) > 1 for info in members
        ) else 0
        destination.mkdir(parents=True, exist_ok=True)
        for info in members:
            relative = PurePosixPath(*PurePosixPath(info.filename).parts[strip:])
            target = destination.joinpath(*relative.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as stream, open(target, "wb") as out:
                shutil.copyfileobj(stream, out, _CHUNK)
    return len(members)


def gunzip_verified(archive_path: Path, destination: Path, expected: str | None, source: str) -> None:
    """Decompress a gzip file, checking the decompressed sha256 when one is given."""
    digest = hashlib.sha256()
    try:
        with gzip.open(archive_path, "rb") as stream, open(destination, "wb") as out:
            while chunk := stream.read(_CHUNK * 8):
                digest.update(chunk)
                out.write(chunk)
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{source}: cannot decompress ({error})") from error
    if expected and digest.hexdigest() != expected:
        raise DataError(
            f"{source}: decompressed content has sha256 {digest.hexdigest()}, expected {expected}"
        )


def materialise(spec: DatasetSpec, fetched: Path, source: str, out_dir: Path) -> dict[str, Any]:
    """Turn a verified dataset file into its output under ``out_dir``.

    Zips are extracted into ``out_dir/<output>/``, gzip files decompressed to ``out_dir/<output>``
    (their content is checked against ``plain_sha256``), other files copied as they are.

    Args:
        spec: The dataset.
        fetched: The verified file (as returned by :func:`acquire`).
        source: Where it came from (for messages and the report).
        out_dir: The (temporary) raw-data directory being filled.

    Returns:
        A provenance record for the download report.
    """
    target = out_dir / spec.output
    record: dict[str, Any] = {
        "file": fetched.name,
        "source": source,
        "sha256": file_digest(fetched),
        "bytes": fetched.stat().st_size,
        "output": spec.output,
    }
    if spec.kind == "zip":
        record["files_extracted"] = extract_zip(fetched, target, source)
    elif fetched.name.endswith(".gz"):
        gunzip_verified(fetched, target, spec.plain_sha256, source)
    else:
        os.replace(fetched, target)
    logger.info("%s: verified sha256 and wrote %s", spec.name, target.name)
    return record


def download_all(
    specs: Sequence[DatasetSpec], locations: Sequence[Location], out_dir: Path, scratch: Path
) -> dict[str, Any]:
    """Acquire, verify and unpack every dataset into ``out_dir``.

    Args:
        specs: Datasets to fetch.
        locations: Mirrors to search, in order.
        out_dir: Directory to fill (normally a temporary one the caller renames into place).
        scratch: Directory for fetched archives (emptied as each dataset is done).

    Returns:
        The download report: per dataset, where it came from and its checksum.
    """
    report: dict[str, Any] = {"datasets": {}}
    for spec in specs:
        fetched, source = acquire(spec, locations, scratch)
        report["datasets"][spec.name] = materialise(spec, fetched, source, out_dir)
        fetched.unlink(missing_ok=True)
    report["locations"] = [f"{loc.label}: {loc.address}" for loc in locations]
    return report
