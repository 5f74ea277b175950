"""Training images/s of the default net in float32 against mixed bfloat16, interleaved, on this CPU.

The evidence behind ``ferops.hardware.select_precision``'s CPU rule. Both sides are the default
net as the train stage trains it (``model.arch`` and ``train`` of params.yaml: augmentation
layers, the fused-BatchNorm training twin, the optimizer, ``make_dataset``'s tf.data input over
the real oversampled Training split); they differ only in the Keras dtype policy they were built
under (``float32`` or ``mixed_bfloat16``). A kernel alone does not decide: casts, BatchNorm,
augmentation and the optimizer run in float32 either way, so the whole training step is timed.

The two sides alternate, ``--rounds`` times ``--steps`` steps each, so that both see the same
machine (this VM's speed drifts by up to ~2x over minutes). Printed: the CPU (model name and
the bfloat16 flags that ``select_precision`` reads), each round's images/s, the median of each
side and the ratio of the medians.

    python benchmarks/precision_ab.py [--rounds 5] [--steps 20] [--warmup 6] [--arch NAME]

Run it alone on an idle machine, after ``dvc repro oversample``.
"""

from __future__ import annotations

from pathlib import Path

from ferops.hardware import bf16_flags, cpu_flags, cpu_model
from train_throughput import (  # sibling script
    ab_arguments,
    compiled,
    interleaved_rounds,
    recipe,
    repeating_feed,
)

POLICIES = ("float32", "mixed_bfloat16")


def main() -> None:
    args = ab_arguments(__doc__.splitlines()[0])

    import keras

    config, arch, seed = recipe(Path(args.params), args.arch)
    batch = config.batch_size
    dataset, steps_per_epoch = repeating_feed(args.train, batch, seed)
    sides = {}
    for policy in POLICIES:
        # A layer takes the global policy in force when it is built: each side keeps its own.
        keras.mixed_precision.set_global_policy(policy)
        sides[policy] = compiled(config, arch, seed, config.augment, steps_per_epoch)
    keras.mixed_precision.set_global_policy("float32")
    flags = list(bf16_flags(cpu_flags()))
    print(f"CPU {cpu_model()!r}, bfloat16 flags {flags or 'none'}; net {arch}, batch {batch}, "
          f"backend {keras.backend.backend()}; {args.rounds} rounds of {args.steps} steps per side")
    medians = interleaved_rounds(sides, dataset, batch, args.warmup, args.steps, args.rounds)
    print(f"mixed_bfloat16 / float32: {medians['mixed_bfloat16'] / medians['float32']:.2f}x")


if __name__ == "__main__":
    main()
