"""A/B of Keras backends on this CPU: training images/s of the default net under each.

Runs one child process per (backend, precision) pair, since Keras picks its backend at import:
each builds the net of params.yaml (``model.arch``, ``train`` settings, augmentation included),
compiles it as the train stage does and times ``model.fit`` over ``--steps`` steps on the real
oversampled Training split after ``--warmup`` untimed steps, with this project's input pipeline
for that backend (``tf.data`` under TensorFlow, a ``keras.utils.PyDataset`` otherwise).

    python benchmarks/backend_ab.py [--pairs tensorflow:mixed_bfloat16 torch:float32 ...]

PyTorch needs ``pip install -e '.[backends]'`` (a CPU build). Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = ("tensorflow:mixed_bfloat16", "tensorflow:float32", "torch:mixed_bfloat16",
                 "torch:float32", "jax:mixed_bfloat16", "jax:float32")


def child(args: argparse.Namespace) -> None:
    """Measure one backend (the one KERAS_BACKEND selects) and print a JSON line."""
    import keras

    from ferops.input_pipeline import make_dataset
    from ferops.io import load_arrays
    from ferops.targets import targets_for
    from train_throughput import compiled, recipe, step_seconds  # the sibling script

    config, arch, seed = recipe(Path(args.params), args.arch)
    keras.mixed_precision.set_global_policy(args.precision)
    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    batch = config.batch_size
    model = compiled(config, arch, seed, config.augment, len(images) // batch)
    dataset = make_dataset(images, targets, batch, training=True, seed=seed)
    if keras.backend.backend() == "tensorflow":
        dataset = dataset.repeat()
    seconds = step_seconds(model, dataset, args.warmup, args.steps)
    print(json.dumps({"backend": keras.backend.backend(), "precision": args.precision,
                      "images_per_second": batch / seconds}))


def main() -> None:
    from train_throughput import add_recipe_arguments  # the sibling script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, "data/oversampled/train.npz", "pair")
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), metavar="BACKEND:PRECISION")
    parser.add_argument("--precision", help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.precision:
        child(args)
        return
    print(f"{'backend':<12} {'precision':<16} {'images/s':>9}")
    for pair in args.pairs:
        backend, _, precision = pair.partition(":")
        command = [sys.executable, __file__, "--params", args.params, "--train", args.train,
                   "--steps", str(args.steps), "--warmup", str(args.warmup), "--precision",
                   precision or "float32", *(["--arch", args.arch] if args.arch else [])]
        environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{backend:<12} {precision:<16} {'failed':>9}  ({tail})")
            continue
        result = json.loads(lines[-1])
        print(f"{backend:<12} {precision:<16} {result['images_per_second']:9.1f}")


if __name__ == "__main__":
    main()
