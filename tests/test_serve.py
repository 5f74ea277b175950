"""`ferops serve`: a real uvicorn server on 127.0.0.1, real uploads, and the web page in headless Chromium."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from conftest import jaffe_paths, launch_chromium, multi_face_canvas, running
from ferops.cli import _predictor, build_parser
from ferops.media import DEFAULT_MAX_PIXELS
from ferops.serve import create_app
from test_predict import CLASSES, FEROPS, absurd_jpeg, header_only_png, huge_png

MAX_UPLOAD = 1 << 20  # 1 MiB, so the oversize test stays small


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(usage_registry):
    """The service as `ferops serve` builds it (registry alias), on a real uvicorn server."""
    uri, name = usage_registry
    args = build_parser().parse_args(["serve", "--model", f"models:/{name}@champion", "--tracking-uri", uri])
    assert args.host == "127.0.0.1"  # loopback by default
    with running(create_app(_predictor(args), max_upload_bytes=MAX_UPLOAD)) as url:
        yield url


@pytest.fixture(scope="module")
def two_faces(raw_dir, tmp_path_factory):
    canvas, tiles = multi_face_canvas(raw_dir, 2, offset=90)
    path = tmp_path_factory.mktemp("upload") / "two_faces.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    return path, tiles


def test_health(server):
    response = httpx.get(f"{server}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["model"].endswith("@champion") and body["classes"] == list(CLASSES)
    assert body["tta"] == "flip"  # the mirror view is averaged in by default


def test_upload_real_faces(server, two_faces, raw_dir):
    path, tiles = two_faces
    response = httpx.post(f"{server}/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (640, 480) and len(body["faces"]) == 2
    for face, tile in zip(sorted(body["faces"], key=lambda f: f["box"]["x"]), tiles, strict=True):
        box = face["box"]
        assert tile[0] <= box["x"] + box["w"] / 2 < tile[0] + tile[2]
        assert tile[1] <= box["y"] + box["h"] / 2 < tile[1] + tile[3]
        assert list(face["probabilities"]) == list(CLASSES)
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-4
        assert face["expression"] == max(face["probabilities"], key=face["probabilities"].get)
    # A JAFFE portrait as a TIFF upload: one face.
    tiff = jaffe_paths(raw_dir)[5]
    response = httpx.post(f"{server}/predict", files={"file": (tiff.name, tiff.read_bytes(), "image/tiff")})
    assert response.status_code == 200 and len(response.json()["faces"]) == 1


def test_bad_requests_are_answered_not_fatal(server):
    def post(**kwargs):
        return httpx.post(f"{server}/predict", **kwargs)

    no_face = cv2.imencode(".png", np.full((200, 300), 90, np.uint8))[1].tobytes()
    response = post(files={"file": ("blank.png", no_face, "image/png")})
    assert response.status_code == 200 and response.json()["faces"] == []

    response = post(files={"file": ("notes.txt", b"hello, not an image", "text/plain")})
    assert response.status_code == 415 and "notes.txt: not an image" in response.json()["detail"]

    big = np.random.default_rng(0).integers(0, 256, MAX_UPLOAD + 100_000, dtype=np.uint8).tobytes()
    response = post(files={"file": ("big.png", big, "image/png")})
    assert response.status_code == 413 and "too large" in response.json()["detail"]

    # A valid multipart body streamed without Content-Length: the streamed size is checked too.
    body = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + big + b"\r\n--x--\r\n")

    def chunks():
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]
    response = post(content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and f"{MAX_UPLOAD} bytes per image" in response.json()["detail"]
    # Just under the cap is fine (and an image without faces).
    small = np.full((64, 64), 90, np.uint8)
    response = post(files={"file": ("small.bmp", cv2.imencode(".bmp", small)[1].tobytes(), "image/bmp")})
    assert response.status_code == 200 and response.json()["faces"] == []

    response = post(files={"file": ("empty.png", b"", "image/png")})
    assert response.status_code == 400 and response.json()["detail"] == "empty.png: empty file (0 bytes)"
    response = post()  # no body at all
    assert response.status_code == 400 and "multipart" in response.json()["detail"]
    response = post(json={"image": "base64..."})
    assert response.status_code == 400
    response = post(data={"other": "field"}, files={"wrong": ("a.png", no_face, "image/png")})
    assert response.status_code == 400 and "field 'file'" in response.json()["detail"]
    response = post(content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 400
    assert httpx.get(f"{server}/health").json()["status"] == "ok"  # still serving


@pytest.fixture(scope="module")
def ferops_serve(onnx_model, tmp_path_factory):
    """`ferops serve` as a user starts it, in its own process (ONNX model, default limits); (URL, process)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([FEROPS, "serve", "--model", str(onnx_model), "--port", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            assert process.poll() is None, f"ferops serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"ferops serve did not answer: {log.read_text()}"
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=20)


def peak_rss_mib(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def test_oversized_images_get_413_and_the_server_stays_healthy(ferops_serve, two_faces, raw_dir):
    """The 20000x20000 PNG (under 1 MB) that once killed the service, and headers claiming absurd sizes."""
    url, process = ferops_serve
    face = cv2.imread(str(jaffe_paths(raw_dir)[3]), cv2.IMREAD_GRAYSCALE)
    uploads = {"huge.png": huge_png(face), "absurd.png": header_only_png(100_000, 100_000),
               "tall.png": header_only_png(7_000, 7_000), "absurd.jpg": absurd_jpeg(face, 30_000, 30_000)}
    for name, data in uploads.items():
        response = httpx.post(f"{url}/predict", files={"file": (name, data, "image/png")}, timeout=60)
        assert response.status_code == 413, (name, response.text)
        detail = response.json()["detail"]
        assert detail.startswith(f"{name}: image too large") and f"{DEFAULT_MAX_PIXELS:,} pixels" in detail
        assert "--max-pixels" in detail
    assert "7000x7000" in httpx.post(f"{url}/predict", files={"file": ("t.png", uploads["tall.png"])}).text
    response = httpx.post(f"{url}/predict", files={"file": ("empty.jpg", b"", "image/jpeg")})
    assert response.status_code == 400 and response.json()["detail"] == "empty.jpg: empty file (0 bytes)"

    # Still healthy, and a normal photo is answered as before.
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["max_pixels"] == DEFAULT_MAX_PIXELS
    path, _ = two_faces
    response = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200 and len(response.json()["faces"]) == 2
    assert process.poll() is None
    peak = peak_rss_mib(process.pid)
    assert peak < 512, f"ferops serve peaked at {peak:.0f} MiB"


@pytest.mark.slow
def test_web_page_in_headless_chromium(server, two_faces, tmp_path):
    from playwright.sync_api import sync_playwright

    path, tiles = two_faces
    expected = httpx.post(f"{server}/predict", files={"file": (path.name, path.read_bytes())}).json()["faces"]
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(server + "/")
            page.wait_for_selector("#model:has-text('@champion')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector(".face-box", timeout=20_000)
            page.wait_for_function("document.querySelector('#photo').naturalWidth > 0")
            page.screenshot(path=str(tmp_path / "page.png"))
            photo = page.locator("#photo").bounding_box()
            scale = photo["width"] / 640
            boxes = page.locator(".face-box")
            assert boxes.count() == len(expected) == 2
            assert "2 faces found" in page.locator("#status").inner_text()
            for i in range(boxes.count()):
                rendered = boxes.nth(i).bounding_box()
                face = expected[i]
                assert boxes.nth(i).get_attribute("data-expression") == face["expression"]
                name, percent = boxes.nth(i).locator(".face-label").inner_text().split()
                assert name == face["expression"]
                assert abs(int(percent.rstrip("%")) - 100 * face["confidence"]) <= 0.5 + 1e-6
                for got, want in ((rendered["x"] - photo["x"], face["box"]["x"]),
                                  (rendered["y"] - photo["y"], face["box"]["y"]),
                                  (rendered["width"], face["box"]["w"]),
                                  (rendered["height"], face["box"]["h"])):
                    assert abs(got - want * scale) <= 2, (rendered, face["box"], scale)
            assert page.locator("#results .face").count() == 2
            assert page.locator("#results .face").first.locator(".bar").count() == len(CLASSES)

            # The detector's landmarks: five dots per face where the JSON puts them, hidden and
            # shown again by the toggle.
            dots = page.locator(".landmark")
            assert dots.count() == 5 * len(expected)
            points = [point for face in expected for point in face["landmarks"].values()]
            for i, point in enumerate(points):
                dot = dots.nth(i).bounding_box()
                centre = (dot["x"] + dot["width"] / 2 - photo["x"], dot["y"] + dot["height"] / 2 - photo["y"])
                assert abs(centre[0] - point["x"] * scale) <= 2 and abs(centre[1] - point["y"] * scale) <= 2
            page.uncheck("#landmarks")
            assert not dots.first.is_visible() and boxes.first.is_visible()
            page.check("#landmarks")
            assert dots.first.is_visible()

            # A non-image shows the server's message, not a crash.
            page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                  "buffer": b"not an image"}])
            page.wait_for_selector("#status.error")
            assert "415" in page.locator("#status").inner_text()
            assert page.locator(".face-box").count() == 0
        finally:
            browser.close()


