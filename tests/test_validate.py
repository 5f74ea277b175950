import copy
import json
import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from pydantic import ValidationError
from stages import validate as validate_stage

from ferops import cleaning
from ferops.errors import ParamsError
from ferops.validate import fer2013_rows, read_csvs, validate_config

# Data rows (0-based, header not counted) that the bad-input tests alter.
BAD_ROW = 3


def run_stage(raw, out_dir, repo_root):
    docs, summary = out_dir / "validation", out_dir / "validation.json"
    code = validate_stage.main(["--params", str(repo_root / "params.yaml"), "--raw", str(raw),
                                "--docs", str(docs), "--summary", str(summary)])
    return code, docs, summary


@pytest.fixture(scope="module")
def good_run(raw_dir, tmp_path_factory, repo_root):
    """One run of the stage on the full real raw-data directory."""
    out = tmp_path_factory.mktemp("validate")
    code, docs, summary = run_stage(raw_dir, out, repo_root)
    return code, docs, summary


def link_raw(raw_dir: Path, target: Path, skip=()) -> Path:
    """A raw-data directory whose entries are symlinks to the real one, except ``skip``."""
    target.mkdir()
    for entry in raw_dir.iterdir():
        if entry.name not in skip:
            (target / entry.name).symlink_to(entry)
    return target


def edit_fer2013_row(raw_dir: Path, target: Path, row: int, edit) -> Path:
    """Copy fer2013.csv with data row ``row`` replaced by ``edit(fields)`` (same row count)."""
    raw = link_raw(raw_dir, target, skip={"fer2013.csv"})
    data = (raw_dir / "fer2013.csv").read_bytes()
    start = 0
    for _ in range(row + 1):  # skip the header and `row` data lines
        start = data.index(b"\n", start) + 1
    end = data.index(b"\n", start)
    fields = data[start:end].decode().split(",")
    line = ",".join(edit(fields)).encode()
    (raw / "fer2013.csv").write_bytes(data[:start] + line + data[end:])
    return raw


@pytest.fixture()
def previous_outputs(tmp_path):
    """Outputs of an earlier successful run that a failing run must leave untouched."""
    docs = tmp_path / "out" / "validation"
    docs.mkdir(parents=True)
    (docs / "index.html").write_text("<html>previous docs</html>")
    (tmp_path / "out" / "validation.json").write_text('{"previous": true}\n')
    return {p: p.read_bytes() for p in [docs / "index.html", tmp_path / "out" / "validation.json"]}


def assert_failed_cleanly(code, tmp_path, previous):
    assert code != 0
    for path, content in previous.items():
        assert path.read_bytes() == content
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["validation", "validation.json"]
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["index.html"]


# ---------------------------------------------------------------------------------- fast tests


@pytest.fixture(scope="module")
def params(repo_root):
    return yaml.safe_load((repo_root / "params.yaml").read_text())


def build(params, edit=None):
    section = copy.deepcopy(params["validate"])
    if edit:
        edit(section)
    return validate_config(section, params["base"]["classes"], params["base"]["image_size"])


def test_config_from_params(params):
    settings = build(params)
    fer = settings.params.fer2013
    assert fer.rows == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert fer.class_share["disgust"] == (0.01, 0.03)
    assert settings.params.ckplus.files == 981 and settings.params.sample_size == 5
    assert settings.classes[1] == "disgust" and settings.image_size == 48
    with pytest.raises(ValidationError):  # frozen: a run cannot change its own settings
        fer.blank_std_max = 3.0


