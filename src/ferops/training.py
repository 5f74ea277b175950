"""Train a classifier from the zoo: input pipeline, optimiser, schedule, callbacks, fit.

Every setting comes in through :class:`TrainConfig` (the ``train`` section of params.yaml, built
with :func:`ferops.config.build`), checked before anything slow happens.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ferops.config import Section
from ferops.errors import DataError, ParamsError
from ferops.io import atomic_file
from ferops.models import Augmentation, build_model, fit_patch_whitening, with_fused_batch_norm

logger = logging.getLogger(__name__)

# onecycle: the warm-up starts at this fraction of the peak learning rate.
ONECYCLE_START = 0.04


class TrainConfig(Section):
    """Everything in the ``train`` params section: what decides a training run.

    Attributes:
        epochs: Maximum number of epochs.
        batch_size: Images per step (per replica count is handled by the strategy).
        lr: Peak learning rate.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (SGD uses Nesterov momentum).
        weight_decay: Decoupled weight decay (Keras ``weight_decay``: each step subtracts
            ``lr * weight_decay * w`` from every decayed weight).
        decay_norm_and_bias: Decay BatchNorm scales/offsets and biases too (False: only kernels,
            the usual choice for SGD recipes: decaying BatchNorm scales only fights the
            normalisation).
        momentum: SGD momentum.
        schedule: ``cosine`` (with warm-up), ``onecycle`` (linear warm-up from 4 % of ``lr``,
            then linear decay to 0 at the last step), ``constant`` (with warm-up) or ``plateau``
            (halve the LR when validation accuracy stalls; no warm-up).
        warmup_fraction: Linear warm-up length as a share of all training steps, so that any
            epoch count works (``dvc exp run -S train.epochs=1`` included).
        label_smoothing: Cross-entropy label smoothing.
        class_weight: ``none`` or ``balanced`` (inverse class frequency).
        patience: Early-stopping patience in epochs on validation accuracy (0 = off).
        target: ``hard`` (labels), ``soft`` (FER+ vote distributions) or ``blend``
            (``blend_alpha`` x the FER+ vote distribution + (1 - ``blend_alpha``) x the one-hot
            label, where FER+ has votes; the one-hot label elsewhere).
        blend_alpha: The FER+ share of a ``blend`` target.
        blend_match_prior: Rescale the FER+ vote distributions of a ``blend`` target so that
            their class totals match the original labels' (FER+ taggers put far more mass on
            neutral, and a blend trained on raw votes predicts neutral about twice as often).
        ema_momentum: Validate, checkpoint and keep an exponential moving average of the weights
            with this momentum per step (None: the raw weights).
        mixup: Mixup strength: each batch is mixed with itself in reverse order by a weight drawn
            from Beta(mixup, mixup) per image (0: off).
        mixed_precision: ``auto``, ``float32``, ``mixed_float16`` or ``mixed_bfloat16``.
        augment: In-graph augmentation.
        max_train_images: Use only this many Training images (a small profile); None = all.
        max_minutes: Stop after the epoch that crosses this wall-time budget; None = no budget.
    """

    epochs: int = Field(30, gt=0)
    batch_size: int = Field(128, gt=0)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    weight_decay: float = Field(1e-4, ge=0, allow_inf_nan=False)
    decay_norm_and_bias: bool = True
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "onecycle", "plateau", "constant"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    class_weight: Literal["none", "balanced"] = "none"
    patience: int = Field(0, ge=0)
    target: Literal["hard", "soft", "blend"] = "hard"
    blend_alpha: float = Field(0.5, ge=0, le=1)
    blend_match_prior: bool = False
    ema_momentum: float | None = Field(None, gt=0, lt=1)
    mixup: float = Field(0.0, ge=0, allow_inf_nan=False)
    mixed_precision: Literal["auto", "float32", "mixed_float16", "mixed_bfloat16"] = "auto"
    augment: Augmentation = Augmentation()
    max_train_images: int | None = Field(None, gt=0)
    max_minutes: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _enough_images(self) -> TrainConfig:
        if self.max_train_images is not None and self.max_train_images < self.batch_size:
            raise ValueError(f"max_train_images ({self.max_train_images}) must be null or at least "
                             f"batch_size ({self.batch_size})")
        return self

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Number of warm-up steps for a run of ``steps_per_epoch`` steps per epoch."""
        return int(round(self.warmup_fraction * self.epochs * steps_per_epoch))


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        model: The model with the best-validation-accuracy weights.
        history: Metric name to one value per epoch (loss, accuracy, val_loss, val_accuracy, lr).
        best_epoch: 1-based epoch of the best validation accuracy.
        epochs_run: Epochs actually run (early stopping or the time budget may cut the run).
        seconds: Wall time of ``fit`` (training and validation passes).
        images_per_second: Training images processed per second of wall time.
        cpu_seconds: CPU time of this process during ``fit`` (all threads). On a shared machine,
            divided by the number of cores it estimates the wall time the run would take alone.
    """

    model: Any
    history: dict[str, list[float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    images_per_second: float
    cpu_seconds: float = math.nan

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy at the best epoch."""
        return float(self.history["val_accuracy"][self.best_epoch - 1])


