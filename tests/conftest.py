"""Shared fixtures: the real datasets beside the checkout, fetched once per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _datasets_dir() -> Path:
    # CI and developers keep the team's data mirror beside the checkout; FEROPS_DATA_MIRROR
    # points elsewhere when it lives somewhere else.
    return Path(os.environ.get("FEROPS_DATA_MIRROR", REPO_ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = _datasets_dir()
    if not (path / "fer2013.csv.gz").is_file():
        pytest.fail(f"real datasets not found in {path}; set FEROPS_DATA_MIRROR to their directory")
    return path


@pytest.fixture(scope="session", autouse=True)
def detector_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user cache holding the YuNet model, so predict/serve find it as after a first online run.

    CI has no network: without it, a default detector built outside a checkout's data/raw would
    try to download the model. FEROPS_CACHE_DIR is inherited by every subprocess the tests start.
    """
    from ferops.detector_model import YUNET_FILE

    cache = tmp_path_factory.mktemp("ferops_cache")
    source = _datasets_dir() / YUNET_FILE
    if source.is_file():
        shutil.copyfile(source, cache / YUNET_FILE)
    os.environ["FEROPS_CACHE_DIR"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def yunet_model(datasets_dir: Path) -> Path:
    """The real YuNet face-detector model from the data mirror."""
    from ferops.detector_model import YUNET_FILE

    return datasets_dir / YUNET_FILE


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory, datasets_dir: Path) -> Path:
    """The real raw-data directory, produced once by the real download stage."""
    out = tmp_path_factory.mktemp("raw") / "raw"
    report = out.parent / "download.json"
    env = dict(os.environ, FEROPS_DATA_MIRROR=str(datasets_dir))
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "download.py"),
         "--params", str(REPO_ROOT / "params.yaml"), "--out", str(out), "--report", str(report)],
        check=True, env=env, cwd=REPO_ROOT,
    )
    return out


@pytest.fixture(scope="session")
def fer_and_votes(raw_dir: Path):
    """The real FER2013 rows and their FER+ votes, joined by position, as ``prepare`` reads them."""
    import numpy as np

    from ferops.fer2013 import USAGES, read_fer2013
    from ferops.ferplus import read_ferplus

    fer = read_fer2013(raw_dir / "fer2013.csv")
    votes, has_name = read_ferplus(raw_dir / "fer2013new.csv", np.asarray(USAGES)[fer.usage])
    return fer, votes, has_name


def run_stage_script(name: str, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO_ROOT / "stages" / f"{name}.py"),
                    "--params", str(REPO_ROOT / "params.yaml"), *args], check=True, cwd=REPO_ROOT)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory: pytest.TempPathFactory, raw_dir: Path) -> Path:
    """Real prepared arrays (validate -> prepare -> oversample stages on the real raw data)."""
    work = tmp_path_factory.mktemp("prepared")
    run_stage_script("validate", "--raw", str(raw_dir), "--docs", str(work / "docs"),
                     "--summary", str(work / "validation.json"))
    run_stage_script("prepare", "--raw", str(raw_dir), "--validation", str(work / "validation.json"),
                     "--out", str(work / "prepared"), "--report", str(work / "prepare.json"),
                     "--figures", str(work / "figures"), "--galleries", str(work / "galleries"))
    run_stage_script("oversample", "--train", str(work / "prepared" / "train.npz"),
                     "--out", str(work / "prepared" / "oversampled.npz"),
                     "--report", str(work / "oversample.json"),
                     "--figure", str(work / "figures" / "oversample.png"))
    return work / "prepared"


# The one small training profile of the tests: one epoch of 64-image batches, no warm-up and no
# time budget (a loaded CI machine must not cut a run short).
SMALL_TRAINING = {"epochs": 1, "batch_size": 64, "warmup_fraction": 0.0, "max_minutes": None,
                  "max_train_images": 1024}


