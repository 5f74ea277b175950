"""The evaluate stage's outputs: headline metrics, confusion data, figures and galleries."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferops.evaluation import DatasetEvaluation, EvaluateConfig
from ferops.grad_cam import grad_cam
from ferops.io import atomic_file, save_arrays, write_json
from ferops.metrics import confident_mistakes
from ferops.paired import PER_IMAGE_ARTIFACT, per_image_arrays


def sample_per_class(label: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Seeded random rows, up to ``per_class`` of each class present, in class order."""
    rng = np.random.default_rng(seed)
    picked = []
    for klass in np.unique(label):
        rows = np.flatnonzero(label == klass)
        picked.extend(np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)))
    return np.asarray(picked, dtype=int)


# CK+ and JAFFE may not be redistributed: even a label-per-row file of them stays out of git
# (their confusion matrices are in the figures and the per-dataset JSON reports).
NO_LABEL_FILES = ("ckplus", "jaffe")
# Datasets whose Grad-CAM sheet is drawn: the headline and the most different faces.
GRAD_CAM_SETS = ("private_test", "jaffe")


def headline_metrics(outcomes: Mapping[str, DatasetEvaluation], tta: str) -> dict[str, Any]:
    """``reports/metrics.json``: each dataset's summary, and which labels and TTA they use."""
    metrics: dict[str, Any] = {
        "labels": "original FER2013 labels, except *_ferplus (FER+ majority labels, 7 classes) and "
                  "ferplus_test (the FER+ benchmark: its protocol's labels, 8 classes; a 7-class model "
                  "counts its contempt faces as wrong)",
        "tta": tta,
    }
    for name, outcome in outcomes.items():
        metrics[name] = outcome.summary
    return metrics


def per_class_metrics(outcomes: Mapping[str, DatasetEvaluation]) -> dict[str, float]:
    """Per-class precision, recall and F1 as flat MLflow metric names (``ckplus.recall.happy``)."""
    return {
        f"{name}.{measure}.{klass}": values[measure]
        for name, outcome in outcomes.items()
        for klass, values in outcome.detail["plain"]["per_class"].items() if values["support"]
        for measure in ("precision", "recall", "f1")
    }


def write_confusion_csv(path: Path, label: np.ndarray, predicted: np.ndarray, classes: Sequence[str]) -> None:
    """Confusion data for `dvc plots show`: one (actual, predicted) row per image, sorted.

    Sorting keeps only the counts (no image order), so the file is an aggregate of the test
    set, not a copy of its labels.
    """
    pairs = sorted(zip(np.asarray(label).tolist(), np.asarray(predicted).tolist(), strict=True))
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual", "predicted"])
        writer.writerows((classes[a], classes[p]) for a, p in pairs)


def mistakes_sheet(outcome: DatasetEvaluation, classes: Sequence[str], per_class: int, path: Path) -> None:
    """Gallery of the most confident mistakes, one row per true class (blank cells pad short rows)."""
    from ferops.figures import image_grid

    dataset, probabilities, predicted = outcome.dataset, outcome.probabilities, outcome.predicted
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


def grad_cam_sheet(model: Any, outcome: DatasetEvaluation, classes: Sequence[str], per_class: int,
                   seed: int, path: Path) -> None:
    """Grad-CAM heatmaps of a seeded sample of each class, for the predicted class."""
    from ferops.figures import heatmap_grid

    dataset, predicted = outcome.dataset, outcome.predicted
    rows = sample_per_class(dataset.label, per_class, seed)
    heatmaps = grad_cam(model, dataset.images[rows], predicted[rows])
    titles = [f"{classes[dataset.label[r]]}>{classes[predicted[r]]}" for r in rows]
    heatmap_grid(dataset.images[rows], heatmaps, titles, path, columns=per_class,
                 title=f"Grad-CAM on {dataset.name}: where the model looks for its prediction "
                       "(true>predicted)")


def write_evaluation(outcomes: Mapping[str, DatasetEvaluation], model: Any, classes: Sequence[str],
                     config: EvaluateConfig, seed: int, *, details: Path, plots: Path, figures: Path,
                     galleries: Path) -> None:
    """Write every per-dataset output of the evaluate stage into the given (empty) folders.

    Args:
        outcomes: Dataset name to its evaluation.
        model: The evaluated model (for Grad-CAM).
        classes: Class names, one per model output.
        config: The ``evaluate`` params.
        seed: Seed of the Grad-CAM samples.
        details: Per-dataset JSON reports.
        plots: Confusion CSVs of the FER2013 splits (`dvc plots show`).
        figures: Confusion matrices and the reliability diagram.
        galleries: Figures that show dataset images (mistakes, Grad-CAM).
    """
    from ferops.figures import confusion_matrix_figure, reliability_figure

    for name, outcome in outcomes.items():
        names = outcome.dataset.classes or classes  # FER+'s eight for its benchmark set
        write_json(details / f"{name}.json", outcome.detail)
        if not name.startswith(NO_LABEL_FILES):
            write_confusion_csv(plots / f"confusion_{name}.csv", outcome.dataset.label, outcome.predicted,
                                names)
        confusion_matrix_figure(
            np.asarray(outcome.detail["confusion"]), names, figures / f"confusion_{name}.png",
            title=f"{name}: accuracy {outcome.summary['accuracy']:.4f} "
                  f"(n={outcome.summary['n']:,}; rows sum to 1)")
        mistakes_sheet(outcome, names, config.mistakes_per_class, galleries / f"mistakes_{name}.png")
    reliability_figure({name: outcome.detail["calibration"] for name, outcome in outcomes.items()},
                       figures / "reliability.png", title="Reliability (plain predictions)")
    for name in GRAD_CAM_SETS:
        grad_cam_sheet(model, outcomes[name], classes, config.gradcam_per_class, seed,
                       galleries / f"gradcam_{name}.png")


def write_per_image_results(folder: str | Path, outcomes: Mapping[str, DatasetEvaluation]) -> Path:
    """Write every set's per-image correctness (single view), labels, subjects and digest.

    The evaluate stage logs the file to the training's MLflow run only
    (:data:`ferops.paired.PER_IMAGE_ARTIFACT`; labels per row stay out of git), so that the
    promotion gate can compare two registered versions image by image.

    Returns:
        ``folder``, which now holds the file.
    """
    sets = {name: (outcome.dataset.images, outcome.dataset.label, outcome.predicted, outcome.dataset.subject)
            for name, outcome in outcomes.items()}
    save_arrays(Path(folder) / Path(PER_IMAGE_ARTIFACT).name, per_image_arrays(sets))
    return Path(folder)

