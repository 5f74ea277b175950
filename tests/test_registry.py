"""Registry: the promotion gate by hand, then register/promote with real briefly trained models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from conftest import TrainedRun, run_evaluate, tracking_env, train_briefly
from ferops.cli import EXIT_REFUSED
from ferops.cli import main as ferops
from ferops.config import build
from ferops.errors import ParamsError
from ferops.inference import FER2013_CLASSES
from ferops.io import load_arrays
from ferops.paired import PairedDifference
from ferops.registry import Gate, decide

CLASSES = list(FER2013_CLASSES)


def tags(accuracy: float, ckplus: float = 0.5, jaffe: float = 0.4, **recall: float) -> dict[str, str]:
    values = {"private_test.accuracy": accuracy, "ckplus.accuracy": ckplus, "jaffe.accuracy": jaffe}
    values.update({f"private_test.recall.{k}": recall.get(k, 0.5) for k in CLASSES})
    return {key: str(value) for key, value in values.items()}


def test_first_champion_needs_the_minimum_accuracy():
    gate = Gate(min_accuracy=60.0)
    assert decide(tags(0.61), None, gate, CLASSES).passed
    refused = decide(tags(0.59), None, gate, CLASSES)
    assert not refused.passed and "59.00 % < the minimum 60.00 %" in refused.summary


def test_gate_rules_each_refuse_with_their_reason():
    gate = Gate(max_accuracy_drop=0.0, max_class_recall_drop=5.0, max_cross_dataset_drop=3.0)
    champion = tags(0.60)
    assert decide(tags(0.61), champion, gate, CLASSES).passed
    assert decide(tags(0.60), champion, gate, CLASSES).passed  # "not lower" allows equal
    lower = decide(tags(0.599), champion, gate, CLASSES)
    assert not lower.passed and "PrivateTest accuracy 59.90 % vs 60.00 %" in lower.summary
    recall = decide(tags(0.62, fear=0.44), champion, gate, CLASSES)
    assert not recall.passed and "fear recall" in recall.summary and "-6.00 points" in recall.summary
    assert decide(tags(0.62, fear=0.46), champion, gate, CLASSES).passed  # a 4-point drop is allowed
    cross = decide(tags(0.62, jaffe=0.36), champion, gate, CLASSES)
    assert not cross.passed and "JAFFE accuracy" in cross.summary
    both = decide(tags(0.50, ckplus=0.40), champion, gate, CLASSES)
    assert len(both.reasons) == 2 and "CK+ accuracy" in both.summary
    # The side-by-side rows: one per metric compared, marked ok/FAIL.
    assert [row[0] for row in both.rows][:2] == ["private_test.accuracy", "private_test.recall.angry"]
    assert sum("FAIL" in row[4] for row in both.rows) == 2


def paired(low: float, high: float, units: str = "subjects") -> PairedDifference:
    return PairedDifference((low + high) / 2, low, high, 0.95, 213, units, 10, 5, 9, 0.4)


def test_gate_decides_on_the_paired_interval_where_it_has_one():
    gate = Gate(max_accuracy_drop=0.0, max_class_recall_drop=5.0, max_cross_dataset_drop=3.0)
    champion = tags(0.60, jaffe=0.55)
    candidate = tags(0.61, jaffe=0.5146)  # JAFFE 3.54 points lower: refused on single figures
    assert not decide(candidate, champion, gate, CLASSES).passed
    # On JAFFE's 10 people the drop is within the noise: the interval reaches above -3 points.
    noisy = decide(candidate, champion, gate, CLASSES, {"jaffe.accuracy": paired(-8.1, +1.2)})
    assert noisy.passed, noisy.summary
    row = next(row for row in noisy.rows if row[0] == "jaffe.accuracy")
    assert row[3] == "-3.54" and row[4].endswith("ok") and row[5] == "[-8.10, +1.20] (subjects)"
    assert next(row for row in noisy.rows if row[0] == "ckplus.accuracy")[5] == "single runs"
    # A drop beyond the interval is refused, and the reason gives the interval.
    real = decide(candidate, champion, gate, CLASSES, {"jaffe.accuracy": paired(-6.0, -3.2)})
    assert not real.passed
    assert "JAFFE accuracy 51.46 % vs 55.00 % (-3.54 points, 95 % interval [-6.00, -3.20] over 10 " \
           "subjects, allowed drop 3.00)" in real.summary
    # The headline too: a lower PrivateTest figure within its interval passes.
    lower = tags(0.595, jaffe=0.55)
    assert not decide(lower, champion, gate, CLASSES).passed
    within = {"private_test.accuracy": paired(-1.7, +0.7, "images")}
    assert decide(lower, champion, gate, CLASSES, within).passed


def test_gate_params_are_checked():
    assert build(Gate, {"min_accuracy": 55}, "promote").min_accuracy == 55.0
    with pytest.raises(ParamsError,
                       match="promote.min_acc: unknown key; known keys here: confidence, max_accuracy_drop"):
        build(Gate, {"min_acc": 55}, "promote")
    with pytest.raises(ParamsError, match="promote.max_class_recall_drop: Input should be greater than or"):
        build(Gate, {"max_class_recall_drop": -1}, "promote")
    with pytest.raises(ParamsError, match="promote.confidence: Input should be less than 1"):
        build(Gate, {"confidence": 95}, "promote")


# --- end to end with the real stages and a real SQLite registry ------------------------------------------


def register_stage(run: TrainedRun, evaluated, out) -> dict:
    from stages import register

    with tracking_env(run.tracking_uri):
        assert register.main(["--params", str(run.params), "--receipt", str(run.receipt),
                              "--metrics", str(evaluated / "metrics.json"),
                              "--details", str(evaluated / "evaluate"),
                              "--train-report", str(run.report), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def promote(run: TrainedRun, *args: str) -> int:
    return ferops(["promote", "--params", str(run.params), "--tracking-uri", run.tracking_uri, *args])


def sabotaged_copy(run: TrainedRun, work) -> TrainedRun:
    """A deliberately worse model, logged as a new MLflow run like the train stage would.

    It is the trained model with its logits layer replaced by a constant "disgust" (a bias alone
    would not do: a briefly trained model's logits can be larger than any fixed bias).
    """
    import keras
    import mlflow
    from mlflow.models import infer_signature

    from ferops.tracking import PipelineRun, write_receipt

    work.mkdir()
    model = keras.saving.load_model(run.model, compile=False)
    layer = model.get_layer("logits")
    kernel, bias = layer.get_weights()
    bias[:] = 0.0
    bias[CLASSES.index("disgust")] = 10.0  # always answer the rarest class (1.5 % of PrivateTest)
    layer.set_weights([np.zeros_like(kernel), bias])
    model.save(work / "model.keras")
    mlflow.set_tracking_uri(run.tracking_uri)
    experiment = mlflow.get_experiment_by_name("ferops")
    sample = np.zeros((2, 48, 48, 1), np.float32)
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="sabotaged") as active:
        logged = mlflow.keras.log_model(model, name="model",
                                        signature=infer_signature(sample, model.predict(sample, verbose=0)))
    write_receipt(work / "mlflow_run.json", PipelineRun(active.info.run_id, experiment.experiment_id,
                                                         run.tracking_uri), logged.model_uri, work)
    shutil.copy(run.report, work / "train.json")
    shutil.copy(run.params, work / "params.yaml")
    return TrainedRun(work, work / "params.yaml", run.tracking_uri, work / "model.keras",
                      work / "mlflow_run.json", work / "train.json")


def relax_gate(run: TrainedRun) -> TrainedRun:
    """The run with params whose gate only applies the headline rule.

    Briefly trained models swing per-class recall wildly; the recall and cross-dataset rules
    are tested by hand above.
    """
    params = yaml.safe_load(run.params.read_text())
    params["promote"].update({"min_accuracy": 5.0, "max_class_recall_drop": 100.0,
                              "max_cross_dataset_drop": 100.0})
    params["evaluate"].update({"tta": "none", "gradcam_per_class": 1, "mistakes_per_class": 1})
    path = run.work / "params_relaxed.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return TrainedRun(**{**run.__dict__, "params": path})


@pytest.mark.slow
def test_register_and_promote_with_real_models(trained_run, evaluated_run, prepared_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=trained_run.tracking_uri, registry_uri=trained_run.tracking_uri)
    name = yaml.safe_load(trained_run.params.read_text())["registry"]["name"]
    first = relax_gate(trained_run)

    # 1. Register the first model; a forced rerun of the stage does not add a version.
    receipt = register_stage(first, evaluated_run, tmp_path / "registry_a.json")
    assert receipt["version"] == 1
    assert register_stage(first, evaluated_run, tmp_path / "registry_a2.json")["version"] == 1
    assert len(client.search_model_versions(f"name = '{name}'")) == 1
    version = client.get_model_version_by_alias(name, "challenger")
    assert str(version.version) == "1"
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    assert float(version.tags["private_test.accuracy"]) == pytest.approx(metrics["private_test"]["accuracy"])
    assert version.tags["data.train.md5"] == json.loads(first.report.read_text())["data_md5"]["train"]
    assert "private_test.recall.happy" in version.tags

    # 2. The first model becomes champion (above the minimum accuracy).
    assert promote(first) == 0
    assert "first champion" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # 3. A deliberately worse model is refused, with its reason, and dry runs change nothing.
    worse = sabotaged_copy(first, tmp_path / "worse")
    worse_eval = tmp_path / "worse_eval"
    assert run_evaluate(worse, prepared_dir, worse_eval) == 0
    worse_metrics = json.loads((worse_eval / "metrics.json").read_text())
    assert worse_metrics["private_test"]["accuracy"] < 0.02 < metrics["private_test"]["accuracy"]
    assert register_stage(worse, worse_eval, tmp_path / "registry_b.json")["version"] == 2
    assert promote(first, "--dry-run") == EXIT_REFUSED
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "| private_test.accuracy" in out
    assert "promotion.decision" not in client.get_model_version(name, "2").tags
    assert promote(first) == EXIT_REFUSED
    out = capsys.readouterr().out
    assert "REFUSED" in out and "PrivateTest accuracy" in out
    refused = client.get_model_version(name, "2").tags
    assert refused["promotion.decision"] == "refused"
    assert "PrivateTest accuracy" in refused["promotion.reason"]
    assert promote(first) == EXIT_REFUSED  # again: same answer, nothing rewritten
    assert client.get_model_version(name, "2").tags == refused
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"

    # 4. A better model (more data, more epochs) passes the gate and becomes champion.
    better = relax_gate(train_briefly(tmp_path / "better", prepared_dir, first.tracking_uri, epochs=3,
                                      max_train_images=4000))
    better_eval = tmp_path / "better_eval"
    assert run_evaluate(better, prepared_dir, better_eval) == 0
    better_metrics = json.loads((better_eval / "metrics.json").read_text())
    assert better_metrics["private_test"]["accuracy"] > metrics["private_test"]["accuracy"], \
        "precondition: more training should give a better model"
    assert register_stage(better, better_eval, tmp_path / "registry_c.json")["version"] == 3
    assert promote(better) == 0
    assert "PROMOTED: version 3" in capsys.readouterr().out
    promoted = client.get_model_version(name, "3").tags
    assert promoted["promotion.decision"] == "promoted" and promoted["promotion.previous_champion"] == "1"
    assert promote(better) == 0  # twice is harmless
    assert "already the champion" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(name, "champion").version) == "3"

    # 5. Forcing needs a reason, and records it.
    assert promote(better, "--version", "2", "--force") == 1
    assert promote(better, "--version", "2", "--force", "--reason", "drill: roll back to v2") == 0
    forced = client.get_model_version(name, "2").tags
    assert forced["promotion.decision"] == "forced"
    assert forced["promotion.force_reason"] == "drill: roll back to v2"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"

    # 6. models:/<name>@champion loads and predicts (what the README tells users).
    import keras
    import mlflow

    mlflow.set_tracking_uri(first.tracking_uri)
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    faces = load_arrays(prepared_dir / "jaffe.npz")["images"][:5, ..., None].astype(np.float32)
    probabilities = np.asarray(champion.predict(faces))
    assert probabilities.shape == (5, 7)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    expected = keras.saving.load_model(worse.model, compile=False).predict(faces, verbose=0)
    assert np.allclose(probabilities, expected, atol=1e-5)


@pytest.mark.slow
def test_the_gate_refuses_a_real_regression_but_not_another_seed_of_the_champions_recipe(
        prepared_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def trained(name: str, **settings) -> TrainedRun:
        # The default net: its BatchNorm statistics settle within a short run (momentum 0.9),
        # where mini_xception's (0.99) leave a briefly trained model answering one class.
        run = train_briefly(tmp_path / name, prepared_dir, store, model="resnet_s2d", lr=0.02, **settings)
        params = yaml.safe_load(run.params.read_text())
        # The default gate, but for the first champion's minimum (brief models score ~40 %).
        params["promote"]["min_accuracy"] = 5.0
        params["evaluate"].update({"tta": "none", "gradcam_per_class": 1, "mistakes_per_class": 1})
        run.params.write_text(yaml.safe_dump(params, sort_keys=False))
        assert run_evaluate(run, prepared_dir, tmp_path / f"{name}_eval") == 0
        register_stage(run, tmp_path / f"{name}_eval", tmp_path / f"{name}_registry.json")
        return run

    recipe = {"epochs": 4, "max_train_images": 6000}
    champion = trained("champion", seed=1, **recipe)
    assert promote(champion) == 0 and "first champion" in capsys.readouterr().out
    # Another seed of the same recipe: its figures differ, but within the noise of the test sets.
    reseeded = trained("reseeded", seed=2, **recipe)
    assert promote(reseeded, "--dry-run") == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "would promote" in out
    for key in ("private_test.accuracy", "jaffe.accuracy", "ckplus.accuracy"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {key} "))
        assert "(subjects)" in row or "(images)" in row, row  # decided on the paired interval
    # A real regression: one epoch on a quarter of the images.
    regression = trained("regression", seed=1, epochs=1, max_train_images=1000)
    assert promote(regression) == EXIT_REFUSED
    out = capsys.readouterr().out
    assert "REFUSED" in out and "PrivateTest accuracy" in out and "95 % interval" in out, out
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    name = yaml.safe_load(champion.params.read_text())["registry"]["name"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


@pytest.mark.slow
def test_registry_errors_are_clear(trained_run, evaluated_run, tmp_path, caplog):
    from stages import register

    assert ferops(["promote", "--params", str(trained_run.params), "--tracking-uri",
                   trained_run.tracking_uri, "--name", "no-such-model"]) == 1
    assert "registered model 'no-such-model' does not exist" in caplog.text
    assert register.main(["--params", str(trained_run.params), "--receipt", str(tmp_path / "none.json"),
                          "--metrics", str(evaluated_run / "metrics.json"),
                          "--details", str(evaluated_run / "evaluate"),
                          "--train-report", str(trained_run.report), "--out", str(tmp_path / "r.json")]) == 1
    assert "receipt not found" in caplog.text
    assert not (tmp_path / "r.json").exists()
