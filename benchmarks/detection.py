"""How well do the face detectors find faces in real photos, and how fast? The detection benchmark.

Runs each detector on the committed set of real photos in ``benchmarks/detection_set/`` (48
photos, 174 hand-checked faces: group photos, close-ups with faces up to 1,000 pixels wide, turned
heads, poor light, and faceless photos with face-like distractors; sources and licenses in its
SOURCES.md) and prints, per detector:

- recall at IoU 0.5 (faces marked ``difficult`` neither count as misses nor as false positives),
- precision, and false positives per photo,
- the median and 95th-percentile milliseconds per photo (the decoded photo in memory, detection
  plus the 48x48 crops that the model classifies; the best of ``--repeat`` runs per photo).

Detectors: the Haar cascade as ferops used it (min face 30 px); the Haar cascade with the ``fer``
package's settings (scale 1.1, 5 neighbours, min face 50 px: ``fer`` itself cannot be installed
beside this project, it pins numpy 1.26, torch 2.2 and opencv-contrib 4.11); YuNet at full
resolution and threshold 0.9 (what ``--dnn-detector`` did before); YuNet on a copy scaled to
``DETECT_SIZE`` (the default), without and with alignment, and with the tiled second pass; then
YuNet's recall and speed at other detection sizes, score thresholds and minimum face sizes, the
measurements behind ``DETECT_SIZE``, the threshold and leaving the tiles off.

    python benchmarks/detection.py [--repeat 3] [--set benchmarks/detection_set]

The set's checksums are verified first. Timings depend on the machine: say which CPU with them
(the script prints it).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IOU = 0.5


@dataclass
class Score:
    """Matched counts and timings of one detector over the set."""

    found: int = 0
    faces: int = 0
    false_positives: int = 0
    detections: int = 0
    found_all: int = 0
    faces_all: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.faces

    @property
    def precision(self) -> float:
        return (self.detections - self.false_positives) / max(1, self.detections)


def verify(folder: Path) -> None:
    """Check every file against SHA256SUMS; stop with the names of files that differ."""
    bad = []
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = folder / name.strip()
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            bad.append(name.strip())
    if bad:
        raise SystemExit(f"{folder}: {len(bad)} file(s) missing or changed (SHA256SUMS): {', '.join(bad)}")


def load_truth(folder: Path) -> dict[str, list[tuple[np.ndarray, bool]]]:
    """Photo name -> [(box x, y, w, h, difficult)], every photo of the set (faceless ones empty)."""
    truth: dict[str, list] = {p.name: [] for p in sorted(folder.iterdir()) if p.suffix in (".jpg", ".png")}
    with open(folder / "faces.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            box = np.array([int(row[k]) for k in ("x", "y", "w", "h")], dtype=float)
            truth[row["photo"]].append((box, row["difficult"] == "1"))
    return truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x, y, w, h boxes."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def match(detections: list, faces: list, score: Score) -> None:
    """Greedy matching, most confident detection first; add the photo's counts to ``score``."""
    taken = [False] * len(faces)
    for box in detections:
        overlaps = [iou(box, face) if not taken[i] else 0.0 for i, (face, _) in enumerate(faces)]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] >= IOU:
            taken[best] = True
            score.detections += not faces[best][1]  # a difficult face: neither hit nor false
        else:
            score.detections += 1
            score.false_positives += 1
    score.found += sum(t and not d for t, (_, d) in zip(taken, faces, strict=True))
    score.faces += sum(not d for _, d in faces)
    score.found_all += sum(taken)
    score.faces_all += len(faces)


def run(name: str, detect, photos: dict[str, np.ndarray], truth, repeat: int) -> dict[str, Score]:
    """Score one detector and print its row; ``detect(image)`` returns boxes, most confident first.

    Returns:
        Each photo's own counts (for the cross-validated choice of the threshold).
    """
    per_photo, times = {}, []
    for photo, image in photos.items():
        best = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            boxes = detect(image)
            best = min(best, time.perf_counter() - started)
        times.append(1000 * best)
        per_photo[photo] = Score()
        match([np.array(b, dtype=float) for b in boxes], truth[photo], per_photo[photo])
    score = total(per_photo.values())
    median, p95 = np.percentile(times, [50, 95])
    print(f"{name:34s} {100 * score.recall:6.1f} % {100 * score.found_all / score.faces_all:6.1f} % "
          f"{score.precision:9.3f} {score.false_positives / len(photos):8.2f} {median:8.1f} {p95:8.1f}")
    return per_photo


def total(scores) -> Score:
    """The sum of several photos' counts."""
    summed = Score()
    for score in scores:
        for key in vars(summed):
            setattr(summed, key, getattr(summed, key) + getattr(score, key))
    return summed