@pytest.mark.parametrize(("where", "key", "known"), [
    ((), "sampel_size", "ckplus, fer2013, jaffe, sample_size"),
    (("fer2013",), "row_tolerence", "blank_std_max, class_share, row_tolerance, rows"),
    (("ckplus",), "file", "classes, files, image_size"),
    (("jaffe",), "size", "files, image_size"),
])
def test_unknown_key_is_named_with_the_known_keys(params, where, key, known):
    def edit(section):
        for part in where:
            section = section[part]
        section[key] = 1

    dotted = ".".join(["validate", *where, key])
    with pytest.raises(ParamsError, match=re.escape(f"{dotted}: unknown key; known keys here: {known}")):
        build(params, edit)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda s: s["fer2013"].update(row_tolerance=1.5), "validate.fer2013.row_tolerance: .*less than 1"),
    (lambda s: s["fer2013"].update(blank_std_max=-1), "validate.fer2013.blank_std_max: .*greater than"),
    (lambda s: s["jaffe"].update(files="many"), "validate.jaffe.files: .*valid integer"),
    (lambda s: s["ckplus"].update(image_size=0), "validate.ckplus.image_size: .*greater than 0"),
    (lambda s: s.update(sample_size=0), "validate.sample_size: .*greater than or equal to 1"),
    (lambda s: s.pop("jaffe"), "validate.jaffe: missing"),
    (lambda s: s["fer2013"]["rows"].pop("PrivateTest"),
     "validate.fer2013.rows: expected a row count for every split .* missing PrivateTest"),
    (lambda s: s["fer2013"]["rows"].update(Validation=10), "validate.fer2013.rows.Validation"),
    (lambda s: s["fer2013"]["class_share"].update(angry=[0.3, 0.1]),
     r"validate.fer2013.class_share.angry: expected \[min, max\] with min <= max"),
    (lambda s: s["fer2013"]["class_share"].update(angry=[0.1, 1.5]),
     "validate.fer2013.class_share.angry.1: .*less than or equal to 1"),
])
def test_wrong_type_or_range_is_named(params, edit, message):
    with pytest.raises(ParamsError, match=message):
        build(params, edit)


def test_class_share_must_name_base_classes(params):
    edit = lambda s: s["fer2013"]["class_share"].update(contempt=[0.0, 0.1])  # noqa: E731
    with pytest.raises(ParamsError, match=r"validate.fer2013.class_share: unknown class\(es\) "
                                          r"contempt; the classes \(base.classes\) are: angry, "):
        build(params, edit)


# Real rows (0-based data rows of fer2013.csv) whose facts SOURCES.md and the full run establish.
PICKS = [157, 304, 675, 28448, 28725, 28791, 6458, 2171]


@pytest.fixture(scope="module")
def fer2013_text(raw_dir):
    fer, _ = read_csvs(raw_dir)
    return fer


def test_fer2013_rows_on_real_rows_and_a_malformed_one(fer2013_text):
    frame = fer2013_text.iloc[PICKS].reset_index(drop=True)
    # A copy of row 304 that lost its last pixel: reported, not parsed, not a duplicate.
    broken = frame.iloc[[1]].assign(pixels=frame["pixels"][1].rsplit(" ", 1)[0])
    frame = pd.concat([frame, broken], ignore_index=True)
    rows = fer2013_rows(frame, image_size=48, n_classes=7)

    assert rows["pixel_count"].tolist() == [2304] * 8 + [2303]
    assert rows["pixel_std"][6] == 0.0  # row 6458 is a constant image
    assert rows["pixel_std"][7] == pytest.approx(0.637561, abs=1e-6)  # 2171: near-blank
    assert np.isnan(rows["pixel_std"][8])
    assert rows["duplicate_of"].tolist() == [pd.NA, pd.NA, 1, pd.NA, 3, 0, pd.NA, pd.NA, pd.NA]
    # 157 (Training, angry) and 28791 (PublicTest, disgust) are the same image.
    assert rows["duplicate_labels"].fillna("").tolist() == ["0,1", "", "", "", "", "0,1", "", "",
                                                            ""]
    assert rows["training_twin"].tolist() == [pd.NA] * 4 + [3, 0] + [pd.NA] * 3


@pytest.mark.slow
def test_fer2013_rows_agree_with_the_prepare_rules(fer2013_text, raw_dir):
    """Validation and preparation count the same duplicates, conflicts and leaks."""
    from ferops.fer2013 import read_fer2013

    rows = fer2013_rows(fer2013_text, image_size=48, n_classes=7)
    fer = read_fer2013(raw_dir / "fer2013.csv")
    duplicates = cleaning.find_duplicates(fer.images)
    training = fer.usage == 0
    assert rows["duplicate_of"].notna().sum() == duplicates.summary()["redundant_rows"] == 1853
    conflicts = cleaning.conflicting_duplicates_mask(duplicates, fer.label)
    assert (rows["duplicate_labels"].notna().to_numpy() == conflicts).all()
    leaks = cleaning.exact_twins_mask(duplicates, training, ~training) & ~training
    assert (rows["training_twin"].notna().to_numpy() == leaks).all() and leaks.sum() == 568
    assert (rows["pixel_std"].to_numpy() < 2.0).sum() == cleaning.blank_mask(fer.images, 2.0).sum()


