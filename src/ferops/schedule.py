"""The learning-rate schedule, the optimizer and the callbacks of a training run.

Everything here is built from a :class:`ferops.training.TrainConfig`: the ``onecycle``, cosine
and constant schedules (with warm-up), the optimizer with its weight decay and EMA, and the
Keras callbacks that report epochs, keep the best checkpoint, set the one-cycle rate and stop at
the time budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for annotations only: training imports this module
    from ferops.training import TrainConfig

logger = logging.getLogger(__name__)

# onecycle: the warm-up starts at this fraction of the peak learning rate.
ONECYCLE_START = 0.04


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

    For ``onecycle`` this is the first step's rate; :func:`one_cycle_callback` sets each step's.
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


def epoch_callback(on_epoch: Callable[[int, dict[str, float]], None] | None,
                   rows: list[dict[str, float]], images_per_epoch: int) -> Any:
    """A callback that logs each epoch, appends its metrics to ``rows`` and calls ``on_epoch``."""
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


def best_checkpoint_callback(portable: Any, path: Path) -> Any:
    """A callback that saves ``portable`` to ``path`` whenever validation accuracy improves."""
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


def one_cycle_callback(config: TrainConfig, steps_per_epoch: int) -> Any:
    """A callback that sets the ``onecycle`` learning rate before every step."""
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


def time_budget_callback(max_minutes: float, start: float) -> Any:
    """A callback that stops training after the epoch that crosses ``max_minutes`` since ``start``."""
    import keras

    class TimeBudget(keras.callbacks.Callback):
        """Stops training after the epoch that crosses the wall-time budget."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if time.perf_counter() - start > max_minutes * 60:
                logger.info("time budget of %.1f min reached after epoch %d", max_minutes, epoch + 1)
                self.model.stop_training = True

    return TimeBudget()
