"""MLflow tracking: where runs go, and what a pipeline run records about itself.

One pipeline run is one MLflow run: the train stage creates it and writes a receipt (run id,
tracking URI) that later stages use to add to the same run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import types
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ferops.config import Section
from ferops.errors import DataError, FeropsError
from ferops.io import file_digest, read_json, write_json

logger = logging.getLogger(__name__)

_MAX_PARAM_CHARS = 6000  # MLflow's limit for a parameter value


def find_project_root(start: Path) -> Path:
    """Return the project root, also from inside a DVC experiment's temporary copy.

    ``dvc exp run --queue``/``--temp`` execute in ``<root>/.dvc/tmp/exps/<tmp>/``: runs logged
    from there must go to the workspace's store, not to a throw-away one inside the copy.
    """
    start = Path(start).resolve()
    if ".dvc" in start.parts:
        return Path(*start.parts[: start.parts.index(".dvc")])
    return start


class MlflowConfig(Section):
    """The ``mlflow`` params section.

    Attributes:
        experiment: The MLflow experiment that pipeline runs are logged to.
    """

    experiment: str = Field(min_length=1)


# The project's own store, at the root of the checkout (when MLFLOW_TRACKING_URI is not set).
PROJECT_STORE = "mlflow.db"
PROJECT_ARTIFACTS = "mlartifacts"


def tracking_uri(env_uri: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store ``mlflow.db`` at the project root.

    The project's store is resolved from ``root`` every time (never remembered), so a copied or
    moved checkout uses its own store.
    """
    if env_uri:
        return env_uri
    return f"sqlite:///{(Path(root) / PROJECT_STORE).resolve()}"


