"""Model loading in every accepted form, batch classification, and the training-exact preprocessing."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import ckplus_faces, jaffe_paths
from ferops.faces import FaceDetector
from ferops.inference import (
    CLASSES,
    KerasClassifier,
    ModelLoadError,
    OnnxClassifier,
    load_classifier,
    preprocess,
)
from ferops.io import load_arrays
from ferops.predict import Predictor


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
    with pytest.raises(ModelLoadError, match="no MLflow store at"):
        load_classifier("models:/ferops-fer2013@champion", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert not (tmp_path / "mlflow.db").exists()


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
    with pytest.raises(ModelLoadError, match="broken.keras: Keras could not load"):
        load_classifier(tmp_path / "broken.keras")
    with pytest.raises(ModelLoadError, match="unsupported model URI"):
        load_classifier("https://example.invalid/model")


def test_onnx_classifier_matches_keras(onnx_model, keras_classifier, raw_dir):
    classifier = load_classifier(onnx_model)
    assert isinstance(classifier, OnnxClassifier) and classifier.backend == "onnxruntime"
    faces = ckplus_faces(raw_dir, 16)
    np.testing.assert_allclose(classifier.classify(faces), keras_classifier.classify(faces), atol=1e-4)
