"""An HTTP service around the classifier: ``POST /predict``, ``GET /health`` and a web page at ``/``.

The model and the face detector are loaded once, when the app is built. Uploads are limited in
size twice: a request whose ``Content-Length`` (or streamed body) exceeds the cap is refused with
413 before the multipart parser spools it, and the image file itself is checked again. The image's
dimensions are then read from its header, and an image above the pixel limit (``--max-pixels``)
is refused with 413 before it is decoded: a small file can hold a huge flat image.
"""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ferops.errors import FeropsError
from ferops.media import DEFAULT_MAX_PIXELS, EmptyImageError, ImageError, ImageTooLargeError, decode_image
from ferops.predictor import Predictor

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_UPLOAD_BYTES = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
# Room for the multipart boundaries and part headers on top of the image itself.
_MULTIPART_SLACK = 64 * 1024


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


def create_app(predictor: Predictor, *, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> BodyLimit:
    """Build the FastAPI app.

    Args:
        predictor: Detector and loaded classifier (loaded once, shared by all requests).
        max_upload_bytes: Largest accepted image file; larger uploads get 413.
        max_pixels: Largest accepted image (width x height, read from its header before
            decoding); larger images get 413.

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

    def error(status: int, message: str) -> JSONResponse:
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
                "max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}

    def run(data: bytes, name: str) -> tuple[tuple[int, int], list[dict[str, Any]]]:
        with detect_lock:
            image = decode_image(data, name, max_pixels=max_pixels)
            faces = predictor.predict(image, source="upload")
            height, width = image.shape[:2]
        return (width, height), [{key: value for key, value in face.to_dict().items()
                                  if key not in ("source", "frame")} for face in faces]

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
        try:
            (width, height), faces = await run_in_threadpool(run, data, upload.filename or "the upload")
        except EmptyImageError as exc:
            return error(400, str(exc))
        except ImageTooLargeError as exc:
            return error(413, str(exc))
        except ImageError as exc:
            return error(415, str(exc))
        return JSONResponse({"width": int(width), "height": int(height), "faces": faces,
                             "model": predictor.classifier.source,
                             "elapsed_ms": round(1000 * (time.perf_counter() - started), 1)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Anything unforeseen is one failed request, logged with its traceback, never a dead server.
        logger.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error: {type(exc).__name__}")

    return BodyLimit(app, max_upload_bytes + _MULTIPART_SLACK, max_upload_bytes)


def serve(predictor: Predictor, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Run the service with uvicorn until interrupted.

    Args:
        predictor: Detector and loaded classifier.
        host: Interface to bind (default loopback only; ``0.0.0.0`` exposes it to the network).
        port: TCP port.
        max_upload_bytes: Largest accepted image file.
        max_pixels: Largest accepted image (width x height).

    Raises:
        FeropsError: The port is invalid.
    """
    import uvicorn

    if not 0 < port < 65536:
        raise FeropsError(f"--port must be 1..65535, got {port}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the service is reachable from other machines and has no "
                       "authentication", host)
    app = create_app(predictor, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    logger.info("serving %s on http://%s:%d/ (Ctrl-C to stop)", predictor.classifier.source, host, port)
    uvicorn.run(app, host=host, port=port, log_level="info")
