"""An HTTP service around the classifier: ``POST /predict``, ``GET /health``, ``GET /metrics`` and a web page.

The model and the face detector are loaded once, when the app is built. Uploads are limited in
size twice: a request whose ``Content-Length`` (or streamed body) exceeds the cap is refused with
413 before the multipart parser spools it, and the image file itself is checked again. The image's
dimensions are then read from its header, and an image above the pixel limit (``--max-pixels``)
is refused with 413 before it is decoded: a small file can hold a huge flat image.

Every classified face is appended to the prediction log (:mod:`ferops.prediction_log`) by a
background thread, and counted in Prometheus' text format at ``GET /metrics``: requests by
status, faces, latency, predictions per class, and the log's failures.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from starlette.concurrency import run_in_threadpool

from ferops.errors import FeropsError
from ferops.media import DEFAULT_MAX_PIXELS, EmptyImageError, ImageError, ImageTooLargeError, decode_image
from ferops.prediction_log import LogRecord, PredictionLog, encode_crop
from ferops.predictor import Predictor

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_UPLOAD_BYTES = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
# Room for the multipart boundaries and part headers on top of the image itself.
_MULTIPART_SLACK = 64 * 1024
# Faces whose crops the server keeps for corrections (POST /feedback): ~2.3 KB each, ~5 MB in all.
RECENT_FACES = 2000


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: answer 413 when a request body is larger than ``limit`` bytes.

    Checks the declared ``Content-Length`` first, then counts streamed bytes, so a chunked upload
    without a length cannot get around the cap.
    """

    def __init__(self, app: Any, limit: int, image_limit: int | None = None) -> None:
        """Wrap ``app``; bodies above ``limit`` bytes get 413 (the message names ``image_limit``)."""
        self.app = app
        self.limit = int(limit)
        self.image_limit = int(image_limit if image_limit is not None else limit)

    async def _refuse(self, send: Any) -> None:
        body = b'{"detail":"upload too large: the limit is %d bytes per image"}' % self.image_limit
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)


_OUTCOMES = ("logged", "failed", "dropped")


class _LogCollector:
    """Prometheus collector of the prediction log's counters (kept by its writer thread)."""

    def __init__(self, prediction_log: PredictionLog | None) -> None:
        self.prediction_log = prediction_log

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        stats = self.prediction_log.stats() if self.prediction_log else dict.fromkeys(_OUTCOMES, 0)
        family = CounterMetricFamily(
            "ferops_prediction_log_records", "Face records the prediction log wrote, failed to write "
            "(database errors) or dropped (queue full)", labels=["outcome"])
        for outcome in _OUTCOMES:
            family.add_metric([outcome], stats[outcome])
        yield family


