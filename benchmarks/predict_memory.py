"""How much memory does ``ferops predict`` need for awkward photos? Peak RSS per input.

Runs ``ferops predict`` once per input, each in a fresh process, and prints its peak resident
memory and what it found. The inputs are a 1x1 image, a 40-megapixel photo with one large face
(just under the default ``--max-pixels``), and a class photo of 120 faces (real JAFFE faces in a
12 x 10 grid). The 1x1 run shows the baseline: the interpreter, the model and the detector.

    python benchmarks/predict_memory.py [--model models/model.keras] [--raw data/raw]

Uses ONNX Runtime on an export of the model, as a lean deployment would: with a .keras model,
TensorFlow's own footprint adds a few hundred MB to every row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_run(command: list[str]) -> tuple[int, float]:
    """Run ``command`` as the only child of a fresh Python; its exit status and peak RSS in MiB."""
    parent = ("import resource, subprocess, sys\n"
              "code = subprocess.run(sys.argv[1:], capture_output=True).returncode\n"
              "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", parent, *command], capture_output=True, text=True, check=True)
    code, kib = out.stdout.split()
    return int(code), int(kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/model.keras", help="a .keras model")
    parser.add_argument("--raw", type=Path, default=ROOT / "data/raw", help="the download stage's folder")
    args = parser.parse_args()
    import keras

    from ferops.export import export_onnx

    ferops = shutil.which("ferops", path=str(Path(sys.executable).parent)) or "ferops"
    faces = sorted((args.raw / "jaffe").glob("*.tiff"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = export_onnx(keras.saving.load_model(args.model, compile=False), folder / "model.onnx")
        face = cv2.imread(str(faces[3]), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(folder / "tiny.png"), np.full((1, 1), 200, np.uint8))
        big = np.full((5160, 7750, 3), 90, np.uint8)
        large_face = cv2.resize(face, (2000, 2000), interpolation=cv2.INTER_CUBIC)
        big[1500:3500, 3000:5000] = cv2.cvtColor(large_face, cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(folder / "40mp.jpg"), big)
        del big
        crowd = np.full((1200, 1440), 128, np.uint8)
        for index in range(120):
            row, column = divmod(index, 12)
            crowd[row * 120:(row + 1) * 120, column * 120:(column + 1) * 120] = cv2.resize(
                cv2.imread(str(faces[index % len(faces)]), cv2.IMREAD_GRAYSCALE), (120, 120),
                interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / "crowd.png"), crowd)
        print(f"ferops predict --model {model.name} (ONNX Runtime), one process per input")
        print(f"{'input':>10} {'pixels':>12} {'faces':>6} {'peak MiB':>9}")
        for name in ("tiny.png", "40mp.jpg", "crowd.png"):
            out = folder / f"{name}.json"
            code, peak = peak_run([ferops, "predict", str(folder / name), "--model", str(model),
                                   "-o", str(out), "--no-progress"])
            document = json.loads(out.read_text()) if out.is_file() else {"faces": [], "inputs": [{}]}
            entry = document["inputs"][0]
            pixels = entry.get("width", 0) * entry.get("height", 0)
            failed = f"  exit {code}" if code else ""
            print(f"{name:>10} {pixels:>12,} {len(document['faces']):>6} {peak:>9.0f}{failed}")


if __name__ == "__main__":
    main()
