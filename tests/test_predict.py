"""`ferops predict` on real faces: photos with 1-3 faces, a folder with a corrupt file, video, webcam loop,
and images that are empty or far too large."""

from __future__ import annotations

import csv
import json
import logging
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO_ROOT, ckplus_faces, jaffe_paths, multi_face_canvas
from ferops.cli import EXIT_SOME_FAILED, main
from ferops.detector_model import YUNET_FILE, YUNET_SHA256
from ferops.faces import FaceDetector
from ferops.inference import load_classifier
from ferops.media import DEFAULT_MAX_PIXELS
from ferops.output import csv_header
from ferops.predict import process_stream
from ferops.predictor import Predictor, annotate

# The project's classes (params.yaml), which the trained test model carries.
CLASSES = tuple(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())["base"]["classes"])
FEROPS = shutil.which("ferops", path=str(Path(sys.executable).parent)) or "ferops"

FACE_KEYS = {"source", "frame", "face", "box", "expression", "confidence", "probabilities", "detector_score",
             "landmarks"}


@pytest.fixture(scope="module")
def predictor(onnx_model):
    # ONNX Runtime: fastest to load and run; Keras and the registry forms are covered below.
    return Predictor(load_classifier(onnx_model), FaceDetector())


def assert_on_tiles(boxes, tiles):
    """Each box is centred in a different tile and covers a face-sized part of it."""
    hit = set()
    for box in boxes:
        cx, cy = box.center
        inside = [i for i, (x, y, w, h) in enumerate(tiles) if x <= cx < x + w and y <= cy < y + h]
        assert len(inside) == 1, f"box {box} is not on a face tile {tiles}"
        x, y, w, h = tiles[inside[0]]
        assert 0.2 * w * h <= box.area <= 1.2 * w * h, f"box {box} is not face-sized for {tiles[inside[0]]}"
        hit.add(inside[0])
    assert len(hit) == len(tiles)


def assert_face_record(record, classes=CLASSES):
    assert set(record) == FACE_KEYS
    assert set(record["box"]) == {"x", "y", "w", "h"}
    assert list(record["probabilities"]) == list(classes)
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert record["expression"] == max(record["probabilities"], key=record["probabilities"].get)
    assert record["confidence"] == record["probabilities"][record["expression"]]
    # YuNet (the default detector): its score and five named landmarks, inside the face box.
    assert 0.5 <= record["detector_score"] <= 1.0
    assert list(record["landmarks"]) == ["right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left"]
    box = record["box"]
    for point in record["landmarks"].values():
        assert box["x"] <= point["x"] <= box["x"] + box["w"] and box["y"] <= point["y"] <= box["y"] + box["h"]


@pytest.mark.parametrize("count", [1, 2, 3])
def test_multi_face_photos(predictor, raw_dir, count):
    for offset in (0, 50, 120):
        canvas, tiles = multi_face_canvas(raw_dir, count, offset=offset)
        photo = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)  # a colour photo, as cameras give
        faces = predictor.predict(photo, source="canvas.png")
        assert len(faces) == count, f"offset {offset}: found {len(faces)} faces, expected {count}"
        assert_on_tiles([face.box for face in faces], tiles)
        for face in faces:
            assert_face_record(face.to_dict())


def test_ckplus_faces_are_found(predictor, raw_dir):
    for face in ckplus_faces(raw_dir, 12):
        # CK+48 crops fill their frame: enlarge and add a border so there is a face to detect.
        photo = cv2.copyMakeBorder(cv2.resize(face, (192, 192), interpolation=cv2.INTER_LINEAR),
                                   48, 48, 48, 48, cv2.BORDER_REPLICATE)
        found = predictor.predict(photo)
        assert len(found) == 1
        assert_on_tiles([found[0].box], [(48, 48, 192, 192)])


def test_image_without_a_face_is_an_empty_result(predictor):
    rng = np.random.default_rng(0)
    assert predictor.predict(np.full((480, 640, 3), 128, np.uint8)) == []
    assert predictor.predict(rng.integers(0, 256, (240, 320), dtype=np.uint8)) == []