def create_app(predictor: Predictor, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, prediction_log: PredictionLog | None = None,
               model: tuple[str, str | None] | None = None) -> BodyLimit:
    """Build the FastAPI app.

    Args:
        predictor: Detector and loaded classifier (loaded once, shared by all requests).
        max_upload_bytes: Largest accepted image file; larger uploads get 413.
        max_pixels: Largest accepted image (width x height, read from its header before
            decoding); larger images get 413.
        prediction_log: Where every face is recorded (None: nothing is logged).
        model: The served model as the log names it, and its MLflow training run (see
            :func:`ferops.monitoring.resolve_model`; default: the classifier's source, no run).

    Returns:
        An ASGI application (FastAPI wrapped in the body-size limit).
    """
    app = FastAPI(title="ferops", description="Facial expression recognition: upload a photo, get "
                  "each face's box, expression and class probabilities.", version="1")
    page = resources.files("ferops").joinpath("static/index.html").read_text(encoding="utf-8")
    # One OpenCV detector object serves every request and is not thread-safe (YuNet's input size is
    # set per image): detection runs one at a time.
    # Decoding runs under the same lock, so however many uploads arrive together, only one decoded
    # image (at most max_pixels) is in memory at a time.
    detect_lock = threading.Lock()
    # The app's own registry: several apps in one process (tests) keep separate counts.
    registry = CollectorRegistry()
    requests_total = Counter("ferops_requests", "Answers of /predict and /feedback by HTTP status code",
                             ["status"], registry=registry)
    faces_total = Counter("ferops_faces", "Faces found and classified", registry=registry)
    predictions_total = Counter("ferops_predictions", "Faces classified, by predicted expression",
                                ["expression"], registry=registry)
    latency = Histogram("ferops_predict_latency_seconds", "Time to answer a /predict upload (decode, detect, "
                        "classify)", registry=registry,
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
    requests_feedback = Counter("ferops_feedback", "Users' corrections stored, by corrected expression",
                                ["expression"], registry=registry)
    registry.register(_LogCollector(prediction_log))
    # Recent faces' crops and answers, for corrections: face id -> (48x48 crop, predicted class).
    recent: OrderedDict[str, tuple] = OrderedDict()
    recent_lock = threading.Lock()
    model_name, model_run = model or (predictor.classifier.source, None)

    def error(status: int, message: str) -> JSONResponse:
        requests_total.labels(str(status)).inc()
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and which model is loaded."""
        return {"status": "ok", "model": predictor.classifier.source, "backend": predictor.classifier.backend,
                "tta": predictor.classifier.tta,
                "detector": predictor.detector.backend, "classes": list(predictor.classes),
                "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
                "prediction_log": prediction_log.stats() if prediction_log else None}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text format: requests, faces, latency, predictions per class, log failures."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def run(data: bytes, name: str) -> tuple[tuple[int, int], list]:
        with detect_lock:
            image = decode_image(data, name, max_pixels=max_pixels)
            faces = predictor.predict(image, source=name)
            height, width = image.shape[:2]
        return (width, height), faces

    def record(faces: list, name: str, size: tuple[int, int], elapsed: float) -> list[str]:
        """Log the faces (in the background) and return their ids."""
        request = str(uuid.uuid4())
        store = prediction_log is not None and prediction_log.store_faces
        records = [LogRecord.for_face(face, source=name, model=(model_name, model_run),
                                      detector=predictor.detector.backend, size=size, request=request,
                                      latency_ms=round(1000 * elapsed, 2), store_crop=store)
                   for face in faces]
        if prediction_log is not None:
            prediction_log.submit(records)
        with recent_lock:
            for record_, face in zip(records, faces, strict=True):
                if face.crop is not None:
                    recent[record_.id] = (face.crop, face.expression)
            while len(recent) > RECENT_FACES:
                recent.popitem(last=False)
        return [r.id for r in records]

    @app.post("/feedback", status_code=201)
    async def feedback(request: Request) -> JSONResponse:
        """Correct a face's expression: JSON ``{"id": <face id from /predict>, "expression": <class>}``."""
        classes = list(predictor.classes)
        expected = ('expected a JSON body {"id": <a face id from /predict>, "expression": <one of '
                    + ", ".join(classes) + ">}")
        try:
            body = await request.json()
        except Exception:  # malformed JSON, wrong content: one clear message for all
            return error(400, f"malformed feedback: {expected}")
        if not isinstance(body, dict):
            return error(400, f"malformed feedback: {expected}")
        face_id, expression = body.get("id"), body.get("expression")
        if not isinstance(face_id, str) or not face_id:
            return error(400, f"feedback without a face id: {expected}")
        if expression not in classes:
            return error(400, f"unknown expression {expression!r}: the model's classes are "
                              f"{', '.join(classes)}")
        if prediction_log is None:
            return error(503, "corrections are stored in the prediction log's database, and this server runs "
                              "with --no-log")
        with recent_lock:
            held = recent.get(face_id)
        if held is not None:
            crop, predicted = encode_crop(held[0]), held[1]
        else:
            try:
                row = await run_in_threadpool(prediction_log.find_face, face_id)
            except Exception as exc:  # the database is away: the correction cannot be checked or kept
                return error(503, f"could not look up face {face_id}: {type(exc).__name__}")
            if row is None:
                return error(400, f"unknown face id {face_id!r}: send an id that /predict returned")
            if row["model"] != model_name:
                return error(400, f"face {face_id} was answered by {row['model']}, and this server serves "
                                  f"{model_name}: correct it on the server that answered it")
            if row["crop"] is None:
                return error(400, f"face {face_id} is no longer held by this server (it keeps the crops of "
                                  f"the last {RECENT_FACES} faces, or all with --store-faces): upload the "
                                  "photo again")
            crop, predicted = row["crop"], row["expression"]
        try:
            feedback_id = await run_in_threadpool(prediction_log.record_feedback, face_id, model_name,
                                                  model_run, predicted, expression, crop)
        except Exception as exc:  # nothing was written: say so, the user may retry
            logger.warning("could not store a correction of face %s: %s", face_id, exc)
            return error(503, f"could not store the correction: {type(exc).__name__}")
        requests_feedback.labels(expression).inc()
        requests_total.labels("201").inc()
        return JSONResponse({"id": feedback_id, "face": face_id, "predicted": predicted,
                             "expression": expression}, status_code=201)

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        """Upload an image as multipart field ``file``; get its faces and expressions."""
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            return error(400, "expected a multipart/form-data upload with the image in field 'file' "
                              f"(got content type {content_type or 'none'!r})")
        try:
            form = await request.form(max_files=1, max_fields=8)
        except _BodyTooLarge:
            # A streamed body without Content-Length passed the cap while being parsed.
            return error(413, f"upload too large: the limit is {max_upload_bytes} bytes per image")
        except Exception as exc:  # Starlette raises several types for malformed multipart bodies
            return error(400, f"malformed multipart body ({exc})")
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return error(400, "no file in the upload: send the image in multipart field 'file'")
        data = await upload.read()
        await form.close()
        if len(data) > max_upload_bytes:
            return error(413, f"upload too large: {len(data)} bytes, the limit is {max_upload_bytes} bytes "
                              "per image")
        started = time.perf_counter()
        name = upload.filename or "the upload"
        try:
            (width, height), faces = await run_in_threadpool(run, data, name)
        except EmptyImageError as exc:
            return error(400, str(exc))
        except ImageTooLargeError as exc:
            return error(413, str(exc))
        except ImageError as exc:
            return error(415, str(exc))
        elapsed = time.perf_counter() - started
        ids = record(faces, name, (int(width), int(height)), elapsed)
        requests_total.labels("200").inc()
        latency.observe(elapsed)
        faces_total.inc(len(faces))
        for face in faces:
            predictions_total.labels(face.expression).inc()
        answers = [{"id": face_id, **{key: value for key, value in face.to_dict().items()
                                      if key not in ("source", "frame")}}
                   for face_id, face in zip(ids, faces, strict=True)]
        return JSONResponse({"width": int(width), "height": int(height), "faces": answers,
                             "model": predictor.classifier.source, "elapsed_ms": round(1000 * elapsed, 1)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Anything unforeseen is one failed request, logged with its traceback, never a dead server.
        logger.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    return BodyLimit(app, max_upload_bytes + _MULTIPART_SLACK, max_upload_bytes)


def serve(predictor: Predictor, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
          prediction_log: PredictionLog | None = None, model: tuple[str, str | None] | None = None) -> None:
    """Run the service with uvicorn until interrupted.

    Args:
        predictor: Detector and loaded classifier.
        host: Interface to bind (default loopback only; ``0.0.0.0`` exposes it to the network).
        port: TCP port.
        max_upload_bytes: Largest accepted image file.
        max_pixels: Largest accepted image (width x height).
        prediction_log: Where every face is recorded (closed, its queue written, on exit).
        model: The served model's name and MLflow run for the log (see :func:`create_app`).

    Raises:
        FeropsError: The port is invalid.
    """
    import uvicorn

    if not 0 < port < 65536:
        raise FeropsError(f"--port must be 1..65535, got {port}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the service is reachable from other machines and has no "
                       "authentication", host)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                     prediction_log=prediction_log, model=model)
    logger.info("serving %s on http://%s:%d/ (Ctrl-C to stop)", predictor.classifier.source, host, port)
    if prediction_log is not None:
        logger.info("logging every face to %s%s", prediction_log.stats()["uri"],
                    " with its crop (--store-faces)" if prediction_log.store_faces else "")
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        if prediction_log is not None:
            prediction_log.close()
