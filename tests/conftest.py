"""Shared fixtures: the real datasets beside the checkout, fetched once per test session."""

from __future__ import annotations

import os
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


def brief_params(directory: Path, *, model: str = "mini_xception", **train: object) -> Path:
    """A copy of params.yaml with a brief training profile (only keys the train section has)."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["model"]["arch"] = model
    params["train"].update({key: value for key, value in train.items() if key in params["train"]})
    if "max_minutes" in params["train"]:
        params["train"]["max_minutes"] = None
    path = directory / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@dataclass
class TrainedRun:
    """A real (brief) training run of the train stage, logged to its own SQLite store."""

    work: Path
    params: Path
    tracking_uri: str
    model: Path
    receipt: Path
    report: Path


def train_briefly(work: Path, prepared: Path, tracking_uri: str, **train: object) -> TrainedRun:
    """Run the real train stage on a small profile; MLflow artifacts land in ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    params = brief_params(work, **train)
    run = TrainedRun(work, params, tracking_uri, work / "model.keras", work / "mlflow_run.json",
                     work / "train.json")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "stages" / "train.py"), "--params", str(params),
         "--train", str(prepared / "oversampled.npz"), "--val", str(prepared / "public_test.npz"),
         "--model", str(run.model), "--report", str(run.report),
         "--history", str(work / "history.csv"), "--figure", str(work / "curves.png"),
         "--receipt", str(run.receipt)],
        check=True, cwd=work, env=dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri),
    )
    return run


@pytest.fixture(scope="session")
def registry_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite MLflow store shared by the evaluation and registry tests."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, prepared_dir: Path,
                registry_store: str) -> TrainedRun:
    """One brief real training (1 epoch on 1,000 images) tracked in ``registry_store``."""
    return train_briefly(tmp_path_factory.mktemp("trained"), prepared_dir, registry_store,
                         epochs=1, max_train_images=1000, batch_size=64, warmup_epochs=0)


def run_evaluate(run: TrainedRun, prepared: Path, out: Path, *extra: str) -> int:
    """Run the evaluate stage in-process on a trained run; outputs under ``out``."""
    from stages import evaluate

    return evaluate.main([
        "--params", str(run.params), "--model", str(run.model), "--prepared", str(prepared),
        "--receipt", str(run.receipt), "--metrics", str(out / "metrics.json"),
        "--details", str(out / "evaluate"), "--plots", str(out / "plots"),
        "--figures", str(out / "figures"), "--galleries", str(out / "galleries"), *extra])


@pytest.fixture(scope="session")
def evaluated_run(tmp_path_factory: pytest.TempPathFactory, trained_run: TrainedRun,
                  prepared_dir: Path) -> Path:
    """The evaluate stage run once on ``trained_run``; returns its output folder."""
    out = tmp_path_factory.mktemp("evaluated")
    assert run_evaluate(trained_run, prepared_dir, out) == 0
    return out


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
