from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

from ferops.errors import DataError, ParamsError
from ferops.external import (
    CKPLUS_LABELS,
    CONTEMPT,
    JAFFE_FACE_FRACTION,
    JAFFE_LABELS,
    load_ckplus,
    load_jaffe,
    parse_jaffe_name,
    plot_jaffe_crops,
    read_gray,
)
from ferops.faces import DEFAULT_MARGIN, FaceDetector, center_crop, crop_detected
from ferops.io import load_arrays, save_arrays

CKPLUS_COUNTS = {"anger": 135, "contempt": 54, "disgust": 177, "fear": 75, "happy": 207,
                 "sadness": 84, "surprise": 249}
JAFFE_COUNTS = {"AN": 30, "DI": 29, "FE": 32, "HA": 31, "NE": 30, "SA": 31, "SU": 30}
JAFFE_SUBJECTS = {"KA": 23, "KL": 22, "KM": 22, "KR": 20, "MK": 21, "NA": 21, "NM": 20,
                  "TM": 21, "UY": 21, "YM": 22}


def _link_tree(source, target, skip=(), names=None):
    """Mirror a real dataset folder with symlinks (fast; the real files stay untouched)."""
    target.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        if entry.name in skip or (names is not None and entry.name not in names):
            continue
        os.symlink(entry, target / entry.name)
    return target


# --- CK+48 -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckplus(raw_dir):
    return load_ckplus(raw_dir / "ckplus")


def test_ckplus_counts_labels_and_metadata(ckplus):
    assert ckplus["images"].shape == (981, 48, 48) and ckplus["images"].dtype == np.uint8
    assert ckplus["label"].dtype == np.int8
    emotions = [name.split("/")[0] for name in ckplus["file"]]
    assert {e: emotions.count(e) for e in CKPLUS_COUNTS} == CKPLUS_COUNTS
    # Labels follow FER2013 (0 angry ... 5 surprise), contempt keeps its own index 7.
    np.testing.assert_array_equal(ckplus["label"], [CKPLUS_LABELS[e] for e in emotions])
    counts = np.bincount(ckplus["label"], minlength=8)
    assert counts.tolist() == [135, 177, 75, 207, 84, 249, 0, 54]
    assert CKPLUS_LABELS["contempt"] == CONTEMPT == 7
    assert len(np.unique(ckplus["subject"])) == 118
    assert len(set(zip(ckplus["subject"], ckplus["sequence"], strict=True))) == 327
    assert ckplus["file"][0] == "anger/S010_004_00000017.png"
    assert ckplus["subject"][0] == "S010" and ckplus["sequence"][0] == 4
    assert ckplus["frame"][0] == 17
    assert list(ckplus["file"]) == sorted(ckplus["file"])


def test_ckplus_arrays_save_without_pickle(ckplus, raw_dir, tmp_path):
    assert {a.dtype.kind for a in ckplus.values()} <= {"u", "i", "U"}
    assert (ckplus["subject"].dtype, ckplus["sequence"].dtype, ckplus["frame"].dtype) == (
        np.dtype("<U4"), np.int16, np.int32)
    save_arrays(tmp_path / "ckplus.npz", ckplus)
    loaded = load_arrays(tmp_path / "ckplus.npz")  # allow_pickle=False
    for name, array in ckplus.items():
        np.testing.assert_array_equal(loaded[name], array)
    # The pixels are the PNGs' own.
    with Image.open(raw_dir / "ckplus" / ckplus["file"][500]) as image:
        np.testing.assert_array_equal(ckplus["images"][500], np.array(image))


def test_ckplus_missing_emotion_folder_is_named(raw_dir, tmp_path):
    root = _link_tree(raw_dir / "ckplus", tmp_path / "ckplus", skip=["fear"])
    with pytest.raises(DataError, match="fear: CK\\+48 emotion folder missing") as error:
        load_ckplus(root)
    assert str(root / "fear") in str(error.value)
    assert "<emotion>/S<subject>_<sequence>_<frame>.png" in str(error.value)


def test_ckplus_missing_directory(tmp_path):
    with pytest.raises(DataError, match="CK\\+48 directory not found"):
        load_ckplus(tmp_path / "nowhere")


