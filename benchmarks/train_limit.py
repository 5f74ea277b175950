"""How close training comes to the machine's limit: images/s, FLOPs per image, and the ratio.

Prints, in one run, for the net of params.yaml (``model.arch``) at its training precision:
- training images/s of this project's input pipeline and model (``model.fit`` on real images);
- the net's FLOPs per image: the forward pass counted layer by layer (convolutions and dense
  layers, 2 FLOPs per multiply-add), and training as 3x the forward pass (forward, and the two
  backward products of each layer);
- the machine's measured throughput at the same precision: a large matmul, and the net's own
  convolutions (each conv layer's shapes at the training batch size, forward, compiled);
- the share of the machine's convolution throughput that training reaches.

Training and the reference figures alternate, ``--rounds`` times: this VM's speed drifts by up to
~2x within minutes, so a ratio of two figures measured minutes apart can be off either way. Each
round gives its own share (training and references measured seconds apart); the median of those
per-round shares is printed with the medians of each throughput, and beside it the strict
reading: the median training rate against the fastest convolution rate of any round.

    python benchmarks/train_limit.py [--arch NAME] [--batch 128] [--steps 30] [--rounds 5]

Run it alone on an idle machine: the figures are throughputs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from ferops.hardware import configure
from ferops.input_pipeline import make_dataset
from ferops.io import load_arrays
from ferops.targets import targets_for
from train_throughput import compiled, recipe  # the sibling script

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


def timed(function, repeats: int, calls: int = 1) -> float:
    """Seconds per call of ``function()``: the median over ``repeats`` samples of ``calls`` calls.

    Several calls per sample because one of the net's convolutions takes ~2 ms, where a
    scheduling hiccup of the VM or the call's own overhead would be a large part of one call.
    """
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            function()
        samples.append((time.perf_counter() - start) / calls)
    return float(np.median(samples))


def reference_kernels(convs, batch: int, dtype: str):
    """Compiled, warmed-up reference kernels: a 4096^3 matmul and each of the net's convolutions.

    Returns ``(matmul, [(conv, flops per call)])``; calling one runs it once to completion.
    """
    import tensorflow as tf

    a = tf.cast(tf.random.normal((4096, 4096), dtype=tf.float32), dtype)
    matmul_function = tf.function(lambda: tf.linalg.matmul(a, a))
    kernels = []
    for _name, (height, width, channels_in, channels_out, kernel, stride), per_image in convs:
        images = tf.cast(tf.random.normal((batch, height, width, channels_in)), dtype)
        kernel_tensor = tf.cast(tf.random.normal((kernel, kernel, channels_in, channels_out)), dtype)
        conv = tf.function(lambda x=images, k=kernel_tensor, s=stride: tf.nn.conv2d(x, k, s, "SAME"))
        kernels.append((lambda c=conv: c().numpy(), per_image * batch))
    matmul = lambda: matmul_function().numpy()  # noqa: E731 - a thunk, like the convs
    for function in [matmul] + [k for k, _ in kernels]:
        function()
        function()
    return matmul, kernels


def machine_throughput(matmul, kernels, repeats: int) -> tuple[float, float]:
    """Measured FLOP/s now: the matmul, and the net's convolutions together (FLOP-weighted)."""
    matmul_rate = 2 * 4096**3 / timed(matmul, repeats)
    seconds = sum(timed(kernel, repeats, calls=10) for kernel, _ in kernels)
    return matmul_rate, sum(flops for _, flops in kernels) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--train", default=str(ROOT / "data/oversampled/train.npz"))
    parser.add_argument("--arch", help="a model.arch to measure instead of the one in params.yaml")
    parser.add_argument("--batch", type=int, help="batch size (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternations of training and the reference kernels")
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params), args.arch, args.batch)
    hardware = configure(config.mixed_precision, arch)
    dtype = "bfloat16" if "bfloat16" in hardware.precision else (
        "float16" if "float16" in hardware.precision else "float32")

    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    model = compiled(config, arch, seed, config.augment, len(images) // config.batch_size)
    dataset = make_dataset(images, targets, config.batch_size, training=True, seed=seed).repeat()
    forward, convs = forward_flops(model)
    training = 3 * forward
    matmul, kernels = reference_kernels(convs, config.batch_size, dtype)
    model.fit(dataset, epochs=1, steps_per_epoch=6, shuffle=False, verbose=0)  # warm-up

    print(f"net {arch} ({model.count_params():,} parameters), precision {hardware.precision}, batch "
          f"{config.batch_size}, {os.cpu_count()} CPU cores, backend {hardware.backend}")
    print(f"forward FLOPs per image:          {forward / 1e6:10.1f} MFLOP "
          f"({sum(c[2] for c in convs) / forward:.0%} in {len(convs)} convolutions)")
    print(f"training FLOPs per image (3x):    {training / 1e6:10.1f} MFLOP")
    rows = []
    for round_ in range(1, args.rounds + 1):
        start = time.perf_counter()
        model.fit(dataset, epochs=1, steps_per_epoch=args.steps, shuffle=False, verbose=0)
        images_per_second = args.steps * config.batch_size / (time.perf_counter() - start)
        matmul_rate, conv_rate = machine_throughput(matmul, kernels, 5)
        share = images_per_second * training / conv_rate
        rows.append((images_per_second, matmul_rate, conv_rate, share))
        print(f"round {round_}: training {images_per_second:7.1f} images/s "
              f"({images_per_second * training / 1e12:.3f} TFLOP/s), matmul "
              f"{matmul_rate / 1e12:.3f}, convolutions {conv_rate / 1e12:.3f} TFLOP/s, "
              f"share {share:.1%}", flush=True)
    images_per_second, matmul_rate, conv_rate, share = (statistics.median(column)
                                                         for column in zip(*rows, strict=True))
    print(f"medians of {args.rounds} rounds:")
    print(f"training:                         {images_per_second:10.1f} images/s")
    print(f"training reaches:                 {images_per_second * training / 1e12:10.3f} TFLOP/s")
    print(f"machine, {dtype} matmul 4096^3:   {matmul_rate / 1e12:10.3f} TFLOP/s")
    print(f"machine, the net's convolutions:  {conv_rate / 1e12:10.3f} TFLOP/s (forward, batch "
          f"{config.batch_size})")
    print(f"share of the convolution limit:   {share:10.1%} (median of the rounds' own shares; "
          f"range {min(r[3] for r in rows):.1%}-{max(r[3] for r in rows):.1%})")
    # The strict reading: training's typical rate against the fastest the convolutions ran in any
    # round, so a slow spell of the reference kernels cannot flatter the share.
    best_conv = max(r[2] for r in rows)
    print(f"  against the fastest round's convolutions ({best_conv / 1e12:.3f} TFLOP/s): "
          f"{images_per_second * training / best_conv:.1%}")


if __name__ == "__main__":
    main()
