"""Inference speed: Keras vs ONNX Runtime, photo latency, and video frames per second (medians).

1. Faces classified per second, in batches of 1, 16 and 64 (256 real CK+ faces), Keras
   (``model(x, training=False)``) vs ONNX Runtime (the model exported by ferops.export).
2. Photo-to-result latency for a 640x480 JPEG with 1, 2 and 3 real JAFFE faces: decode + face
   detection + crop + classification, per detector (Haar, YuNet) and backend; then per detector
   over the real photos of ``benchmarks/detection_set`` (ONNX Runtime).
3. Frames per second over a recorded 640x480 video (120 frames, one face moving), no annotation.

Every figure is the median of --repeats runs after one warm-up. The CPU load is printed first:
other processes on the machine slow every figure down.

Usage: python benchmarks/inference.py [--model models/model.keras | --arch resnet_s2d] [--raw data/raw]
       [--repeats 7] [--tta flip|none]
(--tta: what ``ferops predict`` does by default, flip, or none; flip runs the network twice per face.)
(--arch builds an untrained net of that architecture: speed does not depend on the weights.)
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def median_time(function, repeats: int) -> float:
    function()  # warm-up: graph building, caches, thread pools
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jaffe_canvas(raw: Path, count: int, offset: int = 0) -> np.ndarray:
    paths = sorted((raw / "jaffe").glob("*.tiff"))
    canvas = np.full((480, 640, 3), 128, np.uint8)
    for i in range(count):
        face = cv2.resize(cv2.imread(str(paths[(offset + 23 * i) % len(paths)])), (200, 200))
        canvas[140:340, 10 + 210 * i:210 + 210 * i] = face
    return canvas


def write_video(raw: Path, path: Path, frames: int) -> None:
    paths = sorted((raw / "jaffe").glob("*.tiff"))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    for i in range(frames):
        frame = np.full((480, 640, 3), 110, np.uint8)
        x = 20 + (i * 3) % 380
        frame[120:360, x:x + 240] = cv2.resize(cv2.imread(str(paths[i % len(paths)])), (240, 240))
        writer.write(frame)
    writer.release()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "model.keras", help="a .keras model")
    parser.add_argument("--arch", help="time an untrained net of this architecture instead of --model")
    parser.add_argument("--raw", type=Path, default=ROOT / "data" / "raw", help="raw data (jaffe/, ckplus/)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tta", choices=("flip", "none"), default="flip",
                        help="test-time augmentation (default flip, as ferops predict)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from ferops.detector_model import YUNET_FILE
    from ferops.export import export_onnx
    from ferops.faces import FaceDetector
    from ferops.inference import load_classifier
    from ferops.predict import predict_video
    from ferops.predictor import Predictor

    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        if args.arch:
            from ferops.models import build_model

            args.model = Path(tmp) / f"{args.arch}.keras"
            build_model(args.arch).save(args.model)
        print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
              f"(1/5/15 min); model {args.arch or args.model}; test-time augmentation {args.tta}; "
              f"medians of {args.repeats} runs")
        keras_classifier = load_classifier(args.model, tta=args.tta)
        onnx_path = export_onnx(keras_classifier.model, Path(tmp) / "model.onnx", tta=args.tta)
        onnx_classifier = load_classifier(onnx_path, tta=args.tta)
        backends = {"keras": keras_classifier, "onnxruntime": onnx_classifier}

        paths = sorted((args.raw / "ckplus").glob("*/*.png"))
        faces = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
                          for p in paths[:: max(1, len(paths) // 256)][:256]])
        print(f"\n1. faces classified per second ({len(faces)} real CK+ faces)")
        print(f"   {'batch':>5} {'keras':>10} {'onnxruntime':>12}")
        for batch in (1, 16, 64):
            row = []
            for classifier in backends.values():
                classifier.batch_size = batch
                seconds = median_time(lambda c=classifier: c.classify(faces), args.repeats)
                row.append(len(faces) / seconds)
            print(f"   {batch:>5} {row[0]:>10,.0f} {row[1]:>12,.0f}")
        for classifier in backends.values():
            classifier.batch_size = 64

        detectors = {"haar": FaceDetector("haar"), "yunet": FaceDetector(model=args.raw / YUNET_FILE)}
        print("\n2. photo-to-result latency, 640x480 JPEG (decode + detect + crop + classify), ms")
        print(f"   {'detector':>8} {'faces':>5} {'found':>5} {'keras':>8} {'onnxruntime':>12} "
              f"{'detect only':>12}")
        for name, detector in detectors.items():
            for count in (1, 2, 3):
                jpeg = cv2.imencode(".jpg", jaffe_canvas(args.raw, count))[1]
                found = None
                row = []
                for classifier in backends.values():
                    predictor = Predictor(classifier, detector)

                    def photo(p=predictor, data=jpeg):
                        return p.predict(cv2.imdecode(data, cv2.IMREAD_COLOR))

                    found = len(photo())
                    row.append(1000 * median_time(photo, args.repeats))
                def decode_detect(d=detector, data=jpeg):
                    return d.detect(cv2.imdecode(data, cv2.IMREAD_COLOR))

                detect = 1000 * median_time(decode_detect, args.repeats)
                print(f"   {name:>8} {count:>5} {found:>5} {row[0]:>8.1f} {row[1]:>12.1f} {detect:>12.1f}")
        photos = sorted(p for p in (ROOT / "benchmarks/detection_set").iterdir()
                        if p.suffix in (".jpg", ".png"))
        print(f"\n   real photos: the {len(photos)} of benchmarks/detection_set (128x128 to 2333x1434, "
              "0-25 faces), file to result with ONNX Runtime, ms per photo")
        print(f"   {'detector':>8} {'median':>8} {'p95':>8} {'faces':>6}")
        for name, detector in detectors.items():
            predictor = Predictor(onnx_classifier, detector)
            times, faces_found = [], 0
            for path in photos:
                data = np.fromfile(path, np.uint8)

                def photo(p=predictor, data=data):
                    return p.predict(cv2.imdecode(data, cv2.IMREAD_COLOR))

                faces_found += len(photo())
                times.append(1000 * median_time(photo, max(1, args.repeats // 2)))
            median, p95 = np.percentile(times, [50, 95])
            print(f"   {name:>8} {median:>8.1f} {p95:>8.1f} {faces_found:>6}")
        detector = detectors["yunet"]

        video = Path(tmp) / "clip.mp4"
        frames = 120
        write_video(args.raw, video, frames)
        print(f"\n3. video: {frames} frames of 640x480, one face, every frame classified (chunks of 16)")
        for name, classifier in backends.items():
            predictor = Predictor(classifier, detector)
            seconds = median_time(lambda p=predictor: predict_video(video, p, progress=False),
                                  max(1, args.repeats // 2))
            print(f"   {name:<12} {frames / seconds:6.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
