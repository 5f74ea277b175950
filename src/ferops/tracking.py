"""MLflow tracking: where runs go, and what a pipeline run records about itself.

One pipeline run is one MLflow run: the train stage creates it and writes a receipt (run id,
tracking URI) that later stages use to add to the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ferops.errors import DataError
from ferops.io import read_json, write_json

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


def tracking_uri(env_uri: str | None, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store ``mlflow.db`` at the project root."""
    if env_uri:
        return env_uri
    return f"sqlite:///{(Path(root) / 'mlflow.db').resolve()}"


def artifact_root(uri: str, root: Path) -> str | None:
    """Where a new experiment keeps artifacts: beside a local store; the server decides otherwise."""
    if uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        return (Path(root) / "mlartifacts").resolve().as_uri()
    return None


def use_experiment(name: str, uri: str, root: Path) -> str:
    """Point MLflow at ``uri`` and return the id of experiment ``name`` (created if missing)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_root(uri, root))
        logger.info("created MLflow experiment %r in %s", name, uri)
        return experiment_id
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


def md5_file(path: str | os.PathLike[str]) -> str:
    """MD5 of a file's bytes: what DVC records for a file dependency in dvc.lock."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def log_array_dataset(path: Path, arrays: Mapping[str, np.ndarray], name: str, context: str) -> str:
    """Log an .npz input as an MLflow dataset whose digest is its DVC md5; return the digest."""
    import mlflow

    digest = md5_file(path)
    with warnings.catch_warnings():
        # A local path matches two equivalent source types; MLflow warns and picks one.
        warnings.filterwarnings("ignore", message="The specified dataset source")
        dataset = mlflow.data.from_numpy(arrays["images"], targets=arrays["label"],
                                         source=str(path), name=name, digest=digest)
    mlflow.log_input(dataset, context=context)
    return digest


def write_receipt(path: Path, run_id: str, experiment_id: str, uri: str, model_uri: str | None) -> None:
    """Write the receipt later stages read to find (and add to) this pipeline run."""
    write_json(path, {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri,
                      "model_uri": model_uri})


def read_receipt(path: Path) -> dict[str, Any]:
    """Read the train stage's receipt (run id, tracking URI, model URI).

    Raises:
        DataError: The receipt is missing, not JSON, or lacks a field.
    """
    receipt = read_json(path, "train", what="MLflow run receipt")
    missing = [key for key in ("run_id", "tracking_uri", "model_uri") if not receipt.get(key)]
    if missing:
        raise DataError(f"{path}: receipt lacks {', '.join(missing)}")
    return receipt


def _metric_value(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value):
        return float(value)
    return None


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested numeric metrics to MLflow names (``private_test.accuracy``), skipping non-numbers."""
    return _flatten(metrics, _metric_value, prefix)
