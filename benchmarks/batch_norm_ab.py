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

from pathlib import Path

from ferops.hardware import configure
from train_throughput import (  # sibling script
    ab_arguments,
    compiled,
    interleaved_rounds,
    recipe,
    repeating_feed,
)


def main() -> None:
    args = ab_arguments(__doc__.splitlines()[0])

    config, arch, seed = recipe(Path(args.params), args.arch)
    hardware = configure(config.mixed_precision, arch)
    batch = config.batch_size
    dataset, steps_per_epoch = repeating_feed(args.train, batch, seed)
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