def subsample(arrays: Mapping[str, np.ndarray], limit: int | None, seed: int) -> dict[str, np.ndarray]:
    """Keep a seeded, class-stratified random subset of ``limit`` images (None: keep all)."""
    count = len(arrays["label"])
    if limit is None or limit >= count:
        return dict(arrays)
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(count), train_size=limit, random_state=seed,
                               stratify=arrays["label"])
    return _rows(arrays, np.sort(keep))


def _rows(arrays: Mapping[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The ``keep`` rows (indices or a mask) of every per-image array; other entries as they are."""
    count = len(arrays["label"])
    return {key: (value[keep] if len(value) == count else value) for key, value in arrays.items()}


def match_prior(distributions: np.ndarray, counts: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Rescale per-image class distributions so that their class totals approach ``counts``.

    Alternately scales each class (column) to its wanted total and renormalises each image
    (row) to sum to 1 (iterative proportional fitting). Every scaling multiplies a whole class
    column by one factor, so the odds of one class against another keep their order across
    images (and a class an image had no mass on stays at 0 for it) while the split as a whole
    gets the wanted class balance. An image's own ranking of its classes may change.

    Args:
        distributions: (images, classes) non-negative rows summing to 1.
        counts: Wanted total per class (for example the one-hot label counts of the same images).
        iterations: Fitting rounds; a few are enough for the totals to agree to within 1 %.

    Returns:
        float32 rows summing to 1; a class with no mass at all stays at 0.
    """
    fitted = np.asarray(distributions, dtype=np.float64).copy()
    wanted = np.asarray(counts, dtype=np.float64)
    for _ in range(iterations):
        totals = fitted.sum(axis=0)
        fitted *= np.divide(wanted, totals, out=np.ones_like(totals), where=totals > 0)
        rows = fitted.sum(axis=1, keepdims=True)
        fitted = np.divide(fitted, rows, out=np.zeros_like(fitted), where=rows > 0)
    return fitted.astype(np.float32)


def targets_for(arrays: Mapping[str, np.ndarray], target: str, n_classes: int, where: str,
                blend_alpha: float = 0.5, blend_match_prior: bool = False) -> np.ndarray:
    """Training targets, float32, one row per image.

    Args:
        arrays: A split with ``label`` (and ``soft_label``, the FER+ vote distributions).
        target: ``hard`` (one-hot labels), ``soft`` (FER+ vote distributions) or ``blend``
            (``blend_alpha`` x FER+ distribution + (1 - ``blend_alpha``) x one-hot label; images
            without FER+ votes keep their one-hot label).
        n_classes: Number of classes.
        where: Names the split in errors.
        blend_alpha: The FER+ share of a ``blend`` target.
        blend_match_prior: Before blending, rescale the vote distributions of the voted images
            so that their class totals match those images' label counts (:func:`match_prior`).
    """
    label = np.asarray(arrays["label"])
    if (label < 0).any():
        raise DataError(f"{where}: {(label < 0).sum()} images have no label (-1)")
    one_hot = np.eye(n_classes, dtype=np.float32)[label]
    if target == "blend":
        if "soft_label" not in arrays:
            raise DataError(f"{where}: no FER+ vote distributions (soft_label); train.target=blend "
                            "needs the arrays of the prepare stage")
        soft = np.asarray(arrays["soft_label"], dtype=np.float32)
        voted = (soft.sum(axis=1) > 0)[:, None]
        if blend_match_prior and voted.any():
            rows = voted[:, 0]
            soft[rows] = match_prior(soft[rows], one_hot[rows].sum(axis=0))
        blended = blend_alpha * soft + (1 - blend_alpha) * one_hot
        return np.where(voted, blended, one_hot).astype(np.float32)
    if target == "soft":
        soft = np.asarray(arrays["soft_label"], dtype=np.float32)
        empty = soft.sum(axis=1) <= 0
        if empty.any():
            raise DataError(f"{where}: {empty.sum()} images have no FER+ vote distribution; "
                            "train.target=soft needs prepare.labels=ferplus")
        return soft
    return one_hot


def labelled_only(arrays: Mapping[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """Drop the images without a label (-1: no FER+ majority), saying how many.

    With ``prepare.labels: ferplus`` and ``prepare.clean_test: false`` PublicTest keeps the rows
    whose FER+ votes have no majority; they cannot be scored, so validation skips them.
    """
    label = np.asarray(arrays["label"])
    keep = label >= 0
    if keep.all():
        return dict(arrays)
    if not keep.any():
        raise DataError(f"{where}: none of the {len(label)} images has a label")
    logger.warning("%s: %d of %d images have no label (no FER+ majority); validating on the other %d",
                   where, (~keep).sum(), len(label), keep.sum())
    return _rows(arrays, keep)


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


def one_cycle_rate(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Learning rate of the ``onecycle`` schedule at a 0-based optimizer step.

    Linear warm-up from ``ONECYCLE_START * peak`` to ``peak`` over ``warmup_steps``, then a linear
    decay that reaches 0 at ``total_steps``: the schedule of fast fixed-budget training recipes,
    where the whole run is one annealing cycle.
    """
    if step < warmup_steps:
        return peak * (ONECYCLE_START + (1 - ONECYCLE_START) * step / warmup_steps)
    return peak * max(0.0, 1 - (step - warmup_steps) / max(1, total_steps - warmup_steps))


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> Any:
    """The learning rate (a schedule for cosine/constant with warm-up; a float for plateau).

    For ``onecycle`` this is the first step's rate; :func:`_one_cycle_callback` sets each step's.
    """
    import keras

    if config.schedule == "plateau":
        return config.lr
    warmup = config.warmup_steps(steps_per_epoch)
    if config.schedule == "onecycle":
        return one_cycle_rate(0, config.epochs * steps_per_epoch, warmup, config.lr)
    total = config.epochs * steps_per_epoch
    # CosineDecay with alpha=1 stays flat after the warm-up: the "constant" schedule.
    alpha = 1.0 if config.schedule == "constant" else 0.01
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.lr / 10 if warmup else config.lr,
        decay_steps=max(1, total - warmup),
        alpha=alpha,
        warmup_target=config.lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> Any:
    """Build the optimizer named by ``train.optimizer`` with its learning-rate schedule."""
    import keras

    rate = learning_rate(config, steps_per_epoch)
    # Keras keeps the weight average in the optimizer; SwapEMAWeights puts it in the model to
    # validate and checkpoint (see train()).
    ema = ({"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {})
    if config.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(rate, weight_decay=config.weight_decay, **ema)
    elif config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(rate, momentum=config.momentum, nesterov=True,
                                         weight_decay=config.weight_decay or None, **ema)
    else:
        optimizer = keras.optimizers.Adam(rate, weight_decay=config.weight_decay or None, **ema)
    if not config.decay_norm_and_bias and config.weight_decay:
        # Keras variable names: BatchNorm "gamma"/"beta", layer "bias" (kernels stay decayed).
        optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def balanced_class_weight(label: np.ndarray, n_classes: int) -> dict[int, float]:
    """Inverse-frequency class weights (scikit-learn's "balanced")."""
    from sklearn.utils.class_weight import compute_class_weight

    weights = compute_class_weight("balanced", classes=np.arange(n_classes), y=label)
    return {index: float(weight) for index, weight in enumerate(weights)}


def _epoch_callback(on_epoch: Callable[[int, dict[str, float]], None] | None,
                    rows: list[dict[str, float]], images_per_epoch: int) -> Any:
    import keras

    class EpochReport(keras.callbacks.Callback):
        """Logs each epoch, records it in ``rows`` and hands it to ``on_epoch`` (e.g. MLflow)."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = dict(logs or {})
            seconds = time.perf_counter() - self.started
            optimizer = self.model.optimizer
            logs["lr"] = float(keras.ops.convert_to_numpy(
                optimizer.learning_rate if not callable(optimizer.learning_rate)
                else optimizer.learning_rate(optimizer.iterations)))
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = images_per_epoch / seconds
            logger.info(
                "epoch %d: loss %.4f acc %.4f | val_loss %.4f val_acc %.4f | lr %.2e | %.0f s, "
                "%.0f images/s", epoch + 1, logs.get("loss", math.nan), logs.get("accuracy", math.nan),
                logs.get("val_loss", math.nan), logs.get("val_accuracy", math.nan), logs["lr"],
                seconds, logs["images_per_second"])
            rows.append({key: float(value) for key, value in logs.items()})
            if on_epoch:
                on_epoch(epoch + 1, rows[-1])

    return EpochReport()


def _best_checkpoint_callback(portable: Any, path: Path) -> Any:
    import keras

    class BestCheckpoint(keras.callbacks.Callback):
        """Saves ``portable`` with the trained weights whenever PublicTest accuracy improves.

        Keras's ModelCheckpoint would save the model being trained, whose fused BatchNorm
        layers (:func:`ferops.models.with_fused_batch_norm`) a plain Keras could not load.
        """

        best = -math.inf

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            value = (logs or {}).get("val_accuracy")
            if value is None:
                raise RuntimeError("the best-model checkpoint needs val_accuracy; none was logged")
            if value > self.best:
                self.best = value
                if self.model is not portable:
                    portable.set_weights(self.model.get_weights())
                portable.save(path)

    return BestCheckpoint()


def _one_cycle_callback(config: TrainConfig, steps_per_epoch: int) -> Any:
    import keras

    total = config.epochs * steps_per_epoch
    warmup = config.warmup_steps(steps_per_epoch)

    class OneCycle(keras.callbacks.Callback):
        """Sets the ``onecycle`` rate before every step.

        A callback rather than a ``LearningRateSchedule`` subclass: a custom schedule would be
        saved in the ``.keras`` file's optimizer config and the file would then not load without
        this module.
        """

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
            step = self.epoch * steps_per_epoch + batch
            self.model.optimizer.learning_rate = one_cycle_rate(step, total, warmup, config.lr)

    return OneCycle()


def _time_budget_callback(max_minutes: float, start: float) -> Any:
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stops training after the epoch that crosses the wall-time budget."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if time.perf_counter() - start > max_minutes * 60:
                logger.info("time budget of %.1f min reached after epoch %d", max_minutes, epoch + 1)
                self.model.stop_training = True

    return TimeBudget()


def train(
    config: TrainConfig,
    train_arrays: Mapping[str, np.ndarray],
    val_arrays: Mapping[str, np.ndarray],
    *,
    arch: str,
    seed: int,
    n_classes: int,
    image_size: int,
    checkpoint: Path,
    strategy: Any = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``arch`` on the Training arrays, validating on PublicTest each epoch.

    Args:
        config: The checked training config.
        arch: Architecture name (``model.arch``).
        seed: Random seed (weights, shuffling, augmentation; ``base.seed``).
        train_arrays: Training split (``images``, ``label``, ``soft_label``...).
        val_arrays: Validation split (PublicTest).
        n_classes: Number of classes.
        image_size: Image side.
        checkpoint: Where the best model (by validation accuracy) is saved during training.
        strategy: A ``tf.distribute`` strategy to build the model under (TensorFlow with several
            GPUs); None: no strategy scope.
        on_epoch: Called after each epoch with (epoch number, metrics).

    Returns:
        The best model, per-epoch history and timing.
    """
    import keras

    keras.utils.set_random_seed(seed)
    train_arrays = subsample(train_arrays, config.max_train_images, seed)
    train_y = targets_for(train_arrays, config.target, n_classes, "training data", config.blend_alpha,
                          config.blend_match_prior)
    val_arrays = labelled_only(val_arrays, "validation data")
    val_y = targets_for(val_arrays, "hard", n_classes, "validation data")
    steps = len(train_y) // config.batch_size
    if steps == 0:
        raise ParamsError(f"train.batch_size: {config.batch_size} is larger than the "
                          f"{len(train_y)} training images")
    alternate = config.augment.flip == "alternate"
    train_ds = make_dataset(train_arrays["images"], train_y, config.batch_size, training=True,
                            seed=seed, mixup=config.mixup,
                            alternate_flip_epochs=config.epochs if alternate else None)
    val_ds = make_dataset(val_arrays["images"], val_y, config.batch_size, training=False,
                          seed=seed)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model(arch, n_classes, image_size, config.augment, seed)
        fit_patch_whitening(model, train_arrays["images"])
        # Trains a twin with TensorFlow's fused BatchNorm (1.40-1.45x the step rate on this CPU,
        # benchmarks/batch_norm_ab.py); its weights are copied into ``model``, whose stock
        # layers are what gets saved.
        trained = with_fused_batch_norm(model)
        trained.compile(
            optimizer=make_optimizer(config, steps),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, float]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    callbacks = [
        _best_checkpoint_callback(model, checkpoint),
        _epoch_callback(on_epoch, rows, steps * config.batch_size),
    ]
    if config.ema_momentum:
        # Swaps the averaged weights in at each epoch's end, before validation and the checkpoint.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if config.schedule == "onecycle":
        # Before the epoch report so that the reported rate is the last one used.
        callbacks.insert(0, _one_cycle_callback(config, steps))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max",
                                                           factor=0.5, patience=3, min_lr=config.lr / 100))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=config.patience))
    if config.max_minutes:
        callbacks.append(_time_budget_callback(config.max_minutes, start))
    class_weight = (balanced_class_weight(train_arrays["label"], n_classes)
                    if config.class_weight == "balanced" else None)
    logger.info("training %s on %d images (%d steps/epoch of %d), validating on %d", arch,
                len(train_y), steps, config.batch_size, len(val_y))
    # shuffle=False: the input pipeline already reshuffles every epoch.
    # With alternating flip, the TensorFlow dataset holds every epoch back to back: one iterator
    # must run through it, which Keras does when given steps_per_epoch.
    tf_alternate = alternate and keras.backend.backend() == "tensorflow"
    trained.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                class_weight=class_weight, shuffle=False, verbose=0,
                steps_per_epoch=steps if tf_alternate else None)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    history = {key: [row[key] for row in rows] for key in rows[0]}
    epochs_run = len(history["val_accuracy"])
    best_epoch = int(np.argmax(history["val_accuracy"])) + 1
    best_epoch_value = history["val_accuracy"][best_epoch - 1]
    logger.info("best PublicTest accuracy %.4f at epoch %d of %d", best_epoch_value, best_epoch, epochs_run)
    best = keras.saving.load_model(checkpoint)
    return TrainResult(model=best, history=history, best_epoch=best_epoch, epochs_run=epochs_run,
                       seconds=seconds, images_per_second=epochs_run * steps * config.batch_size / seconds,
                       cpu_seconds=cpu_seconds)


def training_summary(result: TrainResult, arch: str, hardware: Any, run_id: str,
                     data_md5: Mapping[str, str]) -> dict[str, Any]:
    """The train stage's JSON report (``reports/train.json``) of a finished run.

    Args:
        result: The finished run.
        arch: Architecture name.
        hardware: The :class:`ferops.hardware.Hardware` it trained on.
        run_id: Its MLflow run.
        data_md5: DVC md5 of the training and validation inputs.
    """
    return {
        "arch": arch,
        "parameters": int(result.model.count_params()),
        "labels": "training labels of data/prepared (see prepare.labels)",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "best": {key: values[result.best_epoch - 1] for key, values in result.history.items()},
        "final": {key: values[-1] for key, values in result.history.items()},
        "train_seconds": round(result.seconds, 1),
        # CPU seconds of the training process: on a shared machine, divided by the number of
        # cores this estimates how long the run would have taken alone.
        "train_cpu_seconds": round(result.cpu_seconds, 1),
        "images_per_second": round(result.images_per_second, 1),
        "backend": hardware.backend,
        "devices": list(hardware.devices),
        "precision": hardware.precision,
        # Which CPU flags chose the precision (and so the oneDNN kernels): two runs reproduce each
        # other to the digit only when precision and these flags match.
        "cpu": hardware.report,
        "mlflow_run_id": run_id,
        "data_md5": dict(data_md5),
    }


def summary_metrics(result: TrainResult) -> dict[str, float]:
    """The run-level metrics logged to MLflow beside the per-epoch ones."""
    return {"best_val_accuracy": result.best_val_accuracy, "best_epoch": result.best_epoch,
            "train_seconds": result.seconds, "train_images_per_second": result.images_per_second}


def write_history(path: Path, history: Mapping[str, Sequence[float]]) -> None:
    """Per-epoch metrics as CSV, one row per epoch (DVC plot data)."""
    keys = sorted(history)
    with atomic_file(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for index in range(len(history[keys[0]])):
            writer.writerow([index + 1, *(f"{history[key][index]:.6g}" for key in keys)])