def test_ckplus_unexpected_folder_is_refused(raw_dir, tmp_path):
    root = _link_tree(raw_dir / "ckplus", tmp_path / "ckplus")
    (root / "neutral").mkdir()
    with pytest.raises(DataError, match="neutral: unexpected folder"):
        load_ckplus(root)


def _ckplus_with_own_fear(raw_dir, tmp_path):
    root = _link_tree(raw_dir / "ckplus", tmp_path / "ckplus", skip=["fear"])
    shutil.copytree(raw_dir / "ckplus" / "fear", root / "fear")
    return root, sorted((root / "fear").glob("*.png"))[3]


def test_ckplus_wrong_size_image_is_named(raw_dir, tmp_path):
    root, victim = _ckplus_with_own_fear(raw_dir, tmp_path)
    with Image.open(victim) as image:
        image.resize((64, 64)).save(victim)
    with pytest.raises(DataError, match=f"{victim.name}: image is 64x64, expected 48x48"):
        load_ckplus(root)


def test_ckplus_unreadable_image_is_named(raw_dir, tmp_path):
    root, victim = _ckplus_with_own_fear(raw_dir, tmp_path)
    victim.write_bytes(victim.read_bytes()[:40])  # truncated PNG
    with pytest.raises(DataError, match=f"{victim.name}: not a readable image"):
        load_ckplus(root)


def test_ckplus_bad_file_name_is_named(raw_dir, tmp_path):
    root, victim = _ckplus_with_own_fear(raw_dir, tmp_path)
    victim.rename(victim.with_name("subject10.png"))
    with pytest.raises(DataError, match="subject10.png: unexpected CK\\+48 file name"):
        load_ckplus(root)


# --- JAFFE -----------------------------------------------------------------------------------

def test_parse_jaffe_name():
    assert parse_jaffe_name("KA.AN1.39.tiff") == ("KA", "AN")
    assert parse_jaffe_name("YM.NE3.51.tiff") == ("YM", "NE")
    with pytest.raises(DataError, match="KA.XX1.39.tiff: unknown JAFFE expression code 'XX'"):
        parse_jaffe_name("KA.XX1.39.tiff")
    with pytest.raises(DataError, match="portrait.tiff: unexpected JAFFE file name"):
        parse_jaffe_name("portrait.tiff")


def test_palette_tiffs_convert_losslessly(raw_dir):
    path = raw_dir / "jaffe" / "KA.AN1.39.tiff"
    with Image.open(path) as image:
        assert image.mode == "P"
        palette = np.array(image.getpalette()[:768]).reshape(-1, 3)
        indices = np.array(image)
    np.testing.assert_array_equal(palette, np.repeat(np.arange(256)[:, None], 3, axis=1))
    gray = read_gray(path)
    assert gray.dtype == np.uint8 and gray.shape == (256, 256)
    np.testing.assert_array_equal(gray, indices)  # identity palette: index == gray level


@pytest.fixture(scope="module")
def jaffe(raw_dir):
    return load_jaffe(raw_dir / "jaffe", FaceDetector(), margin=DEFAULT_MARGIN, min_face_size=80)


@pytest.mark.slow
def test_jaffe_all_faces_labels_and_detection(jaffe):
    arrays, report = jaffe
    assert arrays["images"].shape == (213, 48, 48) and arrays["images"].dtype == np.uint8
    codes = {index: code for code, index in JAFFE_LABELS.items()}
    labels = [codes[int(label)] for label in arrays["label"]]
    assert {code: labels.count(code) for code in JAFFE_COUNTS} == JAFFE_COUNTS
    assert report["per_expression"] == JAFFE_COUNTS
    assert report["per_subject"] == JAFFE_SUBJECTS
    # Labels agree with the expression code in each file name.
    assert all(name.split(".")[1][:2] == code for name, code in zip(arrays["file"], labels,
                                                                    strict=True))
    assert list(arrays["file"]) == sorted(arrays["file"])
    assert arrays["subject"][0] == "KA" and arrays["file"][0] == "KA.AN1.39.tiff"
    assert report["files"] == report["images"] == 213
    # Detection rate: YuNet finds every JAFFE face (213/213 with OpenCV 4.14).
    assert report["detected"] >= 0.95 * 213
    assert report["detected"] == int(arrays["detected"].sum()) == 213
    assert report["not_detected"] == [] and report["multiple_faces"] == []


