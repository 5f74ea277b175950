"""Face detection and FER2013-style cropping with OpenCV, for datasets, photos, video and webcams.

Detection: OpenCV's YuNet (``cv2.FaceDetectorYN``, the default) or its frontal-face Haar cascade
(``--detector haar``, kept for comparison). YuNet finds faces of roughly 10 to 300 pixels, so a
photo larger than :data:`DETECT_SIZE` on its longer side is scaled down to that size for detection
and the boxes and landmarks are mapped back (``benchmarks/detection.py`` chose the size).

Framing: FER2013 faces are tightly framed and upright. Measured with YuNet's own landmarks on
1,443 PublicTest images (each upscaled 4x and padded so the detector sees the whole face:
``benchmarks/crop_framing.py``), the median eye distance is 0.356 of the image width, the eye
midpoint sits on the centre column at 0.379 of the height, and the eye line is level (median roll
0.3 degrees, quartiles -3.5 / +4.6). A YuNet face is cropped by :func:`align_face`: rotated so its
eye line is level, then scaled and placed so that its eyes land at :data:`EYE_DISTANCE` and
:data:`EYE_ROW`. Those two are 0.363 and 0.393, not 0.356 and 0.379, because the measurement
itself is biased: YuNet's landmarks on an upscaled 48-pixel face sit a little higher and closer
together than on the full-resolution photo. With these values, JAFFE's aligned crops measure
0.354 / 0.376 the same way, like FER2013 (``benchmarks/jaffe_crops.py``).

The Haar box has no landmarks. Its framing was measured with OpenCV's Haar eye detector on 48x48
images upscaled 4x: the median inter-eye distance is 0.375 of the image width on FER2013 (the 1,887
of its first 3,000 images where both eyes were found) and on CK+48 (790 images), and 0.388 / 0.354
/ 0.323 on JAFFE crops at margins 0 / 0.05 / 0.10. Margin 0.02 (:data:`DEFAULT_MARGIN`) matches
FER2013 (0.388 / 1.04 = 0.373); the eye row (0.38 of the height on FER2013, 0.39 on the JAFFE
crops) matches as well, so a Haar box is squared, grown by that margin and cut out.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ferops.errors import FeropsError, ParamsError

logger = logging.getLogger(__name__)

HAAR_FRONTALFACE = "haarcascade_frontalface_default.xml"
# Fraction of a Haar box added on each side (see the module docstring for how it was chosen).
DEFAULT_MARGIN = 0.02
DEFAULT_SIZE = 48
# Where an aligned crop puts the eyes, as fractions of its side: chosen so that aligned crops
# measure like FER2013 (0.356 / 0.379) with the same landmark measurement (see above).
EYE_DISTANCE = 0.363
EYE_ROW = 0.393
# Where YuNet's box lies in a FER2013 frame (same measurement): its width is 0.766 of the side and
# its top 0.036 of the side above the frame (it reaches to the hairline). Used to crop a YuNet box
# without aligning (``align=False``).
YUNET_BOX_WIDTH = 0.766
YUNET_BOX_TOP = -0.036
# Photos are scaled so their longer side is at most this for YuNet (benchmarks/detection.py).
DETECT_SIZE = 640
# YuNet's scores for real faces bunch around 0.9, so OpenCV Zoo's demo threshold (0.9) sits on a
# cliff: on the detection benchmark it found 87 % of the faces, 0.7-0.85 found 94-96 % at
# precision 0.994, and 0.95 found 2 %. 0.8 is the middle of that plateau (benchmarks/detection.py).
DEFAULT_SCORE_THRESHOLD = 0.8
DETECTORS = ("yunet", "haar")
# The aligned crop is cut at up to this side before the final area-averaging resize: large enough
# that the warp never shrinks by more than ~4x (no aliasing), small enough to bound memory.
_ALIGN_WORK_SIDE = 192

PadMode = Literal["edge", "zeros"]
DetectorName = Literal["yunet", "haar"]


@dataclass(frozen=True, order=True)
class Box:
    """An axis-aligned box in pixel coordinates (may extend beyond the image).

    Attributes:
        x: Left column.
        y: Top row.
        w: Width in pixels.
        h: Height in pixels.
    """

    x: int
    y: int
    w: int
    h: int

    @property
    def area(self) -> int:
        """Width times height."""
        return self.w * self.h

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.x + self.w

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.y + self.h

    @property
    def center(self) -> tuple[float, float]:
        """The centre as (x, y)."""
        return self.x + self.w / 2, self.y + self.h / 2

    def square(self, margin: float = 0.0) -> Box:
        """Return the square box centred on this one, grown by ``margin`` x its size on each side.

        Args:
            margin: Fraction of the longer side added on each side (negative shrinks).

        Returns:
            A square box; it may extend beyond the image.
        """
        side = max(1, round(max(self.w, self.h) * (1 + 2 * margin)))
        cx, cy = self.center
        return Box(round(cx - side / 2), round(cy - side / 2), side, side)

    def inside(self, other: Box) -> bool:
        """Whether this box lies entirely within ``other``."""
        return (self.x >= other.x and self.y >= other.y
                and self.right <= other.right and self.bottom <= other.bottom)

    def as_tuple(self) -> tuple[int, int, int, int]:
        """Return (x, y, w, h)."""
        return self.x, self.y, self.w, self.h


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a 2-D uint8 grayscale view or copy of an OpenCV image.

    Args:
        image: uint8 array: (h, w) gray, (h, w, 1), (h, w, 3) BGR or (h, w, 4) BGRA, as
            ``cv2.imread`` and ``cv2.VideoCapture`` return them.

    Returns:
        The (h, w) uint8 grayscale image.

    Raises:
        ValueError: Not uint8, or an unsupported shape.
    """
    image = np.asarray(image)
    # A float image could be in [0, 1] or [0, 255]: refuse rather than guess the scale.
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a gray, BGR or BGRA image, got shape {image.shape}")


