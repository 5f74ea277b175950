"""How close training comes to the machine's limit: images/s, FLOPs per image, and the ratio.

Prints, in one run, for the net of params.yaml (``model.arch``) at its training precision:
- training images/s of this project's input pipeline and model (``model.fit`` on real images);
- the net's FLOPs per image: the forward pass counted layer by layer (convolutions and dense
  layers, 2 FLOPs per multiply-add), and training as 3x the forward pass (forward, and the two
  backward products of each layer);
- the machine's measured throughput at the same precision: a large matmul, and the net's own
  convolutions (each conv layer's shapes at the training batch size, forward, compiled);
- the share of the machine's convolution throughput that training reaches.

    python benchmarks/train_limit.py [--arch NAME] [--batch 128] [--steps 30]

Run it alone on an idle machine: the figures are throughputs.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from ferops.hardware import configure
from ferops.io import load_arrays
from ferops.training import make_dataset, targets_for
from train_throughput import compiled, recipe, step_seconds  # the sibling script

ROOT = Path(__file__).resolve().parents[1]


def forward_flops(model) -> tuple[float, list[tuple[str, tuple, float]]]:
    """Forward FLOPs per image, and each conv layer's (name, shapes, FLOPs)."""
    from keras import layers

    total, convs = 0.0, []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, layers.Conv2D):
            _, height, width, channels_in = layer.input.shape
            _, out_h, out_w, channels_out = layer.output.shape
            taps = layer.kernel_size[0] * layer.kernel_size[1]
            flops = 2.0 * out_h * out_w * taps * channels_in * channels_out
            convs.append((layer.name, (height, width, channels_in, channels_out, layer.kernel_size[0],
                                       layer.strides[0]), flops))
            total += flops
        elif isinstance(layer, layers.Dense):
            total += 2.0 * layer.input.shape[-1] * layer.units
    return total, convs


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` runs, after two untimed ones."""
    function()
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def machine_throughput(convs, batch: int, dtype: str) -> tuple[float, float]:
    """Measured FLOP/s: a 4096^3 matmul, and the net's convolutions at ``batch`` (weighted)."""
    import tensorflow as tf

    a = tf.random.normal((4096, 4096), dtype=tf.float32)
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda: tf.linalg.matmul(a, a))
    matmul_rate = 2 * 4096**3 / timed(lambda: matmul().numpy(), 5)
    seconds, flops = 0.0, 0.0
    for _name, (height, width, channels_in, channels_out, kernel, stride), per_image in convs:
        images = tf.cast(tf.random.normal((batch, height, width, channels_in)), dtype)
        kernel_tensor = tf.cast(tf.random.normal((kernel, kernel, channels_in, channels_out)), dtype)
        conv = tf.function(lambda x=images, k=kernel_tensor, s=stride: tf.nn.conv2d(x, k, s, "SAME"))
        seconds += timed(lambda c=conv: c().numpy(), 7)
        flops += per_image * batch
    return matmul_rate, flops / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--train", default=str(ROOT / "data/oversampled/train.npz"))
    parser.add_argument("--arch", help="a model.arch to measure instead of the one in params.yaml")
    parser.add_argument("--batch", type=int, help="batch size (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps")
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params), args.arch, args.batch)
    hardware = configure(config.mixed_precision)
    dtype = "bfloat16" if "bfloat16" in hardware.precision else (
        "float16" if "float16" in hardware.precision else "float32")

    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    model = compiled(config, arch, seed, config.augment, len(images) // config.batch_size)
    dataset = make_dataset(images, targets, config.batch_size, training=True, seed=seed).repeat()
    images_per_second = config.batch_size / step_seconds(model, dataset, 6, args.steps)

    forward, convs = forward_flops(model)
    training = 3 * forward
    matmul_rate, conv_rate = machine_throughput(convs, config.batch_size, dtype)
    reached = images_per_second * training
    print(f"net {arch} ({model.count_params():,} parameters), precision {hardware.precision}, batch "
          f"{config.batch_size}, {os.cpu_count()} CPU cores, backend {hardware.backend}")
    print(f"training:                         {images_per_second:10.1f} images/s")
    print(f"forward FLOPs per image:          {forward / 1e6:10.1f} MFLOP "
          f"({sum(c[2] for c in convs) / forward:.0%} in {len(convs)} convolutions)")
    print(f"training FLOPs per image (3x):    {training / 1e6:10.1f} MFLOP")
    print(f"training reaches:                 {reached / 1e12:10.3f} TFLOP/s")
    print(f"machine, {dtype} matmul 4096^3:   {matmul_rate / 1e12:10.3f} TFLOP/s")
    print(f"machine, the net's convolutions:  {conv_rate / 1e12:10.3f} TFLOP/s (forward, batch "
          f"{config.batch_size})")
    print(f"share of the convolution limit:   {reached / conv_rate:10.1%}")


if __name__ == "__main__":
    main()
