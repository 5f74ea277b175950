"""Detect, crop and classify faces; the per-face and per-input results; drawing them on images.

The crop is the training crop: OpenCV detection (:class:`ferops.faces.FaceDetector`, YuNet by
default), the face aligned by its eyes to FER2013's framing (a Haar box: squared and grown by the
FER2013 margin), 48x48 gray uint8 (:func:`ferops.faces.detect_and_crop`), fed as raw 0..255
float32 pixels. Faces of several images (or video frames) are classified in
one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ferops.faces import DEFAULT_MARGIN, Box, Face, FaceDetector, detect_and_crop, to_gray
from ferops.inference import Classifier
from ferops.prediction_log import crop_statistics

# BGR colour per class for boxes and labels (angry red, disgust green, fear purple, happy yellow,
# sad blue, surprise orange, neutral teal): saturated, so boxes stand out on gray photos too.
# YuNet's landmark order (the person's right and left).
LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
_COLOURS = [(40, 40, 220), (40, 160, 40), (160, 60, 160), (0, 200, 255), (200, 110, 30), (0, 140, 255),
            (200, 200, 0)]


@dataclass(frozen=True)
class FaceResult:
    """One classified face.

    Attributes:
        source: The image or video it came from (as given), or ``camera:<index>``.
        frame: Frame number in a video or camera stream; None for a still image.
        face: Index of the face in its image, largest first.
        box: Where the face is, in pixels of the original image.
        expression: The most probable class.
        confidence: Its probability.
        probabilities: Every class's probability.
        detector_score: The face detector's confidence (None for the Haar cascade).
        landmarks: Eyes, nose tip and mouth corners as (x, y) pixels (see
            :class:`ferops.faces.Face`; None for the Haar cascade).
        statistics: Brightness, contrast and sharpness of the 48x48 crop
            (:func:`ferops.prediction_log.crop_statistics`; not in :meth:`to_dict`).
        crop: The 48x48 crop the model classified (not in :meth:`to_dict`).
    """

    source: str
    frame: int | None
    face: int
    box: Box
    expression: str
    confidence: float
    probabilities: dict[str, float]
    detector_score: float | None = None
    landmarks: tuple[tuple[float, float], ...] | None = None
    statistics: dict[str, float] = field(default_factory=dict, compare=False)
    crop: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (box as x, y, w, h; landmarks as named x, y points)."""
        landmarks = None if self.landmarks is None else {
            name: {"x": round(x, 1), "y": round(y, 1)}
            for name, (x, y) in zip(LANDMARK_NAMES, self.landmarks, strict=True)}
        return {"source": self.source, "frame": self.frame, "face": self.face,
                "box": dict(zip(("x", "y", "w", "h"), self.box.as_tuple(), strict=True)),
                "expression": self.expression, "confidence": round(self.confidence, 6),
                "probabilities": {name: round(p, 6) for name, p in self.probabilities.items()},
                "detector_score": None if self.detector_score is None else round(self.detector_score, 4),
                "landmarks": landmarks}