def _to_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return cv2.cvtColor(to_gray(image), cv2.COLOR_GRAY2BGR)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    # INTER_AREA averages pixels when shrinking (no aliasing); when enlarging (small webcam
    # faces) it degenerates to nearest-neighbour, so bilinear is used instead.
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def crop_box(
    gray: np.ndarray, box: Box, size: int = DEFAULT_SIZE, pad: PadMode = "edge"
) -> np.ndarray:
    """Cut ``box`` out of an image, padding where it extends beyond the borders, and resize.

    Args:
        gray: The image (anything :func:`to_gray` accepts).
        box: The region; it must overlap the image.
        size: Output side in pixels (the output is resized to size x size).
        pad: ``"edge"`` replicates the border pixels (no artificial dark band; FER2013 crops
            rarely have one), ``"zeros"`` fills with black.

    Returns:
        uint8 array of shape (size, size).

    Raises:
        ValueError: The box does not overlap the image, or a bad ``size``/``pad``.
    """
    gray = to_gray(gray)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if pad not in ("edge", "zeros"):
        raise ValueError(f"pad must be 'edge' or 'zeros', got {pad!r}")
    height, width = gray.shape
    x0, y0 = max(box.x, 0), max(box.y, 0)
    x1, y1 = min(box.right, width), min(box.bottom, height)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"box {box.as_tuple()} does not overlap the {width}x{height} image")
    region = gray[y0:y1, x0:x1]
    top, left = y0 - box.y, x0 - box.x
    bottom, right = box.bottom - y1, box.right - x1
    if top or left or bottom or right:
        border = cv2.BORDER_REPLICATE if pad == "edge" else cv2.BORDER_CONSTANT
        region = cv2.copyMakeBorder(region, top, bottom, left, right, border, value=0)
    return _resize(region, size)


