"""The data half of the pipeline, run the way users run it: `dvc repro` in a git repository."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ferops.io import load_arrays

# Data Docs embed the time of the run, so they are the one output that may differ on rerun.
NOT_DETERMINISTIC = ("reports/validation/",)


def copy_project(source: Path, target: Path) -> None:
    """Copy the files git would commit (tracked or new, not ignored) into a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=source,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (source / name).is_file() and not name.startswith(("reports/", "dvc.lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, target / name)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=target, check=True)


def dvc(project: Path, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=project,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def output_digests(project: Path) -> dict[str, str]:
    digests = {}
    for folder in ("data", "reports"):
        for path in sorted((project / folder).rglob("*")):
            name = path.relative_to(project).as_posix()
            if path.is_file() and not name.startswith(NOT_DETERMINISTIC) and path.name != ".gitignore":
                digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.mark.slow
def test_dvc_repro_data_stages(tmp_path, repo_root, datasets_dir):
    project = tmp_path / "project"
    copy_project(repo_root, project)
    env = dict(os.environ, FEROPS_DATA_MIRROR=str(datasets_dir),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    log = dvc(project, "repro", env=env)
    for stage in ("download", "validate", "prepare", "oversample"):
        assert f"Running stage '{stage}'" in log

    train = load_arrays(project / "data/prepared/train.npz")
    balanced = load_arrays(project / "data/oversampled/train.npz")
    assert len(train["label"]) < 28709  # Training was cleaned
    assert len(load_arrays(project / "data/prepared/private_test.npz")["label"]) == 3589
    assert (np.bincount(balanced["label"])[1] > np.bincount(train["label"])[1])  # disgust raised
    assert (project / "reports/validation.json").is_file()
    metrics = dvc(project, "metrics", "show", env=env)
    assert "reports/prepare.json" in metrics

    # Nothing changed: a second repro runs nothing.
    again = dvc(project, "repro", env=env)
    assert "Running stage" not in again
    assert "Data and pipelines are up to date" in dvc(project, "status", env=env)

    # Forcing every stage to rerun reproduces the same bytes.
    before = output_digests(project)
    assert any(name.startswith("data/prepared/") for name in before)
    dvc(project, "repro", "--force", env=env)
    after = output_digests(project)
    changed = sorted(name for name in before if before[name] != after.get(name))
    assert not changed, f"outputs differ after a forced rerun: {changed}"
    assert before.keys() == after.keys()
