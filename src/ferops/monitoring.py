"""Drift and health of the served model: a window of the prediction log against a reference.

The reference is the model's own behaviour on PublicTest, seen the way the server sees faces:
each 48x48 face is upscaled and padded into a small photo (:func:`serving_view`), detected,
aligned, cropped and classified by the same :class:`ferops.predictor.Predictor`. The evaluate
stage writes it (``reports/monitor/reference.parquet``) and logs it with the model's MLflow run.

``ferops monitor`` compares a window of the log (the crop statistics and the confidence, per
feature, and the predicted-class distribution) with it using Evidently's ``DataDriftPreset``,
adds the share of low-confidence faces, and decides with the thresholds of the ``monitor``
params section.

Evidently 0.7 (the newest release, 0.7.23) imports a helper that pandas 3 removed
(``pandas.core.dtypes.common.infer_dtype_from_object``); :func:`_evidently` restores that one
name before importing it, and turns Evidently's telemetry off.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
from pydantic import Field

from ferops.config import Section
from ferops.errors import FeropsError

if TYPE_CHECKING:
    from ferops.predictor import Predictor

logger = logging.getLogger(__name__)

FEATURES = ("brightness", "contrast", "sharpness", "confidence")
CLASS_COLUMN = "expression"
REFERENCE_COLUMNS = (*FEATURES, CLASS_COLUMN)
# How a 48x48 dataset face becomes a photo the detector can find it in.
_UPSCALE, _PAD = 4, 64


class MonitorConfig(Section):
    """The ``monitor`` params section: when ``ferops monitor`` raises the alarm.

    Attributes:
        drift_share: Alarm when at least this share of the watched columns (the four features
            and the predicted class) drift, by Evidently's per-column tests.
        class_drift: Alarm when the predicted-class distribution alone drifts.
        low_confidence: A face whose confidence is below this is "unsure".
        max_low_confidence_increase: Alarm when the share of unsure faces exceeds the
            reference's by more than this (a share: 0.1 is ten points).
        min_faces: A window with fewer faces is refused (drift tests need a sample).
    """

    drift_share: float = Field(0.5, gt=0, le=1)
    class_drift: bool = True
    low_confidence: float = Field(0.5, gt=0, lt=1)
    max_low_confidence_increase: float = Field(0.1, ge=0, le=1)
    min_faces: int = Field(50, ge=1)


def resolve_model(reference: str, tracking_uri: str | None) -> tuple[str, str | None]:
    """What the log records about the served model: a stable name and its MLflow training run.

    ``models:/NAME@ALIAS`` becomes ``models:/NAME/VERSION`` (an alias moves; a version does not),
    and registry versions, logged models and ``runs:/`` URIs give their training run's id. A
    local file gives its path and no run.

    Args:
        reference: The ``--model`` value.
        tracking_uri: The MLflow store for ``models:/`` and ``runs:/`` references.

    Returns:
        (name, run id or None).
    """
    if not reference.startswith(("models:/", "runs:/")):
        return reference, None
    if reference.startswith("runs:/"):
        return reference, reference[len("runs:/"):].split("/", 1)[0]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    body = reference[len("models:/"):]
    try:
        if body.startswith("m-"):
            return reference, client.get_logged_model(body).source_run_id
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
            return f"models:/{name}/{version.version}", version.run_id
        name, number = body.rsplit("/", 1)
        return reference, client.get_model_version(name, number).run_id
    except Exception as error:  # noqa: BLE001 - the model loaded; its bookkeeping is best effort
        logger.warning("%s: could not look up its MLflow run (%s); the log records no run", reference, error)
        return reference, None


def serving_view(face: np.ndarray) -> np.ndarray:
    """A 48x48 dataset face as a small photo: upscaled 4x and padded by edge replication.

    The detector needs some context around a face; the server's crop then comes out like the
    dataset's, so that the reference measures what the server measures.
    """
    side = face.shape[0] * _UPSCALE
    big = cv2.resize(np.asarray(face, np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
    return cv2.copyMakeBorder(big, _PAD, _PAD, _PAD, _PAD, cv2.BORDER_REPLICATE)


def face_rows(faces: Iterable[Any]) -> list[dict[str, Any]]:
    """Reference/window rows from :class:`ferops.predictor.FaceResult` objects."""
    return [{**{name: face.statistics[name] for name in FEATURES if name != "confidence"},
             "confidence": face.confidence, CLASS_COLUMN: face.expression} for face in faces]


def reference_frame(predictor: Predictor, images: np.ndarray, chunk: int = 256) -> pd.DataFrame:
    """The model's predictions and crop statistics on dataset faces, seen the server's way.

    Args:
        predictor: The :class:`ferops.predictor.Predictor` the server would use.
        images: uint8 (n, 48, 48) faces (PublicTest).
        chunk: Faces per batch.

    Returns:
        One row per face the detector found (the largest face of each view), with
        :data:`REFERENCE_COLUMNS`.
    """
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), chunk):
        views = [(serving_view(face), "reference", None) for face in images[start:start + chunk]]
        rows += face_rows(faces[0] for faces in predictor.predict_many(views) if faces)
    logger.info("monitoring reference: faces found in %d of %d images", len(rows), len(images))
    return pd.DataFrame(rows, columns=list(REFERENCE_COLUMNS))


def write_reference(frame: pd.DataFrame, path: Path, model: Mapping[str, str]) -> None:
    """Write the reference as Parquet, with the model it describes in the file's metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"ferops.model": json.dumps(dict(model), sort_keys=True).encode()})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def monitoring_reference(model_path: Path, detector_path: Path, public_test: Mapping[str, np.ndarray],
                         out: Path, run_id: str, stack: ExitStack) -> Path:
    """The evaluate stage's part: build the reference for a model and write it atomically.

    The model is served as ``ferops serve`` serves it by default (YuNet, aligned crops, flip TTA).

    Args:
        model_path: The trained .keras model.
        detector_path: The YuNet model.
        public_test: The prepared PublicTest arrays (``images``).
        out: Where the Parquet file goes (written through a temporary folder beside it).
        run_id: The model's MLflow training run, recorded in the file.
        stack: An ``ExitStack`` that owns the temporary folder until the stage ends.

    Returns:
        The folder now holding ``out`` (to log to MLflow).
    """
    from ferops.faces import FaceDetector
    from ferops.inference import load_classifier
    from ferops.io import atomic_directory
    from ferops.predictor import Predictor

    predictor = Predictor(load_classifier(model_path), FaceDetector(model=detector_path))
    frame = reference_frame(predictor, public_test["images"])
    folder = stack.enter_context(atomic_directory(out.parent))
    write_reference(frame, folder / out.name, {"run_id": run_id, "reference": str(model_path)})
    return folder