@dataclass
class InputResult:
    """What happened to one input (an image, a video or a camera).

    Attributes:
        source: The input as given (or ``camera:<index>``).
        kind: ``"image"``, ``"video"`` or ``"camera"``.
        faces: The classified faces (all frames).
        frames: Frames read (1 for an image).
        width: Image/frame width in pixels (0 if unreadable).
        height: Image/frame height in pixels.
        annotated: Where the annotated copy was written, if any.
        error: Why the input failed (None when it did not).
    """

    source: str
    kind: str
    faces: list[FaceResult] = field(default_factory=list)
    frames: int = 0
    width: int = 0
    height: int = 0
    annotated: str | None = None
    error: str | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready record without the faces."""
        return {"source": self.source, "kind": self.kind, "frames": self.frames, "faces": len(self.faces),
                "width": self.width, "height": self.height, "annotated": self.annotated,
                "error": self.error}


class Predictor:
    """Detect, crop and classify faces: the training crop, batched classification."""

    def __init__(self, classifier: Classifier, detector: FaceDetector, *, margin: float = DEFAULT_MARGIN,
                 max_faces: int | None = None, align: bool = True, keep_crops: bool = False) -> None:
        """Combine a classifier and a face detector.

        Args:
            classifier: From :func:`ferops.inference.load_classifier`.
            detector: The face detector (YuNet or the Haar cascade).
            margin: Crop margin of Haar boxes (the default matches training).
            max_faces: Keep only the largest faces of each image (None: all).
            align: Align faces that have landmarks (YuNet) by their eyes (see
                :func:`ferops.faces.crop_detected`).
            keep_crops: Keep each face's 48x48 crop on its :class:`FaceResult` (for the server's
                feedback and ``--store-faces``; off, long videos hold no pixels).
        """
        self.classifier = classifier
        self.detector = detector
        self.margin = float(margin)
        self.max_faces = max_faces
        self.align = bool(align)
        self.keep_crops = bool(keep_crops)

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in output order."""
        return self.classifier.classes

    def crops(self, image: np.ndarray) -> tuple[list[Face], list[np.ndarray]]:
        """Detect the faces of an image and crop each one as in training (48x48 gray uint8)."""
        return detect_and_crop(image, self.detector, margin=self.margin, max_faces=self.max_faces,
                               align=self.align)

    def predict_many(self, images: Sequence[tuple[np.ndarray, str, int | None]]) -> list[list[FaceResult]]:
        """Classify the faces of several images in one batch.

        Args:
            images: (image, source, frame) triples; frame is None for still images.

        Returns:
            One list of faces per image (empty where no face was found), in input order.
        """
        detections = [self.crops(image) for image, _, _ in images]
        crops = [crop for _, image_crops in detections for crop in image_crops]
        probabilities = self.classifier.classify(crops)
        results, row = [], 0
        for (_, source, frame), (found, _) in zip(images, detections, strict=True):
            faces = []
            for index, face in enumerate(found):
                probs = probabilities[row]
                row += 1
                best = int(np.argmax(probs))
                named = {name: float(p) for name, p in zip(self.classes, probs, strict=True)}
                crop = crops[row - 1]
                faces.append(FaceResult(source, frame, index, face.box, self.classes[best],
                                        float(probs[best]), named, face.score, face.landmarks,
                                        crop_statistics(crop), crop if self.keep_crops else None))
            results.append(faces)
        return results

    def predict(self, image: np.ndarray, source: str = "image", frame: int | None = None) -> list[FaceResult]:
        """Classify the faces of one image (largest first); an image without faces gives []."""
        return self.predict_many([(image, source, frame)])[0]


def annotate(image: np.ndarray, faces: Iterable[FaceResult], classes: Sequence[str] = (),
             fps: float | None = None) -> np.ndarray:
    """Draw each face's box and "expression NN%" label on a BGR copy of the image.

    Args:
        image: uint8 gray, BGR or BGRA image.
        faces: The faces to draw.
        classes: Class names, to colour each class consistently (default: one colour).
        fps: When given, "NN.N FPS" is drawn in the top-left corner (webcam).

    Returns:
        The annotated BGR image (the input is not modified).
    """
    canvas = cv2.cvtColor(to_gray(image), cv2.COLOR_GRAY2BGR) if image.ndim == 2 or image.shape[2] != 3 \
        else image.copy()
    height = canvas.shape[0]
    # Line width and font grow with the image so labels stay readable on large photos.
    thickness = max(1, round(height / 360))
    scale = max(0.4, height / 900)
    for face in faces:
        index = list(classes).index(face.expression) if face.expression in classes else 0
        colour = _COLOURS[index % len(_COLOURS)]
        box = face.box
        cv2.rectangle(canvas, (box.x, box.y), (box.right - 1, box.bottom - 1), colour, thickness)
        label = f"{face.expression} {face.confidence:.0%}"
        (tw, th), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        # Above the box when there is room, else inside its top edge.
        top = box.y - th - base - 2 if box.y - th - base - 2 >= 0 else box.y
        cv2.rectangle(canvas, (box.x, top), (box.x + tw + 4, top + th + base + 2), colour, cv2.FILLED)
        cv2.putText(canvas, label, (box.x + 2, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(canvas, f"{fps:.1f} FPS", (8, 8 + round(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 255, 0), thickness, cv2.LINE_AA)
    return canvas
