"""Media for `ferops predict` and `ferops serve`: finding inputs, reading images and video frames.

Annotated copies are written here too. Images are checked before they are decoded: Pillow reads
only the header, which gives the dimensions, and an image above :data:`DEFAULT_MAX_PIXELS`
(``--max-pixels``) is refused there. A flat 20000x20000 PNG is under 1 MB on disk but 1.2 GB as
a BGR array, and face detection on it needs several times that: without the check one upload
can exhaust the machine's memory. Only then does OpenCV decode the pixels, to 8-bit BGR like a
camera frame.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from ferops.errors import FeropsError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".pgm", ".ppm", ".pbm", ".pnm", ".jp2"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
# Suffixes cv2.imwrite writes as-is; other annotated images are saved as PNG.
_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Largest image (width x height) decoded: 40 megapixels is more than any phone or DSLR photo
# (a 7500x5000 frame is 37.5 MP). An image at the limit is 120 MB as BGR; with the Haar detector's
# working copies `ferops predict` peaked at about 1.4 GB on one (measured on an 8000x5000 photo).
DEFAULT_MAX_PIXELS = 40_000_000
# The most bytes per pixel an image file needs (16-bit RGBA, uncompressed), plus room for metadata
# (EXIF, ICC profiles, thumbnails): a file larger than this for its pixel limit is not read.
_MAX_BYTES_PER_PIXEL = 8
_METADATA_SLACK = 16 * 2**20
_EXPECTED = "expected JPEG, PNG, BMP, TIFF, WebP or PNM"


class ImageError(FeropsError):
    """An input is not an image that can be processed (the message names it and says why)."""


class EmptyImageError(ImageError):
    """The file or upload has no bytes at all."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the limit (or its file is too large for any such image)."""


class UndecodableImageError(ImageError):
    """The bytes are not an image in a supported format."""


@dataclass(frozen=True)
class InputSpec:
    """One input to process: a file found on the command line or in a folder."""

    path: Path
    kind: str  # "image", "video" or "missing"
    # Relative output path for annotated copies (keeps a folder's structure).
    relative: Path


def expand_inputs(paths: Iterable[str | os.PathLike[str]]) -> list[InputSpec]:
    """Turn command-line paths into inputs: files as given, folders walked recursively (sorted).

    Inside folders only files with an image or video suffix are taken (and hidden files are
    skipped); a file named explicitly is always tried. A video is recognised by its suffix,
    everything else is read as an image.

    Args:
        paths: Files and folders.

    Returns:
        The inputs, in order; a path that does not exist gives kind ``"missing"``.
    """
    specs: list[InputSpec] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            skipped = 0
            for file in found:
                suffix = file.suffix.lower()
                if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
                    kind = "video" if suffix in VIDEO_SUFFIXES else "image"
                    specs.append(InputSpec(file, kind, Path(path.resolve().name) / file.relative_to(path)))
                else:
                    skipped += 1
            if skipped:
                logger.info("%s: skipped %d file(s) without an image or video suffix", path, skipped)
        elif path.is_file():
            kind = "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"
            specs.append(InputSpec(path, kind, Path(path.name)))
        else:
            specs.append(InputSpec(path, "missing", Path(path.name)))
    return specs


def check_max_pixels(max_pixels: int) -> int:
    """Validate a pixel limit (``--max-pixels``) and return it as an int.

    Raises:
        FeropsError: The limit is not a positive number, or is above the largest header Pillow
            reads (twice ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels; larger ones it
            refuses as decompression bombs without giving their size).
    """
    from PIL import Image

    ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if int(max_pixels) < 1:
        raise FeropsError(f"--max-pixels must be >= 1, got {max_pixels}")
    if ceiling and int(max_pixels) > ceiling:
        raise FeropsError(f"--max-pixels must be at most {ceiling:,} (Pillow, which reads the image "
                          f"headers, refuses larger images as decompression bombs), got {max_pixels}")
    return int(max_pixels)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} megapixels"


def _too_large(name: str, what: str, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"{name}: image too large: {what}; the limit is {max_pixels:,} pixels "
                              f"({_megapixels(max_pixels)}, --max-pixels)")