def artifact_root(uri: str, root: Path) -> str | None:
    """Where a new experiment keeps artifacts: beside a local store; the server decides otherwise."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (Path(root) / PROJECT_ARTIFACTS).resolve().as_uri()
    return None


def _check_project_artifacts(experiment: Any, uri: str, root: Path) -> None:
    """Refuse to log into a project store whose artifacts live in another checkout.

    MLflow records an experiment's artifact location as an absolute path. A checkout copied or
    moved with its ``mlflow.db`` would otherwise keep writing artifacts into the original.
    """
    if uri != tracking_uri(None, root):
        return
    expected = artifact_root(uri, root)
    if experiment.artifact_location != expected:
        raise DataError(
            f"{uri}: experiment {experiment.name!r} keeps its artifacts in "
            f"{experiment.artifact_location}, not in this checkout ({expected}); the checkout was "
            f"probably copied or moved with its {PROJECT_STORE}. Move {PROJECT_STORE} and "
            f"{PROJECT_ARTIFACTS}/ aside to start a fresh store here, or set MLFLOW_TRACKING_URI to "
            "the store you mean.")


class TrackingServerError(FeropsError):
    """An MLflow tracking server is unreachable, refuses the login, or refuses a request."""


def check_server(uri: str, timeout: float = 10.0) -> None:
    """One quick authenticated request to an ``http(s)://`` tracking server; other URIs pass.

    MLflow retries a refused connection for minutes and then raises a long traceback; a wrong
    password surfaces deep inside a stage. This turns both into one line naming the URI.

    Raises:
        TrackingServerError: The server is unreachable, refuses the credentials
            (``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``) or is not an MLflow server.
    """
    if urllib.parse.urlsplit(uri).scheme.lower() not in ("http", "https"):
        return
    import requests

    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token and not user else {}
    try:
        response = requests.get(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
                                params={"max_results": 1}, auth=(user, password or "") if user else None,
                                headers=headers, timeout=timeout)
    except requests.RequestException as error:
        raise TrackingServerError(
            f"MLflow tracking server {uri} is unreachable ({type(error).__name__}): check that the "
            "server is up and that MLFLOW_TRACKING_URI (or --tracking-uri) is right") from error
    if response.status_code == 401:
        who = f"user {user!r}" if user else "no login (MLFLOW_TRACKING_USERNAME is not set)"
        raise TrackingServerError(
            f"MLflow tracking server {uri} refused the credentials ({who}, HTTP 401): check "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if response.status_code >= 400:
        raise TrackingServerError(
            f"MLflow tracking server {uri} answered HTTP {response.status_code} to a search request: "
            "check that MLFLOW_TRACKING_URI (or --tracking-uri) names an MLflow server")


def _server_refusal(error: Exception, uri: str, what: str) -> TrackingServerError | None:
    """A permission error of a tracking server as a one-line :class:`TrackingServerError`."""
    code = getattr(error, "error_code", "")
    if code not in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        return None
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(anonymous)"
    return TrackingServerError(
        f"MLflow tracking server {uri} refused to let user {user!r} {what} ({code}): ask the "
        "server's admin for EDIT permission on the experiment, or log in as another user "
        "(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)")


def use_experiment(name: str, uri: str, root: Path) -> str:
    """Point MLflow at ``uri`` and return the id of experiment ``name`` (created if missing).

    Raises:
        DataError: The project's store belongs to another checkout (see above).
        TrackingServerError: A tracking server is down or refuses the login (:func:`check_server`).
    """
    import mlflow

    check_server(uri)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_root(uri, root))
        logger.info("created MLflow experiment %r in %s", name, uri)
        return experiment_id
    _check_project_artifacts(experiment, uri, root)
    return experiment.experiment_id


def _flatten(mapping: Mapping[str, Any], leaf: Callable[[Any], Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys (``train.lr``) for the leaves of nested mappings.

    ``leaf`` converts each leaf value; a leaf it turns into None is left out.
    """
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, leaf, f"{name}."))
        elif (converted := leaf(value)) is not None:
            flat[name] = converted
    return flat


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return text[:_MAX_PARAM_CHARS]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to dotted keys (``train.lr``), values as strings MLflow accepts."""
    return _flatten(params, _param_value, prefix)


def git_tags(directory: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """Tags that tie a run to its code: git commit, dirty-tree flag, DVC experiment name."""
    tags: dict[str, str] = {}

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=directory, capture_output=True, text=True,
                                    check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if commit:
        tags["git.commit"] = commit
        status = git("status", "--porcelain", "--untracked-files=no")
        tags["git.dirty"] = "true" if status else "false"
    if environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = environ["DVC_EXP_NAME"]
    return tags


def log_array_dataset(path: Path, arrays: Mapping[str, np.ndarray], name: str, context: str) -> str:
    """Log an .npz input as an MLflow dataset whose digest is its DVC md5; return the digest."""
    import mlflow

    digest = file_digest(path, "md5")
    with warnings.catch_warnings():
        # A local path matches two equivalent source types; MLflow warns and picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        dataset = mlflow.data.from_numpy(arrays["images"], targets=arrays["label"],
                                         source=str(path), name=name, digest=digest)
    mlflow.log_input(dataset, context=context)
    return digest


@dataclass(frozen=True)
class PipelineRun:
    """The MLflow run of one pipeline run (created by the train stage).

    Attributes:
        run_id: The run's id.
        experiment_id: Its experiment's id.
        uri: The tracking URI it lives in.
    """

    run_id: str
    experiment_id: str
    uri: str


def write_receipt(path: Path, run: PipelineRun, model_uri: str | None, root: Path) -> None:
    """Write the receipt later stages read to find (and add to) this pipeline run.

    The project's own store is recorded as ``"tracking_uri": null`` rather than as its absolute
    path, so the receipt stays true when the checkout is cloned, copied or moved.
    """
    recorded = None if run.uri == tracking_uri(None, root) else run.uri
    write_json(path, {"run_id": run.run_id, "experiment_id": run.experiment_id, "tracking_uri": recorded,
                      "model_uri": model_uri})


def read_receipt(path: Path) -> dict[str, Any]:
    """Read the train stage's receipt (run id, tracking URI, model URI).

    Raises:
        DataError: The receipt is missing, not JSON, or lacks a field.
    """
    receipt = read_json(path, "train", what="MLflow run receipt")
    missing = [key for key in ("run_id", "model_uri") if not receipt.get(key)]
    if missing or "tracking_uri" not in receipt:
        raise DataError(f"{path}: receipt lacks {', '.join(missing or ['tracking_uri'])}")
    return receipt


def receipt_store(receipt: Mapping[str, Any], path: Path, env_uri: str | None, root: Path) -> str:
    """The tracking URI of a receipt's run, checked against where this checkout logs now.

    Args:
        receipt: A receipt from :func:`read_receipt`.
        path: Where it was read from (for messages).
        env_uri: ``MLFLOW_TRACKING_URI`` (or None).
        root: The project root.

    Returns:
        The tracking URI to add to the run with.

    Raises:
        DataError: The run lives in another store than the one this checkout logs to (a moved
            or copied checkout, or a changed MLFLOW_TRACKING_URI): adding to it would write into
            somebody else's store.
        TrackingServerError: The tracking server is down or refuses the login.
    """
    current = tracking_uri(env_uri, root)
    recorded = receipt["tracking_uri"] or tracking_uri(None, root)
    if recorded != current:
        raise DataError(
            f"{path}: run {receipt['run_id']} was logged to {recorded}, but this checkout logs to "
            f"{current}. Set MLFLOW_TRACKING_URI={recorded} to add to that run, or rerun "
            "`dvc repro train` to start a new run in this store.")
    check_server(recorded)
    if recorded == tracking_uri(None, root):
        import mlflow

        experiment = mlflow.MlflowClient(tracking_uri=recorded).get_experiment(receipt["experiment_id"])
        _check_project_artifacts(experiment, recorded, root)
    return recorded


def _metric_value(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested numeric metrics to MLflow names (``private_test.accuracy``), skipping non-numbers."""
    return _flatten(metrics, _metric_value, prefix)


