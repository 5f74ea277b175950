"""The GPU check: train the default recipe on FER2013 under Keras on JAX or PyTorch, print figures.

Made for a GPU machine that has JAX or PyTorch with CUDA but no TensorFlow (and no ferops
install): only the training path's pure-Python pieces are needed (``benchmarks/gpu_check.sh``
installs them from carried wheels). Two modes:

``--pack DIR`` (here, after ``dvc repro``): write the prepared splits the check needs into DIR,
losslessly compressed (the oversampled Training split is 66 MB raw: each pixel is replaced by
its residual from LOCO-I's median edge predictor, then xz-compressed; a decode check runs
before anything is written), and print their sizes.

``--data DIR`` (on the GPU machine): unpack, train ``model.arch`` with the ``train`` params of
``--params`` on the oversampled Training split, validating on PublicTest each epoch, then score
the best epoch once on PrivateTest. Prints images/s, epochs, PublicTest and PrivateTest
accuracy (original labels) and a JSON line with the same figures.

    KERAS_BACKEND=jax python benchmarks/gpu_check.py --data gpu_data --minutes 7
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SPLITS = {"train": "data/oversampled/train.npz", "public_test": "data/prepared/public_test.npz",
          "private_test": "data/prepared/private_test.npz"}


def _med_prediction(images: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: each pixel predicted from its left, upper and upper-left."""
    left = np.zeros_like(images)
    left[:, :, 1:] = images[:, :, :-1]
    up = np.zeros_like(images)
    up[:, 1:, :] = images[:, :-1, :]
    corner = np.zeros_like(images)
    corner[:, 1:, 1:] = images[:, :-1, :-1]
    high, low = np.maximum(left, up), np.minimum(left, up)
    return np.where(corner >= high, low, np.where(corner <= low, high, left + up - corner))


def encode(images: np.ndarray) -> bytes:
    """Lossless: the MED prediction residuals (mod 256), xz-compressed."""
    pixels = images.astype(np.int16)
    residual = (pixels - _med_prediction(pixels)).astype(np.uint8)
    return lzma.compress(residual.tobytes(), preset=9 | lzma.PRESET_EXTREME)


def decode(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Invert :func:`encode`: rebuild the pixels in raster order, all images at once."""
    residual = np.frombuffer(lzma.decompress(payload), dtype=np.uint8).reshape(shape).astype(np.int16)
    images = np.zeros(shape, dtype=np.int16)
    for row in range(shape[1]):
        for column in range(shape[2]):
            left = images[:, row, column - 1] if column else 0
            up = images[:, row - 1, column] if row else 0
            corner = images[:, row - 1, column - 1] if row and column else 0
            high, low = np.maximum(left, up), np.minimum(left, up)
            predicted = np.where(corner >= high, low, np.where(corner <= low, high, left + up - corner))
            images[:, row, column] = (predicted + residual[:, row, column]) % 256
    return images.astype(np.uint8)


def pack(out: Path, root: Path) -> None:
    """Write each split's images (MED residuals, xz) and labels into ``out``."""
    from ferops.io import load_arrays

    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, relative in SPLITS.items():
        arrays = load_arrays(root / relative)
        images = arrays["images"]
        label = arrays["label"] if name == "train" else arrays["label_fer2013"]
        payload = encode(images)
        if not np.array_equal(decode(payload, images.shape), images):
            raise RuntimeError(f"{name}: the packed images do not decode to the originals")
        (out / f"{name}.xz").write_bytes(payload)
        np.save(out / f"{name}.label.npy", np.asarray(label, dtype=np.int8))
        (out / f"{name}.json").write_text(json.dumps({"shape": list(images.shape)}))
        size = len(payload) + (out / f"{name}.label.npy").stat().st_size
        total += size
        print(f"{name}: {images.shape[0]:,} images, {images.nbytes / 2**20:.1f} MiB raw -> "
              f"{size / 2**20:.1f} MiB")
    print(f"total {total / 2**20:.1f} MiB in {out}")


def unpack(folder: Path, name: str) -> dict[str, np.ndarray]:
    """The images and labels of one packed split."""
    shape = tuple(json.loads((folder / f"{name}.json").read_text())["shape"])
    images = decode((folder / f"{name}.xz").read_bytes(), shape)
    return {"images": images, "label": np.load(folder / f"{name}.label.npy").astype(np.int64)}


def check(data: Path, params_path: Path, minutes: float, epochs: int | None,
          max_train_images: int | None = None) -> dict:
    """Train on the packed splits with the params' recipe; return the figures."""
    import keras

    from ferops.config import BaseConfig, build
    from ferops.hardware import configure
    from ferops.models import ModelConfig
    from ferops.training import TrainConfig, train
    from ferops.tta import predict_probabilities

    params = yaml.safe_load(params_path.read_text())
    base = build(BaseConfig, params["base"], "base")
    arch = build(ModelConfig, params["model"], "model").arch
    changes = {"max_minutes": minutes}
    if epochs:
        changes["epochs"] = epochs
    if max_train_images:  # a smoke test on a CPU (needs scikit-learn, for the stratified subset)
        changes["max_train_images"] = max_train_images
    config = build(TrainConfig, {**params["train"], **changes}, "train")
    splits = {name: unpack(data, name) for name in SPLITS}
    hardware = configure(config.mixed_precision, arch)
    started = time.perf_counter()
    result = train(config, splits["train"], splits["public_test"], arch=arch, seed=base.seed,
                   n_classes=len(base.classes), image_size=base.image_size,
                   checkpoint=data / "best.keras", strategy=hardware.strategy)
    private = predict_probabilities(result.model, splits["private_test"]["images"], batch_size=512)
    figures = {
        "backend": keras.backend.backend(),
        "devices": hardware.devices,
        "precision": hardware.precision,
        "arch": arch,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "train_images_per_second": round(result.images_per_second, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "public_test_accuracy": round(result.best_val_accuracy, 4),
        "private_test_accuracy": round(float(np.mean(private.argmax(axis=1) ==
                                                     splits["private_test"]["label"])), 4),
        "labels": "original FER2013 labels; epoch chosen on PublicTest, PrivateTest read once",
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pack", type=Path, help="write the packed splits here (after dvc repro)")
    parser.add_argument("--data", type=Path, help="train from the packed splits here")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root (for --pack)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--minutes", type=float, default=7.0, help="training time budget")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--max-train-images", type=int, default=None, help="a small subset (smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.pack:
        pack(args.pack, args.root)
        return 0
    if not args.data:
        parser.error("give --pack DIR or --data DIR")
    figures = check(args.data, args.params, args.minutes, args.epochs, args.max_train_images)
    print(f"{figures['backend']} on {', '.join(figures['devices'])} ({figures['precision']}): "
          f"{figures['arch']}, {figures['epochs_run']} epochs at {figures['train_images_per_second']:,.0f} "
          f"images/s; PublicTest {figures['public_test_accuracy']:.4f} (best epoch "
          f"{figures['best_epoch']}), PrivateTest {figures['private_test_accuracy']:.4f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
