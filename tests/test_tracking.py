"""Pure helpers of ferops.tracking: flattening params and metrics, the run receipt."""

from __future__ import annotations

import math

import pytest

from ferops.errors import DataError
from ferops.io import write_json
from ferops.tracking import (
    PipelineRun,
    find_project_root,
    flatten_metrics,
    flatten_params,
    read_receipt,
    receipt_store,
    tracking_uri,
    use_experiment,
    write_receipt,
)


def test_flatten_params_gives_dotted_string_values():
    flat = flatten_params({"train": {"lr": 0.1, "augment": {"flip": True}}, "base": {"classes": ["a", "b"]}})
    assert flat == {"train.lr": "0.1", "train.augment.flip": "True", "base.classes": '["a", "b"]'}


def test_flatten_metrics_keeps_finite_numbers_only():
    metrics = {"tta": "flip",
               "private_test": {"accuracy": 0.62, "n": 3589, "ok": True, "ece": math.nan,
                                "tta_flip": {"accuracy": 0.63}}}
    flat = flatten_metrics(metrics)
    assert flat == {"private_test.accuracy": 0.62, "private_test.n": 3589.0,
                    "private_test.tta_flip.accuracy": 0.63}


def test_read_receipt_requires_its_fields(tmp_path):
    with pytest.raises(DataError, match="MLflow run receipt not found; the train stage writes it"):
        read_receipt(tmp_path / "mlflow_run.json")
    write_json(tmp_path / "mlflow_run.json", {"run_id": "abc", "tracking_uri": "sqlite:///x.db"})
    with pytest.raises(DataError, match="receipt lacks model_uri"):
        read_receipt(tmp_path / "mlflow_run.json")


def test_the_project_store_is_recorded_without_its_path(tmp_path):
    # A receipt of the project's own store names no path, so it stays true in a moved checkout.
    root = tmp_path / "checkout"
    run = PipelineRun("abc", "1", tracking_uri(None, root))
    write_receipt(tmp_path / "receipt.json", run, "models:/m-1", root)
    receipt = read_receipt(tmp_path / "receipt.json")
    assert receipt["tracking_uri"] is None
    server = PipelineRun("abc", "1", "http://127.0.0.1:5000")
    write_receipt(tmp_path / "server.json", server, "models:/m-1", root)
    assert read_receipt(tmp_path / "server.json")["tracking_uri"] == "http://127.0.0.1:5000"


def test_a_receipt_from_another_store_is_refused(tmp_path):
    receipt = {"run_id": "abc", "experiment_id": "1", "tracking_uri": "sqlite:////elsewhere/mlflow.db",
               "model_uri": "models:/m-1"}
    with pytest.raises(DataError, match=r"run abc was logged to sqlite:////elsewhere/mlflow.db, but this "
                                        r"checkout logs to sqlite:///.*checkout/mlflow.db"):
        receipt_store(receipt, tmp_path / "r.json", None, tmp_path / "checkout")
    project = dict(receipt, tracking_uri=None)
    with pytest.raises(DataError, match="but this checkout logs to http://127.0.0.1:9/"):
        receipt_store(project, tmp_path / "r.json", "http://127.0.0.1:9/", tmp_path / "checkout")


def test_a_store_copied_from_another_checkout_is_refused(tmp_path):
    # A moved or copied checkout keeps its mlflow.db, whose experiment still points at the
    # original's artifacts: logging into it would write there.
    import shutil

    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    uri = tracking_uri(None, original)
    experiment_id = use_experiment("ferops", uri, original)
    assert use_experiment("ferops", uri, original) == experiment_id
    shutil.copytree(original, copy)
    with pytest.raises(DataError, match=r"artifacts in .*original/mlartifacts, not in this checkout"):
        use_experiment("ferops", tracking_uri(None, copy), copy)
    receipt = {"run_id": "abc", "experiment_id": experiment_id, "tracking_uri": None, "model_uri": "m"}
    with pytest.raises(DataError, match="copied or moved"):
        receipt_store(receipt, tmp_path / "r.json", None, copy)


def test_project_root_of_a_dvc_experiment_copy_is_the_workspace(tmp_path):
    assert find_project_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc") == tmp_path.resolve()
    assert find_project_root(tmp_path) == tmp_path.resolve()
