"""The results of `ferops predict` as a document: JSON (inputs, errors, one record per face) or CSV."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from ferops.errors import FeropsError
from ferops.predictor import InputResult, Predictor

logger = logging.getLogger(__name__)


def report(results: Sequence[InputResult], predictor: Predictor) -> dict[str, Any]:
    """The JSON document of a run: model, inputs (with errors) and one record per face."""
    return {
        "model": predictor.classifier.source,
        "backend": predictor.classifier.backend,
        "tta": predictor.classifier.tta,
        "detector": predictor.detector.backend,
        "classes": list(predictor.classes),
        "inputs": [result.summary() for result in results],
        "failed": sum(result.error is not None for result in results),
        "faces": [face.to_dict() for result in results for face in result.faces],
    }


def write_json(document: dict[str, Any], out: TextIO) -> None:
    """Write the run's JSON document."""
    json.dump(document, out, indent=2)
    out.write("\n")


def csv_header(classes: Sequence[str]) -> list[str]:
    """CSV columns: source, frame, face, x, y, w, h, expression, confidence, detector_score, one per class.

    The landmarks are in the JSON only.
    """
    return ["source", "frame", "face", "x", "y", "w", "h", "expression", "confidence", "detector_score",
            *classes]


def write_csv(results: Sequence[InputResult], classes: Sequence[str], out: TextIO) -> None:
    """Write one CSV row per face (inputs without faces have no rows; see the JSON for those)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_header(classes))
    for result in results:
        for face in result.faces:
            writer.writerow([face.source, "" if face.frame is None else face.frame, face.face,
                             *face.box.as_tuple(), face.expression, f"{face.confidence:.6f}",
                             "" if face.detector_score is None else f"{face.detector_score:.4f}",
                             *(f"{face.probabilities[name]:.6f}" for name in classes)])


def write_results(results: Sequence[InputResult], predictor: Predictor, output: Path | None,
                  fmt: str) -> None:
    """Write JSON or CSV to ``output`` (atomically) or to stdout when ``output`` is None."""
    buffer = io.StringIO()
    if fmt == "csv":
        write_csv(results, predictor.classes, buffer)
    elif fmt == "json":
        write_json(report(results, predictor), buffer)
    else:
        raise FeropsError(f"unknown output format {fmt!r} (expected json or csv)")
    if output is None:
        sys.stdout.write(buffer.getvalue())
        return
    from ferops.io import atomic_file

    with atomic_file(output) as partial:
        partial.write_text(buffer.getvalue())
    logger.info("wrote %s", output)
