"""DVC stage `train`: train the configured Keras model and track the run in MLflow.

Usage: python stages/train.py --train data/oversampled/train.npz --val data/prepared/public_test.npz
       --model models/model.keras --report reports/train.json --history reports/plots/train/history.csv
       --figure reports/figures/train/curves.png --receipt reports/mlflow_run.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ferops.config import BaseConfig
from ferops.figures import training_curves
from ferops.hardware import configure
from ferops.io import atomic_file, load_arrays, scratch_directory, write_json
from ferops.models import ModelConfig, save_class_names
from ferops.runtime import configure_logging, read_all_params, read_configs, run_stage
from ferops.tracking import (
    MlflowConfig,
    find_project_root,
    log_epoch,
    log_training_data,
    log_training_outcome,
    pipeline_run,
    write_receipt,
)
from ferops.training import TrainConfig, summary_metrics, train, training_summary, write_history


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
        configs = read_configs(args.params, base=BaseConfig, model=ModelConfig, train=TrainConfig,
                               mlflow=MlflowConfig)
        base, config, arch = configs["base"], configs["train"], configs["model"].arch
        train_arrays, val_arrays = load_arrays(args.train), load_arrays(args.val)
        hardware = configure(config.mixed_precision, arch)
        root = find_project_root(Path.cwd())
        with pipeline_run(configs["mlflow"].experiment, root, os.environ, hardware.tags,
                          read_all_params(args.params)) as run:
            digests = log_training_data(Path(args.train), train_arrays, Path(args.val), val_arrays)
            with scratch_directory(args.model) as scratch:
                checkpoint = scratch / "best.keras"
                result = train(config, train_arrays, val_arrays, arch=arch, seed=base.seed,
                               n_classes=len(base.classes), image_size=base.image_size, checkpoint=checkpoint,
                               strategy=hardware.strategy, on_epoch=log_epoch)
                save_class_names(checkpoint, base.classes)
                with atomic_file(args.model) as temp:
                    os.replace(checkpoint, temp)
            training_curves(result.history, args.figure, best_epoch=result.best_epoch,
                            title=f"{arch}: best PublicTest accuracy {result.best_val_accuracy:.4f} "
                                  f"(epoch {result.best_epoch})")
            model_uri = log_training_outcome(result.model, summary_metrics(result), Path(args.figure),
                                             val_arrays["images"], base.classes)
            write_history(Path(args.history), result.history)
            write_json(args.report, training_summary(result, arch, hardware, run.run_id, digests))
            write_receipt(Path(args.receipt), run, model_uri, root)

    return run_stage("train", body)


if __name__ == "__main__":
    raise SystemExit(main())
