"""Where a training step of the default net spends its time, measured by taking parts away.

Each row trains the net of params.yaml (``model.arch``, ``train`` settings) for ``--steps`` steps
after ``--warmup`` untimed ones, with one thing changed, and prints images/s and milliseconds per
step; the difference to the row above it is the cost of what was removed:

- as trained: ``dvc repro``'s step (tf.data input, augmentation layers, mixed precision);
- one batch held in memory: the same model fed one resident batch (no input pipeline);
- without augmentation: no augmentation layers either (the net, loss and optimizer alone);
- the same with Keras's own BatchNorm ops instead of TensorFlow's fused kernel (what the train
  stage trained with before ``ferops.models.with_fused_batch_norm``);
- each augmentation layer alone on top of that (flip, rotation, zoom, translation);
- the optimizer update alone (SGD with Nesterov momentum and weight decay on every weight);
- the net's convolutions alone (forward and both backward products, compiled), which is the
  floor a step cannot go below; the rest of the net's own step is BatchNorm, activations and the
  residual adds.

    python benchmarks/train_profile.py [--steps 30] [--warmup 6] [--arch resnet_s2d_gelu]

Run it alone on an idle machine: the figures are throughputs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ferops.hardware import configure
from ferops.input_pipeline import make_dataset
from ferops.io import load_arrays
from ferops.models import Augmentation
from ferops.targets import targets_for
from train_throughput import add_recipe_arguments, compiled, recipe, step_seconds  # sibling script

ROOT = Path(__file__).resolve().parents[1]


def optimizer_seconds(model, repeats: int = 30) -> float:
    """Seconds of one compiled optimizer update of all the model's weights."""
    import tensorflow as tf

    grads = [tf.zeros_like(variable) for variable in model.trainable_variables]
    update = tf.function(lambda: model.optimizer.apply(grads, model.trainable_variables))
    update()
    update()
    start = time.perf_counter()
    for _ in range(repeats):
        update()
    return (time.perf_counter() - start) / repeats


def convolution_seconds(model, batch: int, dtype: str, repeats: int = 7) -> float:
    """Seconds of the net's convolutions for one batch: forward, input and kernel gradients."""
    import tensorflow as tf
    from keras import layers

    total = 0.0
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, layers.Conv2D):
            continue
        _, height, width, channels_in = layer.input.shape
        stride, kernel = layer.strides[0], layer.kernel_size[0]
        images = tf.cast(tf.random.normal((batch, height, width, channels_in)), dtype)
        weights = tf.cast(tf.random.normal((kernel, kernel, channels_in, layer.filters)), dtype)

        @tf.function
        def forward_backward(x=images, k=weights, s=stride):
            with tf.GradientTape() as tape:
                tape.watch([x, k])
                y = tf.nn.conv2d(x, k, s, "SAME")
            return tape.gradient(y, [x, k])

        samples = []
        for index in range(repeats + 2):
            start = time.perf_counter()
            [g.numpy() for g in forward_backward()]
            if index >= 2:
                samples.append(time.perf_counter() - start)
        total += float(np.median(samples))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, "data/oversampled/train.npz", "row")
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params), args.arch)
    hardware = configure(config.mixed_precision, arch)
    dtype = "bfloat16" if "bfloat16" in hardware.precision else "float32"
    import tensorflow as tf

    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    batch = config.batch_size
    steps_per_epoch = len(images) // batch
    dataset = make_dataset(images, targets, batch, training=True, seed=seed).repeat()
    resident = tf.data.Dataset.from_tensors(
        (tf.constant(images[:batch, ..., None], tf.float32), tf.constant(targets[:batch]))).repeat()
    # The same tf.data options as the training pipeline (autotuner off): with it on, each fit's
    # iterator teardown can wait seconds for the autotuner's sleep, which is not the step's cost.
    resident = resident.with_options(dataset.options())

    rows: list[tuple[str, float]] = []
    augment = config.augment
    # The bare net first, then each augmentation layer alone, then the whole step: the first
    # model built in a process pays one-off costs (oneDNN kernel creation) that a warm-up of a
    # few steps does not always absorb, so the order puts that on the bare net, measured twice.
    bare = compiled(config, arch, seed, None, steps_per_epoch)
    step_seconds(bare, resident, args.warmup, args.steps)
    bare_seconds = step_seconds(bare, resident, args.warmup, args.steps)
    off = Augmentation(flip=False, rotation=0, zoom=0, translation=0, contrast=0, erasing=0)
    for name in ("flip", "rotation", "zoom", "translation", "contrast", "erasing"):
        value = getattr(augment, name)
        if value:
            alone = off.model_copy(update={name: value})
            model = compiled(config, arch, seed, alone, steps_per_epoch)
            rows.append((f"  with {name} alone", step_seconds(model, resident, args.warmup, args.steps)))
    model = compiled(config, arch, seed, augment, steps_per_epoch)
    resident_seconds = step_seconds(model, resident, args.warmup, args.steps)
    unfused = compiled(config, arch, seed, None, steps_per_epoch, fused_batch_norm=False)
    rows[:0] = [("as trained (tf.data, augmentation)", step_seconds(model, dataset, args.warmup, args.steps)),
                ("one batch held in memory", resident_seconds),
                ("  and without augmentation", bare_seconds),
                ("  the same with Keras's own BatchNorm ops", step_seconds(unfused, resident, args.warmup,
                                                                      args.steps))]
    optimizer = optimizer_seconds(bare)
    convolutions = convolution_seconds(bare, batch, dtype)

    print(f"net {arch} ({bare.count_params():,} parameters), precision {hardware.precision}, "
          f"batch {batch}, backend {hardware.backend}")
    print(f"{'row':44s} {'images/s':>9s} {'ms/step':>8s}")
    for name, seconds in rows:
        print(f"{name:44s} {batch / seconds:9.1f} {seconds * 1000:8.1f}")
    print(f"{'optimizer update alone':44s} {'':9s} {optimizer * 1000:8.1f}")
    print(f"{'convolutions alone (fwd + 2 bwd products)':44s} {batch / convolutions:9.1f} "
          f"{convolutions * 1000:8.1f}")
    other = bare_seconds - optimizer - convolutions
    print("share of the as-trained step: "
          f"input pipeline {(rows[0][1] - rows[1][1]) / rows[0][1]:.0%}, "
          f"augmentation {(rows[1][1] - bare_seconds) / rows[0][1]:.0%}, "
          f"convolutions {convolutions / rows[0][1]:.0%}, optimizer {optimizer / rows[0][1]:.0%}, "
          f"BatchNorm/activations/adds/loss {other / rows[0][1]:.0%}")


if __name__ == "__main__":
    main()