def cross_validated_threshold(by_threshold: dict[float, dict[str, Score]], min_precision: float) -> None:
    """Choose the threshold on half of the photos, score it on the other half, and the other way round.

    The choice: the highest recall whose precision is at least ``min_precision`` (the target).
    Photos alternate between the halves in name order, so each half has every source.
    """
    names = sorted(next(iter(by_threshold.values())))
    halves = [names[0::2], names[1::2]]
    for chosen_on, scored_on in ((0, 1), (1, 0)):
        def score(threshold, half):
            return total(by_threshold[threshold][name] for name in halves[half])
        eligible = [t for t in by_threshold if score(t, chosen_on).precision >= min_precision]
        best = max(eligible, key=lambda t: (score(t, chosen_on).recall, t))
        held_out = score(best, scored_on)
        print(f"  chosen on half {chosen_on + 1} ({len(halves[chosen_on])} photos): threshold {best}; "
              f"on half {scored_on + 1}: recall {100 * held_out.recall:.1f} %, "
              f"precision {held_out.precision:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=ROOT / "benchmarks/detection_set", help="the photo set")
    parser.add_argument("--repeat", type=int, default=3, help="runs per photo (the fastest counts)")
    parser.add_argument("--raw", type=Path, default=ROOT / "data/raw", help="folder with the YuNet model")
    args = parser.parse_args()
    cv2.setNumThreads(cv2.getNumberOfCPUs())
    from ferops.detector_model import YUNET_FILE
    from ferops.faces import DEFAULT_SCORE_THRESHOLD, DETECT_SIZE, FaceDetector, detect_and_crop
    from ferops.hardware import cpu_flags, cpu_model

    verify(args.set)
    truth = load_truth(args.set)
    photos = {name: cv2.imread(str(args.set / name), cv2.IMREAD_COLOR) for name in truth}
    faces = sum(len(f) for f in truth.values())
    difficult = sum(d for f in truth.values() for _, d in f)
    flags = cpu_flags()
    kind = "AMX" if "amx_bf16" in flags else "avx512_bf16, no AMX" if "avx512_bf16" in flags else "no bf16"
    print(f"{len(photos)} photos, {faces} faces ({difficult} difficult); {cpu_model()} ({kind}), "
          f"OpenCV {cv2.__version__}, {cv2.getNumThreads()} threads")
    model = args.raw / YUNET_FILE

    def pipeline(detector, align=True):
        def detect(image):
            found, _ = detect_and_crop(image, detector, align=align)
            return [f.box.as_tuple() for f in found]  # largest first; Haar has no scores
        return detect

    def by_score(detector):
        def detect(image):
            found, _ = detect_and_crop(image, detector)
            return [f.box.as_tuple() for f in sorted(found, key=lambda f: -(f.score or 0))]
        return detect

    def fer_haar():
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

        def detect(image):
            gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                             flags=cv2.CASCADE_SCALE_IMAGE, minSize=(50, 50))
            return [tuple(b) for b in found]
        return detect

    print(f"\n{'detector':34s} {'recall':>8s} {'(+diff.)':>8s} {'precision':>9s} {'FP/photo':>8s} "
          f"{'ms p50':>8s} {'ms p95':>8s}")
    run("haar (ferops before)", pipeline(FaceDetector("haar")), photos, truth, args.repeat)
    run("haar, fer's settings", fer_haar(), photos, truth, args.repeat)
    # What --dnn-detector did before: the photo at full size, OpenCV Zoo's threshold 0.9.
    full_size = FaceDetector(model=model, detect_size=100_000, score_threshold=0.9)
    run("yunet, full size, 0.9 (before)", by_score(full_size), photos, truth, args.repeat)
    run(f"yunet {DETECT_SIZE} px, box crops", pipeline(FaceDetector(model=model), align=False), photos, truth,
        args.repeat)
    run(f"yunet {DETECT_SIZE} px, aligned (default)", by_score(FaceDetector(model=model)), photos, truth,
        args.repeat)
    run(f"yunet {DETECT_SIZE} px + tiles", by_score(FaceDetector(model=model, tiles=True)), photos, truth,
        args.repeat)

    print(f"\nYuNet, aligned, by detection size (longer side; threshold {DEFAULT_SCORE_THRESHOLD}), by score "
          f"threshold (size {DETECT_SIZE}), min face 30 px unless said:")
    for size in (320, 480, 640, 800, 960, 1280):
        run(f"  size {size}", by_score(FaceDetector(model=model, detect_size=size)), photos, truth, 1)
    by_threshold = {}
    for threshold in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        detector = FaceDetector(model=model, score_threshold=threshold)
        by_threshold[threshold] = run(f"  threshold {threshold}", by_score(detector), photos, truth, 1)
    print("The threshold, cross-validated over the photos (highest recall at precision >= 0.95):")
    cross_validated_threshold(by_threshold, 0.95)
    for min_size in (10, 20):
        for tiles in (False, True):
            detector = FaceDetector(model=model, min_size=min_size, tiles=tiles)
            name = f"  min face {min_size} px" + (" + tiles" if tiles else "")
            run(name, by_score(detector), photos, truth, 1)


if __name__ == "__main__":
    main()
