"""Train a classifier from the zoo: the ``train`` settings, the fit loop and its reports.

Every setting comes in through :class:`TrainConfig` (the ``train`` section of params.yaml, built
with :func:`ferops.config.build`), checked before anything slow happens. The pieces the fit loop
puts together live in their own modules: the targets (:mod:`ferops.targets`), the input pipeline
(:mod:`ferops.input_pipeline`), and the schedule, optimizer and callbacks (:mod:`ferops.schedule`).
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
from ferops.errors import ParamsError
from ferops.input_pipeline import make_dataset
from ferops.io import atomic_file
from ferops.models import Augmentation, build_model, fit_patch_whitening, with_fused_batch_norm
from ferops.schedule import (
    best_checkpoint_callback,
    epoch_callback,
    make_optimizer,
    one_cycle_callback,
    time_budget_callback,
)
from ferops.targets import balanced_class_weight, labelled_only, subsample, targets_for

logger = logging.getLogger(__name__)


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
        best_checkpoint_callback(model, checkpoint),
        epoch_callback(on_epoch, rows, steps * config.batch_size),
    ]
    if config.ema_momentum:
        # Swaps the averaged weights in at each epoch's end, before validation and the checkpoint.
        callbacks.insert(0, keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    if config.schedule == "onecycle":
        # Before the epoch report so that the reported rate is the last one used.
        callbacks.insert(0, one_cycle_callback(config, steps))
    if config.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_accuracy", mode="max",
                                                           factor=0.5, patience=3, min_lr=config.lr / 100))
    if config.patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=config.patience))
    if config.max_minutes:
        callbacks.append(time_budget_callback(config.max_minutes, start))
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