def read_reference(path: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """The reference frame and the model it describes (``{}`` when unrecorded)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FeropsError(f"{path}: no monitoring reference (the evaluate stage writes "
                          "reports/monitor/reference.parquet; or pass --reference)")
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    model = json.loads(metadata.get(b"ferops.model", b"{}"))
    frame = table.to_pandas()
    missing = [c for c in REFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise FeropsError(f"{path}: not a monitoring reference (columns {', '.join(missing)} missing)")
    return frame, model


def load_window(log_uri: str, *, since=None, until=None, last: int | None = None) -> pd.DataFrame:
    """The log rows of a window as a frame; a clear error when there are none.

    Raises:
        FeropsError: The log cannot be read, or the window holds no face.
    """
    from ferops.prediction_log import read_log, redact

    try:
        rows = read_log(log_uri, since=since, until=until, last=last)
    except Exception as error:  # noqa: BLE001 - any database error, with the log named
        raise FeropsError(f"prediction log {redact(log_uri)}: cannot be read ({error})") from error
    if not rows:
        parts = (f"since {since:%Y-%m-%d %H:%M:%S}" if since else "",
                 f"before {until:%Y-%m-%d %H:%M:%S}" if until else "", f"in the last {last}" if last else "")
        where = " and ".join(part for part in parts if part) or "at all"
        raise FeropsError(f"prediction log {redact(log_uri)}: no faces {where} (is `ferops serve` logging "
                          "there? see --log-uri)")
    return pd.DataFrame(rows)


def reference_for(window: pd.DataFrame, path: Path, tracking_uri: str | None,
                  explicit: bool = False) -> tuple[pd.DataFrame, dict[str, str]]:
    """The reference of the model whose faces the window holds.

    The local reference (the evaluate stage's) is used when it describes a model of the window.
    Otherwise, when the window holds one model's faces and that model has an MLflow run, the
    reference logged with that run is used.

    Args:
        window: From :func:`load_window`.
        path: The local reference file.
        tracking_uri: The MLflow store (for a reference logged with a run).
        explicit: ``path`` was given by the user: use it, but still check it fits the window.

    Returns:
        The reference frame and its model: ``run_id`` and ``reference`` (the name the log uses).

    Raises:
        FeropsError: No reference fits the window's model(s).
    """
    runs = sorted({run for run in window["model_run"].dropna().unique()})
    names = {run: str(window.loc[window["model_run"] == run, "model"].iloc[-1]) for run in runs}
    if path.is_file() or explicit:
        frame, model = read_reference(path)
        if not runs or not model.get("run_id") or model["run_id"] in runs:
            return frame, {**model, "reference": names.get(model.get("run_id"), model.get("reference", ""))}
        if explicit:
            raise FeropsError(f"{path} is the reference of model run {model['run_id']}, but the window holds "
                              f"faces of run(s) {', '.join(f'{r} ({names[r]})' for r in runs)}: monitor the "
                              "model the reference was made for, or pass that model's reference")
    if len(runs) == 1:
        import mlflow

        artifact = f"runs:/{runs[0]}/evaluate/monitor/reference.parquet"
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact, tracking_uri=tracking_uri))
        except Exception as error:  # noqa: BLE001 - any MLflow error, with what was looked for
            raise FeropsError(f"no reference for the window's model {names[runs[0]]} (run {runs[0]}): {path} "
                              f"describes another model or is missing, and {artifact} cannot be read "
                              f"({str(error).splitlines()[0]})") from error
        frame, model = read_reference(local)
        return frame, {**model, "run_id": runs[0], "reference": names[runs[0]]}
    if not runs:
        raise FeropsError(f"{path}: no monitoring reference there, and the window's faces name no MLflow run "
                          "(a model served from a file?): pass --reference")
    models = ", ".join(f"{r} ({names[r]})" for r in runs)
    raise FeropsError(f"the window holds faces of {len(runs)} models: {models}; narrow it (--since) to one "
                      "model, or pass --reference")


def _evidently():
    """Import Evidently's Report API, after restoring the pandas helper it imports (see above)."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")
    import pandas.core.dtypes.common as common

    if not hasattr(common, "infer_dtype_from_object"):
        common.infer_dtype_from_object = lambda dtype: pd.api.types.pandas_dtype(dtype).type
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    return evidently, DataDefinition, Dataset, Report, DataDriftPreset


@dataclass
class DriftResult:
    """What :func:`compare` found.

    Attributes:
        summary: The JSON summary (counts, per-column drift, class shares, unsure shares,
            alarms).
        html: Evidently's HTML report.
    """

    summary: dict[str, Any]
    html: str

    @property
    def alarms(self) -> list[str]:
        """Why the window is flagged (empty: no alarm)."""
        return self.summary["alarms"]


def _shares(column: pd.Series, classes: Sequence[str]) -> dict[str, float]:
    counts = column.value_counts()
    return {name: round(float(counts.get(name, 0)) / max(1, len(column)), 4) for name in classes}


def compare(reference: pd.DataFrame, current: pd.DataFrame, config: MonitorConfig,
            classes: Sequence[str]) -> DriftResult:
    """Compare a window of served faces with the reference.

    Args:
        reference: The reference rows (:data:`REFERENCE_COLUMNS`).
        current: The window's rows (same columns).
        config: The thresholds.
        classes: The model's classes (for the class shares).

    Returns:
        The summary and Evidently's HTML report.

    Raises:
        FeropsError: The window has fewer than ``config.min_faces`` faces.
    """
    if len(current) < config.min_faces:
        raise FeropsError(f"the window has {len(current)} face(s); drift tests need at least "
                          f"monitor.min_faces = {config.min_faces}")
    evidently, DataDefinition, Dataset, Report, DataDriftPreset = _evidently()
    definition = DataDefinition(numerical_columns=list(FEATURES), categorical_columns=[CLASS_COLUMN])
    columns = list(REFERENCE_COLUMNS)
    report = Report([DataDriftPreset(drift_share=config.drift_share)])
    def dataset(frame: pd.DataFrame):
        return Dataset.from_pandas(frame[columns].reset_index(drop=True), data_definition=definition)

    snapshot = report.run(dataset(current), dataset(reference))
    drift: dict[str, dict[str, Any]] = {}
    drifted_share = 0.0
    for metric in snapshot.dict()["metrics"]:
        config_ = metric.get("config", {})
        kind = config_.get("type", "")
        if kind.endswith("ValueDrift"):
            column = config_["column"]
            threshold = float(config_.get("threshold") or 0.05)
            method = str(config_.get("method", ""))
            score = float(metric["value"])
            # p-value tests drift below the threshold; distances (Wasserstein, Jensen-Shannon) above.
            drifted = score < threshold if "p_value" in method else score >= threshold
            drift[column] = {"method": method, "score": round(score, 6), "threshold": threshold,
                             "drifted": bool(drifted)}
        elif kind.endswith("DriftedColumnsCount"):
            drifted_share = float(metric["value"]["share"])
    unsure_reference = float((reference["confidence"] < config.low_confidence).mean())
    unsure_current = float((current["confidence"] < config.low_confidence).mean())
    alarms = []
    if drifted_share >= config.drift_share:
        alarms.append(f"{drifted_share:.0%} of the watched columns drifted (monitor.drift_share = "
                      f"{config.drift_share:.0%}): " + ", ".join(c for c, d in drift.items() if d["drifted"]))
    if config.class_drift and drift.get(CLASS_COLUMN, {}).get("drifted"):
        alarms.append("the predicted-class distribution drifted (monitor.class_drift)")
    if unsure_current - unsure_reference > config.max_low_confidence_increase:
        alarms.append(f"{unsure_current:.0%} of the faces have confidence below {config.low_confidence} "
                      f"against {unsure_reference:.0%} in the reference (monitor.max_low_confidence_increase "
                      f"= {config.max_low_confidence_increase})")
    summary = {
        "faces": {"reference": len(reference), "current": len(current)},
        "columns": drift,
        "drifted_share": round(drifted_share, 4),
        "class_shares": {"reference": _shares(reference[CLASS_COLUMN], classes),
                         "current": _shares(current[CLASS_COLUMN], classes)},
        "low_confidence": {"threshold": config.low_confidence, "reference": round(unsure_reference, 4),
                           "current": round(unsure_current, 4)},
        "means": {name: {"reference": round(float(reference[name].mean()), 4),
                         "current": round(float(current[name].mean()), 4)} for name in FEATURES},
        "alarms": alarms,
        "drift": bool(alarms),
        "evidently": evidently.__version__,
    }
    return DriftResult(summary, snapshot.get_html_str(as_iframe=False))


def log_monitoring_run(tracking_uri: str, experiment: str, summary: Mapping[str, Any], folder: Path,
                       model: Mapping[str, str], window: Mapping[str, Any]) -> str:
    """Record a monitoring run in MLflow: metrics, the report files, links to the model.

    Args:
        tracking_uri: The MLflow store.
        experiment: The experiment to log into.
        summary: From :func:`compare`.
        folder: The folder with the HTML report and the JSON summary (logged as artifacts).
        model: ``run_id`` (the model's training run) and ``reference`` (as served), when known.
        window: How the window was chosen (logged as params).

    Returns:
        The monitoring run's id.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(experiment)
    tags = {"ferops.kind": "monitor", "drift": str(summary["drift"]).lower()}
    if model.get("run_id"):
        tags["model_run_id"] = model["run_id"]
    if model.get("reference"):
        tags["model"] = model["reference"]
    with mlflow.start_run(run_name="monitor", tags=tags) as run:
        mlflow.log_params({key: str(value) for key, value in window.items()})
        metrics = {"faces": summary["faces"]["current"], "drifted_share": summary["drifted_share"],
                   "low_confidence_share": summary["low_confidence"]["current"],
                   "alarms": len(summary["alarms"])}
        metrics.update({f"drift.{column}": value["score"] for column, value in summary["columns"].items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(folder), "monitor")
    return run.info.run_id
