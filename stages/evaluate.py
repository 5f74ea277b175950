"""DVC stage `evaluate`: score the trained model on FER2013, CK+ and JAFFE; add it all to the MLflow run.

Usage: python stages/evaluate.py --model models/model.keras --prepared data/prepared
       --receipt reports/mlflow_run.json --metrics reports/metrics.json --details reports/evaluate
       --plots reports/plots/evaluate --figures reports/figures/evaluate
       --galleries reports/galleries/evaluate --detector-model data/raw/face_detection_yunet_2023mar.onnx
       --reference reports/monitor/reference.parquet
"""

from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from ferops.config import BaseConfig
from ferops.evaluation import EvaluateConfig, evaluate_dataset, evaluation_sets
from ferops.evaluation_reports import headline_metrics, per_class_metrics, write_evaluation
from ferops.evaluation_reports import write_per_image_results as write_per_image
from ferops.inference import load_keras_model
from ferops.io import atomic_directory, load_arrays, write_json
from ferops.metrics import group_index
from ferops.monitoring import monitoring_reference
from ferops.prepare import PrepareConfig
from ferops.runtime import configure_logging, read_configs, run_stage
from ferops.tracking import find_project_root, log_evaluation, read_receipt, receipt_store

SPLITS = ("public_test", "private_test", "ckplus", "jaffe")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, help="trained model (.keras)")
    parser.add_argument("--prepared", required=True,
                        help="folder with public_test/private_test/ckplus/jaffe .npz")
    parser.add_argument("--receipt", required=True, help="the train stage's MLflow receipt (JSON)")
    parser.add_argument("--metrics", required=True, help="headline metrics (JSON, `dvc metrics show`)")
    parser.add_argument("--details", required=True, help="folder for per-dataset reports (JSON)")
    parser.add_argument("--plots", required=True, help="folder for confusion data (CSV, `dvc plots show`)")
    parser.add_argument("--figures", required=True, help="folder for confusion matrices and calibration")
    parser.add_argument("--galleries", required=True, help="folder for figures showing dataset images")
    parser.add_argument("--detector-model", required=True, help="the YuNet model (download stage)")
    parser.add_argument("--reference", required=True, help="PublicTest as served: ferops monitor's reference")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        configs = read_configs(args.params, base=BaseConfig, prepare=PrepareConfig, evaluate=EvaluateConfig)
        base, config = configs["base"], configs["evaluate"]
        groups = group_index(base.classes, config.groups)
        receipt = read_receipt(Path(args.receipt))
        uri = receipt_store(receipt, Path(args.receipt), os.environ.get("MLFLOW_TRACKING_URI"),
                            find_project_root(Path.cwd()))
        model = load_keras_model(Path(args.model))
        splits = {name: load_arrays(Path(args.prepared) / f"{name}.npz") for name in SPLITS}
        datasets = evaluation_sets(**splits, n_classes=len(base.classes),
                                   ferplus=configs["prepare"].labels == "ferplus", classes=base.classes)
        outcomes = {dataset.name: evaluate_dataset(model, dataset, base.classes, groups, tta=config.tta,
                                                   batch_size=config.batch_size, bins=config.calibration_bins)
                    for dataset in datasets}
        metrics = headline_metrics(outcomes, config.tta)
        with ExitStack() as stack:
            details, plots, figures, galleries = (stack.enter_context(atomic_directory(path)) for path in
                                                  (args.details, args.plots, args.figures, args.galleries))
            write_evaluation(outcomes, model, base.classes, config, base.seed, details=details, plots=plots,
                             figures=figures, galleries=galleries)
            # Per-image results go to MLflow only (they hold the test sets' labels): the gate's
            # paired comparison reads them from there.
            per_image = write_per_image(stack.enter_context(tempfile.TemporaryDirectory()), outcomes)
            monitor = monitoring_reference(Path(args.model), Path(args.detector_model), splits["public_test"],
                                           Path(args.reference), receipt["run_id"], stack)
            log_evaluation(uri, receipt["run_id"], {k: v for k, v in metrics.items() if k != "tta"},
                           per_class_metrics(outcomes), {"reports": details, "figures": figures,
                           "galleries": galleries, "per_image": per_image, "monitor": monitor}, config.tta)
        write_json(args.metrics, metrics)

    return run_stage("evaluate", body)


if __name__ == "__main__":
    raise SystemExit(main())
