"""Training images/s with TensorFlow's fused BatchNorm against Keras's own BatchNorm ops, interleaved.

Both sides are the default net as the train stage trains it (``model.arch`` and ``train`` of
params.yaml: augmentation layers, mixed precision, optimizer, ``make_dataset``'s tf.data input
over the real oversampled Training split); they differ only in their BatchNorm layers:

- fused: ``ferops.models.with_fused_batch_norm`` (TensorFlow's ``FusedBatchNormV3``, oneDNN);
- Keras: the stock ``keras.layers.BatchNormalization`` (a cast to float32, the moments, the
  normalisation and a cast back, each a separate pass forward and backward).

The two alternate, ``--rounds`` times ``--steps`` steps each, so that both see the same machine:
this VM's speed drifts by up to ~2x over minutes, which makes two separate runs incomparable.
Printed: each round's images/s, the median of each side and the ratio of the medians.

    python benchmarks/batch_norm_ab.py [--rounds 5] [--steps 20] [--warmup 6]

Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ferops.hardware import configure
from ferops.input_pipeline import make_dataset
from ferops.io import load_arrays
from ferops.targets import targets_for
from train_throughput import add_recipe_arguments, compiled, interleaved_rounds, recipe  # sibling script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_recipe_arguments(parser, "data/oversampled/train.npz", "side and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two sides")
    parser.set_defaults(steps=20)
    args = parser.parse_args()

    config, arch, seed = recipe(Path(args.params), args.arch)
    hardware = configure(config.mixed_precision, arch)
    arrays = load_arrays(args.train)
    images, targets = arrays["images"], targets_for(arrays, "hard", 7, "training data")
    batch = config.batch_size
    steps_per_epoch = len(images) // batch
    dataset = make_dataset(images, targets, batch, training=True, seed=seed).repeat()
    sides = {
        "fused BatchNorm": compiled(config, arch, seed, config.augment, steps_per_epoch),
        "Keras BatchNorm": compiled(config, arch, seed, config.augment, steps_per_epoch,
                                    fused_batch_norm=False),
    }
    print(f"net {arch}, precision {hardware.precision}, batch {batch}, backend {hardware.backend}; "
          f"{args.rounds} rounds of {args.steps} steps per side")
    medians = interleaved_rounds(sides, dataset, batch, args.warmup, args.steps, args.rounds)
    fused, stock = medians.values()
    print(f"fused / Keras: {fused / stock:.2f}x")


if __name__ == "__main__":
    main()