def image_dimensions(stream: IO[bytes], name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read an image's width and height from its header, without decoding the pixels.

    Args:
        stream: The image file or bytes, positioned at its start (read only as far as the header).
        name: The file or upload name, for messages.
        max_pixels: Largest accepted width x height.

    Returns:
        (width, height).

    Raises:
        ImageTooLargeError: The header declares more than ``max_pixels`` pixels.
        UndecodableImageError: The header is not one of a supported image format.
    """
    from PIL import Image

    try:
        # Image.open parses the header only; the pixel data is never read here. Its warning for
        # headers between Pillow's limit and twice that is noise: the size is checked below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(stream) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:
        # Pillow refuses headers above twice its own limit before returning a size.
        bomb = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise _too_large(name, f"its header declares more than {_megapixels(bomb)}", max_pixels) from error
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as error:
        # Pillow identifies every format OpenCV decodes for these suffixes; anything else (or a
        # truncated header) would reach OpenCV unchecked, so it is refused here.
        raise UndecodableImageError(f"{name}: not an image OpenCV can decode ({_EXPECTED})") from error
    pixels = width * height
    if pixels > max_pixels:
        raise _too_large(name, f"{width}x{height} is {pixels:,} pixels ({_megapixels(pixels)})", max_pixels)
    return width, height


def _imdecode(data: bytes, name: str) -> np.ndarray:
    # IMREAD_COLOR gives 8-bit BGR whatever the file holds (gray, alpha, 16-bit), like a camera frame.
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:  # OpenCV raises (rather than returning None) for some malformed files
        raise UndecodableImageError(f"{name}: not an image OpenCV can decode ({_EXPECTED})") from error
    if image is None:
        raise UndecodableImageError(f"{name}: not an image OpenCV can decode ({_EXPECTED})")
    return image


def decode_image(data: bytes, name: str = "image", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an encoded image (file bytes) to 8-bit BGR, refusing it first if it is too large.

    Args:
        data: The encoded image (e.g. an upload).
        name: The file or upload name, for messages.
        max_pixels: Largest accepted width x height (checked from the header, before decoding).

    Returns:
        The (h, w, 3) uint8 BGR image.

    Raises:
        EmptyImageError: ``data`` is empty.
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        UndecodableImageError: ``data`` is not a supported image.
    """
    if not data:
        raise EmptyImageError(f"{name}: empty file (0 bytes)")
    image_dimensions(io.BytesIO(data), name, max_pixels)
    return _imdecode(data, name)


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as an 8-bit BGR array, refusing it first if it is too large.

    The header is read before the rest of the file, and a file larger than any image of
    ``max_pixels`` pixels can be is not read at all, so memory stays bounded whatever the file.

    Args:
        path: The image file.
        max_pixels: Largest accepted width x height.

    Returns:
        The (h, w, 3) uint8 BGR image.

    Raises:
        EmptyImageError: The file has 0 bytes.
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        UndecodableImageError: The file is not a supported image.
        FeropsError: The file cannot be read.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size == 0:
                raise EmptyImageError(f"{path}: empty file (0 bytes)")
            image_dimensions(stream, str(path), max_pixels)
            limit = _MAX_BYTES_PER_PIXEL * max_pixels + _METADATA_SLACK
            if size > limit:
                raise _too_large(str(path), f"the file is {size:,} bytes, more than any image within the "
                                 f"pixel limit needs ({limit:,} bytes)", max_pixels)
            stream.seek(0)
            data = stream.read()
    except OSError as error:
        raise FeropsError(f"{path}: cannot read the file ({error.strerror or error})") from error
    return _imdecode(data, str(path))


def check_frame_size(width: int, height: int, name: str, max_pixels: int) -> None:
    """Refuse video frames above the pixel limit, as for images.

    Raises:
        ImageTooLargeError: ``width x height`` is above ``max_pixels``.
    """
    if width * height > max_pixels:
        raise _too_large(name, f"its frames are {width}x{height} ({_megapixels(width * height)})", max_pixels)


def read_frames(capture: Any, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of an opened ``cv2.VideoCapture`` until it ends or ``max_frames`` were read."""
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        count += 1
        yield frame


def annotated_path(out_dir: Path, relative: Path, kind: str, used: set[Path]) -> Path:
    """Where the annotated copy of an input goes: ``relative`` under ``out_dir``, never twice the same.

    Videos and cameras become ``.mp4``; images keep their suffix when OpenCV writes it, else ``.png``.
    """
    suffix = ".mp4" if kind in ("video", "camera") else (
        relative.suffix.lower() if relative.suffix.lower() in _WRITABLE else ".png")
    target = out_dir / relative.with_suffix(suffix)
    stem, n = target.stem, 2
    while target in used:  # two inputs with the same name (e.g. a.jpg and a.png -> a.png)
        target = target.with_name(f"{stem}-{n}{suffix}")
        n += 1
    used.add(target)
    return target


def write_image(path: Path, image: np.ndarray) -> None:
    """Write an image in the format its suffix names (creating folders).

    Raises:
        FeropsError: OpenCV cannot encode it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise FeropsError(f"{path}: OpenCV could not encode the annotated image")
    data.tofile(path)


def open_video_writer(path: Path, fps: float, width: int, height: int) -> Any:
    """Open an MP4 writer (mp4v) for annotated frames (creating folders).

    Raises:
        FeropsError: OpenCV cannot open the writer.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # mp4v is in every OpenCV wheel (no system codec needed); browsers may want H.264 re-encoding.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise FeropsError(f"{path}: OpenCV could not open a video writer (mp4v, {width}x{height})")
    return writer
