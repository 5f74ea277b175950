"""Export a trained Keras model to ONNX, for ONNX Runtime in `ferops predict`/`ferops serve` or elsewhere.

Keras 3's own ``model.export(path, format="onnx")`` (tf2onnx underneath) is used, with two
adjustments. Models trained in mixed precision are rebuilt in float32 first (tf2onnx cannot map
bfloat16). And the models carry their augmentation layers, whose default is ``training=True`` when
a layer is called without a training flag, so exporting the model directly traces random flips
and rotations (ops ONNX does not have: the file would not even load). The model is wrapped in a
layer that calls it with ``training=False``, which traces the inference graph only. The class
names are stored in the ONNX file's metadata (property ``classes``, a JSON list), where
:class:`ferops.inference.OnnxClassifier` reads them.

By default the exported graph applies flip test-time augmentation itself (it averages the
probabilities of each face and of its mirror image: the TTA that PublicTest favoured), so any
ONNX runtime gets the better figure; the metadata property ``tta`` says so (``flip``), and
``ferops predict``/``serve`` then do not mirror a second time. ``tta="none"`` exports the plain
model.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ferops.errors import FeropsError
from ferops.inference import CLASSES_KEY, DEFAULT_TTA, INPUT_SIZE, TTA_KEY, check_tta, float32_model

logger = logging.getLogger(__name__)

INPUT_NAME = "pixels"


class ExportError(FeropsError):
    """The model could not be converted to ONNX, or the converted model disagrees with Keras."""


def _inference_wrapper(model: Any, tta: str) -> Any:
    import keras

    class InferenceOnly(keras.Model):
        """Calls the wrapped model in inference mode, so augmentation is not traced."""

        def __init__(self, inner: Any) -> None:
            super().__init__(name="ferops_inference")
            self.inner = inner

        def call(self, pixels: Any) -> Any:
            probabilities = self.inner(pixels, training=False)
            if tta == "flip":
                mirrored = self.inner(keras.ops.flip(pixels, axis=2), training=False)
                probabilities = (probabilities + mirrored) / 2
            return probabilities

    wrapper = InferenceOnly(float32_model(model))
    # Keras refuses to export a model that has never been called.
    wrapper(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 1), np.float32))
    return wrapper


def _record_metadata(path: Path, properties: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [prop for prop in proto.metadata_props if prop.key not in properties]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in properties.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def export_onnx(model: Any, output: str | os.PathLike[str], opset: int | None = None,
                classes: Sequence[str] | None = None, tta: str = DEFAULT_TTA) -> Path:
    """Write a Keras model as an ONNX file with a dynamic batch dimension.

    The file is written beside ``output`` under a temporary name and renamed into place, so a
    failed export leaves no partial file.

    A model trained in mixed precision is exported computing in float32 (see
    :func:`ferops.inference.float32_model`).

    Args:
        model: A Keras 3 model taking float32 (n, 48, 48, 1) pixels.
        output: The ``.onnx`` file to write.
        opset: ONNX opset (None: the converter's default).
        classes: Class names, one per output column, recorded in the file's metadata (None:
            none recorded; loaders then assume the FER2013 order).
        tta: ``flip`` (the graph averages each face with its mirror image, recorded as metadata
            ``tta: flip``) or ``none``.

    Returns:
        The path written.

    Raises:
        ExportError: tf2onnx is missing, the conversion failed, or ``classes`` does not match
            the model's outputs.
    """
    import tensorflow as tf

    tta = check_tta(tta)
    output = Path(output)
    if output.suffix.lower() != ".onnx":
        raise ExportError(f"{output}: the ONNX output file must end in .onnx")
    try:
        import tf2onnx  # noqa: F401  (Keras imports it lazily; fail here with a clear message)
    except ImportError as error:
        raise ExportError("exporting to ONNX needs tf2onnx and onnx (pip install tf2onnx onnx)") from error
    outputs = getattr(model, "outputs", None)
    if classes is not None and outputs and outputs[0].shape[-1] != len(classes):
        raise ExportError(f"{output}: {len(classes)} class names for a model with {outputs[0].shape[-1]} "
                          "outputs")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    signature = [tf.TensorSpec((None, INPUT_SIZE, INPUT_SIZE, 1), tf.float32, name=INPUT_NAME)]
    try:
        _inference_wrapper(model, tta).export(str(partial), format="onnx", verbose=False,
                                              input_signature=signature, opset_version=opset)
        properties = {TTA_KEY: tta}
        if classes is not None:
            properties[CLASSES_KEY] = json.dumps(list(classes))
        _record_metadata(partial, properties)
        os.replace(partial, output)
    except Exception as error:  # tf2onnx raises many kinds; all mean "could not convert"
        partial.unlink(missing_ok=True)
        raise ExportError(f"{output}: ONNX conversion failed ({type(error).__name__}: {error})") from error
    logger.info("wrote %s (%.1f kB)", output, output.stat().st_size / 1024)
    return output


def parity(keras_model: Any, onnx_path: str | os.PathLike[str], pixels: np.ndarray) -> float:
    """Largest absolute difference between Keras and ONNX Runtime probabilities on ``pixels``.

    Keras runs the model in float32, as ``ferops predict`` does (mixed-precision models included),
    with the test-time augmentation the ONNX file applies (see :func:`export_onnx`).

    Args:
        keras_model: The Keras model.
        onnx_path: Its ONNX export.
        pixels: float32 (n, 48, 48, 1) raw pixels.

    Returns:
        max |p_keras - p_onnx| over all faces and classes.
    """
    from ferops.inference import OnnxClassifier

    onnx_model = OnnxClassifier(onnx_path)
    model, pixels = float32_model(keras_model), np.asarray(pixels, np.float32)
    expected = np.asarray(model(pixels, training=False))
    if onnx_model.tta_in_graph:
        expected = (expected + np.asarray(model(pixels[:, :, ::-1], training=False))) / 2
    actual = onnx_model.predict_graph(pixels)
    return float(np.abs(expected - actual).max())
