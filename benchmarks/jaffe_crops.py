"""Which face crop serves the model best? JAFFE end to end: photo -> detector -> crop -> model.

JAFFE's 213 portraits (256x256, 10 people) go through each face detector and crop: today's Haar
box with the FER2013 margin, YuNet's box framed like FER2013, and YuNet aligned by the eyes (the
default). One model classifies every crop set, single view; each set is compared with the
Haar crops image by image (``ferops.paired.paired_difference``, as ``paired_compare.py`` compares
model versions: the exact McNemar test of the discordant faces and a 95 % interval from a
bootstrap over the 10 people). Also prints how often each detector found the face, and the
median eye distance and eye row of the crops (measured with YuNet's landmarks, like
``crop_framing.py``) next to FER2013's 0.356 / 0.379.

    python benchmarks/jaffe_crops.py [--model models/model.keras] [--raw data/raw] [--roll 15]

JAFFE's faces are upright, as FER2013's are; faces in real photos are not. ``--roll DEGREES``
rotates each portrait by +DEGREES or -DEGREES (alternately, about its centre, borders
replicated) before detection, to see what aligning does for tilted heads.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CROPS = {  # name: (detector, align)
    "haar box (before)": ("haar", False),
    "yunet box": ("yunet", False),
    "yunet aligned (default)": ("yunet", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="a .keras model (repeatable; default models/model.keras)")
    parser.add_argument("--raw", type=Path, default=ROOT / "data/raw", help="the download stage's folder")
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--roll", type=float, default=0.0, help="tilt the portraits by +-this many degrees")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    from crop_framing import framing
    from ferops.detector_model import YUNET_FILE
    from ferops.external import load_jaffe
    from ferops.faces import FaceDetector
    from ferops.paired import paired_difference

    yunet = FaceDetector(model=args.raw / YUNET_FILE, min_size=30)
    folder = args.raw / "jaffe" if not args.roll else tilted_copy(args.raw / "jaffe", args.roll)
    sets = {}
    for name, (backend, align) in CROPS.items():
        detector = yunet if backend == "yunet" else FaceDetector("haar")
        started = time.perf_counter()
        arrays, report = load_jaffe(folder, detector, align=align)
        seconds = time.perf_counter() - started
        distance, row = framing(arrays["images"], yunet)
        sets[name] = arrays
        print(f"{name:24s} faces found {report['detected']}/{report['files']}, {seconds:.1f} s; "
              f"crops' median eye distance {distance:.3f}, eye row {row:.3f} (FER2013: 0.356, 0.379)")
    reference = next(iter(CROPS))
    for path in args.model or [ROOT / "models/model.keras"]:
        model = keras.models.load_model(path)
        print(f"\nmodel {path}, single view, JAFFE's 7 expressions")
        correct = {}
        for name, arrays in sets.items():
            pixels = arrays["images"].astype(np.float32)[..., None]
            correct[name] = model.predict(pixels, batch_size=256, verbose=0).argmax(axis=1) == arrays["label"]
            right = correct[name]
            print(f"  {name:24s} {right.mean() * 100:6.2f} % ({int(right.sum())}/{len(right)})")
        for name in list(CROPS)[1:]:
            result = paired_difference(correct[name], correct[reference], sets[name]["subject"],
                                       resamples=args.resamples)
            print(f"  {name} - {reference}: {result.difference:+.2f} points, 95 % interval {result.interval} "
                  f"(bootstrap over {result.n_units} people); only {name} right {result.only_new}, only "
                  f"{reference} right {result.only_old}, exact McNemar p = {result.p_value:.3f}")


def tilted_copy(folder: Path, degrees: float) -> Path:
    """Copy JAFFE's portraits into a temporary folder, each rotated by +-degrees (alternating)."""
    import tempfile

    import cv2
    import numpy as np
    from PIL import Image

    out = Path(tempfile.mkdtemp(prefix="jaffe_tilted_"))
    for index, path in enumerate(sorted(folder.glob("*.tiff"))):
        with Image.open(path) as image:
            gray = np.array(image.convert("L"))
        height, width = gray.shape
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees if index % 2 else -degrees, 1.0)
        rotated = cv2.warpAffine(gray, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        Image.fromarray(rotated).save(out / path.name)
    return out


if __name__ == "__main__":
    main()