def make_folder(raw_dir, root):
    """3 JAFFE photos (PNG/JPEG), a 2-face photo in a subfolder, a corrupt JPEG and a text file."""
    root.mkdir()
    paths = jaffe_paths(raw_dir)
    for i, path in enumerate(paths[:3]):
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(root / f"face{i}.{'png' if i % 2 else 'jpg'}"), image)
    (root / "sub").mkdir()
    canvas, tiles = multi_face_canvas(raw_dir, 2, offset=70)
    cv2.imwrite(str(root / "sub" / "two.png"), canvas)
    good = (root / "face0.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(good[: len(good) // 3][:20] + b"\x00" * 200)
    (root / "notes.txt").write_text("not an image, skipped by suffix")
    return tiles


def test_cli_folder_with_a_corrupt_file(raw_dir, onnx_model, tmp_path, caplog):
    tiles = make_folder(raw_dir, tmp_path / "photos")
    out, annotated = tmp_path / "out.json", tmp_path / "annotated"
    status = main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "-o", str(out),
                   "--annotate", str(annotated)])
    assert status == EXIT_SOME_FAILED
    assert "corrupt.jpg: not an image OpenCV can decode" in caplog.text
    document = json.loads(out.read_text())
    assert document["backend"] == "onnxruntime" and document["classes"] == list(CLASSES)
    by_name = {entry["source"].split("/")[-1]: entry for entry in document["inputs"]}
    assert sorted(by_name) == ["corrupt.jpg", "face0.jpg", "face1.png", "face2.jpg", "two.png"]
    assert document["failed"] == 1 and by_name["corrupt.jpg"]["error"]
    assert [by_name[f"face{i}.{'png' if i % 2 else 'jpg'}"]["faces"] for i in range(3)] == [1, 1, 1]
    assert by_name["two.png"]["faces"] == 2
    assert len(document["faces"]) == 5
    for record in document["faces"]:
        assert_face_record(record)
        assert record["frame"] is None
    two = [r["box"] for r in document["faces"] if r["source"].endswith("two.png")]
    assert all(any(t[0] <= b["x"] + b["w"] / 2 < t[0] + t[2] for t in tiles) for b in two)
    # Annotated copies keep the folder structure and have coloured boxes on gray photos.
    drawn = cv2.imread(str(annotated / "photos" / "sub" / "two.png"))
    assert drawn is not None and drawn.shape == (480, 640, 3)
    spread = drawn.max(axis=2).astype(int) - drawn.min(axis=2)
    assert (spread > 60).sum() > 500
    assert not (annotated / "photos" / "corrupt.jpg").exists()

    # CSV: one row per face, every class a column.
    csv_out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "-o", str(csv_out),
                 "--no-progress"]) == EXIT_SOME_FAILED
    rows = list(csv.DictReader(csv_out.open()))
    assert list(rows[0]) == csv_header(CLASSES) and len(rows) == 5
    assert all(abs(sum(float(row[name]) for name in CLASSES) - 1) < 1e-4 for row in rows)


