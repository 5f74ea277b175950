import gzip
import shutil
from pathlib import Path

import pytest
import yaml
from stages import download as download_stage

from conftest import http_folder
from ferops.config import build
from ferops.detector_model import YUNET_FILE, YUNET_SHA256
from ferops.download import DownloadConfig, Location, mirror_locations
from ferops.errors import ParamsError
from ferops.io import file_digest

DATASET_FILES = ["fer2013.csv.gz", "fer2013new.csv", "ckplus.zip", "jaffe.zip",
                 "face_detection_yunet_2023mar.onnx"]


@pytest.fixture()
def params_file(tmp_path, repo_root):
    """A copy of params.yaml whose download.mirror points nowhere (only FEROPS_DATA_MIRROR counts)."""
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["download"]["mirror"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def make_mirror(directory: Path, datasets_dir: Path, skip=()):
    directory.mkdir()
    for name in DATASET_FILES:
        if name not in skip:
            (directory / name).symlink_to(datasets_dir / name)
    return directory


def run(params_file, tmp_path, monkeypatch, mirror):
    monkeypatch.setenv("FEROPS_DATA_MIRROR", str(mirror))
    out, report = tmp_path / "raw", tmp_path / "download.json"
    code = download_stage.main(["--params", str(params_file), "--out", str(out),
                                "--report", str(report)])
    return code, out, report


@pytest.fixture()
def previous_outputs(tmp_path):
    """Outputs of an earlier successful run that a failing run must leave untouched."""
    out = tmp_path / "raw"
    out.mkdir()
    (out / "fer2013.csv").write_text("previous content")
    (tmp_path / "download.json").write_text('{"previous": true}')
    return {p: p.read_bytes() for p in [out / "fer2013.csv", tmp_path / "download.json"]}


def assert_untouched(previous, tmp_path):
    for path, content in previous.items():
        assert path.read_bytes() == content
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".raw")], "temp dir left behind"


def test_download_params_are_checked():
    with pytest.raises(ParamsError, match=r"download.datasets.x.sha256: String should match pattern"):
        build(DownloadConfig, {"datasets": {"x": {"file": "x.csv", "sha256": "abc", "output": "x.csv"}}},
              "download")
    good = {"file": "x.csv", "sha256": "A" * 64, "output": "x.csv"}
    with pytest.raises(ParamsError, match=r"download.datasets.x.orign: unknown key; known keys here: file, "):
        build(DownloadConfig, {"datasets": {"x": {**good, "orign": None}}}, "download")
    with pytest.raises(ParamsError, match=r"download.datasets.x.origin.urll: unknown key; known keys here: "
                                          r"kaggle_dataset, kaggle_file, url"):
        build(DownloadConfig, {"datasets": {"x": {**good, "origin": {"urll": "http://h/x"}}}}, "download")
    with pytest.raises(ParamsError, match=r"download.mirorr: unknown key"):
        build(DownloadConfig, {"mirorr": "/x", "datasets": {"x": good}}, "download")
    config = build(DownloadConfig, {"datasets": {"x": good}}, "download")
    (spec,) = config.specs
    assert (spec.name, spec.sha256, spec.origin.url) == ("x", "a" * 64, None)


def test_environment_mirror_comes_first_and_relative_paths_use_the_root(tmp_path):
    locations = mirror_locations("/data/mirror", "../shared", tmp_path / "repo")
    assert locations == [Location("FEROPS_DATA_MIRROR", "/data/mirror"),
                         Location("download.mirror", str((tmp_path / "shared").resolve()))]
    assert mirror_locations(None, "http://h/x", tmp_path)[0].is_url


def test_download_from_directory_mirror(tmp_path, monkeypatch, datasets_dir, params_file):
    mirror = make_mirror(tmp_path / "mirror", datasets_dir)
    code, out, report = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 0
    assert (out / "fer2013.csv").stat().st_size == 301_072_766
    assert len(list((out / "ckplus").rglob("*.png"))) == 981
    assert len(list((out / "jaffe").glob("*.tiff"))) == 213
    assert (out / "ckplus" / "anger").is_dir()  # the zip's single top folder is dropped
    assert "fer2013.csv.gz" in report.read_text()
    # The face detector of predict, serve and the JAFFE crops comes with the data, verified.
    assert file_digest(out / YUNET_FILE) == YUNET_SHA256


