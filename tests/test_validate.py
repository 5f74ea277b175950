import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from stages import validate as validate_stage

from ferops.errors import ParamsError
from ferops.validate import ValidateConfig, pixel_stats

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


def test_pixel_stats_counts_values_and_exact_std():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, 16), np.full(16, 7), np.r_[np.full(12, 100), np.full(4, 104)]]
    texts = pd.Series([" ".join(map(str, image)) for image in images] + ["", "0 255"])
    counts, stds = pixel_stats(texts, values_per_image=16)
    assert counts.tolist() == [16, 16, 16, 0, 2]
    np.testing.assert_allclose(stds[:3], [image.std() for image in images], rtol=1e-6)
    assert stds[1] == 0.0
    assert np.isnan(stds[3]) and np.isnan(stds[4])  # empty / wrong count: no std


def test_pixel_stats_leaves_malformed_rows_to_the_format_checks():
    counts, stds = pixel_stats(pd.Series(["1 2 x 4", "7 9 9 9", "1 -1 3 4", "1 2 300 4"]),
                               values_per_image=4)
    assert counts.tolist() == [4, 4, 4, 4]
    assert np.isnan(stds[[0, 2, 3]]).all()
    assert stds[1] == pytest.approx(np.std([7, 9, 9, 9]))


def test_config_from_params(repo_root):
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    config = ValidateConfig.from_params(params["validate"], params["base"])
    assert config.split_rows == {"Training": 28709, "PublicTest": 3589, "PrivateTest": 3589}
    assert config.class_share["disgust"] == (0.01, 0.03)

    params["validate"]["fer2013"]["class_share"]["contempt"] = [0.0, 0.1]
    with pytest.raises(ParamsError, match="unknown classes"):
        ValidateConfig.from_params(params["validate"], params["base"])
    del params["validate"]["jaffe"]
    with pytest.raises(ParamsError, match="jaffe"):
        ValidateConfig.from_params(params["validate"], params["base"])


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
    assert datasets["ferplus"]["warnings"]["empty_image_name"] == 173
    assert datasets["jaffe"]["warnings"]["grayscale"] == 23
    assert datasets["ckplus"]["warnings"] == {}
    assert summary["warning_count"] == sum(len(d["warnings"]) for d in datasets.values())

    entries = {(e["table"], e["check"]): e for d in datasets.values() for e in d["expectations"]}
    assert {e["severity"] for e in entries.values()} == {"critical", "warning"}
    constant = entries[("fer2013_rows", "constant_images")]
    assert constant["severity"] == "warning" and constant["success"] is False
    assert constant["column"] == "pixel_std" and constant["unexpected_values"] == [0.0] * 5
    assert len(constant["unexpected_rows"]) == 5
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
