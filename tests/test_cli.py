"""The `ferops` command line: reading commands never create an MLflow store, and `inspect`."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from ferops.cli import main
from ferops.io import save_arrays

# Every command that only reads a store; `promote` without --dry-run may write to an existing one.
READING = {
    "promote --dry-run": ["promote", "--dry-run", "--params", str(REPO_ROOT / "params.yaml")],
    "promote": ["promote", "--params", str(REPO_ROOT / "params.yaml")],
    "predict": ["predict", "photo.jpg", "--model", "models:/ferops-fer2013@champion"],
    "serve": ["serve", "--model", "models:/ferops-fer2013@champion", "--port", "1"],
    "export": ["export", "--model", "models:/ferops-fer2013@champion", "-o", "model.onnx"],
}


@pytest.mark.parametrize("command", list(READING))
@pytest.mark.parametrize("uri", ["sqlite:///typo.db", "sqlite:///missing/dir/typo.db",
                                 "file:./missing-mlruns"])
def test_a_mistyped_tracking_uri_creates_nothing(command, uri, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert main([*READING[command], "--tracking-uri", uri]) == 1
    assert list(tmp_path.iterdir()) == []  # no database, no folder
    assert f"no MLflow store at {uri} (" in caplog.text
    assert "does not exist" in caplog.text and "--tracking-uri / MLFLOW_TRACKING_URI" in caplog.text


def test_the_default_store_is_not_created_either(tmp_path, monkeypatch, caplog):
    """Outside a project, without MLFLOW_TRACKING_URI, the store is ./mlflow.db: missing here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["predict", "photo.jpg"]) == 1
    default = tmp_path / "mlflow.db"
    assert f"no MLflow store at sqlite:///{default} (file {default} does not exist)" in caplog.text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert main(["export", "-o", "model.onnx"]) == 1
    assert "no MLflow store at sqlite:///elsewhere.db (file elsewhere.db does not exist)" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_that_is_not_a_store_is_left_alone(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    with sqlite3.connect(tmp_path / "other.db") as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    before = (tmp_path / "other.db").read_bytes()
    for command in READING.values():
        assert main([*command, "--tracking-uri", "sqlite:///other.db"]) == 1
    assert "no MLflow store at sqlite:///other.db (other.db is not an MLflow database" in caplog.text
    assert (tmp_path / "other.db").read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.db"]


def test_inspect_gallery_skips_unlabelled_rows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    label = np.array([0, 1, -1, 1, 0, 2, -1, 2, 0], np.int8)
    arrays = {"images": rng.integers(0, 256, (len(label), 48, 48), dtype=np.uint8), "label": label,
              "classes": np.array(["angry", "disgust", "fear"])}
    path = tmp_path / "small.npz"
    save_arrays(path, arrays)
    assert main(["inspect", str(path), "--gallery", str(tmp_path / "gallery.png"), "--per-class", "2"]) == 0
    out = capsys.readouterr().out
    assert "9 images; per class:" in out and "(no label)" in out
    with Image.open(tmp_path / "gallery.png") as image:
        assert image.width > 100 and image.height > 100