def small_params(**train: object) -> dict:
    """params.yaml with the small training profile, then ``train`` overrides (known keys only)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    changes = {**SMALL_TRAINING, **train}
    unknown = set(changes) - set(params["train"])
    assert not unknown, f"not train params: {unknown}"
    params["train"].update(changes)
    return params


def brief_params(directory: Path, *, model: str = "mini_xception", seed: int | None = None,
                 **train: object) -> Path:
    """A copy of params.yaml with the small training profile, ``model`` and (if given) ``base.seed``."""
    params = small_params(**train)
    params["model"]["arch"] = model
    if seed is not None:
        params["base"]["seed"] = seed
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _clean_mlflow_env() -> dict[str, str]:
    """os.environ without the MLflow URIs that mlflow.set_*_uri calls of earlier tests left there."""
    return {key: value for key, value in os.environ.items()
            if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


@dataclass
class TrainedRun:
    """A real (brief) training run of the train stage, logged to its own SQLite store."""

    work: Path
    params: Path
    tracking_uri: str
    model: Path
    receipt: Path
    report: Path


def train_briefly(work: Path, prepared: Path, tracking_uri: str, *, env: dict[str, str] | None = None,
                  model: str = "mini_xception", seed: int | None = None, **train: object) -> TrainedRun:
    """Run the real train stage on a small profile; MLflow artifacts land in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    params = brief_params(work, model=model, seed=seed, **train)
    run = TrainedRun(work, params, tracking_uri, work / "model.keras", work / "mlflow_run.json",
                     work / "train.json")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py"), "--params", str(params),
         "--train", str(prepared / "oversampled.npz"), "--val", str(prepared / "public_test.npz"),
         "--model", str(run.model), "--report", str(run.report),
         "--history", str(work / "history.csv"), "--figure", str(work / "curves.png"),
         "--receipt", str(run.receipt)],
        check=True, cwd=work, env={**_clean_mlflow_env(), **(env or {}), "MLFLOW_TRACKING_URI": tracking_uri},
    )
    return run


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store shared by the evaluation and registry tests."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path,
                registry_store: str) -> TrainedRun:
    """One brief real training (1 epoch on 1,000 images) tracked in ``registry_store``.

    At lr 0.01: after 15 steps at the recipe's 0.1 the logits reach the hundreds and the softmax
    saturates (a mirrored face then gets the very same answer), which tests of flip TTA and of
    the promotion gate cannot work with.
    """
    return train_briefly(tmp_path_factory.mktemp("trained"), prepared_dir, registry_store,
                         max_train_images=1000, lr=0.01)


@contextlib.contextmanager
def tracking_env(uri: str):
    """MLFLOW_TRACKING_URI set to ``uri`` for a stage called in-process, as `dvc repro` would have it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_TRACKING_URI"]
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def run_evaluate(run: TrainedRun, prepared: Path, out: Path, *extra: str) -> int:
    """Run the evaluate stage in-process on a trained run; outputs under ``out``."""
    from stages import evaluate

    with tracking_env(run.tracking_uri):
        return evaluate.main([
            "--params", str(run.params), "--model", str(run.model), "--prepared", str(prepared),
            "--receipt", str(run.receipt), "--metrics", str(out / "metrics.json"),
            "--details", str(out / "evaluate"), "--plots", str(out / "plots"),
            "--figures", str(out / "figures"), "--galleries", str(out / "galleries"),
            "--detector-model", str(_datasets_dir() / "face_detection_yunet_2023mar.onnx"),
            "--reference", str(out / "monitor" / "reference.parquet"), *extra])


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, trained_run: TrainedRun,
                  prepared_dir: Path) -> Path:
    """The evaluate stage run once on ``trained_run``; returns its output folder."""
    out = tmp_path_factory.mktemp("evaluated")
    assert run_evaluate(trained_run, prepared_dir, out) == 0
    return out


# --- A static HTTP server on 127.0.0.1 (mirrors, model downloads, the docs site) ----------------------------


@contextlib.contextmanager
def http_folder(folder: Path):
    """Serve ``folder`` over real HTTP on a free port of 127.0.0.1; yields the base URL (no slash)."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002 - the base class's signature
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextlib.contextmanager
def running(app):
    """An ASGI app on a real uvicorn server on a free port of 127.0.0.1; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# --- Using the model (predict / serve / export): shared inputs built from the real data ---------------

USAGE_MODEL_NAME = "ferops-usage-test"


def jaffe_paths(raw_dir: Path) -> list[Path]:
    """The real JAFFE portraits (256x256 gray TIFFs), sorted."""
    return sorted((raw_dir / "jaffe").glob("*.tiff"))


def multi_face_canvas(raw_dir: Path, n: int, offset: int = 0, side: int = 200):
    """A 640x480 gray photo with ``n`` (1-3) real JAFFE faces side by side, and each tile's (x, y, w, h)."""
    import cv2
    import numpy as np

    paths = jaffe_paths(raw_dir)
    canvas = np.full((480, 640), 128, np.uint8)
    tiles = []
    for i in range(n):
        # Different subjects: JAFFE files are sorted by subject, about 21 per subject.
        face = cv2.imread(str(paths[(offset + 23 * i) % len(paths)]), cv2.IMREAD_GRAYSCALE)
        x, y = 10 + (side + 10) * i, 140
        canvas[y:y + side, x:x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        tiles.append((x, y, side, side))
    return canvas, tiles


def ckplus_faces(raw_dir: Path, count: int):
    """``count`` real CK+48 faces (48x48 uint8), spread over the emotion folders."""
    import cv2
    import numpy as np

    paths = sorted((raw_dir / "ckplus").glob("*/*.png"))
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
    return np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in picks])


