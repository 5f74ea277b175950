"""DVC stage `train`: train the configured Keras model and track the run in MLflow.

Usage: python stages/train.py --train data/oversampled/train.npz --val data/prepared/public_test.npz
       --model models/model.keras --report reports/train.json --history reports/plots/train/history.csv
       --figure reports/figures/train/curves.png --receipt reports/mlflow_run.json
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np

from ferops.figures import training_curves
from ferops.io import atomic_file, load_arrays, write_json
from ferops.runtime import configure_logging, read_all_params, read_params, run_stage
from ferops.tracking import (
    find_project_root,
    flatten_params,
    git_tags,
    log_array_dataset,
    tracking_uri,
    use_experiment,
    write_receipt,
)
from ferops.training import TrainConfig, train

logger = logging.getLogger("ferops.stages.train")


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """Per-epoch metrics as CSV (DVC plot data)."""
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = sorted(history)
        writer.writerow(["epoch", *keys])
        for index in range(len(history[keys[0]])):
            writer.writerow([index + 1, *(f"{history[key][index]:.6g}" for key in keys)])


def log_keras_model(model: Any, signature: Any, input_example: np.ndarray) -> Any:
    """``mlflow.keras.log_model`` with a signature and an input example; returns its ModelInfo.

    MLflow 3.17's Keras flavour writes ``input_example.json`` before it creates the model
    directory, so ``mlflow.keras.log_model(..., input_example=...)`` raises FileNotFoundError
    (mlflow/mlflow#16183; the TensorFlow and PyTorch flavours create the directory first). The
    same ``Model.log`` call goes through a wrapper flavour that creates the directory, then runs
    ``mlflow.keras.save_model``: the logged model is an ordinary Keras-flavour model. Harmless
    once MLflow is fixed.
    """
    import mlflow
    from mlflow.models import Model

    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)

    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
    return Model.log(artifact_path=None, name="model", flavor=flavor, model=model, signature=signature,
                     input_example=input_example)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", required=True, help="Training split (.npz)")
    parser.add_argument("--val", required=True, help="validation split: PublicTest (.npz)")
    parser.add_argument("--model", required=True, help="output model (.keras)")
    parser.add_argument("--report", required=True, help="JSON summary of the run")
    parser.add_argument("--history", required=True, help="per-epoch metrics (CSV, DVC plots)")
    parser.add_argument("--figure", required=True, help="training curves (PNG)")
    parser.add_argument("--receipt", required=True, help="JSON receipt with the MLflow run id")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        sections = read_params(args.params, "base", "model", "train", "mlflow")
        base = sections["base"]
        classes = list(base["classes"])
        config = TrainConfig.from_params(sections["model"], sections["train"], int(base["seed"]))
        train_arrays, val_arrays = load_arrays(args.train), load_arrays(args.val)

        import mlflow
        from mlflow.models import infer_signature

        from ferops.hardware import configure

        hardware = configure(config.mixed_precision)
        root = find_project_root(Path.cwd())
        uri = tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"), root)
        experiment_id = use_experiment(sections["mlflow"]["experiment"], uri, root)
        tags = git_tags(Path.cwd(), os.environ)
        tags.update({"devices": ",".join(hardware.devices), "precision": hardware.precision})
        with mlflow.start_run(experiment_id=experiment_id, run_name=os.environ.get("DVC_EXP_NAME"),
                              tags=tags) as run:
            logger.info("MLflow run %s in %s", run.info.run_id, uri)
            mlflow.log_params(flatten_params(read_all_params(args.params)))
            digests = {
                "train": log_array_dataset(Path(args.train), train_arrays, "fer2013-train", "training"),
                "validation": log_array_dataset(Path(args.val), val_arrays, "fer2013-public-test",
                                                "validation"),
            }

            def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
                mlflow.log_metrics(metrics, step=epoch)

            model_path = Path(args.model)
            model_path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".train-", dir=model_path.parent) as scratch:
                result = train(config, train_arrays, val_arrays, n_classes=len(classes),
                               image_size=int(base["image_size"]),
                               checkpoint=Path(scratch) / "best.keras",
                               strategy=hardware.strategy, on_epoch=on_epoch)
                with atomic_file(model_path) as temp:
                    os.replace(Path(scratch) / "best.keras", temp)

            summary = {
                "arch": config.arch,
                "parameters": int(result.model.count_params()),
                "labels": "training labels of data/prepared (see prepare.labels)",
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "best": {key: values[result.best_epoch - 1] for key, values in result.history.items()},
                "final": {key: values[-1] for key, values in result.history.items()},
                "train_seconds": round(result.seconds, 1),
                # CPU seconds of the training process: on a shared machine, divided by the number
                # of cores this estimates how long the run would have taken alone.
                "train_cpu_seconds": round(result.cpu_seconds, 1),
                "images_per_second": round(result.images_per_second, 1),
                "devices": hardware.devices,
                "precision": hardware.precision,
                "mlflow_run_id": run.info.run_id,
                "data_md5": digests,
            }
            mlflow.log_metrics({"best_val_accuracy": result.best_val_accuracy,
                                "best_epoch": result.best_epoch,
                                "train_seconds": result.seconds,
                                "train_images_per_second": result.images_per_second})
            figure_path = Path(args.figure)
            training_curves(result.history, figure_path, best_epoch=result.best_epoch,
                            title=f"{config.arch}: best PublicTest accuracy "
                                  f"{result.best_val_accuracy:.4f} (epoch {result.best_epoch})")
            mlflow.log_artifact(str(figure_path), "figures")
            for name in ("params.yaml", "dvc.lock"):
                if Path(name).is_file():
                    mlflow.log_artifact(name, "pipeline")
            # Pyfunc enforces the signature strictly: the example and the signature are float32.
            sample = val_arrays["images"][:8, ..., None].astype(np.float32)
            signature = infer_signature(sample, result.model.predict(sample, verbose=0))
            logged = log_keras_model(result.model, signature, input_example=sample[:2])
            write_history(Path(args.history), result.history)
            write_json(args.report, summary)
            write_receipt(Path(args.receipt), run.info.run_id, experiment_id, uri, logged.model_uri)
            logger.info("best PublicTest accuracy %.4f at epoch %d; model %s", result.best_val_accuracy,
                        result.best_epoch, logged.model_uri)

    return run_stage("train", body)


if __name__ == "__main__":
    raise SystemExit(main())
