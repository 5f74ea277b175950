"""DVC stage `evaluate`: score the trained model on FER2013, CK+ and JAFFE; add it all to the MLflow run.

Usage: python stages/evaluate.py --model models/model.keras --prepared data/prepared
       --receipt reports/mlflow_run.json --metrics reports/metrics.json --details reports/evaluate
       --plots reports/plots/evaluate --figures reports/figures/evaluate
       --galleries reports/galleries/evaluate
"""

from __future__ import annotations

import argparse
import csv
import logging
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ferops.errors import DataError
from ferops.evaluation import (
    DEFAULT_GROUPS,
    TTA_MODES,
    DatasetEvaluation,
    EvaluationSet,
    confident_mistakes,
    evaluate_dataset,
    evaluation_sets,
    grad_cam,
    group_index,
    sample_per_class,
)
from ferops.figures import confusion_matrix_figure, heatmap_grid, image_grid, reliability_figure
from ferops.io import atomic_directory, atomic_file, load_arrays, write_json
from ferops.runtime import configure_logging, read_params, require_choice, run_stage
from ferops.tracking import flatten_metrics, read_receipt

logger = logging.getLogger("ferops.stages.evaluate")

SPLITS = ("public_test", "private_test", "ckplus", "jaffe")
# CK+ and JAFFE may not be redistributed: even a label-per-row file of them stays out of git
# (their confusion matrices are in the figures and the per-dataset JSON reports).
NO_LABEL_FILES = ("ckplus", "jaffe")
# Datasets whose Grad-CAM sheet is drawn: the headline and the most different faces.
GRAD_CAM_SETS = ("private_test", "jaffe")


