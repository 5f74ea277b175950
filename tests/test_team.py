"""The team setup end to end, against real servers on 127.0.0.1 (see conftest.py).

One small-profile `dvc repro` logs through the team's MLflow server (PostgreSQL stores, logins,
proxied artifacts); the same project is then pushed to a bare git remote and a WebDAV DVC remote,
cloned and pulled by a "new colleague", promoted, served, and used for queued experiments that
travel with `dvc exp push` / `dvc exp pull`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from conftest import TeamServer, WebDavRemote, background, free_port, wait_until_up
from ferops.io import file_digest, load_arrays
from test_pipeline import copy_project, dvc, git, wait_for_queue

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
MODEL = "ferops-fer2013"
CHAMPION = f"models:/{MODEL}@champion"


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@dataclass
class Team:
    project: Path
    origin: Path
    env: dict[str, str]  # alice's: the team server and the data mirror
    repro_log: str


@pytest.fixture(scope="module")
def team(request, tmp_path_factory, repo_root, datasets_dir, webdav_remote: WebDavRemote) -> Team:
    """One small-profile `dvc repro` through the team server, committed, pushed to git and DVC remotes."""
    work = tmp_path_factory.mktemp("team")
    project, origin = work / "project", work / "origin.git"
    copy_project(repo_root, project)
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env.update(FEROPS_DATA_MIRROR=str(datasets_dir), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    # The data stages need no tracking server: they run while the server starts (~40 s).
    with open(work / "data-stages.log", "w") as log:
        data_stages = subprocess.Popen([str(BIN / "dvc"), "repro", "oversample"], cwd=project, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
    try:
        team_server: TeamServer = request.getfixturevalue("team_server")
        assert data_stages.wait(timeout=1200) == 0, (work / "data-stages.log").read_text()
    finally:
        if data_stages.poll() is None:
            data_stages.kill()
            data_stages.wait()
    env = dict(team_server.env("alice"), FEROPS_DATA_MIRROR=env["FEROPS_DATA_MIRROR"], PATH=env["PATH"])
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(project, "remote", "add", "origin", str(origin))
    # The remote's URL goes into git; the login stays in the git-ignored .dvc/config.local.
    dvc(project, "remote", "add", "-d", "team", webdav_remote.url, env=env)
    dvc(project, "remote", "modify", "--local", "team", "user", webdav_remote.user, env=env)
    dvc(project, "remote", "modify", "--local", "team", "password", webdav_remote.password, env=env)
    log = dvc(project, "repro", env=env)
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first run on the team server")
    git(project, "push", "-q", "origin", "HEAD")
    dvc(project, "push", env=env)
    return Team(project, origin, env, log)


@pytest.fixture(scope="module")
def colleague(team: Team, webdav_remote: WebDavRemote, tmp_path_factory) -> Path:
    """Day one of a new team member: clone, add the remote's login, `dvc pull`."""
    clone = tmp_path_factory.mktemp("colleague") / "ferops"
    subprocess.run(["git", "clone", "-q", str(team.origin), str(clone)], check=True)
    dvc(clone, "remote", "modify", "--local", "team", "user", webdav_remote.user, env=team.env)
    dvc(clone, "remote", "modify", "--local", "team", "password", webdav_remote.password, env=team.env)
    dvc(clone, "pull", env=team.env)
    return clone


