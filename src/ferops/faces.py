"""Face detection and FER2013-style cropping with OpenCV, for datasets, photos, video and webcams.

FER2013 faces are tightly framed: the face fills the 48x48 frame, the eyebrows sit near the top
and the chin near the bottom. The box of OpenCV's frontal-face Haar cascade is already framed
almost the same way, so :data:`DEFAULT_MARGIN` is small. It was measured with OpenCV's Haar
eye detector on 48x48 images upscaled 4x: the median inter-eye distance is 0.375 of the image
width on FER2013 (the 1,887 of its first 3,000 images where both eyes were found) and on
CK+48 (790 images), and 0.388 / 0.354 / 0.323 on JAFFE crops at margins 0 / 0.05 / 0.10.
Margin 0.02 matches FER2013 (0.388 / 1.04 = 0.373); the eye row (0.38 of the height on
FER2013, 0.39 on the JAFFE crops) matches as well, so no vertical shift is needed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ferops.errors import FeropsError, ParamsError

logger = logging.getLogger(__name__)

HAAR_FRONTALFACE = "haarcascade_frontalface_default.xml"
# Fraction of the face box added on each side (see the module docstring for how it was chosen).
DEFAULT_MARGIN = 0.02
DEFAULT_SIZE = 48

PadMode = Literal["edge", "zeros"]


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


class FaceDetector:
    """Find faces with OpenCV: the bundled Haar cascade, or a user-supplied YuNet ONNX model.

    The model is loaded when the detector is built (not at import), so a missing model is
    reported where it is configured. Build one detector and reuse it for every image or frame.
    """

    def __init__(
        self,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size: int = 30,
        *,
        cascade_path: str | os.PathLike[str] | None = None,
        dnn_model: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.9,
    ) -> None:
        """Load the detector.

        Args:
            scale_factor: Cascade image-pyramid step (> 1; smaller finds more, slower).
            min_neighbors: Cascade overlapping detections needed to keep a face (higher = fewer
                false positives).
            min_size: Smallest face side in pixels to report (both backends).
            cascade_path: A Haar cascade XML; default: OpenCV's bundled frontal-face cascade.
            dnn_model: Path to an OpenCV ``FaceDetectorYN`` (YuNet) ONNX model. When given it
                is used instead of the cascade (more robust to pose and lighting).
            score_threshold: Minimum YuNet confidence (DNN backend only).

        Raises:
            ParamsError: A parameter is out of range.
            FeropsError: The cascade or model file cannot be found or loaded.
        """
        if scale_factor <= 1.0:
            raise ParamsError(f"face detector scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ParamsError(f"face detector min_neighbors must be >= 0, got {min_neighbors}")
        if min_size < 1:
            raise ParamsError(f"face detector min_size must be >= 1, got {min_size}")
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = int(min_size)
        self.score_threshold = float(score_threshold)
        self._cascade = None
        self._yunet = None
        if dnn_model is not None:
            self.backend = "yunet"
            self.model_path = Path(dnn_model)
            self._yunet = self._load_yunet(self.model_path)
        else:
            self.backend = "haar"
            self.model_path = Path(cascade_path) if cascade_path else self._bundled_cascade()
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
                f"missing): install opencv-python>=4.10,<5, or pass cascade_path= "
                f"(a {HAAR_FRONTALFACE}) or dnn_model= (a FaceDetectorYN ONNX file)"
            )
        return Path(folder) / HAAR_FRONTALFACE

    @staticmethod
    def _load_cascade(path: Path) -> cv2.CascadeClassifier:
        if not hasattr(cv2, "CascadeClassifier"):
            raise FeropsError(
                f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (removed in OpenCV 5): "
                "install opencv-python>=4.10,<5, or pass dnn_model= (a FaceDetectorYN ONNX file)"
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
            raise FeropsError(f"OpenCV {cv2.__version__} has no cv2.FaceDetectorYN "
                              "(needs >= 4.5.4)")
        if not path.is_file():
            raise FeropsError(f"{path}: FaceDetectorYN model not found (expected a YuNet .onnx "
                              "file, e.g. face_detection_yunet_2023mar.onnx from opencv_zoo)")
        try:
            # The input size is a placeholder: it is set for every image in detect().
            return cv2.FaceDetectorYN.create(str(path), "", (320, 320), self.score_threshold)
        except cv2.error as error:
            raise FeropsError(
                f"{path}: OpenCV could not load this FaceDetectorYN model ({error})"
            ) from error

    def detect(self, image: np.ndarray) -> list[Box]:
        """Find the faces in an image.

        Args:
            image: uint8 gray (h, w), BGR or BGRA image.

        Returns:
            Face boxes, largest first (ties: top-to-bottom, then left-to-right). Haar boxes lie
            within the image; YuNet boxes may extend slightly beyond it (crop_face pads).
        """
        if self._yunet is not None:
            bgr = _to_bgr(image)
            self._yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self._yunet.detect(bgr)
            rows = [] if faces is None else faces[:, :4]
        else:
            rows = self._cascade.detectMultiScale(
                to_gray(image),
                scaleFactor=self.scale_factor,
                minNeighbors=self.min_neighbors,
                minSize=(self.min_size, self.min_size),
            )
        boxes = [Box(*(round(float(v)) for v in row)) for row in rows]
        boxes = [box for box in boxes if min(box.w, box.h) >= self.min_size]
        return sorted(boxes, key=lambda box: (-box.area, box.y, box.x))

    def __repr__(self) -> str:
        return (f"FaceDetector(backend={self.backend!r}, model={str(self.model_path)!r}, "
                f"scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, "
                f"min_size={self.min_size})")


def detect_and_crop(
    image: np.ndarray,
    detector: FaceDetector,
    margin: float = DEFAULT_MARGIN,
    size: int = DEFAULT_SIZE,
    max_faces: int | None = None,
) -> tuple[list[Box], list[np.ndarray]]:
    """Detect the faces of a photo or video frame and crop each one FER2013-style.

    This is the crop ``ferops predict`` and ``ferops serve`` classify. The image is made gray
    first and the detector runs on the gray image, as on the gray datasets in training (for the
    YuNet backend a colour frame would give different boxes).

    Args:
        image: uint8 gray, BGR or BGRA image.
        detector: The detector to use.
        margin: See :func:`crop_face`.
        size: Output side in pixels.
        max_faces: Keep only the largest ones (None: all).

    Returns:
        The boxes, largest face first, and the size x size uint8 crop of each.
    """
    gray = to_gray(image)
    boxes = detector.detect(gray)
    if max_faces is not None:
        boxes = boxes[:max_faces]
    return boxes, [crop_face(gray, box, margin=margin, size=size) for box in boxes]
