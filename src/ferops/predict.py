"""`ferops predict`: find faces in photos, folders, videos and webcam frames and classify them.

Inputs are read by :mod:`ferops.media` (images checked against the pixel limit before they are
decoded), faces detected, cropped and classified by :class:`ferops.predictor.Predictor`, several
images (or video frames) per batch, and the results written by :mod:`ferops.output` as JSON or
CSV (one record per face), with annotated copies in a folder.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferops.errors import FeropsError
from ferops.media import (
    DEFAULT_MAX_PIXELS,
    InputSpec,
    annotated_path,
    check_frame_size,
    expand_inputs,
    open_video_writer,
    read_frames,
    read_image,
    write_image,
)
from ferops.predictor import FaceResult, InputResult, Predictor, annotate

logger = logging.getLogger(__name__)

# Frames (or folder images) whose faces are classified together: bigger batches are faster per face,
# smaller ones keep memory flat and the progress bar moving.
DEFAULT_CHUNK = 16


class CameraError(FeropsError):
    """A camera cannot be opened or stops delivering frames."""


def _progress(total: int | None, description: str, enabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (CI logs, pipes).
    return tqdm(total=total, desc=description, unit="frame" if "video" in description else "image",
                disable=None if enabled else True, leave=False)


def predict_images(specs: Sequence[InputSpec], predictor: Predictor, *, annotate_dir: Path | None = None,
                   chunk: int = DEFAULT_CHUNK, progress: bool = True, used: set[Path] | None = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> list[InputResult]:
    """Classify the faces in image files, a chunk of images per batch.

    An unreadable, empty, too large or non-image file becomes an :class:`InputResult` with
    ``error`` set (logged as a warning); the others go on.

    Args:
        specs: Image inputs (kind ``"image"`` or ``"missing"``).
        predictor: Detector and classifier.
        annotate_dir: Write annotated copies here (keeping folder structure).
        chunk: Images whose faces are classified in one batch.
        progress: Show a progress bar (on a terminal).
        used: Annotated paths already taken (to avoid collisions across calls).
        max_pixels: Largest image (width x height) read; larger ones are refused unread.

    Returns:
        One result per input, in order.
    """
    used = set() if used is None else used
    results: list[InputResult] = []
    batch: list[tuple[InputSpec, InputResult, np.ndarray]] = []
    pending_pixels = 0
    with _progress(len(specs), "images", progress and len(specs) > 1) as bar:
        def flush() -> None:
            nonlocal pending_pixels
            faces = predictor.predict_many([(image, result.source, None) for _, result, image in batch])
            for (spec, result, image), image_faces in zip(batch, faces, strict=True):
                result.faces = image_faces
                if annotate_dir is not None:
                    target = annotated_path(annotate_dir, spec.relative, "image", used)
                    write_image(target, annotate(image, image_faces, predictor.classes))
                    result.annotated = str(target)
                bar.update(1)
            batch.clear()
            pending_pixels = 0

        for spec in specs:
            result = InputResult(str(spec.path), "image")
            results.append(result)
            try:
                if spec.kind == "missing":
                    raise FeropsError(f"{spec.path}: no such file or folder")
                image = read_image(spec.path, max_pixels=max_pixels)
            except FeropsError as error:
                result.error = str(error)
                logger.warning("skipped: %s", error)
                bar.update(1)
                continue
            result.frames, (result.height, result.width) = 1, image.shape[:2]
            batch.append((spec, result, image))
            pending_pixels += image.shape[0] * image.shape[1]
            # Large photos are classified early, so a chunk never holds much more than one
            # maximum-size image in memory.
            if len(batch) >= max(1, chunk) or pending_pixels >= max_pixels:
                flush()
        if batch:
            flush()
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
                        writer = open_video_writer(annotate_to, fps, drawn.shape[1], drawn.shape[0])
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


def predict_video(path: str | os.PathLike[str], predictor: Predictor, *, annotate_to: Path | None = None,
                  every: int = 1, max_frames: int | None = None, chunk: int = DEFAULT_CHUNK,
                  progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> InputResult:
    """Classify the faces of every ``every``-th frame of a video file.

    Args:
        path: The video.
        predictor: Detector and classifier.
        annotate_to: Write an annotated MP4 here (of the processed frames).
        every: Process one frame in ``every`` (frame numbers in the results stay the video's).
        max_frames: Stop after this many processed frames.
        chunk: Frames classified per batch.
        progress: Show a progress bar.
        max_pixels: Largest frame (width x height); a video with larger frames is refused unread.

    Returns:
        The result; ``error`` is set when the file cannot be opened as a video or its frames are
        too large.
    """
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        error = f"{path}: OpenCV could not open this file as a video"
        logger.warning("skipped: %s", error)
        return InputResult(str(path), "video", error=error)
    try:
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            check_frame_size(width, height, str(path), max_pixels)
        except FeropsError as error:
            logger.warning("skipped: %s", error)
            return InputResult(str(path), "video", width=width, height=height, error=str(error))
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        every = max(1, int(every))
        # Frames waiting for classification hold about max_pixels pixels at most, as for images.
        chunk = max(1, min(chunk, max_pixels // max(1, width * height)))

        def sampled() -> Iterator[np.ndarray]:
            for index, frame in enumerate(read_frames(capture)):
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
        result = process_stream(read_frames(capture, max_frames), predictor, source, "camera",
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
               progress: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[InputResult]:
    """Process files and folders: images in chunks, videos frame by frame.

    Args:
        paths: Files and folders (walked recursively).
        predictor: Detector and classifier.
        annotate_dir: Write annotated copies here.
        every: For videos: process one frame in ``every``.
        max_frames: For videos: stop after this many processed frames.
        progress: Show progress bars.
        max_pixels: Largest image or video frame (width x height); larger inputs are refused
            before they are decoded.

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
                                          used=used, max_pixels=max_pixels))
            images.clear()

    for spec in specs:
        if spec.kind == "video":
            drain()
            target = annotated_path(annotate_dir, spec.relative, "video", used) if annotate_dir else None
            results.append(predict_video(spec.path, predictor, annotate_to=target, every=every,
                                         max_frames=max_frames, progress=progress,
                                         max_pixels=max_pixels))
        else:
            images.append(spec)
    drain()
    return results