# ---------------------------------------------------------------------- the real data (slow)


@pytest.mark.slow
def test_real_data_validates_with_expected_warnings(good_run):
    code, docs, summary_path = good_run
    assert code == 0
    summary = json.loads(summary_path.read_text())
    assert summary["success"] is True
    assert summary["critical_failures"] == []
    datasets = summary["datasets"]
    assert set(datasets) == {"fer2013", "ferplus", "ckplus", "jaffe"}
    assert all(d["success"] for d in datasets.values())
    # The documented quirks of the original data, reported as warnings (SOURCES.md).
    assert datasets["fer2013"]["warnings"]["constant_images"] == 12
    # One more image is near-blank (std 0.64) under blank_std_max = 2.0.
    assert datasets["fer2013"]["warnings"]["blank_images"] == 13
    assert datasets["fer2013"]["warnings"]["duplicate_pixels"] == 1853
    assert datasets["fer2013"]["warnings"]["test_rows_in_training"] == 568
    # 57 groups of identical images disagree on the label: 160 rows.
    assert datasets["fer2013"]["warnings"]["duplicate_label_conflicts"] == 160
    assert datasets["ferplus"]["warnings"]["empty_image_name"] == 173
    # 4 names occur twice; row 10435 has 9 votes, not 10.
    assert datasets["ferplus"]["warnings"]["duplicate_image_name"] == 8
    assert datasets["ferplus"]["warnings"]["vote_total"] == 1
    assert datasets["jaffe"]["warnings"]["grayscale"] == 23
    assert datasets["ckplus"]["warnings"] == {}
    assert summary["warning_count"] == sum(len(d["warnings"]) for d in datasets.values())

    entries = {(e["table"], e["check"]): e for d in datasets.values() for e in d["expectations"]}
    assert {e["severity"] for e in entries.values()} == {"critical", "warning"}
    constant = entries[("fer2013_rows", "constant_images")]
    assert constant["severity"] == "warning" and constant["success"] is False
    assert constant["column"] == "pixel_std" and constant["unexpected_values"] == [0.0] * 5
    assert len(constant["unexpected_rows"]) == 5
    assert entries[("ferplus_rows", "vote_total")]["unexpected_rows"] == [10435]
    assert entries[("ferplus", "row_count")]["success"] is True
    assert "expected_value" not in entries[("ferplus", "row_count")]  # only on failure
    pixels = entries[("fer2013", "pixels_format")]
    assert pixels["severity"] == "critical" and pixels["success"] is True
    assert pixels["expectation"] == "expect_column_values_to_match_regex"
    assert entries[("fer2013_rows", "pixel_count")]["element_count"] == 35887

    text = summary_path.read_text()
    assert str(docs.parent) not in text and "run_id" not in text
    assert (docs / "index.html").is_file()
    assert list((docs / "validations").rglob("*.html"))


@pytest.mark.slow
def test_rerun_gives_byte_identical_summary(good_run, raw_dir, tmp_path, repo_root):
    _, _, first = good_run
    code, _, second = run_stage(raw_dir, tmp_path, repo_root)
    assert code == 0
    assert second.read_bytes() == first.read_bytes()


@pytest.mark.slow
def test_row_with_2303_pixels_fails(raw_dir, tmp_path, repo_root, previous_outputs, caplog):
    def drop_last_pixel(fields):
        fields[1] = fields[1].rsplit(" ", 1)[0]
        return fields

    raw = edit_fer2013_row(raw_dir, tmp_path / "raw", BAD_ROW, drop_last_pixel)
    with caplog.at_level(logging.INFO):
        code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    line = next(r.message for r in caplog.records if "pixel_count" in r.message)
    assert "fer2013" in line and "column pixel_count" in line
    assert f"[{BAD_ROW}]" in line and "[2303]" in line  # the row and its pixel count
    assert "0-based CSV data row" in line


