"""Training images/s of the default net: this project's input pipeline vs a seed-style ImageDataGenerator.

Both sides train the same architecture (``model.arch`` of params.yaml) under the same dtype policy
(``train.mixed_precision``) with the same optimizer settings, on the real prepared Training split:

1. ferops: ``ferops.input_pipeline.make_dataset`` (tf.data over uint8 arrays, cast per batch) feeding
   ``model.fit``, with the ``train.augment`` augmentation inside the model (as ``dvc repro`` trains);
2. seed style: the classic Keras 2 ``ImageDataGenerator(rotation_range, width_shift_range,
   height_shift_range, zoom_range, horizontal_flip).flow(x, y, batch_size)`` feeding ``model.fit``,
   with the same augmentation strengths and no augmentation layers in the model.

Keras 3 has no ImageDataGenerator: the real one comes from ``tf-keras`` (``pip install
tf-keras==2.21.0``, matching TensorFlow 2.21). Throughput is measured over ``--steps`` steps after
``--warmup`` steps (tracing, oneDNN kernel selection). Also printed: the generator alone, and
"CPU-equivalent" images/s (images / (process CPU seconds / cores)), which shows what an otherwise
idle machine would do when the CPU is shared. Target: ferops >= 3x the seed style.

Usage: python benchmarks/train_throughput.py [--train data/prepared/train.npz] [--steps 30] [--arch NAME]

``--arch`` measures another net of the zoo instead of the default (the smaller the net, the larger
the input pipeline's share of a training step, and so the larger the possible gain).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import yaml

from ferops.config import BaseConfig, build
from ferops.hardware import configure
from ferops.input_pipeline import make_dataset
from ferops.io import load_arrays
from ferops.models import Augmentation, ModelConfig, build_model, with_fused_batch_norm
from ferops.schedule import make_optimizer
from ferops.targets import targets_for
from ferops.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def measure(run: Callable[[int], None], warmup: int, steps: int, batch_size: int) -> tuple[float, float]:
    """Images/s of ``run(steps)``: by wall time, and by process CPU time / cores."""
    run(warmup)
    wall, cpu = time.perf_counter(), time.process_time()
    run(steps)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = steps * batch_size
    return images / wall, images / (cpu / (os.cpu_count() or 1))


def recipe(params_path: Path, arch: str | None = None,
           batch_size: int | None = None) -> tuple[TrainConfig, str, int]:
    """The checked train config, architecture and seed of a params file, with overrides."""
    params = yaml.safe_load(params_path.read_text())
    if arch:
        params["model"]["arch"] = arch
    if batch_size:
        params["train"]["batch_size"] = batch_size
    return (build(TrainConfig, params["train"], "train"), build(ModelConfig, params["model"], "model").arch,
            build(BaseConfig, params["base"], "base").seed)


def compiled(config: TrainConfig, arch: str, seed: int, augment: Augmentation | None,
             steps_per_epoch: int, fused_batch_norm: bool = True) -> object:
    """A fresh model of ``arch`` with ``augment`` layers (None: none), compiled as the train stage does.

    With ``fused_batch_norm`` (as the train stage trains) the model is its training twin with
    TensorFlow's fused BatchNorm; without, Keras's own BatchNorm ops.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(arch, 7, 48, augment, seed)
    if fused_batch_norm:
        model = with_fused_batch_norm(model)
    model.compile(optimizer=make_optimizer(config, steps_per_epoch),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return model


def step_seconds(model, feed, warmup: int, steps: int) -> float:
    """Seconds per training step of ``model.fit`` over ``feed`` (a dataset, or one resident batch)."""
    model.fit(feed, epochs=1, steps_per_epoch=warmup, shuffle=False, verbose=0)
    start = time.perf_counter()
    model.fit(feed, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)
    return (time.perf_counter() - start) / steps


def ab_arguments(description: str) -> argparse.Namespace:
    """The command line of the interleaved A/B benchmarks: the recipe's arguments plus ``--rounds``."""
    parser = argparse.ArgumentParser(description=description)
    add_recipe_arguments(parser, "data/oversampled/train.npz", "side and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two sides")
    parser.set_defaults(steps=20)
    return parser.parse_args()


def repeating_feed(train: str, batch_size: int, seed: int) -> tuple[object, int]:
    """The train stage's tf.data input over a Training split, repeated; and its steps per epoch."""
    arrays = load_arrays(train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    dataset = make_dataset(images, targets, batch_size, training=True, seed=seed).repeat()
    return dataset, len(images) // batch_size


def interleaved_rounds(sides: dict, dataset, batch: int, warmup: int, steps: int,
                       rounds: int) -> dict[str, float]:
    """Train each side ``steps`` steps in turn, ``rounds`` times; print each round; median images/s.

    Alternating the sides makes both see the same machine: this VM's speed drifts by up to ~2x
    over minutes, which makes two separate runs incomparable.
    """
    import statistics

    for model in sides.values():
        model.fit(dataset, epochs=1, steps_per_epoch=warmup, verbose=0)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(1, rounds + 1):
        line = []
        for name, model in sides.items():
            start = time.perf_counter()
            model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
            rates[name].append(steps * batch / (time.perf_counter() - start))
            line.append(f"{name} {rates[name][-1]:6.1f}")
        print(f"round {round_}: " + ", ".join(line) + " images/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in medians.items():
        print(f"median {name}: {value:.1f} images/s")
    return medians


def add_recipe_arguments(parser: argparse.ArgumentParser, train: str, unit: str) -> None:
    """The arguments the training benchmarks share: params, Training split, steps, warm-up, arch."""
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--train", default=str(ROOT / train))
    parser.add_argument("--steps", type=int, default=30, help=f"timed training steps per {unit}")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps first")
    parser.add_argument("--arch", help="a model.arch to measure instead of the one in params.yaml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, "data/prepared/train.npz", "side")
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params), args.arch)
    hardware = configure(config.mixed_precision, arch)
    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    batch, steps_per_epoch = config.batch_size, len(images) // config.batch_size
    print(f"net {arch}, precision {hardware.precision}, batch {batch}, {len(images)} Training "
          f"images from {args.train}, {os.cpu_count()} CPU cores; {args.steps} timed steps per side")

    # 1. This project's pipeline.
    model = compiled(config, arch, seed, config.augment, steps_per_epoch)
    dataset = make_dataset(images, targets, batch, training=True, seed=seed).repeat()

    def fit_ferops(steps: int) -> None:
        model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)

    ours = measure(fit_ferops, args.warmup, args.steps, batch)

    # 2. Seed style: Keras 2 ImageDataGenerator, same augmentation strengths.
    from tf_keras.preprocessing.image import ImageDataGenerator

    augment = config.augment
    generator = ImageDataGenerator(rotation_range=augment.rotation * 360,
                                   width_shift_range=augment.translation,
                                   height_shift_range=augment.translation, zoom_range=augment.zoom,
                                   horizontal_flip=augment.flip, fill_mode="reflect")
    flow = generator.flow(images[..., None].astype(np.float32), targets, batch_size=batch,
                          seed=seed)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # Keras 3's fit takes Python generators, not Keras 2 Sequence objects.
        while True:
            yield next(flow)

    seed_model = compiled(config, arch, seed, None, steps_per_epoch)
    seed_batches = batches()

    def fit_seed(steps: int) -> None:
        seed_model.fit(seed_batches, epochs=1, steps_per_epoch=steps, verbose=0)

    theirs = measure(fit_seed, args.warmup, args.steps, batch)

    def generate_only(steps: int) -> None:
        for _ in range(steps):
            next(flow)

    generator_alone = measure(generate_only, 2, args.steps, batch)

    print(f"{'pipeline':<52} {'images/s (wall)':>16} {'images/s (CPU-eq.)':>19}")
    for name, (wall, cpu) in (("ferops: tf.data + in-model augmentation, fit", ours),
                              ("seed style: ImageDataGenerator.flow, fit", theirs),
                              ("  (ImageDataGenerator alone, no training)", generator_alone)):
        print(f"{name:<52} {wall:>16.1f} {cpu:>19.1f}")
    print(f"ratio ferops / seed style: {ours[0] / theirs[0]:.2f}x wall, {ours[1] / theirs[1]:.2f}x CPU-eq. "
          f"(target >= 3x)")


if __name__ == "__main__":
    main()
