"""How are faces framed? Eye distance and eye row of 48x48 crops, measured with YuNet's landmarks.

The numbers behind ``ferops.faces.EYE_DISTANCE``, ``EYE_ROW``, ``YUNET_BOX_WIDTH`` and
``YUNET_BOX_TOP``: each 48x48 image is upscaled 4x and padded by 64 pixels (so the detector sees
the whole face and some background), YuNet finds the face, and the medians of its eye distance
and eye-midpoint row (fractions of the side), the eye line's roll, and where its box lies in the
frame are printed. Run on FER2013 PublicTest (the reference) and on any prepared set, e.g. the
JAFFE crops.

    python benchmarks/crop_framing.py [--data data/prepared/public_test.npz] [--limit 1500]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
_UP, _PAD = 4, 64


def landmarks(images: np.ndarray, detector) -> np.ndarray:
    """Per found face: eye distance, eye-mid x, eye row, roll (degrees), box x, y, w, h (fractions)."""
    rows = []
    for image in images:
        side = image.shape[0] * _UP
        big = cv2.copyMakeBorder(cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR),
                                 _PAD, _PAD, _PAD, _PAD, cv2.BORDER_REPLICATE)
        faces = detector.detect_faces(big)
        if not faces:
            continue
        face = faces[0]
        (x1, y1), (x2, y2) = face.eyes()
        box = face.box
        rows.append([np.hypot(x2 - x1, y2 - y1) / side, ((x1 + x2) / 2 - _PAD) / side,
                     ((y1 + y2) / 2 - _PAD) / side, np.degrees(np.arctan2(y2 - y1, x2 - x1)),
                     (box.x - _PAD) / side, (box.y - _PAD) / side, box.w / side, box.h / side])
    return np.asarray(rows).reshape(-1, 8)


def framing(images: np.ndarray, detector) -> tuple[float, float]:
    """Median eye distance and eye row of the crops."""
    rows = landmarks(images, detector)
    return float(np.median(rows[:, 0])), float(np.median(rows[:, 2]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data/prepared/public_test.npz")
    parser.add_argument("--limit", type=int, default=1500, help="first N images")
    parser.add_argument("--raw", type=Path, default=ROOT / "data/raw", help="the download stage's folder")
    args = parser.parse_args()
    from ferops.detector_model import YUNET_FILE
    from ferops.faces import FaceDetector
    from ferops.io import load_arrays

    detector = FaceDetector(model=args.raw / YUNET_FILE, min_size=10, score_threshold=0.5)
    images = load_arrays(args.data)["images"][: args.limit]
    rows = landmarks(images, detector)
    print(f"{args.data}: YuNet found a face in {len(rows)} of {len(images)} images")
    names = ["eye distance", "eye midpoint column", "eye row", "roll (degrees)", "box left", "box top",
             "box width", "box height"]
    for name, column in zip(names, rows.T, strict=True):
        low, median, high = np.percentile(column, [25, 50, 75])
        print(f"  {name:20s} median {median:+.3f}  quartiles {low:+.3f} / {high:+.3f}")


if __name__ == "__main__":
    main()
