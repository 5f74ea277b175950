"""The training and validation input pipeline over in-memory uint8 images, per Keras backend.

Under TensorFlow a ``tf.data`` pipeline; under JAX and PyTorch a ``keras.utils.PyDataset`` over
the same arrays, so nothing there needs TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Parallel map calls and prefetched batches of the tf.data input pipeline (see make_dataset).
PIPELINE_WORKERS = 2


def alternate_flips(n_images: int, seed: int, epoch: int) -> np.ndarray:
    """Which images are mirrored in a 0-based ``epoch`` under alternating flip.

    A seeded random half in the first epoch, then every image the other way round from the epoch
    before (airbench's "alternating flip"): over any two consecutive epochs each image is seen
    once as it is and once mirrored, where random flips show some images the same way 3 or 4
    times running.
    """
    first = np.random.default_rng([seed, 0xF11B]).random(n_images) < 0.5
    return first ^ bool(epoch % 2)


def make_dataset(images: np.ndarray, targets: np.ndarray, batch_size: int, *, training: bool,
                 seed: int, mixup: float = 0.0, alternate_flip_epochs: int | None = None) -> Any:
    """The input pipeline over in-memory uint8 images, for the active Keras backend.

    Training batches are shuffled each epoch and always full (the last partial batch is dropped):
    TensorFlow 2.21's oneDNN kernels crash on a ragged last batch with some separable-conv nets,
    and full batches keep every backend's compiled step at one shape. Under TensorFlow this is a
    ``tf.data`` pipeline (parallel casting and prefetching); under JAX and PyTorch a
    ``keras.utils.PyDataset`` over the same arrays, so nothing needs TensorFlow there.

    With ``mixup`` > 0 (training only), each batch is mixed with itself in reverse order: image i
    becomes w * x_i + (1 - w) * x_(n-1-i), and its target the same mix, w ~ Beta(mixup, mixup) per
    image. Mixing within the batch costs no extra reads.

    With ``alternate_flip_epochs`` (training only), images are mirrored by
    :func:`alternate_flips` instead of at random (the model's own ``RandomFlip`` must then be
    off). Under TensorFlow the dataset then holds that many epochs back to back, each reshuffled,
    and is consumed with ``steps_per_epoch`` (Keras keeps one iterator across epochs then, so each
    epoch gets its own flips); the array batches count their epochs themselves.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if training and alternate_flip_epochs:
            dataset = _alternating_flip_epochs(images, targets, batch_size, seed, alternate_flip_epochs)
        else:
            dataset = tf.data.Dataset.from_tensor_slices((images[..., None], targets))
            if training:
                dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
            dataset = dataset.batch(batch_size, drop_remainder=training)
        # Fixed parallelism, not tf.data.AUTOTUNE: the autotuner's background thread sleeps
        # between its optimisation rounds (up to a minute apart), and Keras destroys the training
        # and validation iterators after every epoch, which waits for that sleep to end. Measured
        # on the 2-core CPU machine: half the epochs took twice as long with both cores idle
        # (benchmarks/train_stall.py). Casting a batch is cheap; two workers and two prefetched
        # batches keep the network fed.
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y),
                              num_parallel_calls=PIPELINE_WORKERS)
        if training and mixup:
            def mix(x: Any, y: Any) -> tuple[Any, Any]:
                # Beta(a, a) from two Gamma(a) draws (TensorFlow has no Beta sampler).
                first = tf.random.gamma([tf.shape(x)[0]], mixup, seed=seed)
                second = tf.random.gamma([tf.shape(x)[0]], mixup, seed=seed + 1)
                weight = first / (first + second)
                return (_mix(x, weight[:, None, None, None], x[::-1]),
                        _mix(y, weight[:, None], y[::-1]))

            dataset = dataset.map(mix, num_parallel_calls=PIPELINE_WORKERS)
        return dataset.prefetch(PIPELINE_WORKERS)
    return _array_batches(images, targets, batch_size, training=training, seed=seed,
                          mixup=mixup if training else 0.0,
                          alternate_flip=bool(training and alternate_flip_epochs))


def _alternating_flip_epochs(images: np.ndarray, targets: np.ndarray, batch_size: int, seed: int,
                             epochs: int) -> Any:
    """``epochs`` shuffled passes over the images as one tf.data dataset, flipped alternately.

    The order and the flips of every epoch are drawn up front in NumPy (a few MB of indices);
    the pipeline gathers each batch and mirrors the rows that its flags say.
    """
    import tensorflow as tf

    rng = np.random.default_rng([seed, 0x5EED])
    kept = len(images) // batch_size * batch_size  # full batches, like the random-flip pipeline
    orders = [rng.permutation(len(images))[:kept] for _ in range(epochs)]
    mirrors = [alternate_flips(len(images), seed, epoch)[order] for epoch, order in enumerate(orders)]
    pixels, labels = tf.constant(images[..., None]), tf.constant(targets)

    def gather(rows: Any, mirror: Any) -> tuple[Any, Any]:
        x = tf.gather(pixels, rows)
        return tf.where(mirror[:, None, None, None], tf.reverse(x, axis=[2]), x), tf.gather(labels, rows)

    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate(orders).astype(np.int32),
                                                  np.concatenate(mirrors)))
    return dataset.batch(batch_size, drop_remainder=True).map(gather)


def _mix(values: Any, weight: Any, partner: Any) -> Any:
    return weight * values + (1 - weight) * partner


def _array_batches(images: np.ndarray, targets: np.ndarray, batch_size: int, *, training: bool,
                   seed: int, mixup: float = 0.0, alternate_flip: bool = False) -> Any:
    import keras

    class ArrayBatches(keras.utils.PyDataset):
        """Batches of float32 images and their targets; a new seeded order every training epoch."""

        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images)) if training else np.arange(len(images))
            self.epoch = 0

        def __len__(self) -> int:
            full, rest = divmod(len(images), batch_size)
            return full if training or not rest else full + 1

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.sort(self.order[index * batch_size:(index + 1) * batch_size])
            x, y = images[rows][..., None].astype(np.float32), targets[rows]
            if alternate_flip:
                mirror = alternate_flips(len(images), seed, self.epoch)[rows]
                x[mirror] = x[mirror, :, ::-1]
            if mixup:
                weight = self.rng.beta(mixup, mixup, size=len(rows)).astype(np.float32)
                x = _mix(x, weight[:, None, None, None], x[::-1])
                y = _mix(y, weight[:, None], y[::-1])
            return x, y

        def on_epoch_end(self) -> None:
            if training:
                self.order = self.rng.permutation(len(images))
                self.epoch += 1

    return ArrayBatches()
