"""After deployment: served faces logged and counted, load, and `ferops monitor` on real traffic."""

from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO_ROOT, free_port, multi_face_canvas, running, wait_until_up
from ferops.cli import _predictor, build_parser
from ferops.io import load_arrays
from ferops.monitoring import reference_frame, resolve_model, serving_view, write_reference
from ferops.prediction_log import PredictionLog, read_log
from ferops.serve import create_app
from test_predict import FEROPS

SCREENSHOTS = os.environ.get("FEROPS_SCREENSHOTS")  # set to a folder to keep the browser's screenshots


def registry_predictor(usage_registry):
    uri, name = usage_registry
    args = build_parser().parse_args(["serve", "--model", f"models:/{name}@champion", "--tracking-uri", uri])
    return _predictor(args, keep_crops=True), resolve_model(f"models:/{name}@champion", uri)


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def post(url: str, name: str, data: bytes) -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data)}, timeout=60)


def metrics(url: str) -> dict[str, float]:
    """GET /metrics parsed with prometheus_client's own parser: sample name{labels} -> value."""
    text = httpx.get(f"{url}/metrics").text
    return {sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else ""): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def wait_logged(url: str, expected: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        stats = httpx.get(f"{url}/health").json()["prediction_log"]
        if stats["pending"] == 0 and stats["logged"] + stats["failed"] + stats["dropped"] >= expected:
            return stats
        assert time.monotonic() < deadline, f"log did not settle: {stats}"
        time.sleep(0.1)


def test_served_faces_are_logged_counted_and_named(usage_registry, trained_run, raw_dir, tmp_path):
    predictor, model = registry_predictor(usage_registry)
    assert model[0] == f"models:/{usage_registry[1]}/1"  # the alias, resolved to the version it points to
    log_uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(log_uri)
    canvas, tiles = multi_face_canvas(raw_dir, 2, offset=40)
    with running(create_app(predictor, prediction_log=log, model=model)) as url:
        answer = post(url, "two.png", png(canvas)).json()
        assert post(url, "blank.png", png(np.full((300, 300), 128, np.uint8))).json()["faces"] == []
        assert post(url, "notes.txt", b"not an image").status_code == 415
        stats = wait_logged(url, 2)
        counted = metrics(url)
    assert stats["logged"] == 2 and stats["failed"] == 0
    ids = [face["id"] for face in answer["faces"]]
    rows = read_log(log_uri)
    assert sorted(row["id"] for row in rows) == sorted(ids) and len(set(ids)) == 2
    receipt = json.loads(trained_run.receipt.read_text())
    for row in rows:
        face = next(f for f in answer["faces"] if f["id"] == row["id"])
        assert (row["model"], row["model_run"], row["detector"]) == (model[0], receipt["run_id"], "yunet")
        assert (row["image_width"], row["image_height"], row["source"]) == (640, 480, "two.png")
        assert (row["box_x"], row["box_y"], row["box_w"], row["box_h"]) == tuple(face["box"].values())
        assert row["expression"] == face["expression"] and abs(row["confidence"] - face["confidence"]) < 1e-6
        assert 40 < row["brightness"] < 220 and row["contrast"] > 10 and row["sharpness"] > 10
        assert row["latency_ms"] > 0 and row["request"] == rows[0]["request"]  # one upload, one request
    assert counted['ferops_requests_total{"status": "200"}'] == 2
    assert counted['ferops_requests_total{"status": "415"}'] == 1
    assert counted["ferops_faces_total"] == 2 and counted["ferops_predict_latency_seconds_count"] == 2
    assert sum(v for k, v in counted.items() if k.startswith("ferops_predictions_total")) == 2
    assert counted['ferops_prediction_log_records_total{"outcome": "logged"}'] == 2
    log.close()


def test_a_broken_log_never_breaks_a_prediction(usage_registry, raw_dir, caplog):
    predictor, model = registry_predictor(usage_registry)
    log = PredictionLog(f"postgresql+psycopg2://ferops:pw@127.0.0.1:{free_port()}/log?connect_timeout=2")
    canvas, _ = multi_face_canvas(raw_dir, 1)
    with running(create_app(predictor, prediction_log=log, model=model)) as url:
        response = post(url, "one.png", png(canvas))
        assert response.status_code == 200 and len(response.json()["faces"]) == 1
        stats = wait_logged(url, 1)
        counted = metrics(url)
    assert stats["failed"] == 1 and "OperationalError" in stats["last_error"]
    assert counted['ferops_prediction_log_records_total{"outcome": "failed"}'] == 1
    assert "could not write 1 record(s) to the prediction log" in caplog.text
    log.close()


def _rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


@pytest.mark.slow
def test_100_concurrent_uploads_are_all_answered_and_logged_once(onnx_model, raw_dir, tmp_path):
    log_uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [FEROPS, "serve", "--model", str(onnx_model), "--port", str(port), "--log-uri", log_uri]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"{url}/health", server, log)
        canvas, _ = multi_face_canvas(raw_dir, 2, offset=10)
        photo = cv2.imencode(".jpg", cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))[1].tobytes()
        for _ in range(10):  # warm-up: caches, thread pools, the database file
            assert post(url, "warm.jpg", photo).status_code == 200
        wait_logged(url, 20)
        before = _rss_mib(server.pid)
        with ThreadPoolExecutor(max_workers=32) as pool:
            responses = list(pool.map(lambda i: post(url, f"upload{i}.jpg", photo), range(100)))
        assert [r.status_code for r in responses] == [200] * 100
        assert all(len(r.json()["faces"]) == 2 for r in responses)
        stats = wait_logged(url, 220)
        after = _rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert stats == {**stats, "logged": 220, "failed": 0, "dropped": 0}
    rows = read_log(log_uri)
    assert len(rows) == 220 and len({row["id"] for row in rows}) == 220  # every face once
    uploads = [row for row in rows if row["source"].startswith("upload")]
    assert sorted({row["source"] for row in uploads}) == sorted(f"upload{i}.jpg" for i in range(100))
    assert all(sum(row["request"] == r["request"] for row in uploads) == 2 for r in uploads)
    # One image is decoded at a time: 100 uploads at once must not grow the server much.
    assert after - before < 150, f"server memory grew from {before:.0f} to {after:.0f} MiB"