@contextlib.contextmanager
def logged_in(server: TeamServer, user: str | None, password: str | None = None):
    """This process's MLflow client environment as ``user``."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(server.env(user, password))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def client(server: TeamServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.url, registry_uri=server.url)


def a_face_photo(project: Path) -> Path:
    """A real JAFFE portrait in which the prepare stage found a face."""
    jaffe = load_arrays(project / "data/prepared/jaffe.npz")
    name = str(jaffe["file"][np.flatnonzero(jaffe["detected"])[0]])
    return project / "data/raw/jaffe" / Path(name).name


def test_pipeline_logs_run_datasets_model_and_evaluation_to_the_team_server(team, team_server):
    for stage in ("train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in team.repro_log
    receipt = json.loads((team.project / "reports/mlflow_run.json").read_text())
    assert receipt["tracking_uri"] == team_server.url
    with logged_in(team_server, "alice"):
        mlflow = client(team_server)
        run = mlflow.get_run(receipt["run_id"])
        assert run.data.params["train.max_train_images"] == "512"
        assert "private_test.accuracy" in run.data.metrics  # evaluate added to the training's run
        digests = {dataset.dataset.digest for dataset in run.inputs.dataset_inputs}
        report = json.loads((team.project / "reports/train.json").read_text())
        assert digests == set(report["data_md5"].values())
        assert [a.path for a in mlflow.list_artifacts(run.info.run_id, "evaluate")]
        version = mlflow.get_model_version_by_alias(MODEL, "challenger")
        assert version.run_id == run.info.run_id and str(version.version) == "1"
    # Artifacts went through the server into its artifact store; nothing was stored locally.
    assert any(team_server.artifacts.rglob("*.keras"))
    assert not (team.project / "mlflow.db").exists() and not (team.project / "mlartifacts").exists()


def test_logins_are_required_and_permissions_enforced(team, team_server, tmp_path, caplog):
    from mlflow.exceptions import MlflowException

    from ferops.tracking import TrackingServerError, pipeline_run

    search = f"{team_server.url}/api/2.0/mlflow/experiments/search"
    assert requests.get(search, params={"max_results": 1}, timeout=30).status_code == 401
    with logged_in(team_server, "bob"):
        mlflow = client(team_server)
        experiment = mlflow.get_experiment_by_name("ferops")  # READ: the server's default permission
        with pytest.raises(MlflowException) as refused:
            mlflow.create_run(experiment.experiment_id)
        assert refused.value.get_http_status_code() == 403
        with pytest.raises(TrackingServerError, match="refused to let user 'bob' start a run"):
            with pipeline_run("ferops", team.project, os.environ, {}, {}):
                pass
    # The README's way to give bob EDIT on the experiment: then he can log runs to it.
    from mlflow.server import get_app_client

    with logged_in(team_server, "admin"):
        get_app_client("basic-auth", tracking_uri=team_server.url).grant_user_permission(
            "bob", "experiment", experiment.experiment_id, "EDIT")
    with logged_in(team_server, "bob"):
        run_id = client(team_server).create_run(experiment.experiment_id).info.run_id
    with logged_in(team_server, "admin"):
        client(team_server).delete_run(run_id)  # deleting needs MANAGE


def _one_line_error(result: subprocess.CompletedProcess, *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    for text in expected:
        assert text in output, output
    return output


def test_server_down_or_wrong_password_is_one_clear_line(team, team_server, tmp_path, caplog, monkeypatch):
    from stages import register

    from ferops.cli import main as ferops

    photo = a_face_photo(team.project)
    dead = f"http://127.0.0.1:{free_port()}"
    # Every ferops command that reads the registry, in-process: status 1 and one line naming the URI.
    for command in (["predict", str(photo)], ["serve", "--port", str(free_port())],
                    ["export", "-o", str(tmp_path / "m.onnx")],
                    ["promote", "--dry-run", "--params", str(team.project / "params.yaml")]):
        caplog.clear()
        assert ferops([*command, "--tracking-uri", dead]) == 1, command
        assert f"MLflow tracking server {dead} is unreachable" in caplog.text
        assert "check that the server is up" in caplog.text
    assert not (tmp_path / "m.onnx").exists()
    # A wrong password, through the real command line.
    env = team_server.env("alice", "not-the-password")
    result = run([str(BIN / "ferops"), "predict", str(photo)], team.project, env)
    _one_line_error(result, team_server.url, "refused the credentials (user 'alice', HTTP 401)",
                    "MLFLOW_TRACKING_PASSWORD")
    # The stages: a wrong password stops the train stage before anything is written...
    out = tmp_path / "train"
    result = run([sys.executable, "stages/train.py", "--train", "data/oversampled/train.npz",
                  "--val", "data/prepared/public_test.npz", "--model", str(out / "model.keras"),
                  "--report", str(out / "train.json"), "--history", str(out / "history.csv"),
                  "--figure", str(out / "curves.png"), "--receipt", str(out / "receipt.json")],
                 team.project, env)
    _one_line_error(result, "stage train failed", team_server.url, "MLFLOW_TRACKING_USERNAME")
    assert not out.exists() or not any(out.iterdir())
    # ...and a server that is down (a run logged there) stops register, leaving its receipt untouched.
    receipt = json.loads((team.project / "reports/mlflow_run.json").read_text())
    (tmp_path / "receipt.json").write_text(json.dumps({**receipt, "tracking_uri": dead}))
    monkeypatch.chdir(team.project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    before = (team.project / "reports/registry.json").read_bytes()
    caplog.clear()
    assert register.main(["--receipt", str(tmp_path / "receipt.json"), "--metrics", "reports/metrics.json",
                          "--details", "reports/evaluate", "--train-report", "reports/train.json",
                          "--out", "reports/registry.json"]) == 1
    assert "stage register failed" in caplog.text
    assert f"MLflow tracking server {dead} is unreachable" in caplog.text
    assert (team.project / "reports/registry.json").read_bytes() == before


def test_promote_then_predict_serve_and_mlflow_serve_load_the_champion(team, team_server, tmp_path):
    # The small profile's model is far below the real gate: promote it through a relaxed one.
    params = yaml.safe_load((team.project / "params.yaml").read_text())
    params["promote"]["min_accuracy"] = 1.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run([str(BIN / "ferops"), "promote", "--params", str(tmp_path / "params.yaml")],
                 team.project, team.env)
    assert result.returncode == 0 and "PROMOTED: version 1" in result.stdout, result.stdout + result.stderr
    with logged_in(team_server, "alice"):
        assert str(client(team_server).get_model_version_by_alias(MODEL, "champion").version) == "1"

    photo = a_face_photo(team.project)
    result = run([str(BIN / "ferops"), "predict", str(photo), "--model", CHAMPION,
                  "-o", str(tmp_path / "p.json")], tmp_path, team.env)
    assert result.returncode == 0, result.stderr
    faces = json.loads((tmp_path / "p.json").read_text())["faces"]
    assert faces and abs(sum(faces[0]["probabilities"].values()) - 1) < 1e-4

    # `ferops serve` (photos, face detection) and MLflow's own server (48x48 faces), side by side.
    ferops_port, mlflow_port = free_port(), free_port()
    ferops_serve = [str(BIN / "ferops"), "serve", "--port", str(ferops_port)]
    mlflow_serve = [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION, "--env-manager", "local",
                    "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"]
    with background(ferops_serve, tmp_path / "ferops.log", env=team.env, cwd=tmp_path) as served, \
            background(mlflow_serve, tmp_path / "mlflow.log", env=team.env, cwd=tmp_path) as mlflow_served:
        wait_until_up(f"http://127.0.0.1:{ferops_port}/health", served, tmp_path / "ferops.log", timeout=240)
        health = requests.get(f"http://127.0.0.1:{ferops_port}/health", timeout=30).json()
        assert health["model"] == CHAMPION
        with photo.open("rb") as image:
            answer = requests.post(f"http://127.0.0.1:{ferops_port}/predict", timeout=60,
                                   files={"file": (photo.name, image, "image/tiff")})
        assert answer.status_code == 200 and answer.json()["faces"], answer.text

        wait_until_up(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_served, tmp_path / "mlflow.log",
                      timeout=240)
        pixels = load_arrays(team.project / "data/prepared/private_test.npz")["images"][:3]
        answer = requests.post(f"http://127.0.0.1:{mlflow_port}/invocations", timeout=120,
                               json={"inputs": pixels[..., None].astype(np.float32).tolist()})
        assert answer.status_code == 200, answer.text
        probabilities = np.asarray(answer.json()["predictions"])
        assert probabilities.shape == (3, 7) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)


def test_a_new_colleague_clones_pulls_and_uses_the_model(team, colleague):
    assert "Data and pipelines are up to date" in dvc(colleague, "status", env=team.env)
    assert file_digest(colleague / "models/model.keras", "md5") == file_digest(
        team.project / "models/model.keras", "md5")
    photo = a_face_photo(colleague)
    result = run([str(BIN / "ferops"), "predict", str(photo), "--model", "models/model.keras"], colleague,
                 team.env)
    assert result.returncode == 0 and json.loads(result.stdout)["faces"], result.stderr
    assert "Running stage" not in dvc(colleague, "repro", env=team.env)


def test_dvc_remote_unreachable_or_missing_a_file_loses_nothing(team, colleague, webdav_remote):
    model = colleague / "models/model.keras"
    digest = file_digest(model, "md5")
    # Unreachable: DVC fails (its message says "Connection refused", not which remote); the
    # workspace is untouched.
    dvc(colleague, "remote", "add", "offline", f"webdav://127.0.0.1:{free_port()}/dvcstore", env=team.env)
    result = run([str(BIN / "dvc"), "push", "-r", "offline", "models/model.keras"], colleague, team.env)
    assert result.returncode != 0 and "Connection refused" in result.stderr, result.stdout + result.stderr
    assert file_digest(model, "md5") == digest
    # A file missing on the remote (and locally): the pull fails naming it; the rest stays.
    stored = webdav_remote.root / "dvcstore/files/md5" / digest[:2] / digest[2:]
    assert stored.is_file()
    hidden = stored.with_name(stored.name + ".aside")
    stored.rename(hidden)
    try:
        model.unlink()
        (colleague / ".dvc/cache/files/md5" / digest[:2] / digest[2:]).unlink()
        result = run([str(BIN / "dvc"), "pull", "models/model.keras"], colleague, team.env)
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "models/model.keras" in output, output
        assert f"md5: {digest}" in output and "do not exist neither locally nor on remote" in output
        assert (colleague / "data/prepared/train.npz").is_file()
    finally:
        hidden.rename(stored)
    dvc(colleague, "pull", "models/model.keras", env=team.env)
    assert file_digest(model, "md5") == digest


def test_queued_experiments_log_to_the_server_and_travel_to_a_clone(team, colleague, team_server):
    # Two variants of the learning rate (params.yaml has 0.1: a third would rerun nothing).
    dvc(team.project, "exp", "run", "--queue", "-S", "train.lr=0.05,0.2", env=team.env)
    dvc(team.project, "queue", "start", "-j", "2", env=team.env)
    status = wait_for_queue(team.project, team.env, timeout=900)
    assert status.count("Success") == 2, status
    experiments = json.loads(run([str(BIN / "dvc"), "exp", "show", "--json"], team.project, team.env).stdout)
    by_lr = {}
    for baseline in experiments:
        for branch in baseline.get("experiments") or []:
            for revision in branch["revs"]:
                data = revision["data"]
                if not data:
                    continue
                lr = data["params"]["params.yaml"]["data"]["train"]["lr"]
                by_lr[lr] = (revision["name"], revision["rev"],
                             data["metrics"]["reports/metrics.json"]["data"]["private_test"]["accuracy"])
    assert {0.05, 0.2} <= set(by_lr), by_lr
    name, rev, accuracy = by_lr[0.2]
    with logged_in(team_server, "alice"):
        mlflow = client(team_server)
        experiment = mlflow.get_experiment_by_name("ferops")
        runs = mlflow.search_runs([experiment.experiment_id])
        assert {"0.05", "0.2"} <= {r.data.params.get("train.lr") for r in runs}
        assert name in {r.data.tags.get("dvc.exp_name") for r in runs}

    dvc(team.project, "exp", "push", "origin", name, env=team.env)
    dvc(colleague, "exp", "pull", "origin", name, env=team.env)
    shown = run([str(BIN / "dvc"), "exp", "show", "--csv"], colleague, team.env).stdout
    line = next(row for row in shown.splitlines() if row.startswith(name + ","))
    assert f"{accuracy}" in line
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{rev}:dvc.lock"], cwd=team.project, check=True,
                                         capture_output=True, text=True).stdout)
    model_md5 = next(out["md5"] for out in lock["stages"]["train"]["outs"]
                     if out["path"] == "models/model.keras")
    # The experiment's model came with it: it is in the clone's cache and applies without a remote.
    dvc(colleague, "exp", "apply", name, env=team.env)
    assert file_digest(colleague / "models/model.keras", "md5") == model_md5


MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from ferops.io import load_arrays
    from ferops.runtime import read_configs
    from ferops.training import TrainConfig, train
    from ferops.models import ModelConfig
    from ferops.config import BaseConfig

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    configs = read_configs("params.yaml", base=BaseConfig, model=ModelConfig, train=TrainConfig)
    base, config = configs["base"], configs["train"].model_copy(update={"max_train_images": 256})
    val = {key: value[:256] for key, value in load_arrays("data/prepared/public_test.npz").items()
           if key in ("images", "label")}
    result = train(config, load_arrays("data/oversampled/train.npz"), val, arch=configs["model"].arch,
                   seed=base.seed, n_classes=len(base.classes), image_size=base.image_size,
                   checkpoint=__import__("pathlib").Path(sys.argv[1]), strategy=strategy)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "history": result.history,
                      "devices": list(strategy.extended.worker_devices)}))
""")


def test_mirrored_strategy_trains_on_two_logical_cpus(team, tmp_path):
    # Logical devices must be configured before TensorFlow initialises: a fresh interpreter.
    result = run([sys.executable, "-c", MIRRORED, str(tmp_path / "best.keras")], team.project, team.env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and len(report["devices"]) == 2
    assert np.isfinite(report["history"]["loss"]).all() and len(report["history"]["val_accuracy"]) == 1
    assert (tmp_path / "best.keras").is_file()
