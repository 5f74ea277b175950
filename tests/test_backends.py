"""Train, evaluate and predict under each Keras backend (TensorFlow, JAX, PyTorch) on the CPU.

Under JAX and PyTorch, TensorFlow is made unimportable for the process, so the test fails if
anything on the train, evaluate or predict path still needs it. Models then travel between the
backends: each .keras file loads and predicts the same probabilities under the others.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, TrainedRun, train_briefly
from ferops.io import load_arrays, save_arrays

pytestmark = pytest.mark.slow

BACKENDS = ("tensorflow", "jax", "torch")
BLOCKER = "raise ImportError('TensorFlow is blocked: this process runs Keras on another backend')\n"


@pytest.fixture(scope="module")
def no_tensorflow(tmp_path_factory) -> Path:
    """A folder that, first on PYTHONPATH, makes `import tensorflow` fail."""
    folder = tmp_path_factory.mktemp("no-tensorflow")
    (folder / "tensorflow").mkdir()
    (folder / "tensorflow" / "__init__.py").write_text(BLOCKER)
    return folder


def backend_env(backend: str, no_tensorflow: Path) -> dict[str, str]:
    env = {"KERAS_BACKEND": backend}
    if backend != "tensorflow":
        env["PYTHONPATH"] = os.pathsep.join([str(no_tensorflow), os.environ.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def small_validation(tmp_path_factory, prepared_dir) -> Path:
    """The prepared Training split beside the first 512 PublicTest rows: a fast validation pass."""
    folder = tmp_path_factory.mktemp("small-prepared")
    (folder / "oversampled.npz").symlink_to(prepared_dir / "oversampled.npz")
    public = load_arrays(prepared_dir / "public_test.npz")
    rows = len(public["label"])
    save_arrays(folder / "public_test.npz", {key: value[:512] if len(value) == rows else value
                                             for key, value in public.items()})
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_validation, no_tensorflow) -> dict[str, TrainedRun]:
    """The real train stage under each backend: the default net, one epoch on 512 images."""
    runs = {}
    for backend in BACKENDS:
        work = tmp_path_factory.mktemp(backend)
        runs[backend] = train_briefly(work / "run", small_validation, f"sqlite:///{work / 'mlflow.db'}",
                                      env=backend_env(backend, no_tensorflow), model="resnet_s2d",
                                      max_train_images=512, lr=0.01)
    return runs


def test_each_backend_trains_and_is_recorded(trained):
    from mlflow import MlflowClient

    from ferops.models import load_class_names

    for backend, run in trained.items():
        receipt = json.loads(run.receipt.read_text())
        tags = MlflowClient(tracking_uri=run.tracking_uri).get_run(receipt["run_id"]).data.tags
        assert tags["keras.backend"] == backend
        assert tags["precision"] in ("float32", "mixed_bfloat16")
        report = json.loads(run.report.read_text())
        assert report["backend"] == backend and report["epochs_run"] == 1
        assert np.isfinite(report["final"]["loss"])
        assert load_class_names(run.model)[0] == "angry"


# What predict, serve and export do: load the .keras file and run it in float32 (a model trained
# in mixed bfloat16 would otherwise differ between backends by bfloat16 rounding, ~1e-2).
PREDICT = """
import json, sys
import keras, numpy as np
from ferops.inference import float32_model, load_keras_model
from ferops.io import load_arrays
faces = load_arrays(sys.argv[1])["images"][:16, ..., None].astype("float32")
out = {}
for name, path in json.loads(sys.argv[2]).items():
    model = float32_model(load_keras_model(path))
    out[name] = np.asarray(model.predict(faces, verbose=0), dtype="float64").tolist()
print(json.dumps({"backend": keras.backend.backend(), "probabilities": out}))
"""


def test_a_model_from_any_backend_predicts_the_same_under_the_others(trained, prepared_dir, no_tensorflow):
    models = json.dumps({backend: str(run.model) for backend, run in trained.items()})
    predictions = {}
    for backend in BACKENDS:
        faces = str(prepared_dir / "private_test.npz")
        env = {**os.environ, **backend_env(backend, no_tensorflow)}
        result = subprocess.run([sys.executable, "-c", PREDICT, faces, models], env=env,
                                capture_output=True, text=True, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        document = json.loads(result.stdout.strip().splitlines()[-1])
        assert document["backend"] == backend
        predictions[backend] = {name: np.asarray(p) for name, p in document["probabilities"].items()}
    for trained_under in BACKENDS:
        reference = predictions[trained_under][trained_under]
        assert reference.shape == (16, 7)
        for loaded_under in BACKENDS:
            difference = np.abs(predictions[loaded_under][trained_under] - reference).max()
            assert difference < 1e-4, (trained_under, loaded_under, difference)


def test_evaluate_and_predict_run_without_tensorflow(trained, prepared_dir, raw_dir, no_tensorflow, tmp_path):
    run = trained["jax"]
    env = {**os.environ, **backend_env("jax", no_tensorflow), "MLFLOW_TRACKING_URI": run.tracking_uri}
    out = tmp_path / "evaluated"
    params = run.params.read_text().replace("tta: flip", "tta: none")
    (tmp_path / "params.yaml").write_text(params)
    evaluate = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "evaluate.py"), "--params", str(tmp_path / "params.yaml"),
         "--model", str(run.model), "--prepared", str(prepared_dir), "--receipt", str(run.receipt),
         "--metrics", str(out / "metrics.json"), "--details", str(out / "evaluate"),
         "--plots", str(out / "plots"), "--figures", str(out / "figures"),
         "--galleries", str(out / "galleries"),
         "--detector-model", str(raw_dir / "face_detection_yunet_2023mar.onnx"),
         "--reference", str(out / "monitor" / "reference.parquet")],
        env=env, cwd=run.work, capture_output=True, text=True)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["private_test"]["accuracy"] < 1
    assert (out / "galleries" / "gradcam_private_test.png").stat().st_size > 5000  # JAX autodiff

    portrait = sorted((raw_dir / "jaffe").glob("*.tiff"))[0]
    predict = subprocess.run(
        [str(Path(sys.executable).parent / "ferops"), "predict", str(portrait), "--model", str(run.model)],
        env={**os.environ, **backend_env("torch", no_tensorflow)}, capture_output=True, text=True)
    assert predict.returncode == 0, predict.stderr[-3000:]
    faces = json.loads(predict.stdout)
    assert faces and json.dumps(faces).count("expression") >= 1