def load_model(path: Path) -> Any:
    """Load a .keras model for inference, with a clear error when it is missing or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: model not found; the train stage writes it (run `dvc repro train`)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a corrupt or foreign file
        raise DataError(f"{path}: cannot load as a Keras model ({type(error).__name__}: {error})") from error


def write_confusion_csv(path: Path, label: np.ndarray, predicted: np.ndarray, classes: list[str]) -> None:
    """Confusion data for `dvc plots show`: one (actual, predicted) row per image, sorted.

    Sorting keeps only the counts (no image order), so the file is an aggregate of the test
    set, not a copy of its labels.
    """
    pairs = sorted(zip(label.tolist(), predicted.tolist(), strict=True))
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in pairs)


def mistakes_sheet(dataset: EvaluationSet, probabilities: np.ndarray, predicted: np.ndarray,
                   classes: list[str], per_class: int, path: Path) -> None:
    """Gallery of the most confident mistakes, one row per true class (blank cells pad short rows)."""
    picks = confident_mistakes(probabilities, dataset.label, predicted, per_class)
    blank = np.full(dataset.images.shape[1:], 255, dtype=np.uint8)
    images, titles = [], []
    for klass, rows in picks.items():
        for row in rows:
            images.append(dataset.images[row])
            confidence = probabilities[row, predicted[row]]
            titles.append(f"{classes[klass]}>{classes[predicted[row]]} {confidence:.2f}")
        images.extend([blank] * (per_class - len(rows)))
        titles.extend([""] * (per_class - len(rows)))
    image_grid(np.asarray(images), titles, path, columns=per_class,
               title=f"{dataset.name}: most confident mistakes per true class (true>predicted confidence)")


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
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> None:
        sections = read_params(args.params, "base", "prepare", "evaluate")
        base, settings = sections["base"], sections["evaluate"]
        classes = list(base["classes"])
        seed = int(base["seed"])
        tta = require_choice(settings["tta"], TTA_MODES, "evaluate.tta")
        groups = group_index(classes, settings.get("groups") or DEFAULT_GROUPS)
        batch_size, bins = int(settings["batch_size"]), int(settings["calibration_bins"])
        receipt = read_receipt(Path(args.receipt))
        model = load_model(Path(args.model))
        prepared = Path(args.prepared)
        splits = {name: load_arrays(prepared / f"{name}.npz") for name in SPLITS}
        ferplus = sections["prepare"]["labels"] == "ferplus"
        datasets = evaluation_sets(**splits, n_classes=len(classes), ferplus=ferplus)

        metrics: dict[str, Any] = {
            "labels": "original FER2013 labels, except *_ferplus (FER+ majority labels)",
            "tta": tta,
        }
        outcomes: dict[str, DatasetEvaluation] = {}
        for dataset in datasets:
            logger.info("evaluating %s: %s images", dataset.name, f"{len(dataset.label):,}")
            outcome = evaluate_dataset(model, dataset, classes, groups, tta=tta, batch_size=batch_size,
                                       bins=bins)
            summary = metrics[dataset.name] = outcome.summary
            outcomes[dataset.name] = outcome
            extra = f", {tta} TTA accuracy {summary[f'tta_{tta}']['accuracy']:.4f}" if tta != "none" else ""
            logger.info("%s: accuracy %.4f, macro-F1 %.4f, 3-group %.4f, ECE %.3f%s", dataset.name,
                        summary["accuracy"], summary["macro_f1"], summary["group3_accuracy"], summary["ece"],
                        extra)

        per_class_metrics = {
            f"{name}.{measure}.{klass}": values[measure]
            for name, outcome in outcomes.items()
            for klass, values in outcome.detail["plain"]["per_class"].items() if values["support"]
            for measure in ("precision", "recall", "f1")
        }
        with ExitStack() as stack:
            details_dir, plots_dir, figures_dir, galleries_dir = (
                stack.enter_context(atomic_directory(path))
                for path in (args.details, args.plots, args.figures, args.galleries))
            for name, outcome in outcomes.items():
                write_json(details_dir / f"{name}.json", outcome.detail)
                if not name.startswith(NO_LABEL_FILES):
                    write_confusion_csv(plots_dir / f"confusion_{name}.csv", outcome.dataset.label,
                                        outcome.predicted, classes)
                confusion_matrix_figure(
                    np.asarray(outcome.detail["confusion"]), classes, figures_dir / f"confusion_{name}.png",
                    title=f"{name}: accuracy {metrics[name]['accuracy']:.4f} "
                          f"(n={metrics[name]['n']:,}; rows sum to 1)")
                mistakes_sheet(outcome.dataset, outcome.probabilities, outcome.predicted, classes,
                               int(settings["mistakes_per_class"]), galleries_dir / f"mistakes_{name}.png")
            reliability_figure({name: outcome.detail["calibration"] for name, outcome in outcomes.items()},
                               figures_dir / "reliability.png", title="Reliability (plain predictions)")
            per_class = int(settings["gradcam_per_class"])
            for name in GRAD_CAM_SETS:
                dataset, predicted = outcomes[name].dataset, outcomes[name].predicted
                rows = sample_per_class(dataset.label, per_class, seed)
                heatmaps = grad_cam(model, dataset.images[rows], predicted[rows])
                titles = [f"{classes[dataset.label[r]]}>{classes[predicted[r]]}" for r in rows]
                heatmap_grid(dataset.images[rows], heatmaps, titles, galleries_dir / f"gradcam_{name}.png",
                             columns=per_class,
                             title=f"Grad-CAM on {name}: where the model looks for its prediction "
                                   "(true>predicted)")

            import mlflow

            mlflow.set_tracking_uri(receipt["tracking_uri"])
            with mlflow.start_run(run_id=receipt["run_id"]):
                mlflow.log_metrics({**flatten_metrics({k: v for k, v in metrics.items() if k != "tta"}),
                                    **per_class_metrics})
                mlflow.log_artifacts(str(details_dir), "evaluate/reports")
                mlflow.log_artifacts(str(figures_dir), "evaluate/figures")
                mlflow.log_artifacts(str(galleries_dir), "evaluate/galleries")
                mlflow.set_tag("evaluate.tta", tta)
            logger.info("logged evaluation to MLflow run %s", receipt["run_id"])
        write_json(args.metrics, metrics)
        logger.info("PrivateTest accuracy (original labels): %.4f", metrics["private_test"]["accuracy"])

    return run_stage("evaluate", body)


if __name__ == "__main__":
    raise SystemExit(main())
