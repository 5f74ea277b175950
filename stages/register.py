"""DVC stage `register`: add the evaluated model to the MLflow model registry as the `challenger`.

Usage: python stages/register.py --receipt reports/mlflow_run.json --metrics reports/metrics.json
       --details reports/evaluate --train-report reports/train.json --out reports/registry.json
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ferops.io import read_json, write_json
from ferops.registry import RegistryConfig, register, version_tags
from ferops.runtime import configure_logging, read_configs, run_stage
from ferops.tracking import find_project_root, read_receipt, receipt_store

logger = logging.getLogger("ferops.stages.register")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--receipt", required=True, help="the train stage's MLflow receipt (JSON)")
    parser.add_argument("--metrics", required=True, help="the evaluate stage's metrics (JSON)")
    parser.add_argument("--details", required=True, help="the evaluate stage's per-dataset reports")
    parser.add_argument("--train-report", required=True, help="the train stage's report (JSON)")
    parser.add_argument("--out", required=True, help="registry receipt (JSON)")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        settings = read_configs(args.params, registry=RegistryConfig)["registry"]
        receipt = read_receipt(Path(args.receipt))
        uri = receipt_store(receipt, Path(args.receipt), os.environ.get("MLFLOW_TRACKING_URI"),
                            find_project_root(Path.cwd()))
        metrics = read_json(args.metrics, "evaluate")
        private = read_json(Path(args.details) / "private_test.json", "evaluate")
        train_report = read_json(args.train_report, "train")
        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=uri).get_run(receipt["run_id"])
        tags = version_tags(metrics, private["plain"], run.data.tags, train_report.get("data_md5", {}),
                            receipt["model_uri"])
        version, created = register(uri, settings.name, receipt["model_uri"], tags, settings.alias)
        write_json(args.out, {
            "name": settings.name,
            "version": int(version.version),
            "alias": settings.alias,
            "model_uri": receipt["model_uri"],
            "registry_uri": f"models:/{settings.name}/{version.version}",
            "run_id": receipt["run_id"],
            # null: the project's own mlflow.db (as in the train stage's receipt).
            "tracking_uri": receipt["tracking_uri"],
            "private_test_accuracy": metrics["private_test"]["accuracy"],
        })
        logger.info("%s version %s of %r (alias %r); promote it with `ferops promote`",
                    "registered" if created else "kept", version.version, settings.name, settings.alias)

    return run_stage("register", body)


if __name__ == "__main__":
    raise SystemExit(main())
