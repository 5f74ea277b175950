"""Epoch times of real training with tf.data's autotuner on and off: the idle stalls at epoch ends.

Trains the default net (``model.arch``, ``train`` settings of params.yaml, mixed precision as the
train stage picks it) for ``--epochs`` epochs on ``--images`` images of the real oversampled
Training split, validating on PublicTest, twice:

1. ``autotune``: ``ferops.input_pipeline.make_dataset`` with tf.data's autotuner switched back on (its
   thread runs whether or not the pipeline has tunable parameters);
2. ``fixed``: ``ferops.input_pipeline.make_dataset`` as the train stage uses it (autotuner off).

For each epoch it prints the wall seconds and the process CPU seconds per wall second (2.0 = both
cores busy). With the autotuner, Keras's destruction of each epoch's iterators waits for the
autotuner thread's sleep to end (its period doubles up to a minute), with every core idle: epochs
take up to twice as long at random. The network, data and results are the same either way.

Usage: python benchmarks/train_stall.py [--epochs 6] [--images 12000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ferops.hardware import configure
from ferops.input_pipeline import make_dataset
from ferops.io import load_arrays
from ferops.targets import labelled_only, targets_for
from train_throughput import ROOT, compiled, recipe


def with_autotuner(dataset, enabled: bool):
    """``dataset`` with tf.data's autotuner switched on or off (the later option wins)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = enabled
    return dataset.with_options(options)


def epoch_times(model, train, validation, epochs: int) -> list[tuple[float, float]]:
    """(wall seconds, CPU seconds per wall second) of each epoch of ``model.fit``."""
    import keras

    rows: list[tuple[float, float]] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            wall = time.perf_counter() - self.wall
            rows.append((wall, (time.process_time() - self.cpu) / wall))

    model.fit(train, validation_data=validation, epochs=epochs, callbacks=[Timer()], shuffle=False,
              verbose=0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--train", default=str(ROOT / "data/oversampled/train.npz"))
    parser.add_argument("--val", default=str(ROOT / "data/prepared/public_test.npz"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--images", type=int, default=12000, help="Training images per epoch")
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params))
    hardware = configure(config.mixed_precision, arch)
    arrays = load_arrays(args.train)
    rows = np.random.default_rng(seed).permutation(len(arrays["images"]))[:args.images]
    images, targets = arrays["images"][rows], targets_for(arrays, "hard", 7, "training data")[rows]
    val = labelled_only(load_arrays(args.val), "validation data")
    val_images, val_targets = val["images"], targets_for(val, "hard", 7, "validation data")
    batch = config.batch_size
    print(f"net {arch}, precision {hardware.precision}, {len(images)} Training images, batch {batch}, "
          f"validation {len(val_images)} images")
    for name, autotune in (("autotune", True), ("fixed", False)):
        train = with_autotuner(make_dataset(images, targets, batch, training=True, seed=seed), autotune)
        validation = with_autotuner(make_dataset(val_images, val_targets, batch, training=False,
                                                 seed=seed), autotune)
        model = compiled(config, arch, seed, config.augment, len(images) // batch)
        times = epoch_times(model, train, validation, args.epochs)
        # The first epoch traces and builds the oneDNN kernels: reported, left out of the summary.
        walls = [wall for wall, _ in times[1:]]
        print(f"{name:9s} epochs (s): " + " ".join(f"{wall:5.1f}" for wall, _ in times))
        print(f"{'':9s} CPU/wall:   " + " ".join(f"{ratio:5.2f}" for _, ratio in times))
        print(f"{'':9s} epochs 2..{args.epochs}: median {np.median(walls):.1f} s, "
              f"slowest {max(walls):.1f} s, total {sum(walls):.1f} s")


if __name__ == "__main__":
    main()