def crop_face(
    gray: np.ndarray,
    box: Box,
    margin: float = DEFAULT_MARGIN,
    size: int = DEFAULT_SIZE,
    pad: PadMode = "edge",
) -> np.ndarray:
    """Crop a detected face the way FER2013 faces are framed.

    The box is made square around its centre (side = its longer side), grown by ``margin`` x
    that side on each side, cut out (padded where it leaves the image, see ``pad``) and resized
    to ``size`` x ``size``.

    Args:
        gray: The image (anything :func:`to_gray` accepts).
        box: The face box from :meth:`FaceDetector.detect`.
        margin: Fraction of the box side added on each side; the default matches FER2013.
        size: Output side in pixels.
        pad: ``"edge"`` (replicate border pixels) or ``"zeros"`` (black).

    Returns:
        uint8 array of shape (size, size).
    """
    return crop_box(gray, box.square(margin), size=size, pad=pad)


def center_crop(gray: np.ndarray, fraction: float, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Crop a centred square whose side is ``fraction`` x the image's shorter side, and resize.

    The fallback when no face is found in an image known to show one face roughly centred
    (e.g. a passport-style dataset photo). A fraction above 1 pads by edge replication.

    Args:
        gray: The image (anything :func:`to_gray` accepts).
        fraction: Side of the square relative to the shorter image side (> 0).
        size: Output side in pixels.

    Returns:
        uint8 array of shape (size, size).
    """
    gray = to_gray(gray)
    if fraction <= 0:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    height, width = gray.shape
    side = max(1, round(min(height, width) * fraction))
    box = Box(round((width - side) / 2), round((height - side) / 2), side, side)
    return crop_box(gray, box, size=size)


@dataclass(frozen=True)
class Face:
    """A detected face.

    Attributes:
        box: Where it is, in pixels of the image given to the detector (YuNet boxes may extend
            slightly beyond the image).
        score: The detector's confidence in [0, 1] (None for the Haar cascade, which has none).
        landmarks: YuNet's five points as (x, y) pixel pairs, in its order: right eye, left eye
            (the person's), nose tip, right and left mouth corner. None for the Haar cascade.
    """

    box: Box
    score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None

    def eyes(self) -> tuple[tuple[float, float], tuple[float, float]] | None:
        """The two eye centres, left one in the image first (None without landmarks)."""
        if self.landmarks is None:
            return None
        first, second = self.landmarks[0], self.landmarks[1]
        return (first, second) if first[0] <= second[0] else (second, first)


def align_face(
    gray: np.ndarray,
    face: Face,
    size: int = DEFAULT_SIZE,
    eye_distance: float = EYE_DISTANCE,
    eye_row: float = EYE_ROW,
) -> np.ndarray:
    """Crop a face with landmarks the way FER2013 frames faces: eye line level, eyes in place.

    The face is rotated about its eye midpoint so that the eye line is horizontal, scaled so that
    the eyes are ``eye_distance`` x the crop side apart, and placed with the eye midpoint on the
    centre column at ``eye_row`` x the side. Pixels outside the photo replicate its border.

    Args:
        gray: The image (anything :func:`to_gray` accepts), in the landmarks' pixel grid.
        face: A face with landmarks (from the YuNet backend).
        size: Output side in pixels.
        eye_distance: Eye distance as a fraction of the side.
        eye_row: Row of the eye midpoint as a fraction of the side.

    Returns:
        uint8 array of shape (size, size).

    Raises:
        ValueError: The face has no landmarks, its eyes coincide, or a bad size.
    """
    gray = to_gray(gray)
    eyes = face.eyes()
    if eyes is None:
        raise ValueError("align_face needs a face with landmarks (the YuNet detector gives them)")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    (x1, y1), (x2, y2) = eyes
    distance = math.hypot(x2 - x1, y2 - y1)
    if distance < 1e-3:
        raise ValueError(f"face at {face.box.as_tuple()}: both eyes at the same point")
    side = distance / eye_distance  # the crop's side in photo pixels
    work = int(min(max(size, round(side)), max(size, _ALIGN_WORK_SIDE)))
    angle = math.degrees(math.atan2(y2 - y1, x2 - x1))
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, work / side)
    matrix[0, 2] += work / 2 - centre[0]
    matrix[1, 2] += eye_row * work - centre[1]
    crop = cv2.warpAffine(gray, matrix, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return _resize(crop, size)


def _nms(faces: list[Face], threshold: float = 0.3) -> list[Face]:
    """Drop faces overlapping a higher-scoring one by IoU above ``threshold`` (tiled passes overlap)."""
    if len(faces) < 2:
        return faces
    boxes = [list(face.box.as_tuple()) for face in faces]
    scores = [float(face.score or 0.0) for face in faces]
    keep = cv2.dnn.NMSBoxes(boxes, scores, 0.0, threshold)
    return [faces[int(i)] for i in np.asarray(keep).reshape(-1)]


class FaceDetector:
    """Find faces with OpenCV: YuNet (the default) or the frontal-face Haar cascade.

    The model is loaded when the detector is built (not at import), so a missing or corrupt model
    is reported where it is configured. Build one detector and reuse it for every image or frame;
    one detector is not safe to call from several threads at once.
    """

    def __init__(
        self,
        backend: DetectorName = "yunet",
        *,
        model: str | os.PathLike[str] | None = None,
        min_size: int = 30,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        detect_size: int = DETECT_SIZE,
        tiles: bool = False,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
    ) -> None:
        """Load the detector.

        Args:
            backend: ``"yunet"`` (OpenCV's FaceDetectorYN) or ``"haar"`` (the 2001 cascade).
            model: YuNet: its ONNX file (default: :func:`ferops.detector_model.yunet_model`, the
                checkout's, the user cache's, or fetched once). Haar: a cascade XML (default:
                OpenCV's bundled frontal-face cascade).
            min_size: Smallest face side in pixels to report (both backends).
            score_threshold: Minimum YuNet confidence, in (0, 1).
            detect_size: YuNet runs on a copy whose longer side is at most this many pixels.
            tiles: YuNet: also detect in overlapping tiles at twice that resolution, for small
                faces in large photos (slower; see ``benchmarks/detection.py``).
            scale_factor: Cascade image-pyramid step (> 1; smaller finds more, slower).
            min_neighbors: Cascade overlapping detections needed to keep a face.

        Raises:
            ParamsError: A parameter is out of range.
            FeropsError: The model file cannot be found, fails its checksum or cannot be loaded.
        """
        if backend not in DETECTORS:
            raise ParamsError(f"face detector must be one of {', '.join(DETECTORS)}, got {backend!r}")
        if min_size < 1:
            raise ParamsError(f"face detector min_size must be >= 1, got {min_size}")
        if not 0.0 < score_threshold < 1.0:
            raise ParamsError(f"face detector score_threshold must be in (0, 1), got {score_threshold}")
        if detect_size < 64:
            raise ParamsError(f"face detector detect_size must be >= 64 pixels, got {detect_size}")
        if scale_factor <= 1.0:
            raise ParamsError(f"face detector scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ParamsError(f"face detector min_neighbors must be >= 0, got {min_neighbors}")
        self.backend = backend
        self.min_size = int(min_size)
        self.score_threshold = float(score_threshold)
        self.detect_size = int(detect_size)
        self.tiles = bool(tiles)
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self._cascade = None
        self._yunet = None
        if backend == "yunet":
            if model is None:
                from ferops.detector_model import yunet_model

                model = yunet_model()
            self.model_path = Path(model)
            self._yunet = self._load_yunet(self.model_path)
        else:
            self.model_path = Path(model) if model else self._bundled_cascade()
            self._cascade = self._load_cascade(self.model_path)
        logger.debug("face detector: %s (%s)", self.backend, self.model_path)

    @staticmethod
    def _bundled_cascade() -> Path:
        data = getattr(cv2, "data", None)
        folder = getattr(data, "haarcascades", "") if data is not None else ""
        # OpenCV 5 wheels have an empty cv2.data: say what to do instead of a bare load failure.
        if not folder:
            raise FeropsError(
                f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data.haarcascades is "
                f"missing): use the YuNet detector (the default), install opencv-python>=4.10,<5, "
                f"or pass a {HAAR_FRONTALFACE} as the Haar model"
            )
        return Path(folder) / HAAR_FRONTALFACE

    @staticmethod
    def _load_cascade(path: Path) -> cv2.CascadeClassifier:
        if not hasattr(cv2, "CascadeClassifier"):
            raise FeropsError(
                f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (removed in OpenCV 5): "
                "use the YuNet detector (the default), or install opencv-python>=4.10,<5"
            )
        if not path.is_file():
            raise FeropsError(f"{path}: Haar cascade file not found (expected an OpenCV "
                              f"cascade XML such as {HAAR_FRONTALFACE})")
        try:
            cascade = cv2.CascadeClassifier(str(path))
        except (cv2.error, SystemError) as error:  # malformed XML raises instead of loading empty
            raise FeropsError(f"{path}: OpenCV could not load this file as a Haar cascade XML "
                              f"({error})") from error
        if cascade.empty():
            raise FeropsError(f"{path}: OpenCV could not load this file as a Haar cascade XML")
        return cascade

    def _load_yunet(self, path: Path):  # returns a cv2.FaceDetectorYN
        if not hasattr(cv2, "FaceDetectorYN"):
            raise FeropsError(f"OpenCV {cv2.__version__} has no cv2.FaceDetectorYN (needs >= 4.8)")
        if not path.is_file():
            raise FeropsError(f"{path}: FaceDetectorYN model not found (expected a YuNet .onnx "
                              "file, e.g. face_detection_yunet_2023mar.onnx from opencv_zoo)")
        logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
        previous = logging_api.getLogLevel() if logging_api else None
        try:
            # OpenCV 5 warns at every load that its new graph engine ignores the (default) target:
            # nothing a user can act on, so OpenCV's own log is quietened while the model loads.
            if logging_api:
                logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
            # The input size is a placeholder: it is set for every image in detect_faces().
            return cv2.FaceDetectorYN.create(str(path), "", (320, 320), self.score_threshold)
        except cv2.error as error:
            raise FeropsError(
                f"{path}: OpenCV could not load this file as a FaceDetectorYN (YuNet ONNX) model "
                f"({str(error).strip().splitlines()[-1]})"
            ) from error
        finally:
            if logging_api:
                logging_api.setLogLevel(previous)

    def _run_yunet(self, image: np.ndarray, scale: float, offset: tuple[int, int] = (0, 0)) -> list[Face]:
        """Detect in ``image`` (already scaled by ``scale``); map results back to photo pixels."""
        height, width = image.shape[:2]
        # YuNet's network needs a few pixels; tinier inputs hold no findable face anyway.
        if min(height, width) < 10:
            return []
        bgr = _to_bgr(image)
        self._yunet.setInputSize((width, height))
        _, rows = self._yunet.detect(bgr)
        faces = []
        for row in [] if rows is None else rows:
            x, y, w, h = (float(v) / scale for v in row[:4])
            points = tuple((float(row[4 + 2 * i]) / scale + offset[0],
                            float(row[5 + 2 * i]) / scale + offset[1]) for i in range(5))
            box = Box(round(x + offset[0]), round(y + offset[1]), round(w), round(h))
            faces.append(Face(box, float(row[14]), points))
        return faces

    def _detect_yunet(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        scale = min(1.0, self.detect_size / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = image if scale == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        faces = self._run_yunet(small, scale)
        if self.tiles and scale < 1.0:
            faces += self._detect_tiles(image, min(1.0, 2 * scale))
            faces = _nms(faces)
        return faces

    def _detect_tiles(self, image: np.ndarray, scale: float) -> list[Face]:
        """A second pass in overlapping detect_size tiles of a copy at ``scale`` (small faces)."""
        height, width = image.shape[:2]
        side = self.detect_size
        step = side * 3 // 4  # a quarter overlap: a small face lies whole in some tile
        faces = []
        # Tiles are cut from the photo and scaled one by one: the whole photo at 2x the detection
        # size is never held at once.
        source_side = side / scale
        for top in range(0, max(1, math.ceil((height * scale - side) / step) + 1)):
            for left in range(0, max(1, math.ceil((width * scale - side) / step) + 1)):
                x0, y0 = round(left * step / scale), round(top * step / scale)
                tile = image[y0:y0 + round(source_side), x0:x0 + round(source_side)]
                size = (max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale)))
                resized = cv2.resize(tile, size, interpolation=cv2.INTER_AREA)
                # Large faces are the first pass's: a tile may cut them.
                faces += [face for face in self._run_yunet(resized, scale, (x0, y0))
                          if max(face.box.w, face.box.h) * scale < side / 4]
        return faces

    def detect_faces(self, image: np.ndarray) -> list[Face]:
        """Find the faces in an image, with YuNet's score and landmarks.

        Args:
            image: uint8 gray (h, w), BGR or BGRA image.

        Returns:
            Faces, largest first (ties: top-to-bottom, then left-to-right), each at least
            ``min_size`` pixels on its shorter side. An image without faces (or too small to hold
            one) gives [].
        """
        if self._yunet is not None:
            faces = self._detect_yunet(np.asarray(image))
        else:
            gray = to_gray(image)
            if min(gray.shape) < self.min_size:
                return []
            rows = self._cascade.detectMultiScale(
                gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size),
            )
            faces = [Face(Box(*(int(v) for v in row))) for row in rows]
        faces = [face for face in faces if min(face.box.w, face.box.h) >= self.min_size]
        return sorted(faces, key=lambda face: (-face.box.area, face.box.y, face.box.x))

    def detect(self, image: np.ndarray) -> list[Box]:
        """Find the faces in an image: their boxes only (see :meth:`detect_faces`)."""
        return [face.box for face in self.detect_faces(image)]

    def __repr__(self) -> str:
        return (f"FaceDetector(backend={self.backend!r}, model={str(self.model_path)!r}, "
                f"min_size={self.min_size}, score_threshold={self.score_threshold}, "
                f"detect_size={self.detect_size}, tiles={self.tiles})")


def crop_detected(
    gray: np.ndarray,
    face: Face,
    margin: float = DEFAULT_MARGIN,
    size: int = DEFAULT_SIZE,
    align: bool = True,
) -> np.ndarray:
    """The training crop of a detected face: aligned by its landmarks, else its box and margin.

    Args:
        gray: The image the face was found in (anything :func:`to_gray` accepts).
        face: From :meth:`FaceDetector.detect_faces`.
        margin: For Haar boxes (no landmarks): see :func:`crop_face`.
        size: Output side in pixels.
        align: Use the landmarks when the face has them (:func:`align_face`); False frames a
            YuNet box like FER2013 without rotating it (:data:`YUNET_BOX_WIDTH`).

    Returns:
        uint8 array of shape (size, size).
    """
    if face.landmarks is None:
        return crop_face(gray, face.box, margin=margin, size=size)
    if align:
        return align_face(gray, face, size=size)
    box = face.box
    side = max(1, round(box.w / YUNET_BOX_WIDTH))
    framed = Box(round(box.x + box.w / 2 - side / 2), round(box.y - YUNET_BOX_TOP * side), side, side)
    return crop_box(gray, framed, size=size)


def detect_and_crop(
    image: np.ndarray,
    detector: FaceDetector,
    margin: float = DEFAULT_MARGIN,
    size: int = DEFAULT_SIZE,
    max_faces: int | None = None,
    align: bool = True,
) -> tuple[list[Face], list[np.ndarray]]:
    """Detect the faces of a photo or video frame and crop each one FER2013-style.

    This is the crop ``ferops predict`` and ``ferops serve`` classify. YuNet sees the photo in
    colour when it has colour (it was trained on colour photos); the Haar cascade and the crops
    work on the gray image, as on the gray datasets in training.

    Args:
        image: uint8 gray, BGR or BGRA image.
        detector: The detector to use.
        margin: Haar boxes: see :func:`crop_face`.
        size: Output side in pixels.
        max_faces: Keep only the largest ones (None: all).
        align: See :func:`crop_detected`.

    Returns:
        The faces, largest first, and the size x size uint8 crop of each.
    """
    gray = to_gray(image)
    faces = detector.detect_faces(image if detector.backend == "yunet" else gray)
    if max_faces is not None:
        faces = faces[:max_faces]
    return faces, [crop_detected(gray, face, margin=margin, size=size, align=align) for face in faces]
