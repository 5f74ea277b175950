"""Pure helpers of ferops.tracking: flattening params and metrics, the run receipt."""

from __future__ import annotations

import math

import pytest

from ferops.errors import DataError
from ferops.io import write_json
from ferops.tracking import find_project_root, flatten_metrics, flatten_params, read_receipt


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


def test_project_root_of_a_dvc_experiment_copy_is_the_workspace(tmp_path):
    assert find_project_root(tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc") == tmp_path.resolve()
    assert find_project_root(tmp_path) == tmp_path.resolve()
