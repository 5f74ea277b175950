"""Where training runs: GPU or CPU, numeric precision and distribution strategy.

The decisions are pure functions of the Keras backend (TensorFlow, JAX or PyTorch, chosen with
``KERAS_BACKEND``) and the visible devices, so they can be tested on machines without a GPU;
:func:`configure` applies them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferops.errors import ParamsError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# /proc/cpuinfo flag of the AMX bfloat16 tile instructions that oneDNN uses for bf16 convolutions.
AMX_BF16_FLAG = "amx_bf16"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU listed in ``cpuinfo`` (empty if unreadable).

    Only Linux has ``/proc/cpuinfo``; elsewhere no flag is known and ``auto`` stays float32.
    """
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def select_precision(setting: str, gpus: Sequence[Any], flags: Collection[str] = (),
                     backend: str = "tensorflow") -> str:
    """Choose the Keras dtype policy for a backend and its devices.

    ``auto`` means, on a GPU, mixed bfloat16 under JAX (XLA's native half type; no loss scaling)
    and mixed float16 under TensorFlow and PyTorch (tensor cores, with Keras' loss scaling). On a
    CPU: mixed bfloat16 under TensorFlow when the CPU has AMX bfloat16 units (oneDNN's AMX
    kernels: measured 1.25x faster than float32 for the default ``resnet_s2d`` on 2 cores), and
    float32 otherwise (bfloat16 without AMX kernels, or on the other backends' CPU paths, was not
    measured faster).

    Args:
        setting: ``auto`` or an explicit Keras policy name.
        gpus: Visible GPU devices.
        flags: CPU instruction-set flags (see :func:`cpu_flags`).
        backend: The Keras backend (``tensorflow``, ``jax`` or ``torch``).

    Returns:
        A Keras dtype policy name.
    """
    if setting not in PRECISIONS:
        raise ParamsError(f"train.mixed_precision: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting
    if gpus:
        return "mixed_bfloat16" if backend == "jax" else "mixed_float16"
    return "mixed_bfloat16" if backend == "tensorflow" and AMX_BF16_FLAG in flags else "float32"


def select_strategy(gpus: Sequence[Any], backend: str = "tensorflow") -> str:
    """Name the data-parallel strategy for several GPUs; ``default`` for one device.

    ``mirrored``: ``tf.distribute.MirroredStrategy`` (TensorFlow); ``data_parallel``:
    ``keras.distribution.DataParallel`` (JAX). Keras has no multi-device training for PyTorch.
    """
    if len(gpus) < 2:
        return "default"
    return {"tensorflow": "mirrored", "jax": "data_parallel"}.get(backend, "default")


@dataclass(frozen=True)
class Hardware:
    """What training will run on.

    Attributes:
        backend: The Keras backend (``tensorflow``, ``jax`` or ``torch``).
        devices: Human-readable device names (e.g. ``["CPU:0"]``).
        precision: The Keras dtype policy in force.
        strategy_name: ``default``, ``mirrored`` or ``data_parallel``.
        strategy: The ``tf.distribute`` strategy to build and fit the model under (TensorFlow),
            else None.
    """

    backend: str
    devices: list[str]
    precision: str
    strategy_name: str
    strategy: Any = None

    @property
    def replicas(self) -> int:
        """Number of model replicas (GPUs under a data-parallel strategy, else 1)."""
        if self.strategy_name == "data_parallel":
            return len(self.devices)
        return int(getattr(self.strategy, "num_replicas_in_sync", 1))

    def scope(self) -> Any:
        """The context to build and compile the model in (the strategy's scope, if any)."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    @property
    def tags(self) -> dict[str, str]:
        """MLflow tags describing where the run trained."""
        return {"keras.backend": self.backend, "devices": ",".join(self.devices),
                "precision": self.precision, "strategy": self.strategy_name}


def visible_gpus(backend: str) -> list[str]:
    """The GPUs the Keras backend can use, as device names (empty on a CPU-only machine)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return [gpu.name.replace("/physical_device:", "") for gpu in tf.config.list_physical_devices("GPU")]
    if backend == "jax":
        import jax

        return [f"GPU:{device.id}" for device in jax.devices() if device.platform == "gpu"]
    if backend == "torch":
        import torch

        return [f"GPU:{index}" for index in range(torch.cuda.device_count())]
    return []


def configure(precision_setting: str = "auto") -> Hardware:
    """Detect the backend's devices and apply the precision policy and data parallelism.

    Args:
        precision_setting: ``train.mixed_precision`` (``auto``, ``float32``, ...).

    Returns:
        The hardware description, including the strategy to use.
    """
    import keras

    backend = keras.backend.backend()
    gpus = visible_gpus(backend)
    precision = select_precision(precision_setting, gpus, cpu_flags(), backend)
    keras.mixed_precision.set_global_policy(precision)
    name = select_strategy(gpus, backend)
    strategy = None
    if backend == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            # Allocate GPU memory as needed instead of all of it up front.
            tf.config.experimental.set_memory_growth(gpu, True)
        strategy = tf.distribute.MirroredStrategy() if name == "mirrored" else tf.distribute.get_strategy()
    elif name == "data_parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    elif len(gpus) > 1:
        logger.warning("Keras has no multi-GPU training for the %s backend: training on %s only",
                       backend, gpus[0])
        gpus = gpus[:1]
    devices = gpus or ["CPU:0"]
    logger.info("training with Keras on %s: %s, precision %s, strategy %s", backend, ", ".join(devices),
                precision, name)
    return Hardware(backend=backend, devices=devices, precision=precision, strategy_name=name,
                    strategy=strategy)
