"""Where the YuNet model comes from: the checkout, the user cache, a mirror or its URL; checksums."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import http_folder
from ferops.detector_model import (
    YUNET_FILE,
    YUNET_SHA256,
    YUNET_SPEC,
    YUNET_URL,
    cache_dir,
)
from ferops.detector_model import yunet_model as locate_yunet
from ferops.errors import FeropsError
from ferops.faces import FaceDetector


def _closed_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/{YUNET_FILE}"


def _unreachable_origin():
    """The model's spec with its canonical URL replaced by a closed port: offline, even where CI is not."""
    origin = YUNET_SPEC.origin.model_copy(update={"url": _closed_port_url()})
    return YUNET_SPEC.model_copy(update={"origin": origin})


def test_params_declare_the_same_model_as_the_library(repo_root):
    declared = yaml.safe_load((repo_root / "params.yaml").read_text())["download"]["datasets"]["yunet"]
    assert declared["file"] == YUNET_FILE and declared["sha256"] == YUNET_SHA256
    assert declared["origin"]["url"] == YUNET_URL


def test_cache_dir_follows_the_environment(tmp_path):
    assert cache_dir({"FEROPS_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "ferops"
    assert cache_dir({}) == Path.home() / ".cache" / "ferops"


def test_a_checkout_uses_the_download_stages_copy(tmp_path, yunet_model):
    checkout = tmp_path / "checkout"
    (checkout / "data" / "raw").mkdir(parents=True)
    (checkout / "params.yaml").write_text("base: {}\n")
    (checkout / "dvc.yaml").write_text("stages: {}\n")
    shutil.copyfile(yunet_model, checkout / "data" / "raw" / YUNET_FILE)
    (checkout / "photos").mkdir()
    empty_cache = {"FEROPS_CACHE_DIR": str(tmp_path / "cache")}
    assert locate_yunet(checkout / "photos", empty_cache) == checkout / "data" / "raw" / YUNET_FILE
    assert not (tmp_path / "cache").exists()  # nothing fetched


def test_outside_a_checkout_it_is_fetched_once_into_the_cache_from_a_mirror(tmp_path, datasets_dir):
    environ = {"FEROPS_CACHE_DIR": str(tmp_path / "cache"), "FEROPS_DATA_MIRROR": str(datasets_dir)}
    path = locate_yunet(tmp_path, environ)
    assert path == tmp_path / "cache" / YUNET_FILE and path.stat().st_size == 232_589
    assert sorted(p.name for p in path.parent.iterdir()) == [YUNET_FILE]  # no scratch left behind
    # The second time it is the cached copy, even with the mirror gone.
    assert locate_yunet(tmp_path, {"FEROPS_CACHE_DIR": str(tmp_path / "cache")}) == path
    FaceDetector(model=path)  # and OpenCV loads it


def test_it_is_downloaded_over_http_and_verified(tmp_path, yunet_model):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copyfile(yunet_model, served / YUNET_FILE)
    spec = _unreachable_origin()
    with http_folder(served) as url:
        environ = {"FEROPS_CACHE_DIR": str(tmp_path / "cache"), "FEROPS_DATA_MIRROR": url}
        path = locate_yunet(tmp_path, environ, spec=spec)
    assert path.read_bytes() == yunet_model.read_bytes()
    # A server handing out other bytes under the model's name is refused, and nothing is cached.
    (served / YUNET_FILE).write_bytes(b"\0" * 1000)
    with http_folder(served) as url, pytest.raises(FeropsError, match=f"expected {YUNET_SHA256}"):
        environ = {"FEROPS_CACHE_DIR": str(tmp_path / "other"), "FEROPS_DATA_MIRROR": url}
        locate_yunet(tmp_path, environ, spec=spec)
    assert list((tmp_path / "other").iterdir()) == []


def test_offline_says_what_to_download_and_where(tmp_path):
    spec = _unreachable_origin()
    with pytest.raises(FeropsError) as caught:
        locate_yunet(tmp_path, {"FEROPS_CACHE_DIR": str(tmp_path / "cache")}, spec=spec)
    message = str(caught.value)
    assert "cannot connect" in message and "Offline?" in message
    assert str(tmp_path / "cache" / YUNET_FILE) in message and YUNET_SHA256 in message
    assert "--detector-model" in message and "--detector haar" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_corrupt_cached_model_is_refused_naming_file_and_checksum(tmp_path, yunet_model):
    cache = tmp_path / "cache"
    cache.mkdir()
    truncated = cache / YUNET_FILE
    truncated.write_bytes(yunet_model.read_bytes()[:100_000])
    with pytest.raises(FeropsError) as caught:
        locate_yunet(tmp_path, {"FEROPS_CACHE_DIR": str(cache)})
    message = str(caught.value)
    assert str(truncated) in message and f"expected {YUNET_SHA256}" in message and "100,000 bytes" in message
