"""Predictions with test-time augmentation: the plain view, its mirror image, or ten crops."""

from __future__ import annotations

from typing import Any

import numpy as np

from ferops.errors import ParamsError

TTA_MODES = ("none", "flip", "tencrop")


def as_model_input(images: np.ndarray) -> np.ndarray:
    """Images as the models take them: float32, shape (n, size, size, 1)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    return images.astype(np.float32)


def ten_crops(images: np.ndarray, fraction: float = 0.9) -> list[np.ndarray]:
    """The classic ten-crop views: 4 corners + centre, and their mirror images.

    Each crop has ``fraction`` of the side and is resized back to the full side (the model's
    input size).

    Args:
        images: (n, size, size[, 1]) pixels.
        fraction: Side of a crop relative to the image.

    Returns:
        Ten float32 arrays shaped like the model input.
    """
    import cv2

    batch = as_model_input(images)[..., 0]
    size = batch.shape[1]
    crop = max(1, round(size * fraction))
    offsets = [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop),
               ((size - crop) // 2, (size - crop) // 2)]
    views = []
    for top, left in offsets:
        cropped = batch[:, top:top + crop, left:left + crop]
        resized = np.stack([cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
                            for image in cropped])[..., None]
        views.extend([resized, resized[:, :, ::-1]])
    return views


def predict_probabilities(model: Any, images: np.ndarray, *, tta: str = "none",
                          batch_size: int = 256, plain: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities, optionally averaged over test-time augmented views.

    Args:
        model: A Keras model taking float32 pixels 0..255 of shape (n, size, size, 1).
        images: (n, size, size) uint8 images.
        tta: ``none``; ``flip`` (image + mirror image); ``tencrop`` (see :func:`ten_crops`).
        batch_size: Prediction batch size.
        plain: The model's probabilities for the un-augmented images, when the caller already
            has them; ``flip`` reuses them instead of predicting that view a second time.

    Returns:
        (n, classes) float64 probabilities.
    """
    if tta not in TTA_MODES:
        raise ParamsError(f"evaluate.tta: {tta!r} is not one of {', '.join(TTA_MODES)}")
    batch = as_model_input(images)
    if tta == "none":
        views = [batch]
    elif tta == "flip":
        views = [batch, batch[:, :, ::-1]]
    else:
        views = ten_crops(batch)
    total = None
    if plain is not None and tta == "flip":
        if plain.shape[0] != batch.shape[0]:
            raise ValueError(f"plain probabilities have {plain.shape[0]} rows for {batch.shape[0]} images")
        total = np.asarray(plain, dtype=np.float64)
        views = views[1:]
        divisor = 2
    else:
        divisor = len(views)
    for view in views:
        probabilities = np.asarray(model.predict(np.ascontiguousarray(view), batch_size=batch_size,
                                                 verbose=0), dtype=np.float64)
        total = probabilities if total is None else total + probabilities
    return total / divisor
