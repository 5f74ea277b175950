"""The prediction log: one row per classified face, in SQLite (default) or PostgreSQL.

``ferops serve`` (and ``ferops predict --log``) append a record per face: when, which model and
detector, the image size and face box, simple statistics of the 48x48 crop (brightness, contrast,
sharpness), the class probabilities, the answer, its confidence and the request's latency.
``ferops monitor`` compares a window of it with the model's reference on PublicTest.

Storage goes through SQLAlchemy (which MLflow already installs): ``sqlite:///predictions.db``
beside the checkout by default, or any SQLAlchemy URL such as the team setup's
``postgresql+psycopg2://user:password@host/ferops``. Face crops are stored only when asked
(``--store-faces``): they are personal data.

The log must never block or break a prediction. Records go into a bounded in-memory queue and a
background thread writes them in batches; a full queue, a full disk or an unreachable database
becomes a warning in the server log and a counter (:meth:`PredictionLog.stats`), and the request
still gets its answer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import sqlalchemy as sa

from ferops.runtime import nearest_folder_with

logger = logging.getLogger(__name__)

LOG_URI_ENV = "FEROPS_LOG_URI"
DEFAULT_LOG_FILE = "predictions.db"
# Rows written per database round trip, and records the queue holds before it drops (and counts).
_BATCH = 256
_QUEUE_SIZE = 20_000
# A failing database is reported at most this often (seconds), not once per record.
_WARN_EVERY = 30.0

METADATA = sa.MetaData()
PREDICTIONS = sa.Table(
    "predictions", METADATA,
    sa.Column("id", sa.String(36), primary_key=True),  # a UUID: the face's id in feedback requests
    # UTC, stored without a zone: SQLite keeps no zones, and both databases then compare alike.
    sa.Column("time", sa.DateTime(timezone=False), nullable=False, index=True),
    sa.Column("request", sa.String(36), nullable=False),
    sa.Column("source", sa.String(512), nullable=False),
    sa.Column("face", sa.Integer, nullable=False),
    sa.Column("model", sa.String(512), nullable=False, index=True),
    sa.Column("model_run", sa.String(64), index=True),  # the model's MLflow training run, when known
    sa.Column("detector", sa.String(16), nullable=False),
    sa.Column("image_width", sa.Integer, nullable=False),
    sa.Column("image_height", sa.Integer, nullable=False),
    sa.Column("box_x", sa.Integer, nullable=False),
    sa.Column("box_y", sa.Integer, nullable=False),
    sa.Column("box_w", sa.Integer, nullable=False),
    sa.Column("box_h", sa.Integer, nullable=False),
    sa.Column("brightness", sa.Float, nullable=False),
    sa.Column("contrast", sa.Float, nullable=False),
    sa.Column("sharpness", sa.Float, nullable=False),
    sa.Column("expression", sa.String(32), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("probabilities", sa.JSON, nullable=False),
    sa.Column("latency_ms", sa.Float),
    sa.Column("crop", sa.LargeBinary),  # PNG of the 48x48 crop, only with --store-faces
)

# Users' corrections (POST /feedback): the face, what the model said, what the user says it is, and
# the crop, always (the user gave it explicitly, for training).
FEEDBACK = sa.Table(
    "feedback", METADATA,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("time", sa.DateTime(timezone=False), nullable=False, index=True),
    sa.Column("face_id", sa.String(36), nullable=False, index=True),
    sa.Column("model", sa.String(512), nullable=False),
    sa.Column("model_run", sa.String(64)),
    sa.Column("predicted", sa.String(32), nullable=False),
    sa.Column("expression", sa.String(32), nullable=False),
    sa.Column("crop", sa.LargeBinary, nullable=False),
)


def crop_statistics(crop: np.ndarray) -> dict[str, float]:
    """Simple statistics of a 48x48 gray crop, the features ``ferops monitor`` watches.

    Args:
        crop: uint8 (h, w) gray crop.

    Returns:
        ``brightness`` (mean gray level), ``contrast`` (standard deviation of the gray levels)
        and ``sharpness`` (variance of the Laplacian: low for blurred faces).
    """
    crop = np.asarray(crop)
    return {"brightness": float(crop.mean()), "contrast": float(crop.std()),
            "sharpness": float(cv2.Laplacian(crop, cv2.CV_64F).var())}


def default_log_uri(start: str | os.PathLike[str] | None = None,
                    environ: Mapping[str, str] | None = None) -> str:
    """``FEROPS_LOG_URI``, else ``sqlite:///<checkout>/predictions.db``.

    The checkout is the nearest folder up from ``start`` (default: the working directory) with a
    params.yaml; outside a checkout the file goes into the working directory.
    """
    environ = os.environ if environ is None else environ
    if environ.get(LOG_URI_ENV):
        return environ[LOG_URI_ENV]
    here = Path(start if start is not None else Path.cwd()).resolve()
    root = nearest_folder_with(here, "params.yaml") or here
    return f"sqlite:///{root / DEFAULT_LOG_FILE}"


def redact(uri: str) -> str:
    """The URI without its password, for messages."""
    try:
        return sa.engine.make_url(uri).render_as_string(hide_password=True)
    except Exception:  # an unparsable URI is reported by the caller; never echo it whole
        return uri.split("@")[-1]


@dataclass
class LogRecord:
    """One face, as the log stores it (see :data:`PREDICTIONS` for the columns)."""

    source: str
    face: int
    model: str
    detector: str
    image_width: int
    image_height: int
    box: tuple[int, int, int, int]
    statistics: dict[str, float]
    expression: str
    confidence: float
    probabilities: dict[str, float]
    latency_ms: float | None = None
    model_run: str | None = None
    request: str = ""
    crop: bytes | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=lambda: datetime.now(UTC).replace(tzinfo=None))

    @classmethod
    def for_face(cls, face: Any, *, source: str, model: tuple[str, str | None], detector: str,
                 size: tuple[int, int], request: str, latency_ms: float | None = None,
                 store_crop: bool = False) -> LogRecord:
        """The record of a classified face (a :class:`ferops.predictor.FaceResult`).

        Args:
            face: The face: its box, answer, probabilities, crop statistics and (maybe) crop.
            source: The photo or upload name as the log shows it.
            model: The model's name and MLflow run (:func:`ferops.monitoring.resolve_model`).
            detector: The detector's backend.
            size: The image's (width, height).
            request: The id shared by the faces of one photo.
            latency_ms: The request's latency, when known.
            store_crop: Encode the face's crop into the record (``--store-faces``).
        """
        crop = encode_crop(face.crop) if store_crop and face.crop is not None else None
        return cls(source=source, face=face.face, model=model[0], model_run=model[1], detector=detector,
                   image_width=size[0], image_height=size[1], box=face.box.as_tuple(),
                   statistics=face.statistics, expression=face.expression, confidence=face.confidence,
                   probabilities=face.probabilities, latency_ms=latency_ms, request=request, crop=crop)

    def row(self) -> dict[str, Any]:
        """The database row."""
        x, y, w, h = self.box
        return {"id": self.id, "time": self.time, "request": self.request or self.id, "source": self.source,
                "face": self.face, "model": self.model, "model_run": self.model_run,
                "detector": self.detector,
                "image_width": self.image_width, "image_height": self.image_height,
                "box_x": x, "box_y": y, "box_w": w, "box_h": h, **self.statistics,
                "expression": self.expression, "confidence": self.confidence,
                "probabilities": self.probabilities, "latency_ms": self.latency_ms, "crop": self.crop}


def encode_crop(crop: np.ndarray) -> bytes:
    """PNG bytes of a crop (lossless, ~2 KB for 48x48)."""
    ok, data = cv2.imencode(".png", np.asarray(crop))
    if not ok:  # pragma: no cover - PNG encoding of a uint8 array does not fail
        raise ValueError("could not encode the crop as PNG")
    return data.tobytes()


class PredictionLog:
    """Append face records to the log from a background thread; never raises into the caller.

    Build one per process and :meth:`close` it at the end (which writes what is queued).
    """

    def __init__(self, uri: str, *, store_faces: bool = False, queue_size: int = _QUEUE_SIZE) -> None:
        """Open the log (the database is connected to, and the table created, by the writer thread).

        Args:
            uri: A SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql+psycopg2://...``.
            store_faces: Keep each face's 48x48 crop (PNG) in the log.
            queue_size: Records held in memory while the database is slow or away; beyond it new
                records are dropped and counted.

        Raises:
            ValueError: ``uri`` is not a SQLAlchemy URL (or its driver is not installed).
        """
        self.uri = uri
        self.store_faces = bool(store_faces)
        try:
            self._engine = sa.create_engine(uri, pool_pre_ping=True)
        except Exception as error:  # ArgumentError, NoSuchModuleError, a missing DBAPI driver
            raise ValueError(f"--log-uri {redact(uri)}: not a usable SQLAlchemy database URL "
                             f"({error})") from error
        if self._engine.dialect.name == "sqlite" and self._engine.url.database:
            Path(self._engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue[LogRecord | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._counts = {"logged": 0, "failed": 0, "dropped": 0}
        self._last_error: str | None = None
        self._warned_at = 0.0
        self._table_ready = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, records: Iterable[LogRecord]) -> None:
        """Queue records for writing; returns at once (a full queue drops and counts them)."""
        for record in records:
            if not self.store_faces:
                record.crop = None
            try:
                self._queue.put_nowait(record)
            except queue.Full:
                self._count("dropped", 1, "the prediction log's queue is full (the database is too slow "
                                          "or away): records are being dropped")

    def stats(self) -> dict[str, Any]:
        """Counters for /health.

        Returns:
            Records ``logged``, ``failed`` (database errors), ``dropped`` (queue full), ``pending``
            (queued), the last error and the log's URI without its password.
        """
        with self._lock:
            return {**self._counts, "pending": self._queue.qsize(), "last_error": self._last_error,
                    "uri": redact(self.uri)}

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written or has failed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to ``timeout`` seconds), stop the writer and close the engine."""
        self.flush(timeout)
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:  # pragma: no cover - flush() emptied it
            pass
        self._thread.join(timeout)
        self._engine.dispose()

    def find_face(self, face_id: str) -> dict[str, Any] | None:
        """A logged face by id, with its crop if it was stored (None when unknown).

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The database cannot be read.
        """
        self.flush(timeout=10)  # a face answered a moment ago may still be queued
        with self._engine.connect() as connection:
            if not sa.inspect(connection).has_table(PREDICTIONS.name):
                return None
            row = connection.execute(sa.select(PREDICTIONS).where(PREDICTIONS.c.id == face_id)).first()
        return dict(row._mapping) if row is not None else None

    def record_feedback(self, face_id: str, model: str, model_run: str | None, predicted: str,
                        expression: str, crop: bytes) -> str:
        """Store a user's correction now (not queued: the user waits for its confirmation).

        Returns:
            The correction's id.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: The database cannot be written.
        """
        feedback_id = str(uuid.uuid4())
        with self._engine.begin() as connection:
            METADATA.create_all(connection, tables=[FEEDBACK], checkfirst=True)
            connection.execute(FEEDBACK.insert(), [{
                "id": feedback_id, "time": datetime.now(UTC).replace(tzinfo=None), "face_id": face_id,
                "model": model, "model_run": model_run, "predicted": predicted, "expression": expression,
                "crop": crop}])
        return feedback_id

    def _count(self, what: str, n: int, warning: str | None = None) -> None:
        with self._lock:
            self._counts[what] += n
            if warning and what != "logged":
                self._last_error = warning
        now = time.monotonic()
        if warning and now - self._warned_at > _WARN_EVERY:
            self._warned_at = now
            logger.warning("%s (prediction log %s; see /health)", warning, redact(self.uri))

    def _run(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                self._queue.task_done()
                return
            batch = [record]
            while len(batch) < _BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # seen again by the outer loop after this batch
                    self._queue.task_done()
                    break
                batch.append(more)
            self._write(batch)
            for _ in batch:
                self._queue.task_done()

    def _write(self, batch: Sequence[LogRecord]) -> None:
        try:
            with self._engine.begin() as connection:
                if not self._table_ready:
                    METADATA.create_all(connection, tables=[PREDICTIONS], checkfirst=True)
                    self._table_ready = True
                connection.execute(PREDICTIONS.insert(), [record.row() for record in batch])
        except Exception as error:  # noqa: BLE001 - whatever the database says, the answer stands
            message = str(error).strip().splitlines()[0][:300]
            self._count("failed", len(batch), f"could not write {len(batch)} record(s) to the prediction "
                                              f"log: {type(error).__name__}: {message}")
            return
        self._count("logged", len(batch))


def _naive_utc(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def read_log(uri: str, *, since: datetime | None = None, until: datetime | None = None,
             last: int | None = None, model: str | None = None) -> list[dict[str, Any]]:
    """Read log rows (oldest first), optionally only those since a time, the last N, or of one model.

    Args:
        uri: The log's SQLAlchemy URL.
        since: Only rows at or after this time (naive times are UTC).
        until: Only rows before this time.
        last: Only the newest ``last`` rows (after the other filters).
        model: Only rows of this model.

    Returns:
        The rows as dictionaries (without the crop).
    """
    engine = sa.create_engine(uri)
    try:
        columns = [c for c in PREDICTIONS.columns if c.name != "crop"]
        query = sa.select(*columns)
        if since is not None:
            query = query.where(PREDICTIONS.c.time >= _naive_utc(since))
        if until is not None:
            query = query.where(PREDICTIONS.c.time < _naive_utc(until))
        if model is not None:
            query = query.where(PREDICTIONS.c.model == model)
        query = query.order_by(PREDICTIONS.c.time.desc(), PREDICTIONS.c.request, PREDICTIONS.c.face)
        if last is not None:
            query = query.limit(last)
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table(PREDICTIONS.name):
                return []
            rows = [dict(row._mapping) for row in connection.execute(query)]
    finally:
        engine.dispose()
    return rows[::-1]
