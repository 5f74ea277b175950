"""Shared fixtures: the real datasets beside the checkout, fetched once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