@pytest.mark.slow
def test_jaffe_face_boxes_are_central_and_crops_match(jaffe, raw_dir):
    arrays, _ = jaffe
    boxes = arrays["box"][arrays["detected"]]
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    # The portraits are centred: every face centre lies in the middle third-ish of 256 px.
    assert (centres >= 0.35 * 256).all() and (centres <= 0.65 * 256).all()
    assert (boxes[:, 2] >= 100).all() and (boxes[:, 2] <= 200).all()
    detector = FaceDetector()
    for index in (0, 100, 212):
        gray = read_gray(raw_dir / "jaffe" / arrays["file"][index])
        face = detector.detect_faces(gray)[0]
        assert face.box.as_tuple() == tuple(arrays["box"][index])
        # The stage's crop is the aligned one that predict and serve make.
        np.testing.assert_array_equal(arrays["images"][index], crop_detected(gray, face))
    # Crops are faces, not flat background: clear contrast in every one.
    assert (arrays["images"].reshape(213, -1).std(axis=1) > 20).all()


def test_jaffe_no_face_center_crop_vs_drop(raw_dir, tmp_path):
    # A minimum face size of 160 px rejects about 9 of KA's 23 Haar faces (147-168 px).
    root = _link_tree(raw_dir / "jaffe", tmp_path / "jaffe",
                      names={p.name for p in (raw_dir / "jaffe").glob("KA.*")})
    detector = FaceDetector("haar")
    kept, kept_report = load_jaffe(root, detector, margin=0.02, min_face_size=160)
    dropped, drop_report = load_jaffe(root, detector, margin=0.02, min_face_size=160,
                                      on_no_face="drop")
    missed = kept_report["not_detected"]
    assert 0 < len(missed) < 23 and drop_report["not_detected"] == missed
    assert kept_report["center_cropped"] == missed and kept_report["dropped"] == []
    assert drop_report["dropped"] == missed and drop_report["center_cropped"] == []

    assert kept_report["images"] == len(kept["images"]) == 23
    assert sorted(kept["file"][~kept["detected"]]) == missed
    assert (kept["box"][~kept["detected"]] == -1).all()
    assert kept_report["detected"] == drop_report["detected"] == 23 - len(missed)
    assert drop_report["images"] == len(dropped["images"]) == 23 - len(missed)
    assert dropped["detected"].all() and not set(dropped["file"]) & set(missed)
    assert sum(drop_report["per_expression"].values()) == 23 - len(missed)
    np.testing.assert_array_equal(dropped["images"], kept["images"][kept["detected"]])

    name = missed[0]
    fallback = center_crop(read_gray(root / name), JAFFE_FACE_FRACTION * 1.04)
    np.testing.assert_array_equal(kept["images"][list(kept["file"]).index(name)], fallback)

    plot_jaffe_crops(kept, kept_report, tmp_path / "gallery.png")
    with Image.open(tmp_path / "gallery.png") as image:
        assert image.format == "PNG" and image.width > 500


def test_jaffe_bad_names_are_refused(raw_dir, tmp_path):
    real = raw_dir / "jaffe" / "KA.AN1.39.tiff"
    root = tmp_path / "jaffe"
    root.mkdir()
    os.symlink(real, root / "KA.ZZ1.39.tiff")
    with pytest.raises(DataError, match="KA.ZZ1.39.tiff: unknown JAFFE expression code"):
        load_jaffe(root)
    (root / "KA.ZZ1.39.tiff").unlink()
    os.symlink(real, root / "portrait.tiff")
    with pytest.raises(DataError, match="portrait.tiff: unexpected JAFFE file name"):
        load_jaffe(root)


def test_jaffe_missing_or_empty_directory_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="JAFFE directory not found"):
        load_jaffe(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .tiff files"):
        load_jaffe(tmp_path / "empty")
    with pytest.raises(ParamsError, match="on_no_face"):
        load_jaffe(tmp_path / "empty", on_no_face="skip")


def test_jaffe_unreadable_tiff_is_named(tmp_path):
    root = tmp_path / "jaffe"
    root.mkdir()
    (root / "KA.AN1.39.tiff").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="KA.AN1.39.tiff: not a readable image"):
        load_jaffe(root)
