"""Where the YuNet face-detector model comes from: the checkout, a user cache, or a download.

``ferops predict``, ``ferops serve`` and the ``prepare`` stage detect faces with OpenCV's YuNet
(``face_detection_yunet_2023mar.onnx``, 232,589 bytes, MIT, from opencv/opencv_zoo). The
pipeline's ``download`` stage fetches it into the raw-data folder like the datasets. A model used
outside a checkout (``pip install ferops`` only) fetches it once into a user cache instead, from
``FEROPS_DATA_MIRROR`` when that is set, else from its canonical URL, always checking its sha256.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from ferops.download import DatasetSpec, acquire, mirror_locations
from ferops.errors import DataError, FeropsError
from ferops.io import file_digest
from ferops.runtime import nearest_folder_with

logger = logging.getLogger(__name__)

YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             "face_detection_yunet_2023mar.onnx")
# Where the download stage puts it in a checkout (dvc.yaml's paths.raw).
CHECKOUT_RAW_DIR = Path("data") / "raw"

YUNET_SPEC = DatasetSpec(
    name="yunet", file=YUNET_FILE, sha256=YUNET_SHA256, output=YUNET_FILE, origin={"url": YUNET_URL},
    how_to_get=f"Download {YUNET_URL} (MIT license, opencv/opencv_zoo).",
)


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The user cache: ``FEROPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/ferops``, else ``~/.cache/ferops``."""
    environ = os.environ if environ is None else environ
    if environ.get("FEROPS_CACHE_DIR"):
        return Path(environ["FEROPS_CACHE_DIR"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferops"


def verify_model(path: Path, expected: str = YUNET_SHA256) -> Path:
    """Refuse a model file whose sha256 is not the expected one (corrupt, truncated or another model).

    Returns:
        ``path``, verified.

    Raises:
        FeropsError: Naming the file, both checksums and what to do.
    """
    actual = file_digest(path)
    if actual != expected:
        raise FeropsError(
            f"{path}: not the expected face-detector model: sha256 {actual} ({path.stat().st_size:,} "
            f"bytes), expected {expected} ({YUNET_FILE}, 232,589 bytes). Delete the file so it is "
            "fetched again, or pass another YuNet model explicitly with --detector-model."
        )
    return path


def yunet_model(start: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                spec: DatasetSpec = YUNET_SPEC) -> Path:
    """Return a verified local copy of the YuNet model, fetching it into the user cache if needed.

    Looks, in order: in the checkout that contains ``start`` (``data/raw/``, written by the
    download stage), in the user cache (:func:`cache_dir`), then fetches it from
    ``FEROPS_DATA_MIRROR`` (a folder or URL) or from its canonical URL into the cache (written to a
    temporary name and renamed once verified, so an interrupted download leaves nothing behind).

    Args:
        start: Where to look for a checkout (default: the working directory).
        environ: Environment variables (default: ``os.environ``).
        spec: The model's file name, checksum and canonical URL.

    Returns:
        The model file.

    Raises:
        FeropsError: A found copy fails its checksum, or the model cannot be fetched (offline):
            the message says what to download and where to put it.
    """
    environ = os.environ if environ is None else environ
    root = nearest_folder_with(start if start is not None else Path.cwd(), "params.yaml", "dvc.yaml")
    if root is not None and (root / CHECKOUT_RAW_DIR / spec.file).is_file():
        return verify_model(root / CHECKOUT_RAW_DIR / spec.file, spec.sha256)
    cached = cache_dir(environ) / spec.file
    if cached.is_file():
        return verify_model(cached, spec.sha256)
    locations = mirror_locations(environ.get("FEROPS_DATA_MIRROR"), None, Path.cwd())
    cached.parent.mkdir(parents=True, exist_ok=True)
    scratch = cached.parent / f".{spec.file}.{os.getpid()}.scratch"
    scratch.mkdir(exist_ok=True)
    try:
        fetched, source = acquire(spec, locations, scratch)
        os.replace(fetched, cached)
    except DataError as error:
        raise FeropsError(
            f"the YuNet face-detector model is not available and could not be fetched:\n{error}\n"
            f"Offline? On a connected machine download {spec.origin.url} (sha256 {spec.sha256}) and put it "
            f"at {cached}, or pass --detector-model PATH (or --detector haar to use OpenCV's Haar "
            "cascade instead)."
        ) from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("fetched the YuNet face detector from %s into %s", source, cached)
    return cached