@pytest.fixture(scope="session")
def usage_model(trained_run: TrainedRun) -> Path:
    """The brief real training's .keras file, for predict/serve/export tests."""
    return trained_run.model


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory, usage_model: Path) -> Path:
    """``usage_model`` exported to ONNX by ferops.export."""
    import keras

    from ferops.export import export_onnx

    model = keras.saving.load_model(usage_model, compile=False)
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def usage_registry(trained_run: TrainedRun) -> tuple[str, str]:
    """``trained_run``'s logged model registered as USAGE_MODEL_NAME@champion; (tracking URI, name)."""
    import json

    from ferops.registry import CHAMPION, register

    receipt = json.loads(trained_run.receipt.read_text())
    register(trained_run.tracking_uri, USAGE_MODEL_NAME, receipt["model_uri"], {}, CHAMPION)
    return trained_run.tracking_uri, USAGE_MODEL_NAME


# --- The team setup (tests/test_team.py): PostgreSQL, an MLflow server with logins, a WebDAV remote -----
# Each is a real server on 127.0.0.1, started once per test run and stopped (also after a failure).


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Wait for ``url`` to answer (any HTTP status), or fail with the server's log."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers (401 from a server with logins)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
            raise RuntimeError(f"{url} did not come up (exit status {process.poll()}):\n{tail}")
        time.sleep(0.5)


@contextlib.contextmanager
def background(command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
    """A server process in its own process group, stopped (the whole group) on exit."""
    import signal

    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    import shutil

    found = shutil.which(name) or next(
        (str(p) for p in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)), None)
    if not found:
        pytest.fail(f"PostgreSQL's {name} not found: install Debian's postgresql package (.ci/run does)")
    return found


@dataclass
class Postgres:
    port: int
    password: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres:{self.password}@127.0.0.1:{self.port}/{database}"


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL server on a free loopback port, with a password (initdb + pg_ctl).

    initdb and the server refuse to run as root: as root they run as the ``postgres`` user, in a
    folder of their own (pytest's temporary folders are private to root).
    """
    import secrets
    import shutil
    import tempfile

    import psycopg2

    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    home = Path(tempfile.mkdtemp(prefix="ferops-pg-"))
    password = secrets.token_urlsafe(16)
    server = Postgres(free_port(), password)
    data, log = home / "data", home / "server.log"
    try:
        (home / "pw").write_text(password)
        if as_root:
            shutil.chown(home, "postgres", "postgres")
            shutil.chown(home / "pw", "postgres", "postgres")
        subprocess.run([*prefix, _postgres_bin("initdb"), "-D", str(data), "-U", "postgres",
                        "--pwfile", str(home / "pw"), "--auth", "scram-sha-256", "-E", "UTF8",
                        "--no-instructions"], check=True, capture_output=True, timeout=120)
        subprocess.run([*prefix, _postgres_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "-o", f"-h 127.0.0.1 -p {server.port} -k {home}", "start"],
                       check=True, capture_output=True, timeout=90)
        try:
            connection = psycopg2.connect(host="127.0.0.1", port=server.port, user="postgres",
                                          password=password, dbname="postgres", connect_timeout=10)
            connection.autocommit = True
            with connection.cursor() as cursor:
                # The tracking store and registry, and the login (user and permission) store.
                cursor.execute("CREATE DATABASE mlflow")
                cursor.execute("CREATE DATABASE mlflow_auth")
            connection.close()
            yield server
        finally:
            subprocess.run([*prefix, _postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=60)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@dataclass
class TeamServer:
    """The team's MLflow server: PostgreSQL stores, logins (basic-auth) and proxied artifacts."""

    url: str
    artifacts: Path
    admin: tuple[str, str]
    users: dict[str, str]  # name -> password: alice runs the pipeline, bob has no permission

    def env(self, user: str | None = "alice", password: str | None = None) -> dict[str, str]:
        """The environment of a client logged in as ``user`` (None: anonymous)."""
        # MLflow's set_tracking_uri/set_registry_uri also set these variables for the whole test
        # process: a registry URI left by another test would send `mlflow models serve` there.
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("MLFLOW_TRACKING_", "MLFLOW_AUTH_", "MLFLOW_REGISTRY_"))}
        env["MLFLOW_TRACKING_URI"] = env["MLFLOW_REGISTRY_URI"] = self.url
        if user:
            env["MLFLOW_TRACKING_USERNAME"] = user
            env["MLFLOW_TRACKING_PASSWORD"] = password or (self.admin[1] if user == self.admin[0]
                                                           else self.users[user])
        return env


