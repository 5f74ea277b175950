"""External test sets for cross-dataset evaluation: CK+48 and JAFFE, labelled in FER2013 order.

Both become the same arrays as the FER2013 splits (48x48 uint8 faces, int8 labels in the
FER2013 class order) plus per-image metadata, all with fixed-width dtypes so they can be saved
without pickling. CK+48 is already cropped to 48x48; JAFFE holds 256x256 studio portraits, so
its faces are detected and cropped the way FER2013 faces are framed (see :mod:`ferops.faces`).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from ferops.errors import DataError, ParamsError
from ferops.faces import DEFAULT_MARGIN, DEFAULT_SIZE, FaceDetector, center_crop, crop_detected
from ferops.figures import image_grid

logger = logging.getLogger(__name__)

# FER2013 class indices: 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral.
# CK+ "contempt" has no FER2013 class; it keeps its own index so evaluation can mask it.
CONTEMPT = 7
CKPLUS_LABELS: dict[str, int] = {
    "anger": 0,
    "disgust": 1,
    "fear": 2,
    "happy": 3,
    "sadness": 4,
    "surprise": 5,
    "contempt": CONTEMPT,
}
JAFFE_LABELS: dict[str, int] = {"AN": 0, "DI": 1, "FE": 2, "HA": 3, "SA": 4, "SU": 5, "NE": 6}

CKPLUS_SIZE = 48
_CKPLUS_NAME = re.compile(r"^S(\d+)_(\d+)_(\d+)\.png$")
_CKPLUS_LAYOUT = "<dir>/<emotion>/S<subject>_<sequence>_<frame>.png, 48x48 grayscale"
# e.g. KA.AN1.39.tiff: subject, expression code + repetition, running number.
_JAFFE_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$")
_JAFFE_LAYOUT = "<dir>/<SUBJECT>.<EXPRESSION><n>.<number>.tiff, e.g. KA.AN1.39.tiff"
# Fallback crop when no face is found: the cascade's face box is 147-176 px (median 161) of
# the 256 px JAFFE portraits, so a centred square of this fraction of the side (grown by the
# same margin) frames about the same face.
JAFFE_FACE_FRACTION = 0.63
_PROGRESS_EVERY = 50

OnNoFace = Literal["center_crop", "drop"]


def read_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as a 2-D uint8 grayscale array.

    Palette images (JAFFE has 23 written by IrfanView with an identity grayscale palette) are
    converted through their palette, which is lossless for a grayscale palette.

    Args:
        path: Image file (any format Pillow reads).

    Returns:
        (height, width) uint8 array.

    Raises:
        DataError: The file is missing, unreadable, or not an 8-bit gray/palette/RGB image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA", "LA", "RGB", "RGBA"):
                image = image.convert("L")
            elif image.mode != "L":
                raise DataError(f"{path}: unsupported image mode {image.mode!r} (expected 8-bit "
                                "grayscale, palette or RGB)")
            return np.array(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from error


def _require_dir(directory: Path, what: str, layout: str) -> None:
    if not directory.is_dir():
        raise DataError(f"{directory}: {what} directory not found (expected {layout}; "
                        "run the download stage, e.g. `dvc repro download`)")


def load_ckplus(
    directory: str | os.PathLike[str], size: int = CKPLUS_SIZE
) -> dict[str, np.ndarray]:
    """Load every CK+48 image with its FER2013-order label and subject/sequence/frame.

    Args:
        directory: Folder holding one sub-folder per emotion (``anger``, ``contempt``,
            ``disgust``, ``fear``, ``happy``, ``sadness``, ``surprise``) of
            ``S<subject>_<sequence>_<frame>.png`` files.
        size: Expected image side (CK+48: 48).

    Returns:
        Arrays sorted by relative path: ``images`` uint8 (n, size, size); ``label`` int8
        (:data:`CKPLUS_LABELS`, contempt = 7); ``subject`` (e.g. ``"S010"``), ``file``
        (e.g. ``"anger/S010_004_00000017.png"``) as fixed-width unicode; ``sequence`` int16;
        ``frame`` int32.

    Raises:
        DataError: The directory or an emotion folder is missing, an unexpected folder or a
            badly named file is present, or an image is unreadable or not size x size.
    """
    root = Path(directory)
    _require_dir(root, "CK+48", _CKPLUS_LAYOUT)
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for emotion in sorted(CKPLUS_LABELS):
        if emotion not in folders:
            raise DataError(f"{root / emotion}: CK+48 emotion folder missing (expected one folder "
                            f"per emotion: {', '.join(sorted(CKPLUS_LABELS))}; layout "
                            f"{_CKPLUS_LAYOUT})")
    unexpected = sorted(folders - set(CKPLUS_LABELS))
    if unexpected:
        # An unknown folder would mean an unknown label: refuse rather than silently skip it.
        raise DataError(f"{root / unexpected[0]}: unexpected folder in CK+48 (expected only "
                        f"{', '.join(sorted(CKPLUS_LABELS))})")

    paths = []
    for emotion in sorted(CKPLUS_LABELS):
        found = list((root / emotion).glob("*.png"))
        if not found:
            raise DataError(f"{root / emotion}: no .png images in this CK+48 emotion folder "
                            f"(expected {_CKPLUS_LAYOUT})")
        paths.extend(found)
    # Sorting by the relative path makes the output independent of the file system's order.
    paths.sort(key=lambda p: p.relative_to(root).as_posix())
    logger.info("reading %d CK+48 images from %s", len(paths), root)
    images = np.empty((len(paths), size, size), dtype=np.uint8)
    labels, subjects, sequences, frames, files = [], [], [], [], []
    for index, path in enumerate(paths):
        match = _CKPLUS_NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: unexpected CK+48 file name (expected {_CKPLUS_LAYOUT})")
        image = read_gray(path)
        if image.shape != (size, size):
            raise DataError(f"{path}: image is {image.shape[1]}x{image.shape[0]}, expected "
                            f"{size}x{size} (CK+48)")
        images[index] = image
        labels.append(CKPLUS_LABELS[path.parent.name])
        subjects.append(f"S{match.group(1)}")
        sequences.append(int(match.group(2)))
        frames.append(int(match.group(3)))
        files.append(path.relative_to(root).as_posix())
    counts = Counter(path.parent.name for path in paths)
    logger.info("CK+48: %d images, %d subjects; per emotion %s", len(paths), len(set(subjects)),
                dict(sorted(counts.items())))
    return {
        "images": images,
        "label": np.asarray(labels, dtype=np.int8),
        "subject": np.asarray(subjects, dtype=str),
        "sequence": np.asarray(sequences, dtype=np.int16),
        "frame": np.asarray(frames, dtype=np.int32),
        "file": np.asarray(files, dtype=str),
    }


def parse_jaffe_name(name: str) -> tuple[str, str]:
    """Split a JAFFE file name into (subject, expression code).

    Args:
        name: A file name such as ``KA.AN1.39.tiff``.

    Returns:
        (``"KA"``, ``"AN"``).

    Raises:
        DataError: The name does not follow the JAFFE pattern or the code is unknown.
    """
    match = _JAFFE_NAME.match(name)
    if not match:
        raise DataError(f"{name}: unexpected JAFFE file name (expected {_JAFFE_LAYOUT})")
    subject, code = match.group(1), match.group(2)
    if code not in JAFFE_LABELS:
        raise DataError(f"{name}: unknown JAFFE expression code {code!r} (expected one of "
                        f"{', '.join(sorted(JAFFE_LABELS))})")
    return subject, code


def load_jaffe(
    directory: str | os.PathLike[str],
    detector: FaceDetector | None = None,
    margin: float = DEFAULT_MARGIN,
    min_face_size: int = 80,
    on_no_face: OnNoFace = "center_crop",
    size: int = DEFAULT_SIZE,
    align: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Detect and crop the face of every JAFFE portrait, FER2013-style, with its label.

    Args:
        directory: Folder of JAFFE TIFFs named like ``KA.AN1.39.tiff``.
        detector: Face detector (default: YuNet with ``min_size=min_face_size``).
        margin: Haar boxes: fraction of the face box added on each side (see
            :func:`ferops.faces.crop_face`).
        min_face_size: Boxes with a side below this many pixels are ignored (JAFFE faces are
            about 150-180 px; smaller boxes are false positives).
        on_no_face: What to do with a portrait without a face: ``"center_crop"`` keeps a
            centred crop of the usual face size, ``"drop"`` leaves it out.
        size: Output side in pixels.
        align: Align faces with landmarks (YuNet) by their eyes (:func:`ferops.faces.align_face`);
            False crops their box like a Haar box.

    Returns:
        ``(arrays, report)``. Arrays, sorted by file name: ``images`` uint8 (n, size, size),
        ``label`` int8 (:data:`JAFFE_LABELS`), ``subject`` (``"KA"``) and ``file`` as
        fixed-width unicode, ``detected`` bool, ``box`` int16 (n, 4) x/y/w/h of the face in
        the original (-1 where none was found). The report (JSON-ready) holds the counts per
        expression and subject, the number detected, and the files without a face and what
        was done with them.

    Raises:
        DataError: The directory is missing or empty, a name or expression code is not
            JAFFE's, or an image is unreadable.
        ParamsError: ``on_no_face`` or ``min_face_size`` is invalid.
    """
    if on_no_face not in ("center_crop", "drop"):
        raise ParamsError(f"on_no_face must be 'center_crop' or 'drop', got {on_no_face!r}")
    if min_face_size < 1:
        raise ParamsError(f"min_face_size must be >= 1, got {min_face_size}")
    root = Path(directory)
    _require_dir(root, "JAFFE", _JAFFE_LAYOUT)
    paths = sorted((p for p in root.iterdir() if p.suffix.lower() in (".tiff", ".tif")),
                   key=lambda p: p.name)
    if not paths:
        raise DataError(f"{root}: no .tiff files (expected {_JAFFE_LAYOUT})")
    if detector is None:
        detector = FaceDetector(min_size=min_face_size)
    # Parse every name first so a bad file fails fast, before minutes of detection.
    parsed = [parse_jaffe_name(path.name) for path in paths]

    logger.info("detecting faces in %d JAFFE images from %s", len(paths), root)
    images, labels, subjects, files, detected, boxes = [], [], [], [], [], []
    missed, multiple = [], []
    for index, (path, (subject, code)) in enumerate(zip(paths, parsed, strict=True)):
        gray = read_gray(path)
        faces = [face for face in detector.detect_faces(gray) if min(face.box.w, face.box.h) >= min_face_size]
        if len(faces) > 1:
            multiple.append(path.name)
        if faces:
            crop = crop_detected(gray, faces[0], margin=margin, size=size, align=align)
            box = faces[0].box.as_tuple()
        else:
            missed.append(path.name)
            logger.warning("%s: no face found (%s)", path, on_no_face.replace("_", " "))
            if on_no_face == "drop":
                continue
            crop = center_crop(gray, JAFFE_FACE_FRACTION * (1 + 2 * margin), size=size)
            box = (-1, -1, -1, -1)
        images.append(crop)
        labels.append(JAFFE_LABELS[code])
        subjects.append(subject)
        files.append(path.name)
        detected.append(bool(faces))
        boxes.append(box)
        if (index + 1) % _PROGRESS_EVERY == 0:
            logger.info("JAFFE: %d/%d images, %d without a face", index + 1, len(paths),
                        len(missed))

    arrays = {
        "images": np.asarray(images, dtype=np.uint8).reshape(-1, size, size),
        "label": np.asarray(labels, dtype=np.int8),
        "subject": np.asarray(subjects, dtype=str),
        "file": np.asarray(files, dtype=str),
        "detected": np.asarray(detected, dtype=bool),
        "box": np.asarray(boxes, dtype=np.int16).reshape(-1, 4),
    }
    report = {
        "files": len(paths),
        "images": len(images),
        "detected": len(paths) - len(missed),
        "detection_rate": round((len(paths) - len(missed)) / len(paths), 4),
        "not_detected": missed,
        "on_no_face": on_no_face,
        "center_cropped": missed if on_no_face == "center_crop" else [],
        "dropped": missed if on_no_face == "drop" else [],
        "multiple_faces": multiple,
        "per_expression": {code: labels.count(JAFFE_LABELS[code]) for code in sorted(JAFFE_LABELS)},
        "per_subject": dict(sorted(Counter(subjects).items())),
        "margin": margin,
        "min_face_size": min_face_size,
        "size": size,
        "detector": detector.backend,
        "aligned": bool(align and detector.backend == "yunet"),
    }
    logger.info("JAFFE: %d/%d faces detected, %d images kept (%s); per expression %s",
                report["detected"], len(paths), len(images), on_no_face,
                report["per_expression"])
    return arrays, report


def plot_jaffe_crops(
    arrays: dict[str, np.ndarray],
    report: dict[str, Any],
    path: str | os.PathLike[str],
    columns: int = 16,
) -> None:
    """Save a gallery of every JAFFE crop, captioned ``"KA AN"``; crops without a face end in ``*``.

    Args:
        arrays: The arrays from :func:`load_jaffe`.
        report: The report from :func:`load_jaffe`.
        path: Destination PNG.
        columns: Images per row (213 crops at 16 per row stay readable at 48 px).
    """
    codes = {index: code for code, index in JAFFE_LABELS.items()}
    titles = [
        f"{subject} {codes[int(label)]}" + ("" if found else " *")
        for subject, label, found in zip(arrays["subject"], arrays["label"], arrays["detected"],
                                         strict=True)
    ]
    title = (f"JAFFE crops: {report['detected']}/{report['files']} faces detected, "
             f"margin {report['margin']}")
    if report["not_detected"]:
        title += (f"; * = no face, centre-cropped ({len(report['center_cropped'])})"
                  f"; dropped: {len(report['dropped'])}")
    image_grid(arrays["images"], titles, path, title=title, columns=columns, cell_inches=0.9)
