"""Grad-CAM (Selvaraju et al. 2017) under every Keras backend: where the network looks for a class."""

from __future__ import annotations

from typing import Any

import numpy as np

from ferops.tta import as_model_input


def last_feature_map_layer(model: Any) -> str:
    """Name of the last layer with a spatial (4-D) output: where Grad-CAM looks.

    Raises:
        ValueError: The model has no such layer.
    """
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None)
        shape = getattr(shape, "shape", None)
        if shape is not None and len(shape) == 4 and (shape[1] or 0) > 1 and layer.name != "pixels":
            return layer.name
    raise ValueError(f"model {model.name!r} has no layer with a spatial output for Grad-CAM")


def _class_score_gradient(head: Any, features: np.ndarray, class_index: np.ndarray) -> np.ndarray:
    """Gradient of each row's class probability with respect to the feature maps, per backend."""
    import keras

    backend = keras.backend.backend()
    rows = np.arange(len(class_index))
    if backend == "tensorflow":
        import tensorflow as tf

        inputs = tf.convert_to_tensor(features)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            probabilities = head(inputs, training=False)
            score = tf.reduce_sum(tf.gather_nd(probabilities, np.stack([rows, class_index], axis=1)))
        gradient = tape.gradient(score, inputs)
    elif backend == "jax":
        import jax
        import jax.numpy as jnp

        def score(inputs: Any) -> Any:
            return jnp.sum(head(inputs, training=False)[rows, class_index])

        gradient = jax.grad(score)(jnp.asarray(features))
    elif backend == "torch":
        import torch

        inputs = torch.tensor(features, requires_grad=True, device=keras.backend.get_device() or "cpu")
        head(inputs, training=False)[rows, class_index].sum().backward()
        gradient = inputs.grad
    else:
        raise ValueError(f"Grad-CAM does not support the {backend} backend")
    if gradient is None:
        raise ValueError("no gradient flows from the class score to the feature maps")
    return np.asarray(keras.ops.convert_to_numpy(gradient), dtype=np.float32)


def grad_cam(model: Any, images: np.ndarray, class_index: np.ndarray,
             layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps (Selvaraju et al. 2017): where the network looks for a class.

    The feature maps of ``layer_name`` are weighted by the spatial mean of the class score's
    gradient, summed over channels, passed through ReLU and resized to the image. Works under
    every Keras backend: the model is split at the feature maps and the head's gradient is taken
    with the backend's own autodiff.

    Args:
        model: A Functional Keras classifier.
        images: (n, size, size) uint8 images.
        class_index: The class to explain, per image.
        layer_name: Layer to explain (default: :func:`last_feature_map_layer`).

    Returns:
        (n, size, size) heatmaps scaled to 0..1 per image.
    """
    import keras

    name = layer_name or last_feature_map_layer(model)
    feature_tensor = model.get_layer(name).output
    body = keras.Model(model.inputs, feature_tensor)
    head = keras.Model(feature_tensor, model.output)
    batch = as_model_input(images)
    # Mixed-precision models have bfloat16/float16 feature maps: combine them in float32.
    features = np.asarray(keras.ops.convert_to_numpy(body([batch], training=False)), dtype=np.float32)
    gradients = _class_score_gradient(head, features, np.asarray(class_index, dtype=np.int64))
    weights = gradients.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((weights * features).sum(axis=-1), 0)[..., None]
    cam = keras.ops.convert_to_numpy(keras.ops.image.resize(cam, batch.shape[1:3], interpolation="bilinear"))
    cam = np.asarray(cam, dtype=np.float32)[..., 0]
    peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0)
