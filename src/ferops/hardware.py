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
# /proc/cpuinfo flag of the AVX-512 bfloat16 dot-product instructions (AMD Zen 4 and later, Intel
# Cooper Lake and later), oneDNN's ``avx512_core_bf16`` kernels.
AVX512_BF16_FLAG = "avx512_bf16"
# The CPU flags that can decide the precision, in the order they are reported.
BF16_FLAGS = (AMX_BF16_FLAG, AVX512_BF16_FLAG)
# Nets whose whole training step was measured slower in mixed bfloat16 than in float32 on a CPU
# with avx512_bf16 but no AMX (benchmarks/precision_ab.py --arch NAME, AMD EPYC Zen 5, 2 cores,
# 2026-12-07): mini_xception's depthwise-separable convolutions ran at 0.65x (1190 against 1828
# images/s). Nets of dense convolutions gained there (resnet_s2d 1.40x, resnet 1.63x,
# seed_cnn 1.60x).
FLOAT32_WITHOUT_AMX = frozenset({"mini_xception"})


def _cpuinfo_value(cpuinfo: Path, key: str) -> str | None:
    """The value of ``key`` for the first CPU listed in ``cpuinfo`` (None if absent or unreadable)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The instruction-set flags of the first CPU listed in ``cpuinfo`` (empty if unreadable).

    Only Linux has ``/proc/cpuinfo``; elsewhere no flag is known and ``auto`` stays float32.
    """
    return frozenset((_cpuinfo_value(cpuinfo, "flags") or "").split())


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The ``model name`` of the first CPU listed in ``cpuinfo`` (``unknown`` if unreadable)."""
    return _cpuinfo_value(cpuinfo, "model name") or "unknown"


def bf16_flags(flags: Collection[str]) -> tuple[str, ...]:
    """The bfloat16 instruction-set flags among ``flags`` (see :data:`BF16_FLAGS`), in that order."""
    return tuple(flag for flag in BF16_FLAGS if flag in flags)


def select_precision(setting: str, gpus: Sequence[Any], flags: Collection[str] = (),
                     backend: str = "tensorflow", arch: str | None = None) -> str:
    """Choose the Keras dtype policy for a backend and its devices.

    ``auto`` means, on a GPU, mixed bfloat16 under JAX (XLA's native half type; no loss scaling)
    and mixed float16 under TensorFlow and PyTorch (tensor cores, with Keras' loss scaling). On a
    CPU under TensorFlow: mixed bfloat16 when the CPU has bfloat16 instructions that oneDNN's
    kernels use, AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``), except for the nets of
    :data:`FLOAT32_WITHOUT_AMX` on a CPU without AMX; float32 otherwise. The rule comes from the
    whole training step (augmentation, casts, fused BatchNorm and the optimizer included), not a
    kernel alone, measured with ``benchmarks/precision_ab.py`` (float32 and mixed bfloat16 in
    interleaved rounds, 2 cores, batch 128, the real Training split):

    - Intel with AMX: the default ``resnet_s2d`` 1.25x faster in mixed bfloat16 (an earlier
      whole-run measurement of this project).
    - AMD EPYC (Zen 5), ``avx512_bf16`` without AMX, 2026-12-07: ``resnet_s2d`` 1714 against
      1228 images/s, 1.40x (five rounds of 20 steps, each round 1.26-1.41x); ``resnet`` 1.63x
      (208 against 127); ``seed_cnn`` 1.60x (431 against 269, three rounds); but
      ``mini_xception``, a net of depthwise-separable convolutions, 0.65x (1190 against 1828
      images/s, every round slower), so it keeps float32 there.
    - Without either flag oneDNN has no native bfloat16 arithmetic and float32 is kept; the other
      backends' CPU paths were not measured faster in bfloat16 and keep float32 too.

    Args:
        setting: ``auto`` or an explicit Keras policy name.
        gpus: Visible GPU devices.
        flags: CPU instruction-set flags (see :func:`cpu_flags`).
        backend: The Keras backend (``tensorflow``, ``jax`` or ``torch``).
        arch: The ``model.arch`` to train (None: a net of dense convolutions).

    Returns:
        A Keras dtype policy name.
    """
    return _choose(setting, gpus, flags, backend, arch)[0]


def precision_reason(setting: str, gpus: Sequence[Any], flags: Collection[str], backend: str,
                     arch: str | None = None) -> str:
    """Why :func:`select_precision` chose what it did, in words (for the run's report and tags)."""
    return _choose(setting, gpus, flags, backend, arch)[1]


def _choose(setting: str, gpus: Sequence[Any], flags: Collection[str], backend: str,
            arch: str | None) -> tuple[str, str]:
    """The policy of :func:`select_precision` and the reason for it, decided in one place."""
    if setting not in PRECISIONS:
        raise ParamsError(f"train.mixed_precision: {setting!r} is not one of {', '.join(PRECISIONS)}")
    if setting != "auto":
        return setting, f"train.mixed_precision: {setting}"
    if gpus:
        return ("mixed_bfloat16" if backend == "jax" else "mixed_float16"), f"auto: GPU under {backend}"
    if backend != "tensorflow":
        return "float32", f"auto: CPU under {backend}"
    found = bf16_flags(flags)
    if not found:
        return "float32", "auto: CPU without amx_bf16 or avx512_bf16"
    if AMX_BF16_FLAG not in found and arch in FLOAT32_WITHOUT_AMX:
        return "float32", (f"auto: CPU with {'+'.join(found)} but no amx_bf16; {arch} measured faster "
                           "in float32")
    return "mixed_bfloat16", f"auto: CPU with {'+'.join(found)}"


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
        cpu: The CPU's model name (``/proc/cpuinfo``).
        cpu_bf16_flags: The CPU's bfloat16 flags (``amx_bf16``, ``avx512_bf16``), which decide the
            ``auto`` precision on a CPU and, with it, which oneDNN kernels run: figures reproduce
            to the digit only between runs with the same precision and the same flags.
        precision_reason: Why this precision was chosen, in words.
    """

    backend: str
    devices: list[str]
    precision: str
    strategy_name: str
    strategy: Any = None
    cpu: str = "unknown"
    cpu_bf16_flags: tuple[str, ...] = ()
    precision_reason: str = ""

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
                "precision": self.precision, "strategy": self.strategy_name, "cpu": self.cpu,
                "cpu.bf16_flags": ",".join(self.cpu_bf16_flags) or "none",
                "precision.reason": self.precision_reason}

    @property
    def report(self) -> dict[str, Any]:
        """The CPU facts behind the precision, for ``reports/train.json``."""
        return {"model": self.cpu, "bf16_flags": list(self.cpu_bf16_flags),
                "precision_reason": self.precision_reason}


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


def configure(precision_setting: str = "auto", arch: str | None = None) -> Hardware:
    """Detect the backend's devices and apply the precision policy and data parallelism.

    Args:
        precision_setting: ``train.mixed_precision`` (``auto``, ``float32``, ...).
        arch: The ``model.arch`` to be trained (the ``auto`` precision depends on it on some CPUs).

    Returns:
        The hardware description, including the strategy to use.
    """
    import keras

    backend = keras.backend.backend()
    gpus = visible_gpus(backend)
    flags = cpu_flags()
    precision, reason = _choose(precision_setting, gpus, flags, backend, arch)
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
    logger.info("training with Keras on %s: %s, precision %s (%s), strategy %s", backend,
                ", ".join(devices), precision, reason, name)
    return Hardware(backend=backend, devices=devices, precision=precision, strategy_name=name,
                    strategy=strategy, cpu=cpu_model(), cpu_bf16_flags=bf16_flags(flags),
                    precision_reason=reason)