@pytest.mark.slow
def test_emotion_out_of_range_fails(raw_dir, tmp_path, repo_root, previous_outputs, caplog):
    raw = edit_fer2013_row(raw_dir, tmp_path / "raw", BAD_ROW, lambda f: ["9", *f[1:]])
    code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    line = next(r.message for r in caplog.records if "emotion_in_range" in r.message)
    assert "column emotion" in line and f"[{BAD_ROW}]" in line and "['9']" in line
    assert "stage validate failed" in caplog.text


@pytest.mark.slow
def test_unknown_usage_fails(raw_dir, tmp_path, repo_root, previous_outputs, caplog):
    raw = edit_fer2013_row(raw_dir, tmp_path / "raw", BAD_ROW, lambda f: [*f[:2], "Validation"])
    code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    line = next(r.message for r in caplog.records if "usage_known" in r.message)
    assert "column Usage" in line and f"[{BAD_ROW}]" in line and "['Validation']" in line
    # The same row no longer agrees with FER+ either.
    line = next(r.message for r in caplog.records if "usage_matches_fer2013" in r.message)
    assert f"[{BAD_ROW}]" in line


@pytest.mark.slow
def test_missing_ckplus_folder_fails(raw_dir, tmp_path, repo_root, previous_outputs, caplog):
    raw = link_raw(raw_dir, tmp_path / "raw", skip={"ckplus"})
    shutil.copytree(raw_dir / "ckplus", raw / "ckplus", ignore=shutil.ignore_patterns("fear"))
    code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    line = next(r.message for r in caplog.records if "emotion_folders" in r.message)
    assert "ckplus" in line and "column folder" in line and "missing: ['fear']" in line
    assert any("file_count" in r.message and "observed: 906" in r.message
               for r in caplog.records)


@pytest.mark.slow
def test_jaffe_image_of_wrong_size_fails(raw_dir, tmp_path, repo_root, previous_outputs, caplog):
    raw = link_raw(raw_dir, tmp_path / "raw", skip={"jaffe"})
    (raw / "jaffe").mkdir()
    for image in (raw_dir / "jaffe").iterdir():
        os.symlink(image, raw / "jaffe" / image.name)
    bad = raw / "jaffe" / "KL.HA1.158.tiff"
    bad.unlink()
    with Image.open(raw_dir / "jaffe" / bad.name) as image:
        image.resize((128, 128)).save(bad)
    code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    for check in ("width", "height"):
        line = next(r.message for r in caplog.records if f"jaffe.{check} " in r.message)
        assert "jaffe/KL.HA1.158.tiff" in line and "[128]" in line


@pytest.mark.slow
def test_ferplus_row_count_names_the_expected_count(raw_dir, tmp_path, repo_root,
                                                    previous_outputs, caplog):
    raw = link_raw(raw_dir, tmp_path / "raw", skip={"fer2013new.csv"})
    lines = (raw_dir / "fer2013new.csv").read_bytes().splitlines(keepends=True)
    (raw / "fer2013new.csv").write_bytes(b"".join(lines[:-1]))  # drop the last data row
    code, _, _ = run_stage(raw, tmp_path / "out", repo_root)
    assert_failed_cleanly(code, tmp_path, previous_outputs)
    line = next(r.message for r in caplog.records if "ferplus.row_count" in r.message)
    assert "observed: 35886 (expected 35887)" in line


def test_stage_refuses_a_misspelt_key_before_reading_data(tmp_path, repo_root, caplog):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["validate"]["fer2013"]["row_tolerence"] = 0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    code = validate_stage.main(["--params", str(tmp_path / "params.yaml"), "--raw",
                                str(tmp_path / "no-raw-data"), "--docs", str(tmp_path / "docs"),
                                "--summary", str(tmp_path / "validation.json")])
    assert code != 0
    assert "validate.fer2013.row_tolerence: unknown key" in caplog.text
    assert not (tmp_path / "docs").exists() and not (tmp_path / "validation.json").exists()
