"""Model loading in every accepted form, batch classification, and the training-exact preprocessing."""

from __future__ import annotations

import json
import logging
import sqlite3

import cv2
import keras
import numpy as np
import pytest

from conftest import ckplus_faces, jaffe_paths
from ferops.export import export_onnx
from ferops.faces import FaceDetector
from ferops.inference import (
    FER2013_CLASSES,
    KerasClassifier,
    ModelLoadError,
    OnnxClassifier,
    StoreNotFoundError,
    load_classifier,
    preprocess,
    require_store,
)
from ferops.io import load_arrays
from ferops.models import save_class_names
from ferops.predictor import Predictor
from test_predict import CLASSES


@pytest.fixture(scope="module")
def keras_classifier(usage_model):
    return load_classifier(usage_model)


def test_keras_file_classifies_real_faces_in_batches(keras_classifier, raw_dir):
    faces = ckplus_faces(raw_dir, 24)
    probabilities = keras_classifier.classify(faces)
    assert isinstance(keras_classifier, KerasClassifier) and keras_classifier.backend == "keras"
    assert probabilities.shape == (24, len(CLASSES)) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    # Batching must not change the answer: batches of 5 (with a ragged last one) vs one batch.
    small = load_classifier(keras_classifier.source, batch_size=5)
    np.testing.assert_allclose(small.classify(faces), probabilities, atol=1e-5)
    assert keras_classifier.classify([]).shape == (0, len(CLASSES))


def test_crops_are_the_training_crops(keras_classifier, raw_dir, prepared_dir):
    """predict crops JAFFE photos exactly like the prepare stage did for jaffe.npz."""
    arrays = load_arrays(prepared_dir / "jaffe.npz")
    row = {str(name): index for index, name in enumerate(arrays["file"])}
    predictor = Predictor(keras_classifier, FaceDetector())
    compared = 0
    for path in jaffe_paths(raw_dir)[:40:4]:
        index = row[path.name]
        if not arrays["detected"][index]:
            continue
        boxes, crops = predictor.crops(cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        assert boxes, f"{path.name}: no face found"
        np.testing.assert_array_equal(crops[0], arrays["images"][index])
        compared += 1
    assert compared >= 8
    pixels = preprocess([arrays["images"][0]])
    assert pixels.shape == (1, 48, 48, 1) and pixels.dtype == np.float32
    assert pixels.max() > 1.0  # raw 0..255: the model rescales inside itself


def test_preprocess_refuses_wrong_inputs():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((2, 48, 48), np.float32))
    with pytest.raises(ValueError, match="48x48"):
        preprocess(np.zeros((2, 64, 64), np.uint8))


def test_missing_store_is_an_error_not_a_new_database(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(ModelLoadError, match=f"no MLflow store at {uri} "):
        load_classifier("models:/ferops-fer2013@champion", tracking_uri=uri)
    assert not (tmp_path / "mlflow.db").exists()


def test_require_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for uri, missing in (("sqlite:///typo.db", "file typo.db does not exist"),
                         ("sqlite:///a/b/typo.db?mode=ro", "file a/b/typo.db does not exist"),
                         (f"sqlite:///{tmp_path}/x.db", f"file {tmp_path}/x.db does not exist"),
                         ("file:./mlruns", "folder mlruns does not exist"),
                         (f"file://{tmp_path}/mlruns", f"folder {tmp_path}/mlruns does not exist"),
                         ("mlruns", "folder mlruns does not exist")):
        with pytest.raises(StoreNotFoundError) as error:
            require_store(uri)
        assert str(error.value).startswith(f"no MLflow store at {uri} ({missing}): check --tracking-uri")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "empty.db").touch()  # SQLite would happily treat 0 bytes as an empty database
    with pytest.raises(StoreNotFoundError, match="empty.db is not an MLflow database"):
        require_store("sqlite:///empty.db")
    assert (tmp_path / "empty.db").stat().st_size == 0
    with sqlite3.connect(tmp_path / "store.db") as connection:
        connection.execute("CREATE TABLE experiments (id INTEGER)")
    (tmp_path / "mlruns").mkdir()
    for uri in ("sqlite:///store.db", "file:./mlruns", "mlruns", "sqlite://", "sqlite:///:memory:",
                "databricks"):
        require_store(uri)  # present, in memory, or remote: nothing to check
    # A tracking server gets one quick request: one that is down is a clear error at once.
    from ferops.tracking import TrackingServerError

    with pytest.raises(TrackingServerError, match=r"http://127.0.0.1:9 is unreachable .*server is up"):
        require_store("http://127.0.0.1:9")