def write_video(raw_dir, path, frames=10):
    """A short real video: one JAFFE face drifting across a 320x240 frame, 10 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    assert writer.isOpened()
    paths = jaffe_paths(raw_dir)
    for i in range(frames):
        face = cv2.resize(cv2.imread(str(paths[i]), cv2.IMREAD_GRAYSCALE), (160, 160))
        frame = np.full((240, 320), 120, np.uint8)
        frame[40:200, 20 + 10 * i:180 + 10 * i] = face
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    return [(20 + 10 * i, 40, 160, 160) for i in range(frames)]


def test_cli_video(raw_dir, onnx_model, tmp_path):
    tiles = write_video(raw_dir, tmp_path / "clip.mp4")
    out, annotated = tmp_path / "clip.json", tmp_path / "annotated"
    assert main(["predict", str(tmp_path / "clip.mp4"), "--model", str(onnx_model), "-o", str(out),
                 "--annotate", str(annotated)]) == 0
    document = json.loads(out.read_text())
    assert document["inputs"][0]["kind"] == "video" and document["inputs"][0]["frames"] == 10
    assert [face["frame"] for face in document["faces"]] == list(range(10))
    for record in document["faces"]:
        assert_face_record(record)
        box = record["box"]
        x, y, w, h = tiles[record["frame"]]
        assert x <= box["x"] + box["w"] / 2 < x + w and y <= box["y"] + box["h"] / 2 < y + h
    capture = cv2.VideoCapture(str(annotated / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    capture.release()

    assert main(["predict", str(tmp_path / "clip.mp4"), "--model", str(onnx_model), "-o", str(out),
                 "--every", "3"]) == 0
    assert [face["frame"] for face in json.loads(out.read_text())["faces"]] == [0, 3, 6, 9]


def test_live_loop_draws_fps_and_stops_when_asked(raw_dir, predictor, tmp_path):
    """The webcam's frame loop (chunk 1, FPS overlay, window callback), fed from a real video."""
    write_video(raw_dir, tmp_path / "clip.mp4")
    capture = cv2.VideoCapture(str(tmp_path / "clip.mp4"))
    shown = []

    def show(frame):
        shown.append(frame)
        return len(shown) < 4  # the user presses q on the 4th frame

    def frames():
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame

    result = process_stream(frames(), predictor, "camera:0", "camera", chunk=1, show=show, fps_overlay=True,
                            annotate_to=tmp_path / "live.mp4")
    capture.release()
    assert len(shown) == 4 and result.frames == 4 and len({f.frame for f in result.faces}) == 4
    # The FPS text is drawn in green in the top-left corner.
    corner = shown[-1][:40, :120].astype(int)
    assert ((corner[..., 1] > 200) & (corner[..., 0] < 80) & (corner[..., 2] < 80)).sum() > 20
    assert result.annotated and cv2.VideoCapture(result.annotated).isOpened()


def test_camera_that_cannot_be_opened(onnx_model, caplog):
    assert main(["predict", "--camera", "57", "--headless", "--model", str(onnx_model)]) == 1
    assert "camera 57: could not be opened" in caplog.text


def test_cli_model_forms(raw_dir, usage_model, onnx_model, usage_registry, trained_run, tmp_path):
    uri, name = usage_registry
    canvas, tiles = multi_face_canvas(raw_dir, 2, offset=30)
    cv2.imwrite(str(tmp_path / "two.png"), canvas)
    run_id = json.loads(trained_run.receipt.read_text())["run_id"]
    results = {}
    for form in (str(usage_model), str(onnx_model), f"models:/{name}@champion", f"runs:/{run_id}/model"):
        out = tmp_path / "out.json"
        assert main(["predict", str(tmp_path / "two.png"), "--model", form, "--tracking-uri", uri,
                     "-o", str(out)]) == 0, form
        document = json.loads(out.read_text())
        assert document["model"] == form and len(document["faces"]) == 2
        results[form] = np.array([list(f["probabilities"].values()) for f in document["faces"]])
    reference = results[str(usage_model)]
    for form, probabilities in results.items():
        np.testing.assert_allclose(probabilities, reference, atol=1e-4, err_msg=form)


def test_cli_flip_tta_by_default_and_no_tta_flag(raw_dir, usage_model, tmp_path):
    canvas, tiles = multi_face_canvas(raw_dir, 2, offset=30)
    cv2.imwrite(str(tmp_path / "two.png"), canvas)
    documents = {}
    for flags in ([], ["--no-tta"]):
        out = tmp_path / f"out{len(flags)}.json"
        assert main(["predict", str(tmp_path / "two.png"), "--model", str(usage_model), "-o", str(out),
                     *flags]) == 0
        documents[len(flags)] = json.loads(out.read_text())
    assert documents[0]["tta"] == "flip" and documents[1]["tta"] == "none"
    flip, plain = (np.array([list(f["probabilities"].values()) for f in documents[key]["faces"]])
                   for key in (0, 1))
    # The default averages each face with its mirror image: the plain model on the mirrored crops
    # gives the other half.
    classifier = load_classifier(usage_model, tta="none")
    crops = Predictor(classifier, FaceDetector()).crops(canvas)[1]
    mirrored = classifier.classify(np.stack(crops)[:, :, ::-1])
    np.testing.assert_allclose(plain, classifier.classify(crops), atol=1e-5)
    np.testing.assert_allclose(flip, (plain + mirrored) / 2, atol=1e-5)
    # ... and the mirror view changes the answer (by far more than the tolerance above).
    assert np.abs(flip - plain).max() > 1e-4