@contextlib.contextmanager
def pipeline_run(experiment: str, root: Path, environ: Mapping[str, str], tags: Mapping[str, str],
                 params: Mapping[str, Any]) -> Iterator[PipelineRun]:
    """Start the MLflow run of a pipeline run, tagged with its code and logged with every param.

    Args:
        experiment: The MLflow experiment name (``mlflow.experiment``).
        root: The project root (where the default store lives).
        environ: The environment (``MLFLOW_TRACKING_URI``, ``DVC_EXP_NAME``).
        tags: Extra tags (e.g. the devices and precision training runs on).
        params: The whole params file, logged flattened (``train.lr``...).

    Yields:
        The active run.
    """
    import mlflow

    uri = tracking_uri(environ.get("MLFLOW_TRACKING_URI"), root)
    experiment_id = use_experiment(experiment, uri, root)
    all_tags = {**git_tags(Path.cwd(), environ), **tags}
    from mlflow.exceptions import MlflowException

    try:
        started = mlflow.start_run(experiment_id=experiment_id, run_name=environ.get("DVC_EXP_NAME"),
                                   tags=all_tags)
    except MlflowException as error:
        refusal = _server_refusal(error, uri, f"start a run in experiment {experiment!r}")
        if refusal is None:
            raise
        raise refusal from error
    with started as run:
        logger.info("MLflow run %s in %s", run.info.run_id, uri)
        mlflow.log_params(flatten_params(params))
        yield PipelineRun(run.info.run_id, experiment_id, uri)


def log_epoch(epoch: int, metrics: Mapping[str, float]) -> None:
    """Log one epoch's metrics to the active run (a :func:`ferops.training.train` callback)."""
    import mlflow

    mlflow.log_metrics(dict(metrics), step=epoch)


def log_keras_model(model: Any, signature: Any, input_example: np.ndarray,
                    classes: Sequence[str]) -> Any:
    """``mlflow.keras.log_model`` with a signature, an input example and the class names.

    MLflow 3.17's Keras flavour writes ``input_example.json`` before it creates the model
    directory, so ``mlflow.keras.log_model(..., input_example=...)`` raises FileNotFoundError
    (mlflow/mlflow#16183; the TensorFlow and PyTorch flavours create the directory first). The
    same ``Model.log`` call goes through a wrapper flavour that creates the directory, then runs
    ``mlflow.keras.save_model``: the logged model is an ordinary Keras-flavour model. Harmless
    once MLflow is fixed.

    Args:
        model: The Keras model.
        signature: Its MLflow signature.
        input_example: A few float32 input images.
        classes: Class names, recorded in the MLmodel metadata (``classes``).

    Returns:
        The ``ModelInfo`` of the logged model.
    """
    import mlflow
    from mlflow.models import Model

    def save_model(path: str, **kwargs: Any) -> None:
        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)

    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=save_model)
    return Model.log(artifact_path=None, name="model", flavor=flavor, model=model, signature=signature,
                     input_example=input_example, metadata={"classes": list(classes)})


def log_training_outcome(model: Any, metrics: Mapping[str, float], figure: Path,
                         sample_images: np.ndarray, classes: Sequence[str]) -> str:
    """Log what a training produced to the active run; return the logged model's URI.

    Args:
        model: The trained Keras model (best checkpoint).
        metrics: Summary metrics (best validation accuracy, timing...).
        figure: The training-curves figure.
        sample_images: A few uint8 validation images: the input example and signature.
        classes: Class names, one per model output.
    """
    import mlflow
    from mlflow.models import infer_signature

    mlflow.log_metrics(dict(metrics))
    mlflow.log_artifact(str(figure), "figures")
    for name in ("params.yaml", "dvc.lock"):
        if Path(name).is_file():
            mlflow.log_artifact(name, "pipeline")
    # Pyfunc enforces the signature strictly: the example and the signature are float32.
    sample = np.asarray(sample_images)[:8, ..., None].astype(np.float32)
    signature = infer_signature(sample, model.predict(sample, verbose=0))
    return log_keras_model(model, signature, sample[:2], classes).model_uri


def log_evaluation(uri: str, run_id: str, metrics: Mapping[str, Any], per_class: Mapping[str, float],
                   folders: Mapping[str, Path], tta: str) -> None:
    """Add the evaluate stage's metrics and files to the pipeline's MLflow run.

    Args:
        uri: The run's tracking URI (see :func:`receipt_store`).
        run_id: The run.
        metrics: ``reports/metrics.json`` (nested; non-numbers are skipped).
        per_class: Flat per-class metrics.
        folders: Artifact sub-path (``reports``, ``figures``...) to the folder logged there.
        tta: The test-time augmentation, recorded as a tag.
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({**flatten_metrics(metrics), **per_class})
        for name, folder in folders.items():
            mlflow.log_artifacts(str(folder), f"evaluate/{name}")
        mlflow.set_tag("evaluate.tta", tta)
    logger.info("logged evaluation to MLflow run %s", run_id)


def log_training_data(train_path: Path, train_arrays: Mapping[str, np.ndarray], validation_path: Path,
                      validation_arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Log the Training and PublicTest inputs of a training run; return their DVC md5 digests."""
    return {
        "train": log_array_dataset(train_path, train_arrays, "fer2013-train", "training"),
        "validation": log_array_dataset(validation_path, validation_arrays, "fer2013-public-test",
                                        "validation"),
    }