def test_mlflow_forms_load_the_same_model(keras_classifier, trained_run, usage_registry, raw_dir):
    uri, name = usage_registry
    receipt = json.loads(trained_run.receipt.read_text())
    faces = ckplus_faces(raw_dir, 10)
    expected = keras_classifier.classify(faces)
    for reference in (f"models:/{name}@champion", receipt["model_uri"], f"runs:/{receipt['run_id']}/model"):
        classifier = load_classifier(reference, tracking_uri=uri)
        assert classifier.source == reference
        np.testing.assert_allclose(classifier.classify(faces), expected, atol=1e-6, err_msg=reference)


def test_bad_model_references_are_clear_errors(usage_registry, tmp_path):
    uri, name = usage_registry
    with pytest.raises(ModelLoadError, match=rf"{name}.*alias 'nosuchalias'"):
        load_classifier(f"models:/{name}@nosuchalias", tracking_uri=uri)
    with pytest.raises(ModelLoadError, match="registered model 'nosuchmodel'"):
        load_classifier("models:/nosuchmodel@champion", tracking_uri=uri)
    with pytest.raises(ModelLoadError, match="model not found"):
        load_classifier(tmp_path / "missing.keras")
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="unsupported model file type '.txt'"):
        load_classifier(tmp_path / "notes.txt")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x01garbage")
    with pytest.raises(ModelLoadError, match="broken.onnx: ONNX Runtime could not load"):
        load_classifier(tmp_path / "broken.onnx")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="broken.keras: cannot load as a Keras model"):
        load_classifier(tmp_path / "broken.keras")
    with pytest.raises(ModelLoadError, match="unsupported model URI"):
        load_classifier("https://example.invalid/model")


def tiny_model(outputs: int) -> keras.Model:
    """An untrained model with the classifier's input and ``outputs`` probabilities (for class-name tests)."""
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Conv2D(4, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(outputs, activation="softmax")(x))


def test_models_bring_their_own_class_names(tmp_path, caplog):
    """.keras files, MLflow models and ONNX exports carry their names; the FER2013 order is a fallback."""
    import mlflow

    names = ("calm", "cross", "glad")
    model = tiny_model(3)
    model.save(tmp_path / "model.keras")
    save_class_names(tmp_path / "model.keras", names)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("names", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        logged = mlflow.keras.log_model(model, name="model", metadata={"classes": list(names)})
    mlflow.register_model(logged.model_uri, "tiny")
    export_onnx(model, tmp_path / "model.onnx", classes=names)
    faces = np.zeros((2, 48, 48), np.uint8)
    with caplog.at_level(logging.WARNING):
        for reference in (tmp_path / "model.keras", logged.model_uri, "models:/tiny/1",
                          tmp_path / "model.onnx"):
            classifier = load_classifier(reference, tracking_uri=uri)
            assert classifier.classes == names and not classifier.classes_assumed, reference
            assert classifier.classify(faces).shape == (2, 3)
    assert "carries no class names" not in caplog.text
    # An explicit list wins (it must still match the outputs).
    assert load_classifier(tmp_path / "model.onnx", classes=["x", "y", "z"]).classes == ("x", "y", "z")
    with pytest.raises(ModelLoadError, match=r"expected \(batch, 7\) probabilities"):
        load_classifier(tmp_path / "model.keras", classes=FER2013_CLASSES)

    # Older models without names: the FER2013 order, with a warning naming the model.
    old = tiny_model(7)
    old.save(tmp_path / "old.keras")
    export_onnx(old, tmp_path / "old.onnx")
    for reference in (tmp_path / "old.keras", tmp_path / "old.onnx"):
        classifier = load_classifier(reference)
        assert classifier.classes == FER2013_CLASSES and classifier.classes_assumed
        assert f"{reference}: the model carries no class names" in caplog.text
    with pytest.raises(ModelLoadError, match=r"expected \(batch, 7\) probabilities"):
        load_classifier(tmp_path / "model.onnx", classes=FER2013_CLASSES)


def test_onnx_classifier_matches_keras(onnx_model, keras_classifier, raw_dir):
    classifier = load_classifier(onnx_model)
    assert isinstance(classifier, OnnxClassifier) and classifier.backend == "onnxruntime"
    faces = ckplus_faces(raw_dir, 16)
    np.testing.assert_allclose(classifier.classify(faces), keras_classifier.classify(faces), atol=1e-4)
