"""The pipeline run the way users run it: `dvc repro` and `dvc exp run` in a git repository.

Training uses a small profile (1 epoch on 512 images) so the whole test takes a few minutes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import small_params
from ferops.io import load_arrays

# Data Docs embed the time of the run; training is not bit-reproducible on CPU threads.
NOT_DETERMINISTIC = ("reports/validation/", "reports/train.json", "reports/mlflow_run.json",
                     "reports/plots/train/", "reports/figures/train/")
REGISTRY = "ferops-fer2013"
FAST_EVALUATION = {"tta": "none", "gradcam_per_class": 2, "mistakes_per_class": 2}


def copy_project(source: Path, target: Path) -> None:
    """Copy the files git would commit (tracked or new, not ignored) into a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=source,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file() and not name.startswith(("reports/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    params = small_params(max_train_images=512)
    params["evaluate"].update(FAST_EVALUATION)
    (target / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=target, check=True)


# The README's one command that brings back the last committed state after a failed run.
RESTORE = "git checkout HEAD -- params.yaml dvc.lock reports && dvc checkout"


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=project, check=True)


def report_bytes(project: Path) -> dict[str, bytes]:
    return {path.relative_to(project).as_posix(): path.read_bytes()
            for path in sorted((project / "reports").rglob("*")) if path.is_file()}


def dvc(project: Path, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def mlflow_runs(project: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ferops")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def registry_versions(project: Path) -> dict[str, str]:
    """Version number -> MLflow run id of the registered model in the project's store."""
    from mlflow import MlflowClient

    store = f"sqlite:///{project / 'mlflow.db'}"
    # The registry URI must be given too: otherwise MLflow uses the process-wide one.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    return {str(v.version): v.run_id for v in client.search_model_versions(f"name = '{REGISTRY}'")}


def wait_for_queue(project: Path, env: dict[str, str], timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(project, "queue", "status", env=env)
        if "Queued" not in status and "Running" not in status:
            return status
        time.sleep(5)
    raise AssertionError(f"queued experiment did not finish:\n{status}")


def output_digests(project: Path) -> dict[str, str]:
    digests = {}
    for folder in ("data", "reports"):
        for path in sorted((project / folder).rglob("*")):
            name = path.relative_to(project).as_posix()
            if path.is_file() and not name.startswith(NOT_DETERMINISTIC) and path.name != ".gitignore":
                digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.mark.slow
def test_dvc_repro_and_experiments(tmp_path, repo_root, datasets_dir):
    project = tmp_path / "project"
    copy_project(repo_root, project)
    env = dict(os.environ, FEROPS_DATA_MIRROR=str(datasets_dir),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)

    log = dvc(project, "repro", env=env)
    for stage in ("params", "download", "validate", "prepare", "oversample", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in log
    assert (project / "models/model.keras").is_file()
    (run,) = mlflow_runs(project)
    assert run.data.params["train.max_train_images"] == "512"
    assert "private_test.accuracy" in run.data.metrics  # evaluate added to the training's run
    assert registry_versions(project) == {"1": run.info.run_id}

    train = load_arrays(project / "data/prepared/train.npz")
    balanced = load_arrays(project / "data/oversampled/train.npz")
    assert len(train["label"]) < 28709  # Training was cleaned
    assert len(load_arrays(project / "data/prepared/private_test.npz")["label"]) == 3589
    assert (np.bincount(balanced["label"])[1] > np.bincount(train["label"])[1])  # disgust raised
    assert (project / "reports/validation.json").is_file()
    metrics = dvc(project, "metrics", "show", env=env)
    assert "reports/prepare.json" in metrics and "private_test.accuracy" in metrics
    dvc(project, "plots", "show", env=env)
    page = (project / "dvc_plots" / "index.html").read_text()
    assert "confusion_private_test" in page and "history.csv" in page

    # Nothing changed: a second repro runs nothing.
    again = dvc(project, "repro", env=env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in dvc(project, "status", env=env)

    # Forcing the data stages to rerun reproduces the same bytes (so training is not stale).
    before = output_digests(project)
    assert any(name.startswith("data/prepared/") for name in before)
    # What a stage killed with SIGKILL while writing leaves behind; the next run removes it.
    stale = [project / "data/oversampled/.train.npz.k1ll3d.tmp", project / "reports/.oversample.json.x.tmp"]
    for path in stale:
        path.write_bytes(b"half-written")
    dvc(project, "repro", "--force", "oversample", env=env)
    assert not [path for path in stale if path.exists()]
    after = output_digests(project)
    changed = sorted(name for name in before if before[name] != after.get(name))
    assert not changed, f"outputs differ after a forced rerun: {changed}"
    assert before.keys() == after.keys()
    assert "Data and pipelines are up to date" in dvc(project, "status", env=env)

    # A refused value stops `dvc exp run` in the params stage, before DVC deletes any output, and
    # the README's restore command brings back the last committed state.
    git(project, "add", "-A")
    git(project, "commit", "-qm", "first run")
    reports = report_bytes(project)
    for setting, stage, message in (
            ("evaluate.tta=flipp", "evaluate", "evaluate.tta: Input should be 'none', 'flip' or 'tencrop'"),
            ("+oversample.target_ratoi=0.9", "oversample", "oversample.target_ratoi: unknown key"),
            ("train.optimizer=rmsprop", "train", "train.optimizer: Input should be")):
        command = [str(Path(sys.executable).parent / "dvc"), "exp", "run", "-S", setting, stage]
        failed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        assert failed.returncode != 0 and message in failed.stdout + failed.stderr, failed.stderr
        assert f"Running stage '{stage}'" not in failed.stdout + failed.stderr
        now = report_bytes(project)
        assert {name: now.get(name) for name in reports if name != "reports/params.json"} == {
            name: data for name, data in reports.items() if name != "reports/params.json"}
        subprocess.run(RESTORE, shell=True, cwd=project, env=env, check=True)
        assert report_bytes(project) == reports
        assert "Data and pipelines are up to date" in dvc(project, "status", env=env)

    # An experiment with one parameter changed reruns training only and is tracked as such.
    default_lr = str(yaml.safe_load((project / "params.yaml").read_text())["train"]["lr"])
    log = dvc(project, "exp", "run", "-S", "train.lr=0.0005", env=env)
    assert "Running stage 'train'" in log and "Running stage 'prepare'" not in log
    runs = {r.data.params["train.lr"]: r for r in mlflow_runs(project)}
    assert set(runs) == {default_lr, "0.0005"}
    assert registry_versions(project)["2"] == runs["0.0005"].info.run_id
    assert runs["0.0005"].data.tags["dvc.exp_name"] in dvc(project, "exp", "show", "--csv", env=env)

    # A queued experiment runs in a temporary copy under .dvc/tmp but logs to the same store.
    dvc(project, "exp", "run", "--queue", "-S", "train.lr=0.0002", env=env)
    dvc(project, "queue", "start", env=env)
    status = wait_for_queue(project, env)
    assert "Success" in status, status
    assert "0.0002" in {r.data.params["train.lr"] for r in mlflow_runs(project)}
    assert len(registry_versions(project)) == 3
    assert not list((project / ".dvc").rglob("mlflow.db")), "a second MLflow store was created"


def _ferops_imports(path: Path) -> set[str]:
    """The ferops modules a file imports (at the top or inside functions)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [alias.name for alias in node.names] if isinstance(node, ast.Import) else [])
        found.update(name.split(".")[1] for name in names if name.startswith("ferops."))
    return found


# Modules that hold no decision a stage's outputs depend on: exception classes, and the stage
# runner (logging set-up, error reporting).
INFRASTRUCTURE = {"errors", "runtime"}


@pytest.mark.parametrize("stage", ["download", "validate", "prepare", "oversample", "train", "evaluate",
                                   "register"])
def test_each_stage_declares_every_library_module_it_uses(repo_root, stage):
    # A module missing from deps means a change to it would not rerun the stage.
    library = repo_root / "src" / "ferops"
    used, pending = set(), sorted(_ferops_imports(repo_root / "stages" / f"{stage}.py"))
    while pending:
        module = pending.pop()
        if module in used:
            continue
        used.add(module)
        files = [library / f"{module}.py"] if (library / f"{module}.py").exists() else \
            sorted((library / module).glob("*.py"))
        for file in files:
            pending.extend(_ferops_imports(file))
    declared = set(yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"][stage]["deps"])
    needed = {f"src/ferops/{m}.py" if (library / f"{m}.py").exists() else f"src/ferops/{m}"
              for m in used - INFRASTRUCTURE}
    assert needed <= declared, f"{stage}: dvc.yaml deps lack {sorted(needed - declared)}"
    assert f"stages/{stage}.py" in declared
