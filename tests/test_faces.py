from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from ferops.errors import FeropsError, ParamsError
from ferops.faces import (
    DEFAULT_MARGIN,
    EYE_DISTANCE,
    EYE_ROW,
    Box,
    Face,
    FaceDetector,
    align_face,
    center_crop,
    crop_box,
    crop_detected,
    crop_face,
    detect_and_crop,
    to_gray,
)


def _jaffe(raw_dir, name: str) -> np.ndarray:
    with Image.open(raw_dir / "jaffe" / name) as image:
        return np.array(image.convert("L"))


@pytest.fixture(scope="module")
def haar() -> FaceDetector:
    return FaceDetector("haar")


@pytest.fixture(scope="module")
def yunet(yunet_model) -> FaceDetector:
    return FaceDetector(model=yunet_model)


@pytest.fixture(scope="module", params=["yunet", "haar"])
def detector(request, yunet_model) -> FaceDetector:
    return FaceDetector(request.param, model=yunet_model if request.param == "yunet" else None)


def _roll(face: Face) -> float:
    (x1, y1), (x2, y2) = face.eyes()
    return float(np.degrees(np.arctan2(y2 - y1, x2 - x1)))


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


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


# --- the detectors, on real faces -----------------------------------------------------------

def test_haar_finds_a_real_face(raw_dir, haar):
    image = _jaffe(raw_dir, "KA.HA1.29.tiff")
    faces = haar.detect_faces(image)
    assert len(faces) == 1
    box = faces[0].box
    assert 120 <= box.w <= 200 and box.w == box.h
    cx, cy = box.center
    assert 96 <= cx <= 160 and 96 <= cy <= 176  # the portrait's face is central
    assert faces[0].score is None and faces[0].landmarks is None  # the cascade has neither
    # Colour input (as from cv2.imread / a webcam) gives the same box.
    assert haar.detect(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)) == [box]


def test_yunet_finds_a_real_face_with_its_landmarks(raw_dir, yunet):
    image = _jaffe(raw_dir, "KA.HA1.29.tiff")
    faces = yunet.detect_faces(image)
    assert len(faces) == 1
    face = faces[0]
    assert 0.9 <= face.score <= 1.0
    assert 110 <= face.box.w <= 200 and face.box.h > face.box.w  # hairline to chin: taller than wide
    (left_x, left_y), (right_x, right_y) = face.eyes()
    nose, mouth_right, mouth_left = face.landmarks[2:]
    # Anatomy, in image rows: eyes above the nose tip above the mouth corners, all inside the box.
    assert max(left_y, right_y) < nose[1] < min(mouth_right[1], mouth_left[1])
    assert left_x < nose[0] < right_x and abs(_roll(face)) < 5
    assert all(face.box.x <= x <= face.box.right and face.box.y <= y <= face.box.bottom
               for x, y in face.landmarks)


