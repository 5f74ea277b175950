"""The prediction log: real SQLite and PostgreSQL, failures that never reach the caller."""

from __future__ import annotations

import logging
import socket

import cv2
import numpy as np
import pytest
import sqlalchemy as sa

from ferops.prediction_log import (
    LogRecord,
    PredictionLog,
    crop_statistics,
    default_log_uri,
    encode_crop,
    read_log,
    redact,
)


def _record(index: int = 0, crop: bytes | None = None, **changes) -> LogRecord:
    fields = dict(source="photo.jpg", face=index, model="models:/ferops-fer2013/3", detector="yunet",
                  image_width=640, image_height=480, box=(10 * index, 20, 100, 120),
                  statistics={"brightness": 120.0 + index, "contrast": 40.0, "sharpness": 900.0},
                  expression="happy", confidence=0.9, probabilities={"happy": 0.9, "sad": 0.1},
                  latency_ms=12.5, model_run="abc123", request="req-1", crop=crop)
    return LogRecord(**{**fields, **changes})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_crop_statistics_see_light_contrast_and_blur(prepared_dir):
    from ferops.io import load_arrays

    face = load_arrays(prepared_dir / "public_test.npz")["images"][7]
    plain = crop_statistics(face)
    darker = crop_statistics((face * 0.5).astype(np.uint8))
    blurred = crop_statistics(cv2.GaussianBlur(face, (5, 5), 1.5))
    assert darker["brightness"] < 0.55 * plain["brightness"] and darker["contrast"] < 0.55 * plain["contrast"]
    assert blurred["sharpness"] < 0.5 * plain["sharpness"]
    assert abs(blurred["brightness"] - plain["brightness"]) < 3
    assert crop_statistics(np.full((48, 48), 77, np.uint8)) == {"brightness": 77.0, "contrast": 0.0,
                                                                  "sharpness": 0.0}


def test_default_uri_and_redaction(tmp_path):
    (tmp_path / "params.yaml").write_text("base: {}\n")
    (tmp_path / "sub").mkdir()
    assert default_log_uri(tmp_path / "sub", {}) == f"sqlite:///{tmp_path / 'predictions.db'}"
    assert default_log_uri(tmp_path, {"FEROPS_LOG_URI": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert "s3cret" not in redact("postgresql+psycopg2://ferops:s3cret@db:5432/log")


def _roundtrip(uri: str) -> None:
    log = PredictionLog(uri, store_faces=True)
    crop = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    log.submit([_record(0, encode_crop(crop)), _record(1)])
    log.close()
    assert log.stats()["logged"] == 2 and log.stats()["failed"] == 0
    rows = read_log(uri)
    assert [row["face"] for row in rows] == [0, 1]
    assert rows[0]["model_run"] == "abc123" and rows[0]["probabilities"] == {"happy": 0.9, "sad": 0.1}
    assert rows[1]["brightness"] == 121.0 and rows[1]["box_x"] == 10 and rows[1]["latency_ms"] == 12.5
    engine = sa.create_engine(uri)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT crop FROM predictions ORDER BY face")).scalars().all()
    engine.dispose()
    decoded = cv2.imdecode(np.frombuffer(stored[0], np.uint8), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(decoded, crop)  # the crop, losslessly, with --store-faces only
    assert stored[1] is None
    assert len(read_log(uri, last=1)) == 1 and read_log(uri, model="another") == []


def test_sqlite_log_round_trip(tmp_path):
    _roundtrip(f"sqlite:///{tmp_path / 'log' / 'predictions.db'}")


def test_postgresql_log_round_trip(postgres_server):
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user="postgres",
                                  password=postgres_server.password, dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE ferops_log")
    connection.close()
    _roundtrip(postgres_server.url("ferops_log"))


def test_crops_are_not_stored_without_store_faces(tmp_path):
    uri = f"sqlite:///{tmp_path / 'p.db'}"
    log = PredictionLog(uri)
    log.submit([_record(0, encode_crop(np.zeros((48, 48), np.uint8)))])
    log.close()
    engine = sa.create_engine(uri)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT crop FROM predictions")).scalar() is None
    engine.dispose()


def test_an_unreachable_database_is_counted_and_warned_never_raised(caplog):
    uri = f"postgresql+psycopg2://ferops:secret@127.0.0.1:{_closed_port()}/log?connect_timeout=2"
    log = PredictionLog(uri)
    with caplog.at_level(logging.WARNING, logger="ferops.prediction_log"):
        log.submit([_record(0), _record(1)])  # returns at once
        assert log.flush(timeout=30)
    stats = log.stats()
    assert stats["failed"] == 2 and stats["logged"] == 0 and "OperationalError" in stats["last_error"]
    assert "secret" not in stats["uri"] and "secret" not in caplog.text
    assert "could not write 2 record(s) to the prediction log" in caplog.text
    log.close()


def test_a_full_queue_drops_and_counts(tmp_path):
    log = PredictionLog(f"sqlite:///{tmp_path / 'p.db'}", queue_size=1)
    log.submit([_record(i) for i in range(200)])
    log.close()
    stats = log.stats()
    assert stats["dropped"] > 0 and stats["logged"] + stats["dropped"] == 200


def test_a_bad_uri_is_refused_with_its_name():
    with pytest.raises(ValueError, match="not a usable SQLAlchemy database URL"):
        PredictionLog("nosuchdb://x")