@pytest.fixture(scope="module")
def monitored(usage_registry, trained_run, prepared_dir, tmp_path_factory):
    """A served registry model, its reference on PublicTest, and a log of PrivateTest-like traffic."""
    predictor, model = registry_predictor(usage_registry)
    work = tmp_path_factory.mktemp("monitor")
    public = load_arrays(prepared_dir / "public_test.npz")["images"][:1200]
    reference = work / "reference.parquet"
    receipt = json.loads(trained_run.receipt.read_text())
    write_reference(reference_frame(predictor, public), reference, {"run_id": receipt["run_id"],
                                                                    "reference": "the brief test model"})
    private = load_arrays(prepared_dir / "private_test.npz")["images"]
    log_uri = f"sqlite:///{work / 'predictions.db'}"
    log = PredictionLog(log_uri)
    with running(create_app(predictor, prediction_log=log, model=model)) as url:
        for index, face in enumerate(private[:250]):
            assert post(url, f"private{index}.png", png(serving_view(face))).status_code == 200
        wait_logged(url, 1)
        middle = datetime.now(UTC)
        time.sleep(0.05)
        # The same kind of faces, but in a dark room: brightness and contrast fall.
        for index, face in enumerate(private[250:500]):
            dark = (serving_view(face) * 0.45).astype(np.uint8)
            assert post(url, f"dark{index}.png", png(dark)).status_code == 200
        wait_logged(url, 1)
    log.close()
    params = work / "params.yaml"
    params.write_text((REPO_ROOT / "params.yaml").read_text())
    return {"work": work, "log": log_uri, "reference": reference, "middle": middle, "model": model,
            "tracking": usage_registry[0], "run_id": receipt["run_id"], "params": params}