def test_three_faces_side_by_side_are_found_in_their_tiles(raw_dir, detector):
    names = ["KA.NE1.26.tiff", "KL.HA1.158.tiff", "YM.SU1.58.tiff"]
    tiles = [_jaffe(raw_dir, name) for name in names]
    canvas = np.hstack(tiles)
    boxes = detector.detect(canvas)
    assert len(boxes) == 3
    areas = [box.area for box in boxes]
    assert areas == sorted(areas, reverse=True)
    centres = sorted(int(box.center[0] // 256) for box in boxes)
    assert centres == [0, 1, 2]  # one face per portrait
    # detect_and_crop is the path predict and serve use: the same faces, one training crop each.
    found, crops = detect_and_crop(canvas, detector)
    assert [face.box for face in found] == boxes and len(crops) == 3
    assert all(crop.shape == (48, 48) and crop.dtype == np.uint8 for crop in crops)
    for face, crop in zip(found, crops, strict=True):
        np.testing.assert_array_equal(crop, crop_detected(canvas, face))
    found, crops = detect_and_crop(canvas, detector, max_faces=2)
    assert [face.box for face in found] == boxes[:2] and len(crops) == 2
    # A colour photo of the same pixels gives the same boxes and crops as its gray version.
    colour_faces, colour_crops = detect_and_crop(cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), detector)
    assert [face.box for face in colour_faces] == boxes
    np.testing.assert_array_equal(np.stack(colour_crops), np.stack(detect_and_crop(canvas, detector)[1]))


def test_largest_face_comes_first(raw_dir, detector):
    big = _jaffe(raw_dir, "KA.NE1.26.tiff")
    small = cv2.resize(_jaffe(raw_dir, "KL.NE1.155.tiff"), (180, 180), interpolation=cv2.INTER_AREA)
    canvas = np.full((256, 256 + 180), 128, np.uint8)
    canvas[:, :256] = big
    canvas[:180, 256:] = small
    boxes = detector.detect(canvas)
    assert len(boxes) == 2
    assert boxes[0].center[0] < 256 <= boxes[1].center[0]


def test_images_without_a_face_give_none(detector):
    assert detector.detect(np.full((480, 640), 128, np.uint8)) == []
    assert detector.detect(np.zeros((480, 640, 3), np.uint8)) == []
    # Images too small to hold a face: an answer, not an OpenCV error.
    assert detector.detect(np.zeros((1, 1), np.uint8)) == []
    assert detector.detect(np.zeros((5, 900, 3), np.uint8)) == []


def test_min_size_filters_small_faces(raw_dir, yunet_model):
    image = _jaffe(raw_dir, "KA.HA1.29.tiff")
    assert FaceDetector("haar", min_size=220).detect(image) == []
    assert FaceDetector(model=yunet_model, min_size=220).detect(image) == []
    assert len(FaceDetector(model=yunet_model, min_size=100).detect(image)) == 1


def test_a_face_larger_than_yunet_sees_is_found_on_a_scaled_copy(raw_dir, yunet_model):
    # A close-up portrait: the face is ~1,000 px wide, far above the ~300 px YuNet is trained for.
    portrait = cv2.resize(_jaffe(raw_dir, "KA.HA1.29.tiff"), (1600, 1600), interpolation=cv2.INTER_CUBIC)
    full_resolution = FaceDetector(model=yunet_model, detect_size=1600)
    assert full_resolution.detect(portrait) == []  # why photos are scaled down first
    faces = FaceDetector(model=yunet_model).detect_faces(portrait)
    assert len(faces) == 1
    # Boxes and landmarks come back in the photo's own pixels (6.25x the 256-px portrait).
    small = FaceDetector(model=yunet_model).detect_faces(_jaffe(raw_dir, "KA.HA1.29.tiff"))[0]
    assert abs(faces[0].box.w - 6.25 * small.box.w) < 0.1 * 6.25 * small.box.w
    assert abs(faces[0].landmarks[2][0] - 6.25 * small.landmarks[2][0]) < 30


def test_tiles_find_small_faces_in_a_large_photo(raw_dir, yunet_model):
    # A 4000x3000 "group photo": six real faces of ~90 px. Scaled to 640 px they are ~15 px, too
    # small for YuNet's score threshold; the tiled pass at twice the resolution finds them.
    canvas = np.full((3000, 4000), 110, np.uint8)
    spots = [(400, 600), (1300, 600), (2200, 600), (3100, 600), (800, 2000), (2600, 2000)]
    names = sorted(p.name for p in (raw_dir / "jaffe").glob("*.tiff"))[::36][:6]
    for (x, y), name in zip(spots, names, strict=True):
        face = cv2.resize(_jaffe(raw_dir, name), (160, 160), interpolation=cv2.INTER_AREA)
        canvas[y:y + 160, x:x + 160] = face
    assert FaceDetector(model=yunet_model, min_size=20).detect(canvas) == []
    found = FaceDetector(model=yunet_model, min_size=20, tiles=True).detect(canvas)
    assert len(found) == 6
    assert sorted((b.center[0] // 900, b.center[1] // 1000) for b in found) == sorted(
        ((x + 80) // 900, (y + 80) // 1000) for x, y in spots)


# --- aligned crops -----------------------------------------------------------------------------

def test_align_face_puts_the_eyes_where_fer2013_has_them():
    # Two bright dots as eyes on a dark image, the eye line tilted by 20 degrees.
    image = np.zeros((400, 400), np.uint8)
    left = np.array([150.0, 200.0])
    right = left + 80 * np.array([np.cos(0.35), np.sin(0.35)])
    for x, y in (left, right):
        cv2.circle(image, (round(x), round(y)), 4, 255, -1, lineType=cv2.LINE_AA)
    face = Face(Box(100, 150, 150, 180), 0.99, (tuple(right), tuple(left), (0, 0), (0, 0), (0, 0)))
    crop = align_face(image, face, size=200)
    blobs = cv2.connectedComponentsWithStats((crop > 100).astype(np.uint8))[3][1:]
    assert len(blobs) == 2
    (x1, y1), (x2, y2) = sorted(blobs.tolist())
    # Level, EYE_DISTANCE x the side apart, centred, on row EYE_ROW.
    assert abs(y1 - y2) < 1.5
    assert abs((x2 - x1) - EYE_DISTANCE * 200) < 1.5
    assert abs((x1 + x2) / 2 - 100) < 1.5 and abs((y1 + y2) / 2 - EYE_ROW * 200) < 1.5
    with pytest.raises(ValueError, match="landmarks"):
        align_face(image, Face(Box(0, 0, 10, 10)))


def test_aligned_crop_of_a_tilted_real_face_is_level(raw_dir, yunet):
    portrait = _jaffe(raw_dir, "KA.HA1.29.tiff")
    tilted = _rotate(portrait, 20)
    face = yunet.detect_faces(tilted)[0]
    assert abs(_roll(face)) > 10  # the detector sees the tilt

    def roll_in(crop: np.ndarray) -> float:
        big = cv2.copyMakeBorder(cv2.resize(crop, (192, 192)), 64, 64, 64, 64, cv2.BORDER_REPLICATE)
        return _roll(yunet.detect_faces(big)[0])

    box_crop = crop_detected(tilted, face, align=False)
    aligned = crop_detected(tilted, face)
    assert abs(roll_in(box_crop)) > 10
    assert abs(roll_in(aligned)) < 8
    # The aligned crop of the tilted photo looks like the aligned crop of the upright one.
    upright = crop_detected(portrait, yunet.detect_faces(portrait)[0])
    def similarity(crop: np.ndarray) -> float:
        return float(np.corrcoef(crop.ravel(), upright.ravel())[0, 1])

    assert similarity(aligned) > similarity(box_crop)


# --- configuration errors ----------------------------------------------------------------------

def test_bad_detector_parameters_are_refused(yunet_model):
    with pytest.raises(ParamsError, match="detector must be one of yunet, haar"):
        FaceDetector("mtcnn")
    with pytest.raises(ParamsError, match="scale_factor"):
        FaceDetector("haar", scale_factor=1.0)
    with pytest.raises(ParamsError, match="min_neighbors"):
        FaceDetector("haar", min_neighbors=-1)
    with pytest.raises(ParamsError, match="min_size"):
        FaceDetector("haar", min_size=0)
    with pytest.raises(ParamsError, match="score_threshold"):
        FaceDetector(model=yunet_model, score_threshold=1.5)
    with pytest.raises(ParamsError, match="detect_size"):
        FaceDetector(model=yunet_model, detect_size=10)


def test_unloadable_models_are_named(tmp_path):
    missing = tmp_path / "nothing.xml"
    with pytest.raises(FeropsError, match="nothing.xml.*not found"):
        FaceDetector("haar", model=missing)
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<not a cascade/>")
    with pytest.raises(FeropsError, match="bogus.xml.*could not load"):
        FaceDetector("haar", model=bogus)
    with pytest.raises(FeropsError, match="yunet.onnx.*not found"):
        FaceDetector(model=tmp_path / "yunet.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07 not a network" * 100)
    with pytest.raises(FeropsError, match="garbage.onnx.*could not load"):
        FaceDetector(model=garbage)


def test_opencv_without_cascades_gets_a_clear_error(monkeypatch):
    # What OpenCV 5 wheels look like: an empty cv2.data and no CascadeClassifier.
    monkeypatch.setattr(cv2.data, "haarcascades", "")
    with pytest.raises(FeropsError, match="YuNet detector"):
        FaceDetector("haar")
    monkeypatch.undo()
    monkeypatch.delattr(cv2, "CascadeClassifier")
    with pytest.raises(FeropsError, match="CascadeClassifier"):
        FaceDetector("haar")


def test_default_margin_is_small():
    # The cascade box already frames a face like FER2013 does (see ferops.faces).
    assert 0.0 <= DEFAULT_MARGIN <= 0.05
