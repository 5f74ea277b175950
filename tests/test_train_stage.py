"""The train stage end to end on real data, tracked in MLflow (SQLite store and HTTP server)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from stages import train as train_stage

from conftest import small_params
from ferops.io import file_digest, load_arrays
from ferops.models import load_class_names


def tiny_params(repo_root: Path, target: Path, **train_changes) -> Path:
    params = small_params(**train_changes)
    target.write_text(yaml.safe_dump(params, sort_keys=False))
    return target


def stage_args(params: Path, prepared: Path, out: Path) -> list[str]:
    return ["--params", str(params), "--train", str(prepared / "train.npz"),
            "--val", str(prepared / "public_test.npz"), "--model", str(out / "models/model.keras"),
            "--report", str(out / "reports/train.json"),
            "--history", str(out / "reports/plots/history.csv"),
            "--figure", str(out / "reports/figures/curves.png"),
            "--receipt", str(out / "reports/mlflow_run.json")]


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    """The stage sets the global Keras dtype policy (mixed bfloat16 on AMX CPUs): reset it."""
    yield
    import keras

    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """An empty git repository as the working directory (where mlflow.db goes by default)."""
    for command in (["git", "init", "-q"], ["git", "-c", "user.name=t", "-c", "user.email=t@t",
                                             "commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(command, cwd=tmp_path, check=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "test-exp")
    return tmp_path


@pytest.mark.slow
def test_short_training_logs_a_complete_run(project, prepared_dir, repo_root):
    import mlflow
    from mlflow import MlflowClient

    params = tiny_params(repo_root, project / "params.yaml", lr=0.002)
    assert train_stage.main(stage_args(params, prepared_dir, project)) == 0

    receipt = json.loads((project / "reports/mlflow_run.json").read_text())
    assert receipt["tracking_uri"] is None  # the project's own store: no absolute path recorded
    client = MlflowClient(tracking_uri=f"sqlite:///{project.resolve() / 'mlflow.db'}")
    run = client.get_run(receipt["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002"
    assert run.data.params["model.arch"] == "resnet_s2d"
    assert run.data.params["base.classes"].startswith('["angry"')
    for metric in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "best_val_accuracy"):
        assert metric in run.data.metrics, metric
    assert run.data.tags["dvc.exp_name"] == "test-exp"
    assert len(run.data.tags["git.commit"]) == 40 and run.data.tags["git.dirty"] in ("true", "false")
    digests = {entry.dataset.name: entry.dataset.digest for entry in run.inputs.dataset_inputs}
    assert digests == {"fer2013-train": file_digest(prepared_dir / "train.npz", "md5"),
                       "fer2013-public-test": file_digest(prepared_dir / "public_test.npz", "md5")}
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "pipeline")}
    assert "pipeline/params.yaml" in artifacts

    # The logged model carries a signature and a real input example that it accepts.
    from mlflow.models import Model

    local_model = mlflow.artifacts.download_artifacts(receipt["model_uri"])
    logged = Model.load(local_model)
    assert logged.metadata["classes"][:2] == ["angry", "disgust"]  # the model knows its labels
    assert list(logged.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 48, 48, 1]
    example = logged.load_input_example(local_model)
    assert example.shape == (2, 48, 48, 1) and example.dtype == np.float32 and example.max() > 1

    # The logged model loads back and predicts probabilities for real faces.
    model = mlflow.keras.load_model(receipt["model_uri"])
    faces = load_arrays(prepared_dir / "private_test.npz")["images"][:4, ..., None].astype(np.float32)
    probabilities = model.predict(faces, verbose=0)
    assert probabilities.shape == (4, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    # So does the .keras file the stage wrote.
    import keras

    local = keras.saving.load_model(project / "models/model.keras")
    assert load_class_names(project / "models/model.keras") == tuple(small_params()["base"]["classes"])
    assert not list((project / "models").glob(".*")), "scratch or temporary files left beside the model"
    np.testing.assert_allclose(local.predict(faces, verbose=0), probabilities, atol=1e-6)
    report = json.loads((project / "reports/train.json").read_text())
    assert report["epochs_run"] == 1 and report["mlflow_run_id"] == receipt["run_id"]
    # Which CPU flags chose the precision, in the report and on the run.
    from ferops.hardware import bf16_flags, cpu_flags, select_precision

    assert report["cpu"]["bf16_flags"] == list(bf16_flags(cpu_flags()))
    assert report["precision"] == select_precision("auto", [], cpu_flags(), arch="resnet_s2d")
    assert run.data.tags["cpu.bf16_flags"] == (",".join(report["cpu"]["bf16_flags"]) or "none")
    assert run.data.tags["precision.reason"] == report["cpu"]["precision_reason"]
    assert run.data.tags["precision"] == report["precision"]
    assert (project / "reports/plots/history.csv").read_text().count("\n") == 2


def test_bad_params_fail_before_anything_is_written(project, prepared_dir, repo_root, caplog):
    params = tiny_params(repo_root, project / "params.yaml", optimizer="rmsprop")
    assert train_stage.main(stage_args(params, prepared_dir, project)) == 1
    assert "train.optimizer: Input should be 'adam', 'adamw' or 'sgd'; got 'rmsprop'" in caplog.text
    assert not (project / "mlflow.db").exists() and not (project / "models").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_runs_log_through_an_mlflow_tracking_server(project, prepared_dir, repo_root, monkeypatch):
    from mlflow import MlflowClient

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{project / 'server.db'}",
         "--artifacts-destination", str(project / "server-artifacts")],
        cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            assert server.poll() is None, "mlflow server exited"
            time.sleep(1)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        params = tiny_params(repo_root, project / "params.yaml", max_train_images=256)
        assert train_stage.main(stage_args(params, prepared_dir, project)) == 0
        receipt = json.loads((project / "reports/mlflow_run.json").read_text())
        assert receipt["tracking_uri"] == url
        run = MlflowClient(tracking_uri=url).get_run(receipt["run_id"])
        assert run.data.params["train.max_train_images"] == "256"
        assert not (project / "mlflow.db").exists()  # nothing went to the local default store
        assert any((project / "server-artifacts").rglob("*.keras"))  # the model went through the server
    finally:
        server.terminate()
        server.wait(timeout=30)
