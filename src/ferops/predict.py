"""Find faces in photos, folders, videos and webcam frames, classify their expressions, and report.

The crop is the training crop: OpenCV detection (:class:`ferops.faces.FaceDetector`), the box
squared and grown by the FER2013 margin, 48x48 gray uint8 (:func:`ferops.faces.crop_face`),
fed as raw 0..255 float32 pixels. Faces of several images (or video frames) are classified in
one batch. Results go to JSON or CSV (one record per face), annotated copies to a folder.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from ferops.errors import FeropsError
from ferops.faces import DEFAULT_MARGIN, DEFAULT_SIZE, Box, FaceDetector, crop_face, to_gray
from ferops.inference import Classifier

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp",
                            ".pgm", ".ppm", ".pbm", ".pnm", ".jp2"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
# Suffixes cv2.imwrite writes as-is; other annotated images are saved as PNG.
_WRITABLE = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# Frames (or folder images) whose faces are classified together: bigger batches are faster per face,
# smaller ones keep memory flat and the progress bar moving.
DEFAULT_CHUNK = 16
# BGR colour per class for boxes and labels (angry red, disgust green, fear purple, happy yellow,
# sad blue, surprise orange, neutral teal): saturated, so boxes stand out on gray photos too.
_COLOURS = [(40, 40, 220), (40, 160, 40), (160, 60, 160), (0, 200, 255), (200, 110, 30), (0, 140, 255),
            (200, 200, 0)]


class CameraError(FeropsError):
    """A camera cannot be opened or stops delivering frames."""


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
    """

    source: str
    frame: int | None
    face: int
    box: Box
    expression: str
    confidence: float
    probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (box as x, y, w, h)."""
        return {"source": self.source, "frame": self.frame, "face": self.face,
                "box": dict(zip(("x", "y", "w", "h"), self.box.as_tuple(), strict=True)),
                "expression": self.expression, "confidence": round(self.confidence, 6),
                "probabilities": {name: round(p, 6) for name, p in self.probabilities.items()}}


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
                 max_faces: int | None = None) -> None:
        """Combine a classifier and a face detector.

        Args:
            classifier: From :func:`ferops.inference.load_classifier`.
            detector: The face detector (Haar by default, YuNet with a model file).
            margin: Crop margin (the prepare stage's ``margin``; the default matches training).
            max_faces: Keep only the largest faces of each image (None: all).
        """
        self.classifier = classifier
        self.detector = detector
        self.margin = float(margin)
        self.max_faces = max_faces

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in output order."""
        return self.classifier.classes

    def crops(self, image: np.ndarray) -> tuple[list[Box], list[np.ndarray]]:
        """Detect the faces of an image and crop each one as in training (48x48 gray uint8)."""
        gray = to_gray(image)
        boxes = self.detector.detect(gray)
        if self.max_faces is not None:
            boxes = boxes[: self.max_faces]
        return boxes, [crop_face(gray, box, margin=self.margin, size=DEFAULT_SIZE) for box in boxes]

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
        for (_, source, frame), (boxes, _) in zip(images, detections, strict=True):
            faces = []
            for index, box in enumerate(boxes):
                probs = probabilities[row]
                row += 1
                best = int(np.argmax(probs))
                named = {name: float(p) for name, p in zip(self.classes, probs, strict=True)}
                faces.append(FaceResult(source, frame, index, box, self.classes[best], float(probs[best]),
                                        named))
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


def decode_image(data: bytes | np.ndarray) -> np.ndarray | None:
    """Decode an encoded image (file bytes) to 8-bit BGR; None when OpenCV cannot decode it."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    if not buffer.size:
        return None
    # IMREAD_COLOR gives 8-bit BGR whatever the file holds (gray, alpha, 16-bit), like a camera frame.
    return cv2.imdecode(buffer, cv2.IMREAD_COLOR)


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as an 8-bit BGR array.

    Raises:
        FeropsError: The file cannot be read or is not an image OpenCV can decode.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise FeropsError(f"{path}: cannot read the file ({error.strerror or error})") from error
    image = decode_image(data)
    if image is None:
        raise FeropsError(f"{path}: not an image OpenCV can decode (expected JPEG, PNG, BMP, TIFF, "
                          "WebP or PNM)")
    return image


def _annotated_path(out_dir: Path, relative: Path, kind: str, used: set[Path]) -> Path:
    suffix = ".mp4" if kind in ("video", "camera") else (
        relative.suffix.lower() if relative.suffix.lower() in _WRITABLE else ".png")
    target = out_dir / relative.with_suffix(suffix)
    stem, n = target.stem, 2
    while target in used:  # two inputs with the same name (e.g. a.jpg and a.png -> a.png)
        target = target.with_name(f"{stem}-{n}{suffix}")
        n += 1
    used.add(target)
    return target


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise FeropsError(f"{path}: OpenCV could not encode the annotated image")
    data.tofile(path)


def _progress(total: int | None, description: str, enabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, pipes).
    return tqdm(total=total, desc=description, unit="frame" if "video" in description else "image",
                disable=None if enabled else True, leave=False)


def predict_images(specs: Sequence[InputSpec], predictor: Predictor, *, annotate_dir: Path | None = None,
                   chunk: int = DEFAULT_CHUNK, progress: bool = True,
                   used: set[Path] | None = None) -> list[InputResult]:
    """Classify the faces in image files, a chunk of images per batch.

    An unreadable or non-image file becomes an :class:`InputResult` with ``error`` set (logged
    as a warning); the others go on.

    Args:
        specs: Image inputs (kind ``"image"`` or ``"missing"``).
        predictor: Detector and classifier.
        annotate_dir: Write annotated copies here (keeping folder structure).
        chunk: Images whose faces are classified in one batch.
        progress: Show a progress bar (on a terminal).
        used: Annotated paths already taken (to avoid collisions across calls).

    Returns:
        One result per input, in order.
    """
    used = set() if used is None else used
    results: list[InputResult] = []
    with _progress(len(specs), "images", progress and len(specs) > 1) as bar:
        for start in range(0, len(specs), max(1, chunk)):
            batch: list[tuple[InputSpec, InputResult, np.ndarray]] = []
            for spec in specs[start:start + max(1, chunk)]:
                result = InputResult(str(spec.path), "image")
                results.append(result)
                try:
                    if spec.kind == "missing":
                        raise FeropsError(f"{spec.path}: no such file or folder")
                    image = read_image(spec.path)
                except FeropsError as error:
                    result.error = str(error)
                    logger.warning("skipped: %s", error)
                    bar.update(1)
                    continue
                result.frames, (result.height, result.width) = 1, image.shape[:2]
                batch.append((spec, result, image))
            faces = predictor.predict_many([(image, result.source, None) for _, result, image in batch])
            for (spec, result, image), image_faces in zip(batch, faces, strict=True):
                result.faces = image_faces
                if annotate_dir is not None:
                    target = _annotated_path(annotate_dir, spec.relative, "image", used)
                    _write_image(target, annotate(image, image_faces, predictor.classes))
                    result.annotated = str(target)
                bar.update(1)
    return results


def process_stream(frames: Iterable[np.ndarray], predictor: Predictor, source: str, kind: str, *,
                   annotate_to: Path | None = None, fps: float = 25.0, chunk: int = DEFAULT_CHUNK,
                   show: Callable[[np.ndarray], bool] | None = None, fps_overlay: bool = False,
                   total: int | None = None, progress: bool = True) -> InputResult:
    """The frame loop shared by videos and cameras: classify, annotate, write, show.

    Args:
        frames: BGR frames (a video's or a camera's).
        predictor: Detector and classifier.
        source: Name for the results (file path, or ``camera:<index>``).
        kind: ``"video"`` or ``"camera"``.
        annotate_to: Write an annotated MP4 here.
        fps: Frame rate of the annotated video.
        chunk: Frames whose faces are classified in one batch (1 for live display).
        show: Called with each annotated frame; returning False stops the loop (the live window).
        fps_overlay: Draw the measured processing FPS on annotated frames.
        total: Frame count for the progress bar, if known.
        progress: Show a progress bar (on a terminal).

    Returns:
        The result with every frame's faces.
    """
    result = InputResult(source, kind)
    writer = None
    rate, last = None, time.perf_counter()
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> bool:
        nonlocal writer, rate, last
        per_frame = predictor.predict_many([(frame, source, index) for index, frame in pending])
        # Smoothed frames per second of the whole loop (read + detect + classify + draw).
        now = time.perf_counter()
        instant = len(pending) / max(now - last, 1e-6)
        rate = instant if rate is None else 0.9 * rate + 0.1 * instant
        last = now
        keep_going = True
        for (_, frame), faces in zip(pending, per_frame, strict=True):
            result.faces.extend(faces)
            if annotate_to is not None or show is not None:
                drawn = annotate(frame, faces, predictor.classes, fps=rate if fps_overlay else None)
                if annotate_to is not None:
                    if writer is None:
                        writer = _open_writer(annotate_to, fps, drawn.shape[1], drawn.shape[0])
                    writer.write(drawn)
                if show is not None and not show(drawn):
                    keep_going = False
                    break
        pending.clear()
        return keep_going

    try:
        with _progress(total, f"video {Path(source).name}" if kind == "video" else source,
                       progress) as bar:
            try:
                for index, frame in enumerate(frames):
                    if index == 0:
                        result.height, result.width = frame.shape[:2]
                    result.frames += 1
                    pending.append((index, frame))
                    bar.update(1)
                    if len(pending) >= max(1, chunk) and not flush():
                        break
            except KeyboardInterrupt:
                # Ctrl-C is how a headless webcam run ends: keep what was seen so far.
                if kind != "camera":
                    raise
                logger.info("%s: stopped by Ctrl-C after %d frames", source, result.frames)
            if pending:
                flush()
    finally:
        if writer is not None:
            writer.release()
            result.annotated = str(annotate_to)
    return result


def _open_writer(path: Path, fps: float, width: int, height: int) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    # mp4v is in every OpenCV wheel (no system codec needed); browsers may want H.264 re-encoding.
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise FeropsError(f"{path}: OpenCV could not open a video writer (mp4v, {width}x{height})")
    return writer


def _read_frames(capture: Any, max_frames: int | None = None) -> Iterator[np.ndarray]:
    count = 0
    while max_frames is None or count < max_frames:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        count += 1
        yield frame


def predict_video(path: str | os.PathLike[str], predictor: Predictor, *, annotate_to: Path | None = None,
                  every: int = 1, max_frames: int | None = None, chunk: int = DEFAULT_CHUNK,
                  progress: bool = True) -> InputResult:
    """Classify the faces of every ``every``-th frame of a video file.

    Args:
        path: The video.
        predictor: Detector and classifier.
        annotate_to: Write an annotated MP4 here (of the processed frames).
        every: Process one frame in ``every`` (frame numbers in the results stay the video's).
        max_frames: Stop after this many processed frames.
        chunk: Frames classified per batch.
        progress: Show a progress bar.

    Returns:
        The result; ``error`` is set when the file cannot be opened as a video.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        error = f"{path}: OpenCV could not open this file as a video"
        logger.warning("skipped: %s", error)
        return InputResult(str(path), "video", error=error)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        every = max(1, int(every))

        def sampled() -> Iterator[np.ndarray]:
            for index, frame in enumerate(_read_frames(capture)):
                if index % every == 0:
                    yield frame

        frames: Iterable[np.ndarray] = sampled()
        if max_frames is not None:
            frames = (frame for frame, _ in zip(frames, range(max_frames), strict=False))
        total = -(-count // every) if count else None
        result = process_stream(frames, predictor, str(path), "video", annotate_to=annotate_to,
                                fps=fps / every, chunk=chunk, total=min(total, max_frames or total)
                                if total else None, progress=progress)
    finally:
        capture.release()
    if every > 1:
        # process_stream numbers processed frames 0, 1, 2...: map back to the video's frame numbers.
        result.faces = [FaceResult(f.source, (f.frame or 0) * every, f.face, f.box, f.expression,
                                   f.confidence, f.probabilities) for f in result.faces]
    if result.frames == 0:
        result.error = f"{path}: the video has no readable frames"
        logger.warning("skipped: %s", result.error)
    return result


def display_available() -> bool:
    """Whether a window can be opened (an X11/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def predict_camera(index: int, predictor: Predictor, *, headless: bool = False,
                   annotate_to: Path | None = None, max_frames: int | None = None,
                   window: str = "ferops - q or Esc to quit") -> InputResult:
    """Classify webcam frames live: a window with boxes, labels and FPS, or headless.

    Without a display (or with ``headless``) no window opens: the loop runs until
    ``max_frames`` or Ctrl-C and the results are returned (and the annotated video written).

    Args:
        index: OpenCV camera index (0 is the first camera).
        predictor: Detector and classifier.
        headless: Never open a window.
        annotate_to: Also record the annotated frames to this MP4.
        max_frames: Stop after this many frames (None: until q/Esc or Ctrl-C).
        window: Window title.

    Returns:
        The result with every frame's faces.

    Raises:
        CameraError: The camera cannot be opened or gives no frame.
    """
    capture = cv2.VideoCapture(index)
    if not capture.isOpened():
        capture.release()
        raise CameraError(f"camera {index}: could not be opened (no camera with this index, no "
                          "permission to use it, or another program has it); try another --camera index")
    show = None
    if not headless and not display_available():
        logger.warning("no display (DISPLAY is not set): running headless; stop with Ctrl-C or --max-frames")
        headless = True
    if not headless:
        def show(frame: np.ndarray) -> bool:
            try:
                cv2.imshow(window, frame)
            except cv2.error as error:  # e.g. opencv-python-headless has no GUI backend
                raise CameraError(f"cannot open a window ({error.err}): use --headless") from error
            return (cv2.waitKey(1) & 0xFF) not in (ord("q"), 27)

    source = f"camera:{index}"
    try:
        result = process_stream(_read_frames(capture, max_frames), predictor, source, "camera",
                                annotate_to=annotate_to, fps=capture.get(cv2.CAP_PROP_FPS) or 25.0,
                                chunk=1, show=show, fps_overlay=True, progress=headless)
    finally:
        capture.release()
        if show is not None:
            cv2.destroyAllWindows()
    if result.frames == 0:
        raise CameraError(f"camera {index}: opened, but delivered no frame")
    return result


def run_inputs(paths: Iterable[str | os.PathLike[str]], predictor: Predictor, *,
               annotate_dir: Path | None = None, every: int = 1, max_frames: int | None = None,
               progress: bool = True) -> list[InputResult]:
    """Process files and folders: images in chunks, videos frame by frame.

    Args:
        paths: Files and folders (walked recursively).
        predictor: Detector and classifier.
        annotate_dir: Write annotated copies here.
        every: For videos: process one frame in ``every``.
        max_frames: For videos: stop after this many processed frames.
        progress: Show progress bars.

    Returns:
        One result per input file, in order.
    """
    specs = expand_inputs(paths)
    used: set[Path] = set()
    results: list[InputResult] = []
    images: list[InputSpec] = []

    def drain() -> None:
        if images:
            results.extend(predict_images(images, predictor, annotate_dir=annotate_dir, progress=progress,
                                          used=used))
            images.clear()

    for spec in specs:
        if spec.kind == "video":
            drain()
            target = _annotated_path(annotate_dir, spec.relative, "video", used) if annotate_dir else None
            results.append(predict_video(spec.path, predictor, annotate_to=target, every=every,
                                         max_frames=max_frames, progress=progress))
        else:
            images.append(spec)
    drain()
    return results


def report(results: Sequence[InputResult], predictor: Predictor) -> dict[str, Any]:
    """The JSON document of a run: model, inputs (with errors) and one record per face."""
    return {
        "model": predictor.classifier.source,
        "backend": predictor.classifier.backend,
        "detector": predictor.detector.backend,
        "classes": list(predictor.classes),
        "inputs": [result.summary() for result in results],
        "failed": sum(result.error is not None for result in results),
        "faces": [face.to_dict() for result in results for face in result.faces],
    }


def write_json(document: dict[str, Any], out: TextIO) -> None:
    """Write the run's JSON document."""
    json.dump(document, out, indent=2)
    out.write("\n")


def csv_header(classes: Sequence[str]) -> list[str]:
    """CSV columns: source, frame, face, x, y, w, h, expression, confidence, one per class."""
    return ["source", "frame", "face", "x", "y", "w", "h", "expression", "confidence", *classes]


def write_csv(results: Sequence[InputResult], classes: Sequence[str], out: TextIO) -> None:
    """Write one CSV row per face (inputs without faces have no rows; see the JSON for those)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header(classes))
    for result in results:
        for face in result.faces:
            writer.writerow([face.source, "" if face.frame is None else face.frame, face.face,
                             *face.box.as_tuple(), face.expression, f"{face.confidence:.6f}",
                             *(f"{face.probabilities[name]:.6f}" for name in classes)])


def write_results(results: Sequence[InputResult], predictor: Predictor, output: Path | None,
                  fmt: str) -> None:
    """Write JSON or CSV to ``output`` (atomically) or to stdout when ``output`` is None."""
    buffer = io.StringIO()
    if fmt == "csv":
        write_csv(results, predictor.classes, buffer)
    elif fmt == "json":
        write_json(report(results, predictor), buffer)
    else:
        raise FeropsError(f"unknown output format {fmt!r} (expected json or csv)")
    if output is None:
        sys.stdout.write(buffer.getvalue())
        return
    from ferops.io import atomic_file

    with atomic_file(output) as partial:
        partial.write_text(buffer.getvalue())
    logger.info("wrote %s", output)