@pytest.fixture(scope="session")
def team_server(tmp_path_factory: pytest.TempPathFactory, postgres_server: Postgres):
    """``mlflow server --app-name basic-auth`` on PostgreSQL, artifacts proxied; users alice and bob.

    The admin password and Flask's secret key come from the environment (here: generated).
    """
    import secrets

    import requests

    work = tmp_path_factory.mktemp("team-server")
    config = work / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = {postgres_server.url('mlflow_auth')}\n"
                      "admin_username = admin\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    admin = ("admin", secrets.token_urlsafe(16))
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1],
               MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32),
               # No background job runners (seven Huey processes for GenAI jobs): nothing here uses them.
               MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "2", "--app-name", "basic-auth",
               "--backend-store-uri", postgres_server.url("mlflow"),
               "--artifacts-destination", str(work / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with background(command, work / "server.log", env=env, cwd=work) as process:
        wait_until_up(f"{url}/health", process, work / "server.log", timeout=240)
        users = {"alice": secrets.token_urlsafe(12), "bob": secrets.token_urlsafe(12)}
        for name, password in users.items():
            response = requests.post(f"{url}/api/2.0/mlflow/users/create", auth=admin, timeout=30,
                                     json={"username": name, "password": password})
            assert response.status_code == 200, response.text
        yield TeamServer(url, work / "artifacts", admin, users)


@dataclass
class WebDavRemote:
    url: str
    root: Path
    user: str
    password: str


@pytest.fixture(scope="session")
def webdav_remote(tmp_path_factory: pytest.TempPathFactory):
    """A WebDAV server (wsgidav) with a login, serving a folder: the team's DVC remote."""
    import secrets

    work = tmp_path_factory.mktemp("webdav")
    (work / "share" / "dvcstore").mkdir(parents=True)  # the remote's folder (DVC creates what is inside)
    password = secrets.token_urlsafe(12)
    port = free_port()
    config = {
        "host": "127.0.0.1", "port": port, "server": "cheroot", "verbose": 2,
        "provider_mapping": {"/": str(work / "share")},
        "http_authenticator": {"domain_controller": None, "accept_basic": True, "accept_digest": False,
                               "default_to_digest": False},
        "simple_dc": {"user_mapping": {"*": {"dvc": {"password": password}}}},
    }
    (work / "wsgidav.yaml").write_text(yaml.safe_dump(config))
    command = [str(Path(sys.executable).parent / "wsgidav"), "--config", str(work / "wsgidav.yaml")]
    with background(command, work / "server.log", cwd=work) as process:
        wait_until_up(f"http://127.0.0.1:{port}/", process, work / "server.log", timeout=60)
        yield WebDavRemote(f"webdav://127.0.0.1:{port}/dvcstore", work / "share", "dvc", password)


# Debian's Chromium (.ci/run installs it), driven by Playwright from pip: no browser download.
CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright):
    """Headless Debian Chromium through Playwright, or a test failure that says how to get it."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (Debian's; see .ci/run)")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"])