def test_download_from_http_mirror(tmp_path, monkeypatch, datasets_dir, params_file):
    with http_folder(datasets_dir) as base:
        url = f"{base}/"
        code, out, report = run(params_file, tmp_path, monkeypatch, url)
    assert code == 0
    assert (out / "fer2013new.csv").read_bytes() == (datasets_dir / "fer2013new.csv").read_bytes()
    assert url in report.read_text()


@pytest.mark.slow
def test_plain_fer2013_csv_is_accepted(tmp_path, monkeypatch, datasets_dir, params_file):
    mirror = make_mirror(tmp_path / "mirror", datasets_dir, skip=["fer2013.csv.gz"])
    with gzip.open(datasets_dir / "fer2013.csv.gz", "rb") as src, open(mirror / "fer2013.csv",
                                                                        "wb") as dst:
        shutil.copyfileobj(src, dst)
    code, out, _ = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 0
    assert (out / "fer2013.csv").stat().st_size == 301_072_766


def test_truncated_gzip_fails_clearly_and_keeps_outputs(
        tmp_path, monkeypatch, datasets_dir, params_file, previous_outputs, caplog):
    mirror = make_mirror(tmp_path / "mirror", datasets_dir, skip=["fer2013.csv.gz"])
    data = (datasets_dir / "fer2013.csv.gz").read_bytes()
    (mirror / "fer2013.csv.gz").write_bytes(data[: len(data) // 2])
    code, _, _ = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 1
    assert "fer2013.csv.gz" in caplog.text and "sha256 mismatch" in caplog.text
    assert "gzip stream is truncated" in caplog.text
    assert_untouched(previous_outputs, tmp_path)


def test_wrong_checksum_fails_clearly_and_keeps_outputs(
        tmp_path, monkeypatch, datasets_dir, params_file, previous_outputs, caplog):
    mirror = make_mirror(tmp_path / "mirror", datasets_dir, skip=["fer2013new.csv"])
    text = (datasets_dir / "fer2013new.csv").read_text().replace("Training", "training", 1)
    (mirror / "fer2013new.csv").write_text(text)
    code, _, _ = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 1
    assert "fer2013new.csv" in caplog.text
    assert "expected 9206e20d62f56475939f516847d61753e4860caeac9718b560129541b776fc2c" in caplog.text
    assert_untouched(previous_outputs, tmp_path)


def test_missing_ckplus_says_how_to_get_it(
        tmp_path, monkeypatch, datasets_dir, params_file, previous_outputs, caplog):
    mirror = make_mirror(tmp_path / "mirror", datasets_dir, skip=["ckplus.zip"])
    code, _, _ = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 1
    assert "dataset 'ckplus' (ckplus.zip) not found" in caplog.text
    assert str(mirror / "ckplus.zip") in caplog.text  # where it looked
    assert "may not be redistributed" in caplog.text  # how to get it
    assert_untouched(previous_outputs, tmp_path)


def test_a_stage_killed_while_writing_leaves_nothing_behind_after_the_next_run(
        tmp_path, monkeypatch, datasets_dir, params_file):
    # kill -9 cannot be caught: the next run of the stage removes what the killed one left.
    import os
    import signal
    import subprocess
    import sys
    import time

    mirror = make_mirror(tmp_path / "mirror", datasets_dir)
    env = dict(os.environ, FEROPS_DATA_MIRROR=str(mirror))
    script = Path(download_stage.__file__)
    process = subprocess.Popen([sys.executable, str(script), "--params", str(params_file),
                                "--out", str(tmp_path / "raw"), "--report", str(tmp_path / "download.json")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".raw.*.tmp/*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = sorted(p.name for p in tmp_path.glob(".raw.*"))
    assert left, "the stage was not caught while writing"
    code, out, _ = run(params_file, tmp_path, monkeypatch, mirror)
    assert code == 0 and (out / "fer2013.csv").stat().st_size == 301_072_766
    assert not list(tmp_path.glob(".raw.*")), f"stale temporaries of the killed run: {left}"
