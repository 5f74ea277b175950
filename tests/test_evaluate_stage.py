"""The evaluate stage on a briefly trained real model: outputs, MLflow logging, clear failures."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import numpy as np
import pytest

from conftest import run_evaluate
from ferops.inference import FER2013_CLASSES
from ferops.io import load_arrays

pytestmark = pytest.mark.slow

CLASSES = list(FER2013_CLASSES)
DATASETS = ("private_test", "private_test_clean", "public_test", "ckplus", "jaffe")


def test_metrics_figures_and_plot_data_for_every_dataset(evaluated_run, prepared_dir):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert metrics["tta"] == "flip"
    ckplus = load_arrays(prepared_dir / "ckplus.npz")
    expected_n = {"private_test": 3589, "public_test": 3589, "jaffe": 213,
                  "ckplus": int((ckplus["label"] != 7).sum())}
    for name in DATASETS:
        summary = metrics[name]
        if name in expected_n:
            assert summary["n"] == expected_n[name], name
        for key in ("accuracy", "macro_f1", "group3_accuracy", "ece"):
            assert 0.0 <= summary[key] <= 1.0, (name, key)
        assert 0.0 <= summary["tta_flip"]["accuracy"] <= 1.0
        assert summary["group3_accuracy"] >= summary["accuracy"]  # grouping only forgives mistakes
        detail = json.loads((evaluated_run / "evaluate" / f"{name}.json").read_text())
        matrix = np.asarray(detail["confusion"])
        assert matrix.sum() == summary["n"]
        assert np.trace(matrix) / summary["n"] == pytest.approx(summary["accuracy"])
        assert sorted(detail["plain"]["per_class"]) == sorted(CLASSES)
        plot_data = evaluated_run / "plots" / f"confusion_{name}.csv"
        if name in ("ckplus", "jaffe"):
            assert not plot_data.exists()  # not redistributable: figures and JSON only
        else:
            with open(plot_data) as handle:
                rows = list(csv.DictReader(handle))
            order = [(CLASSES.index(r["actual"]), CLASSES.index(r["predicted"])) for r in rows]
            assert len(rows) == summary["n"] and order == sorted(order)  # counts only, no image order
            counts = Counter((r["actual"], r["predicted"]) for r in rows)
            assert counts[("happy", "happy")] == matrix[3, 3]
        assert (evaluated_run / "figures" / f"confusion_{name}.png").stat().st_size > 5000
        assert (evaluated_run / "galleries" / f"mistakes_{name}.png").stat().st_size > 5000
    assert metrics["private_test_clean"]["n"] < metrics["private_test"]["n"]
    # The FER+ benchmark: 3,153 PrivateTest images keep a protocol label; eight classes, and a
    # 7-class model never answers contempt (its column is empty, its 16 faces count as wrong).
    ferplus_test = metrics["ferplus_test"]
    assert ferplus_test["n"] == 3153 and 0 < ferplus_test["accuracy"] < 1
    assert 0 < ferplus_test["tta_flip"]["accuracy"] < 1
    detail = json.loads((evaluated_run / "evaluate" / "ferplus_test.json").read_text())
    matrix = np.asarray(detail["confusion"])
    assert matrix.shape == (8, 8) and matrix[:, 7].sum() == 0 and matrix[7].sum() == 16
    assert np.trace(matrix) / 3153 == pytest.approx(ferplus_test["accuracy"])
    assert sorted(detail["plain"]["per_class"]) == sorted(["neutral", "happiness", "surprise", "sadness",
                                                           "anger", "disgust", "fear", "contempt"])
    assert "count as wrong" in detail["description"] and "ferplus_test" in metrics["labels"]
    # CK+ is scored over its six classes only: neutral is never predicted there.
    ckplus_detail = json.loads((evaluated_run / "evaluate" / "ckplus.json").read_text())
    assert np.asarray(ckplus_detail["confusion"])[:, 6].sum() == 0
    assert "accuracy_unmasked" in metrics["ckplus"]
    for name in ("reliability.png",):
        assert (evaluated_run / "figures" / name).stat().st_size > 5000
    for name in ("gradcam_private_test.png", "gradcam_jaffe.png"):
        assert (evaluated_run / "galleries" / name).stat().st_size > 20000


def test_evaluation_is_logged_to_the_training_run(evaluated_run, trained_run):
    from mlflow import MlflowClient

    receipt = json.loads(trained_run.receipt.read_text())
    client = MlflowClient(tracking_uri=trained_run.tracking_uri)
    run = client.get_run(receipt["run_id"])
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert run.data.metrics["private_test.accuracy"] == pytest.approx(metrics["private_test"]["accuracy"])
    jaffe_tta = metrics["jaffe"]["tta_flip"]["accuracy"]
    assert run.data.metrics["jaffe.tta_flip.accuracy"] == pytest.approx(jaffe_tta)
    assert "private_test.recall.happy" in run.data.metrics
    assert "best_val_accuracy" in run.data.metrics  # the training's own metrics are in the same run
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "evaluate/figures")}
    assert "evaluate/figures/confusion_private_test.png" in logged
    reports = {item.path for item in client.list_artifacts(run.info.run_id, "evaluate/reports")}
    assert "evaluate/reports/ckplus.json" in reports
    # ferops monitor's reference: PublicTest as the server sees it, tied to this run, also in MLflow.
    from ferops.monitoring import REFERENCE_COLUMNS, read_reference

    frame, model = read_reference(evaluated_run / "monitor" / "reference.parquet")
    assert model["run_id"] == receipt["run_id"] and list(frame.columns) == list(REFERENCE_COLUMNS)
    assert 0.9 * 3589 < len(frame) <= 3589  # faces the detector found in the served views
    assert frame["confidence"].between(0, 1).all() and frame["brightness"].between(20, 235).all()
    monitor = {item.path for item in client.list_artifacts(run.info.run_id, "evaluate/monitor")}
    assert monitor == {"evaluate/monitor/reference.parquet"}


def test_missing_model_or_receipt_fails_clearly_and_keeps_previous_outputs(trained_run, prepared_dir,
                                                                           evaluated_run, tmp_path, caplog):
    out = tmp_path / "out"
    shutil.copytree(evaluated_run, out)
    before = (out / "metrics.json").read_bytes()
    broken = trained_run.work / "missing"
    run = type(trained_run)(**{**trained_run.__dict__, "model": broken / "model.keras"})
    assert run_evaluate(run, prepared_dir, out) == 1
    assert "model not found" in caplog.text and "dvc repro train" in caplog.text
    run = type(trained_run)(**{**trained_run.__dict__, "receipt": broken / "mlflow_run.json"})
    assert run_evaluate(run, prepared_dir, out) == 1
    assert "receipt not found" in caplog.text
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"not a model")
    run = type(trained_run)(**{**trained_run.__dict__, "model": corrupt})
    assert run_evaluate(run, prepared_dir, out) == 1
    assert "cannot load as a Keras model" in caplog.text
    assert (out / "metrics.json").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in evaluated_run.iterdir())
