"""Test-time augmentation: the ten-crop views and the flip average."""

from __future__ import annotations

import numpy as np
import pytest

from ferops.errors import ParamsError
from ferops.tta import predict_probabilities, ten_crops


class LeftBrightness:
    """A predictor whose 'probability' of class 0 is the brightness of the image's left half."""

    def predict(self, batch, batch_size, verbose):
        left = batch[:, :, :24].mean(axis=(1, 2, 3)) / 255
        return np.stack([left, 1 - left], axis=1)


def test_ten_crops_are_corners_centre_and_mirrors():
    images = np.tile(np.arange(48, dtype=np.uint8) * 5, (3, 48, 1))  # brighter to the right
    views = ten_crops(images)
    assert len(views) == 10 and all(v.shape == (3, 48, 48, 1) for v in views)
    for even in range(0, 10, 2):
        assert np.array_equal(views[even + 1], views[even][:, :, ::-1])
    assert views[0].mean() < views[2].mean()  # top-left crop is darker than top-right


def test_flip_tta_averages_the_image_and_its_mirror():
    images = np.tile(np.arange(48, dtype=np.uint8) * 5, (2, 48, 1))
    left, right = images[:, :, :24].mean() / 255, images[:, :, 24:].mean() / 255
    plain = predict_probabilities(LeftBrightness(), images)
    flipped = predict_probabilities(LeftBrightness(), images, tta="flip")
    assert plain[:, 0] == pytest.approx([left, left])
    assert flipped[:, 0] == pytest.approx([(left + right) / 2] * 2)
    # Reusing the plain view's probabilities gives the same average without predicting it again.
    reused = predict_probabilities(LeftBrightness(), images, tta="flip", plain=plain)
    assert reused == pytest.approx(flipped)
    with pytest.raises(ValueError, match="1 rows for 2 images"):
        predict_probabilities(LeftBrightness(), images, tta="flip", plain=plain[:1])
    with pytest.raises(ParamsError, match="evaluate.tta"):
        predict_probabilities(LeftBrightness(), images, tta="mirror")