def test_cli_clear_errors(onnx_model, usage_registry, tmp_path, caplog):
    uri, name = usage_registry
    assert main(["predict", str(tmp_path), "--model", f"models:/{name}@nosuchalias",
                 "--tracking-uri", uri]) == 1
    assert "alias 'nosuchalias'" in caplog.text
    assert main(["predict", "--model", str(onnx_model)]) == 1
    assert "nothing to do" in caplog.text
    assert main(["predict", str(tmp_path / "missing.jpg"), "--model", str(onnx_model),
                 "-o", str(tmp_path / "o.json")]) == EXIT_SOME_FAILED
    error = json.loads((tmp_path / "o.json").read_text())["inputs"][0]["error"]
    assert error.endswith("no such file or folder")


def test_annotate_leaves_the_input_alone(predictor, raw_dir):
    canvas, _ = multi_face_canvas(raw_dir, 1)
    before = canvas.copy()
    drawn = annotate(canvas, predictor.predict(canvas), CLASSES, fps=12.5)
    np.testing.assert_array_equal(canvas, before)
    assert drawn.shape == (480, 640, 3)
    spread = drawn.max(axis=2).astype(int) - drawn.min(axis=2)
    assert (spread > 60).sum() > 500  # a coloured box and label on the gray photo
    corner = drawn[:40, :120].astype(int)
    assert ((corner[..., 1] > 200) & (corner[..., 0] < 80) & (corner[..., 2] < 80)).sum() > 20  # FPS


# --- images that are empty or far too large ----------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def huge_png(face: np.ndarray, side: int = 20_000, at: int = 1000) -> bytes:
    """A valid side x side flat gray PNG with ``face`` pasted in: well under 1 MB, side**2 pixels decoded.

    The rows are compressed as they are made: cv2.imencode would need the whole 400 MB image first
    (and 8 s to compress it).
    """
    compressor = zlib.compressobj(9)
    blank = b"\0" * (side + 1)  # filter byte 0, then a row of black pixels
    parts = []

    def blank_rows(count: int) -> None:
        for start in range(0, count, 100):
            parts.append(compressor.compress(blank * min(100, count - start)))

    blank_rows(at)
    for row in face:
        parts.append(compressor.compress(b"\0" + bytes(at) + row.tobytes() + bytes(side - at - len(row))))
    blank_rows(side - at - len(face))
    parts.append(compressor.flush())
    return _png(side, side, b"".join(parts))


