from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from ferops.errors import FeropsError, ParamsError
from ferops.faces import (
    DEFAULT_MARGIN,
    Box,
    FaceDetector,
    center_crop,
    crop_box,
    crop_face,
    detect_and_crop,
    to_gray,
)


def _jaffe(raw_dir, name: str) -> np.ndarray:
    with Image.open(raw_dir / "jaffe" / name) as image:
        return np.array(image.convert("L"))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


# --- pure geometry on synthetic arrays -------------------------------------------------------

def _ramp(height: int = 100, width: int = 100) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width]
    return ((rows * 2 + cols) % 256).astype(np.uint8)


def test_box_helpers():
    box = Box(10, 20, 40, 30)
    assert (box.area, box.right, box.bottom, box.center) == (1200, 50, 50, (30.0, 35.0))
    assert box.square() == Box(10, 15, 40, 40)  # square on the longer side, same centre
    assert box.square(0.25) == Box(0, 5, 60, 60)  # + 10 px (0.25 x 40) on each side
    assert Box(12, 22, 5, 5).inside(box) and not Box(45, 22, 10, 5).inside(box)
    assert box.as_tuple() == (10, 20, 40, 30)


def test_crop_face_inside_image_is_an_exact_cut_when_not_resized():
    image = _ramp()
    crop = crop_face(image, Box(30, 40, 20, 20), margin=0.5, size=40)
    assert crop.dtype == np.uint8 and crop.shape == (40, 40)
    np.testing.assert_array_equal(crop, image[30:70, 20:60])


def test_crop_face_at_the_border_pads_with_edge_or_zeros():
    image = _ramp()
    box = Box(0, 0, 40, 40)  # margin 0.25 -> square (-10, -10, 60, 60): 10 px outside
    zeros = crop_face(image, box, margin=0.25, size=60, pad="zeros")
    assert zeros.shape == (60, 60) and zeros.dtype == np.uint8
    assert not zeros[:10].any() and not zeros[:, :10].any()
    np.testing.assert_array_equal(zeros[10:, 10:], image[:50, :50])

    edge = crop_face(image, box, margin=0.25, size=60)  # edge replication is the default
    np.testing.assert_array_equal(edge[10:, 10:], image[:50, :50])
    np.testing.assert_array_equal(edge[:10, 10:], np.broadcast_to(image[0, :50], (10, 50)))
    np.testing.assert_array_equal(edge[10:, :10], np.broadcast_to(image[:50, :1], (50, 10)))
    assert (edge[:10, :10] == image[0, 0]).all()


def test_crop_face_bottom_right_border_and_resize():
    image = _ramp(80, 120)
    crop = crop_face(image, Box(100, 60, 30, 30), margin=0.0, size=30, pad="zeros")
    np.testing.assert_array_equal(crop[:20, :20], image[60:80, 100:120])
    assert not crop[20:].any() and not crop[:, 20:].any()
    small = crop_face(image, Box(10, 10, 50, 40), size=48)
    assert small.shape == (48, 48) and small.dtype == np.uint8
    # Enlarging (a small face in a webcam frame) works as well.
    assert crop_face(image, Box(10, 10, 12, 12), size=48).shape == (48, 48)


def test_crop_of_a_constant_region_stays_constant():
    image = np.full((200, 200), 77, np.uint8)
    np.testing.assert_array_equal(crop_face(image, Box(50, 50, 90, 90)), np.full((48, 48), 77))


def test_crop_box_outside_the_image_is_refused():
    with pytest.raises(ValueError, match="does not overlap"):
        crop_box(_ramp(), Box(150, 0, 20, 20))
    with pytest.raises(ValueError, match="pad"):
        crop_box(_ramp(), Box(0, 0, 20, 20), pad="reflect")


def test_center_crop():
    image = _ramp(100, 200)
    np.testing.assert_array_equal(center_crop(image, 0.5, size=50), image[25:75, 75:125])
    assert center_crop(image, 1.2, size=48).shape == (48, 48)  # > 1 pads
    with pytest.raises(ValueError):
        center_crop(image, 0.0)