def monitor(setup, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([FEROPS, "monitor", "--log-uri", setup["log"], "--params", str(setup["params"]),
                           "--tracking-uri", setup["tracking"], *extra], capture_output=True, text=True,
                          env=env, cwd=setup["work"], timeout=600)


@pytest.mark.slow
def test_monitor_passes_publictest_like_traffic_and_flags_a_dark_room(monitored):
    from mlflow import MlflowClient

    middle = monitored["middle"].isoformat()
    calm = monitor(monitored, "--until", middle, "--reference", str(monitored["reference"]), "--out", "calm")
    assert calm.returncode == 0, calm.stdout + calm.stderr
    summary = json.loads((monitored["work"] / "calm" / "summary.json").read_text())
    # One face per upload where the detector found one (most of the 250 upscaled PrivateTest faces).
    assert 200 <= summary["faces"]["current"] <= 250 and not summary["drift"] and summary["alarms"] == []
    assert summary["model"]["run_id"] == monitored["run_id"]
    assert summary["model"]["reference"] == monitored["model"][0]
    assert set(summary["columns"]) == {"brightness", "contrast", "sharpness", "confidence", "expression"}
    assert "no drift past the thresholds" in calm.stdout
    html = (monitored["work"] / "calm" / "report.html").read_text()
    assert len(html) > 100_000 and "brightness" in html  # Evidently's report, with its charts

    dark = monitor(monitored, "--since", middle, "--reference", str(monitored["reference"]), "--out", "dark")
    assert dark.returncode == 3, dark.stdout + dark.stderr
    summary = json.loads((monitored["work"] / "dark" / "summary.json").read_text())
    assert 150 <= summary["faces"]["current"] <= 250 and summary["drift"]
    assert summary["columns"]["brightness"]["drifted"] and summary["columns"]["contrast"]["drifted"]
    assert summary["means"]["brightness"]["current"] < 0.6 * summary["means"]["brightness"]["reference"]
    assert any("drifted" in alarm for alarm in summary["alarms"]) and "ALARM:" in dark.stdout

    # Each check is a monitoring run in MLflow, tied to the model's training run, report attached.
    client = MlflowClient(monitored["tracking"])
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["model_run_id"] == monitored["run_id"] and run.data.tags["drift"] == "true"
    assert run.data.tags["model"] == monitored["model"][0]
    assert run.data.metrics["faces"] == summary["faces"]["current"]
    assert run.data.metrics["drift.brightness"] > 0.1
    assert {a.path for a in client.list_artifacts(run.info.run_id, "monitor")} == {
        "monitor/report.html", "monitor/summary.json"}

    if SCREENSHOTS:  # the README's picture of the drift report
        from playwright.sync_api import sync_playwright

        from conftest import launch_chromium

        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto((monitored["work"] / "dark" / "report.html").as_uri())
            page.wait_for_timeout(3000)
            page.screenshot(path=str(Path(SCREENSHOTS) / "drift-report.png"))
            browser.close()


def test_monitor_refuses_empty_windows_and_other_models(monitored, tmp_path):
    future = monitor(monitored, "--since", "2999-01-01", "--reference", str(monitored["reference"]),
                     "--no-mlflow", "--out", "none")
    assert future.returncode == 1 and "no faces since 2999-01-01" in future.stderr
    other = tmp_path / "other.parquet"
    write_reference(reference_frame_like(monitored["reference"]), other,
                    {"run_id": "0123abcd", "reference": "x"})
    wrong = monitor(monitored, "--reference", str(other), "--no-mlflow", "--out", "wrong")
    assert wrong.returncode == 1
    assert "is the reference of model run 0123abcd, but the window holds faces of run(s)" in wrong.stderr
    assert monitored["run_id"] in wrong.stderr
    few = monitor(monitored, "--last", "10", "--reference", str(monitored["reference"]), "--no-mlflow",
                  "--out", "few")
    assert few.returncode == 1 and "monitor.min_faces = 50" in few.stderr
    assert not (monitored["work"] / "few").exists()  # nothing half-written


def reference_frame_like(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


# --- Corrections: POST /feedback and the page's control ------------------------------------------------


def feedback_rows(log_uri: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(log_uri)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("feedback"):
                return []
            return [dict(row._mapping) for row in connection.execute(sa.text("SELECT * FROM feedback"))]
    finally:
        engine.dispose()


def test_feedback_is_stored_with_its_crop_and_bad_requests_write_nothing(usage_registry, raw_dir, tmp_path):
    from ferops.prediction_log import LogRecord

    predictor, model = registry_predictor(usage_registry)
    log_uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(log_uri)
    # A face another model answered, in the same database.
    other = LogRecord(source="x.jpg", face=0, model="models:/another/9", detector="yunet", image_width=1,
                      image_height=1, box=(0, 0, 1, 1), statistics={"brightness": 1.0, "contrast": 1.0,
                      "sharpness": 1.0}, expression="sad", confidence=0.5, probabilities={"sad": 1.0})
    log.submit([other])
    canvas, _ = multi_face_canvas(raw_dir, 2, offset=60)
    classes = list(predictor.classes)
    with running(create_app(predictor, prediction_log=log, model=model)) as url:
        faces = post(url, "two.png", png(canvas)).json()["faces"]
        wrong = next(name for name in classes if name != faces[0]["expression"])
        bad = {
            "not JSON": httpx.post(f"{url}/feedback", content=b"id=1",
                                   headers={"content-type": "text/plain"}),
            "no id": httpx.post(f"{url}/feedback", json={"expression": wrong}),
            "unknown class": httpx.post(f"{url}/feedback", json={"id": faces[0]["id"], "expression": "smug"}),
            "unknown id": httpx.post(f"{url}/feedback", json={"id": "no-such-face", "expression": wrong}),
            "other model": httpx.post(f"{url}/feedback", json={"id": other.id, "expression": wrong}),
        }
        good = httpx.post(f"{url}/feedback", json={"id": faces[0]["id"], "expression": wrong})
        counted = metrics(url)
    log.close()
    assert {name: r.status_code for name, r in bad.items()} == dict.fromkeys(bad, 400)
    assert "expected a JSON body" in bad["not JSON"].json()["detail"]
    assert "without a face id" in bad["no id"].json()["detail"]
    unknown_class = bad["unknown class"].json()["detail"]
    assert "'smug'" in unknown_class and ", ".join(classes) in unknown_class
    assert "unknown face id 'no-such-face'" in bad["unknown id"].json()["detail"]
    assert "was answered by models:/another/9" in bad["other model"].json()["detail"]
    assert good.status_code == 201, good.text
    rows = feedback_rows(log_uri)
    assert len(rows) == 1  # the five bad requests wrote nothing
    row = rows[0]
    assert (row["face_id"], row["expression"]) == (faces[0]["id"], wrong)
    assert row["predicted"] == faces[0]["expression"]
    assert (row["model"], row["id"]) == (model[0], good.json()["id"])
    crop = cv2.imdecode(np.frombuffer(row["crop"], np.uint8), cv2.IMREAD_GRAYSCALE)
    assert crop.shape == (48, 48) and crop.std() > 10  # the face's crop, kept without --store-faces
    assert counted[f'ferops_feedback_total{{"expression": "{wrong}"}}'] == 1


def test_feedback_needs_the_log(usage_registry, raw_dir):
    predictor, model = registry_predictor(usage_registry)
    canvas, _ = multi_face_canvas(raw_dir, 1)
    with running(create_app(predictor, model=model)) as url:
        face = post(url, "one.png", png(canvas)).json()["faces"][0]
        response = httpx.post(f"{url}/feedback", json={"id": face["id"], "expression": "happy"})
    assert response.status_code == 503 and "--no-log" in response.json()["detail"]


@pytest.mark.slow
def test_a_correction_clicked_on_the_page_is_stored(usage_registry, raw_dir, tmp_path):
    from playwright.sync_api import sync_playwright

    from conftest import launch_chromium

    predictor, model = registry_predictor(usage_registry)
    log_uri = f"sqlite:///{tmp_path / 'predictions.db'}"
    log = PredictionLog(log_uri)
    canvas, _ = multi_face_canvas(raw_dir, 2, offset=90)
    photo = tmp_path / "two.jpg"
    cv2.imwrite(str(photo), cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR))
    app = create_app(predictor, prediction_log=log, model=model)
    with running(app) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.goto(url + "/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector(".face-box", timeout=20_000)
            second = page.locator("#results .face").nth(1)
            predicted = second.locator("strong").inner_text().split(": ")[1].split(" ")[0]
            assert second.locator(".correct-send").is_disabled()
            choices = second.locator(".correct-choice option").all_inner_texts()
            # The placeholder and every class but the model's answer.
            assert predicted not in choices and len(choices) == len(predictor.classes)
            second.locator(".correct-choice").select_option("surprise" if predicted != "surprise" else "fear")
            second.locator(".correct-send").click()
            second.locator(".correct-note.done").wait_for(timeout=10_000)
            corrected = second.locator(".correct-note").inner_text()
            if SCREENSHOTS:
                second.scroll_into_view_if_needed()
                page.screenshot(path=str(Path(SCREENSHOTS) / "correction-control.png"), full_page=True)
        finally:
            browser.close()
    log.close()
    rows = feedback_rows(log_uri)
    assert len(rows) == 1 and rows[0]["predicted"] == predicted
    assert corrected == f"Thanks: recorded as {rows[0]['expression']}."
    assert rows[0]["expression"] in ("surprise", "fear")