def header_only_png(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but whose pixel data is a few bytes (truncated)."""
    return _png(width, height, zlib.compress(b"\0" * 64))


def absurd_jpeg(face: np.ndarray, width: int, height: int) -> bytes:
    """A real small JPEG whose frame header (SOF0) is rewritten to claim width x height."""
    data = bytearray(cv2.imencode(".jpg", face)[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def run_measuring_memory(command: list[str], peak_file: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command`` as the only child of a fresh Python; return its result and its peak RSS in MiB."""
    parent = ("import resource, subprocess, sys\n"
              "result = subprocess.run(sys.argv[2:], capture_output=True, text=True)\n"
              "sys.stdout.write(result.stdout); sys.stderr.write(result.stderr)\n"
              "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
              "sys.exit(result.returncode)\n")
    result = subprocess.run([sys.executable, "-c", parent, str(peak_file), *command], capture_output=True,
                            text=True, timeout=300)
    return result, int(peak_file.read_text()) / 1024  # ru_maxrss is in KiB on Linux


def test_huge_and_absurd_images_are_refused_with_little_memory(raw_dir, onnx_model, tmp_path):
    """The 20000x20000 PNG that once took `ferops predict` past 8 GB, and headers claiming absurd sizes."""
    face = cv2.imread(str(jaffe_paths(raw_dir)[3]), cv2.IMREAD_GRAYSCALE)
    inputs = {"huge.png": huge_png(face), "absurd.png": header_only_png(100_000, 100_000),
              "tall.png": header_only_png(7_000, 7_000), "absurd.jpg": absurd_jpeg(face, 30_000, 30_000),
              "empty.jpg": b"", "face.png": cv2.imencode(".png", face)[1].tobytes()}
    for name, data in inputs.items():
        (tmp_path / name).write_bytes(data)
    assert (tmp_path / "huge.png").stat().st_size < 1_000_000
    out = tmp_path / "out.json"
    result, peak_mib = run_measuring_memory(
        [FEROPS, "predict", *(str(tmp_path / name) for name in inputs), "--model", str(onnx_model),
         "-o", str(out), "--no-progress"], tmp_path / "peak")
    assert result.returncode == EXIT_SOME_FAILED, result.stderr
    assert peak_mib < 512, f"ferops predict peaked at {peak_mib:.0f} MiB"
    errors = {Path(entry["source"]).name: entry["error"] for entry in json.loads(out.read_text())["inputs"]}
    limit = f"the limit is {DEFAULT_MAX_PIXELS:,} pixels"
    for name in ("huge.png", "absurd.png", "tall.png", "absurd.jpg"):
        assert errors[name].startswith(f"{tmp_path / name}: image too large"), errors[name]
        assert limit in errors[name] and "--max-pixels" in errors[name]
        assert f"skipped: {tmp_path / name}: image too large" in result.stderr
    assert "7000x7000 is 49,000,000 pixels" in errors["tall.png"]
    assert errors["empty.jpg"] == f"{tmp_path / 'empty.jpg'}: empty file (0 bytes)"
    assert errors["face.png"] is None  # the other inputs are processed as usual
    assert len(json.loads(out.read_text())["faces"]) == 1


def test_max_pixels_option(raw_dir, onnx_model, tmp_path, caplog):
    face = cv2.imread(str(jaffe_paths(raw_dir)[3]), cv2.IMREAD_GRAYSCALE)  # 256x256: 65,536 pixels
    cv2.imwrite(str(tmp_path / "face.png"), face)
    write_video(raw_dir, tmp_path / "clip.mp4", frames=3)  # 320x240: 76,800 pixels a frame
    out = tmp_path / "out.json"
    both = [str(tmp_path / "face.png"), str(tmp_path / "clip.mp4"), "--model", str(onnx_model),
            "-o", str(out)]
    assert main(["predict", *both, "--max-pixels", "60000"]) == EXIT_SOME_FAILED
    errors = [entry["error"] for entry in json.loads(out.read_text())["inputs"]]
    assert "256x256 is 65,536 pixels" in errors[0] and "the limit is 60,000 pixels" in errors[0]
    assert "frames are 320x240" in errors[1] and "the limit is 60,000 pixels" in errors[1]
    assert main(["predict", *both, "--max-pixels", "80000"]) == 0
    for wrong, message in (("0", "--max-pixels must be >= 1"), ("200000000", "--max-pixels must be at most")):
        assert main(["predict", str(tmp_path / "face.png"), "--model", str(onnx_model), "--max-pixels",
                     wrong]) == 1
        assert message in caplog.text



def crowd_photo(raw_dir, side: int = 120, columns: int = 12, rows: int = 10) -> np.ndarray:
    """A class photo of 120 real faces: JAFFE portraits in a 12 x 10 grid, 1440 x 1200 pixels."""
    paths = jaffe_paths(raw_dir)
    canvas = np.full((rows * side, columns * side), 128, np.uint8)
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        face = cv2.imread(str(paths[index % len(paths)]), cv2.IMREAD_GRAYSCALE)
        canvas[row * side:(row + 1) * side, column * side:(column + 1) * side] = cv2.resize(
            face, (side, side), interpolation=cv2.INTER_AREA)
    return canvas


def test_tiny_huge_and_crowded_photos_get_bounded_answers(raw_dir, onnx_model, tmp_path):
    """A 1x1 image, a 40-megapixel photo and a photo of 120 faces: answers, in bounded memory."""
    face = cv2.imread(str(jaffe_paths(raw_dir)[3]), cv2.IMREAD_GRAYSCALE)
    big = np.full((5160, 7750, 3), 90, np.uint8)  # 39,990,000 pixels: just under the default limit
    big[1500:3500, 3000:5000] = cv2.cvtColor(cv2.resize(face, (2000, 2000), interpolation=cv2.INTER_CUBIC),
                                             cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    del big
    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((1, 1), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "crowd.png"), crowd_photo(raw_dir))
    out = tmp_path / "out.json"
    result, peak_mib = run_measuring_memory(
        [FEROPS, "predict", *(str(tmp_path / name) for name in ("tiny.png", "big.jpg", "crowd.png")),
         "--model", str(onnx_model), "-o", str(out), "--no-progress"], tmp_path / "peak")
    assert result.returncode == 0, result.stderr
    # The 40-megapixel photo decoded (120 MB in colour) plus the model: well under a gigabyte.
    assert peak_mib < 1024, f"ferops predict peaked at {peak_mib:.0f} MiB"
    document = json.loads(out.read_text())
    faces = {name: [f for f in document["faces"] if f["source"].endswith(name)]
             for name in ("tiny.png", "big.jpg", "crowd.png")}
    assert faces["tiny.png"] == []
    assert len(faces["big.jpg"]) == 1  # a 1,000-pixel face, found on the scaled copy
    box = faces["big.jpg"][0]["box"]
    assert 3000 <= box["x"] + box["w"] / 2 <= 5000 and 1500 <= box["y"] + box["h"] / 2 <= 3500
    assert len(faces["crowd.png"]) >= 100
    assert all(0 <= f["box"]["x"] + f["box"]["w"] / 2 < 1440 for f in faces["crowd.png"])


def test_cli_haar_detector_and_bad_detector_models(raw_dir, onnx_model, yunet_model, tmp_path, monkeypatch,
                                                   caplog):
    make_folder(raw_dir, tmp_path / "photos")
    (tmp_path / "photos" / "corrupt.jpg").unlink()
    out = tmp_path / "haar.json"
    assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "--detector", "haar",
                 "-o", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["detector"] == "haar" and len(document["faces"]) == 5
    assert all(f["detector_score"] is None and f["landmarks"] is None for f in document["faces"])

    # A model file that is not a YuNet network, given explicitly: named, nothing written.
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(yunet_model.read_bytes()[:50_000])
    out.unlink()
    assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "--detector-model",
                 str(bogus), "-o", str(out)]) == 1
    assert f"{bogus}: OpenCV could not load this file as a FaceDetectorYN" in caplog.text
    assert not out.exists()
    # The default model, corrupted in the user cache, outside any checkout: refused with its checksum.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / YUNET_FILE).write_bytes(yunet_model.read_bytes()[:50_000])
    monkeypatch.setenv("FEROPS_CACHE_DIR", str(cache))
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model)]) == 1
    assert f"{cache / YUNET_FILE}: not the expected face-detector model" in caplog.text
    assert f"expected {YUNET_SHA256}" in caplog.text


def test_cli_predict_log_records_every_face(raw_dir, onnx_model, tmp_path, caplog):
    from ferops.prediction_log import read_log

    make_folder(raw_dir, tmp_path / "photos")
    (tmp_path / "photos" / "corrupt.jpg").unlink()
    log_uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    out = tmp_path / "out.json"
    with caplog.at_level(logging.INFO, logger="ferops.cli"):
        assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "-o", str(out), "--log",
                     "--log-uri", log_uri, "--store-faces"]) == 0
    faces = json.loads(out.read_text())["faces"]
    rows = read_log(log_uri)
    assert len(rows) == len(faces) == 5
    assert sorted(row["source"] for row in rows) == sorted(face["source"] for face in faces)
    assert {row["model"] for row in rows} == {str(onnx_model)}
    assert {row["model_run"] for row in rows} == {None}  # a file has no MLflow run
    assert "5 face(s) logged, 0 failed" in caplog.text
    # The log's options without the log are a mistake, not silently ignored.
    assert main(["predict", str(tmp_path / "photos"), "--model", str(onnx_model), "--store-faces"]) == 1
    assert "--store-faces need the prediction log" in caplog.text
