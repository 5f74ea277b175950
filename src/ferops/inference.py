"""Load a trained expression classifier from any form users have it in, and classify faces in batches.

Every model takes what the train stage gives it: float32 pixels of shape (n, 48, 48, 1) in 0..255
(rescaling and augmentation live inside the Keras model) and returns (n, 7) softmax
probabilities in the order of ``base.classes``. Models carry their class names (a ``.keras`` file
in a ``ferops.json`` member, an MLflow model in its ``classes`` metadata, an ONNX file written by
``ferops export`` in its ``classes`` metadata property); older models without them are assumed to
use the FER2013 order, with a warning. :func:`load_classifier` accepts a registry
reference (``models:/<name>@<alias>``, ``models:/<name>/<version>``), a logged-model or run URI
(``models:/m-<id>``, ``runs:/<run id>/<path>``), a local MLflow model folder, or a ``.keras`` or
``.onnx`` file; ``.onnx`` files run on ONNX Runtime, everything else on Keras.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from ferops.errors import FeropsError

logger = logging.getLogger(__name__)

# FER2013's label order, assumed only for models saved before they carried their class names.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
# Key of the class names in an MLflow model's metadata and in an ONNX model's metadata_props.
CLASSES_KEY = "classes"
# Key of the test-time augmentation an exported ONNX graph applies itself (``ferops export``).
TTA_KEY = "tta"
# Test-time augmentation of predict/serve/export: ``flip`` averages each face's probabilities with
# those of its mirror image (the evaluate stage's ``flip``, which PublicTest favoured); ``none``.
TTA_MODES = ("flip", "none")
DEFAULT_TTA = "flip"
DEFAULT_MODEL = "models:/ferops-fer2013@champion"
DEFAULT_BATCH_SIZE = 64
INPUT_SIZE = 48


class ModelLoadError(FeropsError):
    """A model reference cannot be resolved or the model it names cannot be loaded."""


class StoreNotFoundError(FeropsError):
    """A tracking URI names a local MLflow store that does not exist."""


_STORE_HINT = ("check --tracking-uri / MLFLOW_TRACKING_URI, or run `dvc repro` to create the project's "
               "store")


def _is_mlflow_database(path: Path) -> bool:
    # Read-only: a mistyped URI naming some other SQLite file must not get MLflow's tables.
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as connection:
            row = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'experiments'").fetchone()
    except sqlite3.Error:
        return False
    return row is not None


def require_store(uri: str) -> None:
    """Refuse a local MLflow store that does not exist, before MLflow opens it.

    MLflow creates what a tracking URI names as soon as a client opens it: a missing SQLite
    database (about 1 MB of empty tables, and its folders) or a missing file-store folder. A
    mistyped ``--tracking-uri`` would leave such an empty store behind and then fail with a
    confusing "not found". A tracking server (``http(s)://``) gets one quick authenticated request
    (:func:`ferops.tracking.check_server`); other remote stores (``databricks``, database
    servers) are not checked.

    Args:
        uri: The tracking URI (``sqlite:///PATH``, ``file:///PATH``, a plain path, or remote).

    Raises:
        StoreNotFoundError: The SQLite file or the store folder does not exist, or the SQLite
            file is not an MLflow database.
        ferops.tracking.TrackingServerError: The tracking server is unreachable or refuses the login.
    """
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        from ferops.tracking import check_server

        check_server(uri)
        return
    if scheme == "sqlite" or scheme.startswith("sqlite+"):
        # sqlite:///relative.db and sqlite:////absolute.db; sqlite:// alone is an in-memory database.
        database = uri.split(":///", 1)[1].split("?", 1)[0] if ":///" in uri else ""
        if database in ("", ":memory:"):
            return
        path = Path(database)
        if not path.is_file():
            raise StoreNotFoundError(f"no MLflow store at {uri} (file {path} does not exist): {_STORE_HINT}")
        if not _is_mlflow_database(path):
            raise StoreNotFoundError(f"no MLflow store at {uri} ({path} is not an MLflow database: it has "
                                     f"no experiments table): {_STORE_HINT}")
    elif uri.lower() in ("databricks", "databricks-uc", "uc"):  # MLflow's names for Databricks stores
        return
    elif scheme == "file" or len(scheme) <= 1:  # file:///PATH, a plain path (or a Windows drive)
        folder = Path(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)) if scheme == "file" \
            else Path(uri)
        if not folder.is_dir():
            raise StoreNotFoundError(f"no MLflow store at {uri} (folder {folder} does not exist): "
                                     f"{_STORE_HINT}")


def _class_names(value: Any, where: str) -> tuple[str, ...] | None:
    """Class names from model metadata: a list of strings, or a JSON string of one (None if absent)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"{where}: the model's {CLASSES_KEY!r} metadata is not JSON "
                                 f"({error})") from error
    if not isinstance(value, list | tuple) or not value or not all(isinstance(name, str) for name in value):
        raise ModelLoadError(f"{where}: the model's {CLASSES_KEY!r} metadata is not a list of class names "
                             f"(got {value!r})")
    return tuple(value)


def _choose_classes(source: str, explicit: Sequence[str] | None,
                    carried: tuple[str, ...] | None) -> tuple[tuple[str, ...], bool]:
    """The class names to use and whether they were assumed: explicit, else the model's, else FER2013's."""
    if explicit is not None:
        return tuple(explicit), False
    if carried is not None:
        return carried, False
    logger.warning("%s: the model carries no class names (saved before models recorded them): assuming "
                   "the FER2013 order %s", source, ", ".join(FER2013_CLASSES))
    return FER2013_CLASSES, True


def preprocess(crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Turn 48x48 uint8 face crops into the model input, exactly as the prepared arrays are fed.

    Args:
        crops: A sequence of (48, 48) (or (48, 48, 1)) uint8 crops, or an array (n, 48, 48[, 1]).

    Returns:
        float32 array (n, 48, 48, 1) of raw 0..255 pixels (the model rescales inside itself).

    Raises:
        ValueError: A crop has the wrong shape or dtype.
    """
    if len(crops) == 0:
        return np.zeros((0, INPUT_SIZE, INPUT_SIZE, 1), np.float32)
    batch = np.asarray(crops if isinstance(crops, np.ndarray) else np.stack(list(crops)))
    if batch.dtype != np.uint8:
        # Float crops could be 0..1 or 0..255: refusing is safer than a silently wrong scale.
        raise ValueError(f"face crops must be uint8 pixels, got dtype {batch.dtype}")
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 1):
        raise ValueError(f"face crops must be {INPUT_SIZE}x{INPUT_SIZE} gray, got shape {batch.shape[1:]}")
    return batch.astype(np.float32)


class Classifier:
    """A loaded expression model: float32 (n, 48, 48, 1) 0..255 pixels in, probabilities out.

    Attributes:
        source: What the user gave (file path or URI), for reports.
        backend: ``"keras"`` or ``"onnxruntime"``.
        classes: Class names, one per output column.
        classes_assumed: True when the model carried no class names and the FER2013 order was
            assumed (the names are then not worth recording in an export).
        batch_size: Largest batch sent to the model at once.
        tta: ``flip`` (each face is classified with its mirror image and the probabilities are
            averaged) or ``none``.
    """

    backend = "none"
    # True where the model graph itself averages the mirror view (an ONNX file exported with it).
    tta_in_graph = False

    def __init__(self, source: str, classes: Sequence[str] | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, *, carried: tuple[str, ...] | None = None,
                 tta: str = DEFAULT_TTA) -> None:
        if batch_size < 1:
            raise FeropsError(f"batch size must be >= 1, got {batch_size}")
        self.source = source
        self.classes, self.classes_assumed = _choose_classes(source, classes, carried)
        self.batch_size = int(batch_size)
        self.tta = check_tta(tta)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Classify faces.

        Args:
            pixels: float32 (n, 48, 48, 1) raw pixels, as :func:`preprocess` returns.

        Returns:
            float32 (n, len(classes)) probabilities; (0, len(classes)) for no faces.
        """
        pixels = np.asarray(pixels, dtype=np.float32)
        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        probabilities = self.predict_graph(pixels)
        if self.tta == "flip" and not self.tta_in_graph:
            # The mirror image along the width axis, as the evaluate stage's flip TTA.
            probabilities = (probabilities + self.predict_graph(pixels[:, :, ::-1])) / 2
        if probabilities.shape != (len(pixels), len(self.classes)):
            raise FeropsError(f"{self.source}: the model returned shape {probabilities.shape}, "
                              f"expected ({len(pixels)}, {len(self.classes)}) class probabilities")
        return probabilities

    def predict_graph(self, pixels: np.ndarray) -> np.ndarray:
        """What the model's own graph returns for float32 pixels, without Python-side TTA."""
        parts = [self._run(np.ascontiguousarray(pixels[start:start + self.batch_size]))
                 for start in range(0, len(pixels), self.batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def classify(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Preprocess 48x48 uint8 crops and classify them; returns (n, classes) probabilities."""
        return self.predict(preprocess(crops))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source!r}, classes={len(self.classes)}, tta={self.tta!r})"


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA_MODES`, else a clear error."""
    if tta not in TTA_MODES:
        raise FeropsError(f"test-time augmentation {tta!r} is not one of: {', '.join(TTA_MODES)}")
    return tta


class KerasClassifier(Classifier):
    """A Keras 3 model, called directly in inference mode (no augmentation)."""

    backend = "keras"

    def __init__(self, model: Any, source: str, classes: Sequence[str] | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, *, carried: tuple[str, ...] | None = None,
                 tta: str = DEFAULT_TTA) -> None:
        """Wrap a loaded Keras model.

        Args:
            model: The Keras 3 model.
            source: What the user gave, for reports.
            classes: Class names (None: ``carried``, else the FER2013 order with a warning).
            batch_size: Largest batch per model call.
            carried: The class names the model file or MLflow model carries, if any.
            tta: ``flip`` (average with the mirror image) or ``none``.
        """
        super().__init__(source, classes, batch_size, carried=carried, tta=tta)
        _check_signature(source, model.inputs[0].shape if getattr(model, "inputs", None) else None,
                         model.outputs[0].shape if getattr(model, "outputs", None) else None,
                         len(self.classes))
        self.model = float32_model(model)
        self._call = self._compile(self.model)
        # Keras models are shared between the HTTP server's worker threads: one call at a time.
        self._lock = threading.Lock()

    @staticmethod
    def _compile(model: Any) -> Any:
        # One traced graph for every batch size. Not model.predict (it builds a tf.data pipeline per
        # call) nor eager model(x) (per-op Python dispatch): both cost more than the network itself
        # for the few faces of a photo. Other Keras backends fall back to the eager call.
        import keras

        if keras.backend.backend() != "tensorflow":
            return lambda batch: model(batch, training=False)
        import tensorflow as tf

        signature = [tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32)]
        return tf.function(lambda batch: model(batch, training=False), input_signature=signature)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        import keras

        with self._lock:
            # convert_to_numpy: a PyTorch result still carries autograd state that numpy refuses.
            return np.asarray(keras.ops.convert_to_numpy(self._call(batch)))


class OnnxClassifier(Classifier):
    """An ONNX model (as written by ``ferops export``) run with ONNX Runtime on the CPU."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], classes: Sequence[str] | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                 tta: str = DEFAULT_TTA) -> None:
        """Load an ONNX file.

        Args:
            path: The ``.onnx`` file.
            classes: Class names (None: the ``classes`` metadata property ``ferops export``
                writes, else the FER2013 order with a warning).
            batch_size: Largest batch per model call.
            threads: ONNX Runtime intra-op threads (None: its default).
            tta: ``flip`` or ``none``. A file exported with flip TTA (metadata ``tta: flip``)
                averages the mirror view in its graph; it cannot be run without it.

        Raises:
            ModelLoadError: The file is not a loadable ONNX classifier, or ``tta`` is ``none``
                for a file that applies flip TTA in its graph.
        """
        if batch_size < 1:
            raise FeropsError(f"batch size must be >= 1, got {batch_size}")
        try:
            import onnxruntime as ort
        except ImportError as error:
            raise ModelLoadError(f"{path}: running an .onnx model needs onnxruntime "
                                 "(pip install onnxruntime)") from error
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped pybind errors
            raise ModelLoadError(f"{path}: ONNX Runtime could not load this file as an ONNX model "
                                 f"({error})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        carried = _class_names(metadata.get(CLASSES_KEY), str(path))
        super().__init__(str(path), classes, batch_size, carried=carried, tta=tta)
        self.tta_in_graph = metadata.get(TTA_KEY) == "flip"
        if self.tta_in_graph and self.tta == "none":
            raise ModelLoadError(f"{path}: this ONNX file averages each face with its mirror image in "
                                 "its graph (exported with flip TTA); to run without it, export again "
                                 "with `ferops export --no-tta`")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(f"{path}: expected an ONNX model with one input and one output, got "
                                 f"{len(inputs)} inputs and {len(outputs)} outputs")
        _check_signature(str(path), inputs[0].shape, outputs[0].shape, len(self.classes))
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe, so no lock here.
        return self.session.run([self.output_name], {self.input_name: batch})[0]


def _check_signature(source: str, input_shape: Any, output_shape: Any, n_classes: int) -> None:
    """Refuse models that do not take (n, 48, 48, 1) or do not return n_classes columns."""
    def dims(shape: Any) -> list[int | None]:
        return [d if isinstance(d, int) else None for d in list(shape)[1:]]

    if input_shape is not None and dims(input_shape) != [INPUT_SIZE, INPUT_SIZE, 1]:
        raise ModelLoadError(f"{source}: the model's input is {list(input_shape)}, expected "
                             f"(batch, {INPUT_SIZE}, {INPUT_SIZE}, 1) grayscale pixels")
    if output_shape is not None and dims(output_shape) != [n_classes]:
        raise ModelLoadError(f"{source}: the model's output is {list(output_shape)}, expected "
                             f"(batch, {n_classes}) probabilities for {n_classes} classes")


def _float32_policies(value: Any) -> Any:
    """A copy of a serialized Keras object with every mixed-precision dtype policy made float32."""
    if isinstance(value, dict):
        config = value.get("config")
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(config, dict):
            if str(config.get("name", "")).startswith("mixed_"):
                return {**value, "config": {**value["config"], "name": "float32"}}
        return {key: _float32_policies(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_float32_policies(item) for item in value]
    if isinstance(value, str) and value in ("mixed_float16", "mixed_bfloat16"):
        return "float32"
    return value


def float32_model(model: Any) -> Any:
    """Return ``model`` computing in float32: a rebuilt copy if it was trained in mixed precision.

    Models trained with ``train.mixed_precision`` (bfloat16 on CPUs with AMX, float16 on GPUs)
    keep float32 weights but compute most layers in 16 bits. Inference here runs in float32 on
    both backends: ONNX export needs a float32 graph (tf2onnx cannot map bfloat16), and Keras and
    ONNX Runtime then give the same probabilities (to ~1e-6) instead of differing by 16-bit
    rounding (~1e-2).

    Args:
        model: A Keras 3 model.

    Returns:
        The model itself when every layer is float32, else a float32 copy with the same weights.
    """
    import keras

    policies = {getattr(layer.dtype_policy, "name", "float32") for layer in model._flatten_layers()}
    if policies <= {"float32"}:
        return model
    serialized = _float32_policies(keras.saving.serialize_keras_object(model))
    copy = keras.saving.deserialize_keras_object(serialized)
    copy.set_weights(model.get_weights())
    logger.info("model computes in %s: running it in float32", ", ".join(sorted(policies - {"float32"})))
    return copy


def load_keras_model(path: str | os.PathLike[str]) -> Any:
    """Load a ``.keras`` file for inference (not compiled), with a clear error when it cannot be.

    Args:
        path: The ``.keras`` file (the train stage writes ``models/model.keras``).

    Returns:
        The Keras model.

    Raises:
        ModelLoadError: The file is missing or is not a loadable Keras model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: model not found; the train stage writes it (run `dvc repro train`)")
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises ValueError/OSError/zipfile errors for bad files
        raise ModelLoadError(f"{path}: cannot load as a Keras model ({type(error).__name__}: "
                             f"{error})") from error


def _load_mlflow(uri: str, tracking_uri: str | None) -> tuple[Any, tuple[str, ...] | None]:
    """Load an MLflow Keras model and the class names in its metadata (None when it has none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if uri.startswith(("models:/", "runs:/")):
        # Resolving these opens the tracking store, which MLflow would create if it is missing
        # (without a URI: mlflow.db in the current folder).
        try:
            require_store(tracking_uri or mlflow.get_tracking_uri())
        except StoreNotFoundError as error:
            raise ModelLoadError(f"{uri}: {error}; or give a .keras/.onnx file") from error
    if tracking_uri:
        # models:/NAME@alias is resolved in the registry, runs:/ in the tracking store: both live
        # in the same store for this project.
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    where = f" in {tracking_uri}" if tracking_uri else ""
    try:
        model = mlflow.keras.load_model(uri)
        metadata = mlflow.models.get_model_info(uri).metadata or {}
    except MlflowException as error:
        hint = ""
        if uri.startswith("models:/") and "@" in uri:
            name, alias = uri[len("models:/"):].split("@", 1)
            hint = (f" (is there a registered model {name!r} with alias {alias!r}{where}? "
                    "`ferops promote` sets @champion; pass --tracking-uri for another store)")
        raise ModelLoadError(f"{uri}: MLflow could not resolve this model{where}: "
                             f"{error.message if hasattr(error, 'message') else error}{hint}") from error
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"{uri}: the model was found{where} but could not be loaded as a Keras "
                             f"model ({error})") from error
    return model, _class_names(metadata.get(CLASSES_KEY), uri)


def _keras_class_names(path: Path) -> tuple[str, ...] | None:
    from ferops.models import load_class_names

    try:
        return load_class_names(path)
    except FeropsError as error:
        raise ModelLoadError(str(error)) from error


def load_classifier(
    model: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    tracking_uri: str | None = None,
    classes: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tta: str = DEFAULT_TTA,
) -> Classifier:
    """Load a classifier from a registry reference, an MLflow URI, or a local model file.

    Args:
        model: ``models:/<name>@<alias>`` (default ``models:/ferops-fer2013@champion``),
            ``models:/<name>/<version>``, ``models:/m-<id>``, ``runs:/<run id>/<path>``, a local
            MLflow model folder (with an ``MLmodel`` file), or a ``.keras`` or ``.onnx`` file.
        tracking_uri: MLflow tracking/registry store for ``models:/`` and ``runs:/`` URIs
            (see :func:`ferops.tracking.tracking_uri`); it must exist (see :func:`require_store`).
        classes: Class names in output order. Default: the names the model carries, else (older
            models) the FER2013 order, with a warning.
        batch_size: Largest batch per model call.
        tta: ``flip`` (default: average each face with its mirror image) or ``none``.

    Returns:
        A :class:`KerasClassifier` or, for ``.onnx`` files, an :class:`OnnxClassifier`.

    Raises:
        ModelLoadError: The reference is not one of the accepted forms, the store or the model
            is missing, or the model is unloadable.
    """
    text = os.fspath(model)
    if "://" in text or text.startswith(("models:/", "runs:/")):
        if not text.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "file:")):
            raise ModelLoadError(f"{text}: unsupported model URI (expected models:/<name>@<alias>, "
                                 "models:/<name>/<version>, models:/m-<id> or runs:/<run id>/<path>)")
        logger.info("loading model %s%s", text, f" from {tracking_uri}" if tracking_uri else "")
        keras_model, carried = _load_mlflow(text, tracking_uri)
        return KerasClassifier(keras_model, text, classes, batch_size, carried=carried, tta=tta)
    path = Path(text)
    if not path.exists():
        raise ModelLoadError(f"{path}: model not found (expected a .keras or .onnx file, an MLflow "
                             "model folder, or a models:/ or runs:/ URI)")
    if path.is_dir():
        if not (path / "MLmodel").is_file():
            raise ModelLoadError(f"{path}: a folder, but not an MLflow model (no MLmodel file inside)")
        keras_model, carried = _load_mlflow(str(path.resolve()), None)
        return KerasClassifier(keras_model, text, classes, batch_size, carried=carried, tta=tta)
    suffix = path.suffix.lower()
    logger.info("loading model %s", path)
    if suffix == ".onnx":
        return OnnxClassifier(path, classes, batch_size, tta=tta)
    if suffix == ".keras":
        return KerasClassifier(load_keras_model(path), text, classes, batch_size,
                               carried=_keras_class_names(path), tta=tta)
    raise ModelLoadError(f"{path}: unsupported model file type {suffix or '(none)'!r} (expected .keras "
                         "or .onnx)")