def test_to_gray_handles_bgr_bgra_and_gray():
    gray = _ramp()
    bgr = np.dstack([gray, gray, gray])
    np.testing.assert_array_equal(to_gray(gray), gray)
    np.testing.assert_array_equal(to_gray(gray[:, :, None]), gray)
    np.testing.assert_array_equal(to_gray(bgr), gray)
    np.testing.assert_array_equal(to_gray(np.dstack([bgr, np.full_like(gray, 255)])), gray)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 2] = 255  # pure red in BGR order
    assert to_gray(colour)[0, 0] == 76  # 0.299 x 255: the red weight, so channels are BGR
    with pytest.raises(ValueError, match="uint8"):
        to_gray(gray.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        to_gray(np.zeros((4, 4, 2), np.uint8))


# --- the detector ----------------------------------------------------------------------------

def test_detects_a_real_face(raw_dir, detector):
    image = _jaffe(raw_dir, "KA.HA1.29.tiff")
    boxes = detector.detect(image)
    assert len(boxes) == 1
    box = boxes[0]
    assert 120 <= box.w <= 200 and box.w == box.h
    cx, cy = box.center
    assert 96 <= cx <= 160 and 96 <= cy <= 176  # the portrait's face is central
    # Colour input (as from cv2.imread / a webcam) gives the same box.
    assert detector.detect(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)) == boxes


def test_three_faces_side_by_side_are_found_in_their_tiles(raw_dir, detector):
    names = ["KA.NE1.26.tiff", "KL.HA1.158.tiff", "YM.SU1.58.tiff"]
    tiles = [_jaffe(raw_dir, name) for name in names]
    canvas = np.hstack(tiles)
    boxes = detector.detect(canvas)
    assert len(boxes) == 3
    areas = [box.area for box in boxes]
    assert areas == sorted(areas, reverse=True)
    tile_boxes = [Box(256 * i, 0, 256, 256) for i in range(3)]
    assert sorted(next(i for i, t in enumerate(tile_boxes) if b.inside(t)) for b in boxes) == [
        0, 1, 2]
    # detect_and_crop is the path predict and serve use: the same boxes, one training crop each.
    found, crops = detect_and_crop(canvas, detector)
    assert found == boxes and len(crops) == 3
    assert all(crop.shape == (48, 48) and crop.dtype == np.uint8 for crop in crops)
    for box, crop in zip(found, crops, strict=True):
        np.testing.assert_array_equal(crop, crop_face(canvas, box))
    found, crops = detect_and_crop(canvas, detector, max_faces=2)
    assert found == boxes[:2] and len(crops) == 2
    # A colour photo gives the same boxes and crops as its gray version.
    colour_boxes, colour_crops = detect_and_crop(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), detector)
    assert colour_boxes == boxes
    np.testing.assert_array_equal(np.stack(colour_crops), np.stack(detect_and_crop(canvas, detector)[1]))


def test_largest_face_comes_first(raw_dir, detector):
    big = _jaffe(raw_dir, "KA.NE1.26.tiff")
    small = cv2.resize(_jaffe(raw_dir, "KL.NE1.155.tiff"), (180, 180), interpolation=cv2.INTER_AREA)
    canvas = np.full((256, 256 + 180), 128, np.uint8)
    canvas[:, :256] = big
    canvas[:180, 256:] = small
    boxes = detector.detect(canvas)
    assert len(boxes) == 2
    assert boxes[0].inside(Box(0, 0, 256, 256)) and boxes[1].inside(Box(256, 0, 180, 180))


def test_blank_image_has_no_face(detector):
    assert detector.detect(np.full((480, 640), 128, np.uint8)) == []
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []


def test_min_size_filters_small_faces(raw_dir):
    image = _jaffe(raw_dir, "KA.HA1.29.tiff")
    assert FaceDetector(min_size=220).detect(image) == []


def test_bad_detector_parameters_are_refused():
    with pytest.raises(ParamsError, match="scale_factor"):
        FaceDetector(scale_factor=1.0)
    with pytest.raises(ParamsError, match="min_neighbors"):
        FaceDetector(min_neighbors=-1)
    with pytest.raises(ParamsError, match="min_size"):
        FaceDetector(min_size=0)


def test_unloadable_models_are_named(tmp_path):
    missing = tmp_path / "nothing.xml"
    with pytest.raises(FeropsError, match="nothing.xml.*not found"):
        FaceDetector(cascade_path=missing)
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<not a cascade/>")
    with pytest.raises(FeropsError, match="bogus.xml.*could not load"):
        FaceDetector(cascade_path=bogus)
    with pytest.raises(FeropsError, match="yunet.onnx.*not found"):
        FaceDetector(dnn_model=tmp_path / "yunet.onnx")


def test_opencv_without_cascades_gets_a_clear_error(monkeypatch):
    # What OpenCV 5 wheels look like: an empty cv2.data and no CascadeClassifier.
    monkeypatch.setattr(cv2.data, "haarcascades", "")
    with pytest.raises(FeropsError, match="<5"):
        FaceDetector()
    monkeypatch.undo()
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(FeropsError, match="CascadeClassifier"):
        FaceDetector()


def test_default_margin_is_small():
    # The cascade box already frames a face like FER2013 does (see ferops.faces).
    assert 0.0 <= DEFAULT_MARGIN <= 0.05
