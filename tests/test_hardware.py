import pytest

from ferops.errors import ParamsError
from ferops.hardware import (
    configure,
    cpu_flags,
    cpu_model,
    precision_reason,
    select_precision,
    select_strategy,
    visible_gpus,
)

AMX = {"avx512f", "amx_tile", "amx_bf16"}
# The AMD EPYC kind of this project's machines: AVX-512 BF16 instructions, no AMX.
AVX512_BF16 = {"avx512f", "avx512_bf16"}


def test_precision_policy_follows_the_backend_and_the_device():
    assert select_precision("auto", []) == "float32"
    assert select_precision("auto", [], {"avx512f", "avx2"}) == "float32"
    assert select_precision("auto", [], AVX512_BF16) == "mixed_bfloat16"
    assert select_precision("auto", [], AVX512_BF16, arch="resnet_s2d") == "mixed_bfloat16"
    assert select_precision("auto", [], AMX) == "mixed_bfloat16"
    # mini_xception's separable convolutions were measured slower in bfloat16 without AMX.
    assert select_precision("auto", [], AVX512_BF16, arch="mini_xception") == "float32"
    assert select_precision("auto", [], AMX | AVX512_BF16, arch="mini_xception") == "mixed_bfloat16"
    assert select_precision("mixed_bfloat16", [], AVX512_BF16, arch="mini_xception") == "mixed_bfloat16"
    assert select_precision("auto", ["GPU:0"]) == "mixed_float16"
    assert select_precision("auto", ["GPU:0"], {"amx_bf16"}) == "mixed_float16"
    assert select_precision("float32", ["GPU:0"]) == "float32"
    assert select_precision("float32", [], {"amx_bf16"}) == "float32"
    assert select_precision("mixed_bfloat16", []) == "mixed_bfloat16"
    # JAX on a GPU: bfloat16 (no loss scaling); PyTorch on a GPU: float16. On an AMX CPU only
    # TensorFlow's oneDNN kernels were measured faster in bfloat16.
    assert select_precision("auto", ["GPU:0"], backend="jax") == "mixed_bfloat16"
    assert select_precision("auto", ["GPU:0"], backend="torch") == "mixed_float16"
    assert select_precision("auto", [], AMX, backend="jax") == "float32"
    assert select_precision("auto", [], AMX, backend="torch") == "float32"
    assert select_precision("auto", [], AVX512_BF16, backend="jax") == "float32"
    with pytest.raises(ParamsError, match="train.mixed_precision: 'half' is not one of"):
        select_precision("half", [])


def test_precision_reason_names_the_deciding_flags():
    assert precision_reason("auto", [], AVX512_BF16, "tensorflow") == "auto: CPU with avx512_bf16"
    assert precision_reason("auto", [], AMX | AVX512_BF16, "tensorflow") == \
        "auto: CPU with amx_bf16+avx512_bf16"
    assert precision_reason("auto", [], {"avx2"}, "tensorflow") == \
        "auto: CPU without amx_bf16 or avx512_bf16"
    reason = precision_reason("auto", [], AVX512_BF16, "tensorflow", "mini_xception")
    assert reason == "auto: CPU with avx512_bf16 but no amx_bf16; mini_xception measured faster in float32"
    assert precision_reason("float32", [], AMX, "tensorflow") == "train.mixed_precision: float32"
    assert precision_reason("auto", ["GPU:0"], AMX, "jax") == "auto: GPU under jax"


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 amx_bf16 avx2\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "amx_bf16", "avx2"}
    assert cpu_model(cpuinfo) == "Some CPU"
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert cpu_model(tmp_path / "missing") == "unknown"


def test_data_parallelism_only_across_several_gpus_and_per_backend():
    assert select_strategy([]) == "default"
    assert select_strategy(["GPU:0"]) == "default"
    assert select_strategy(["GPU:0", "GPU:1"]) == "mirrored"
    assert select_strategy(["GPU:0", "GPU:1"], "jax") == "data_parallel"
    assert select_strategy(["GPU:0", "GPU:1"], "torch") == "default"


def test_configure_on_this_machine_uses_what_it_sees():
    import keras

    hardware = configure("auto", "resnet_s2d")
    gpus = visible_gpus("tensorflow")
    assert hardware.backend == keras.backend.backend() == "tensorflow"
    assert hardware.precision == select_precision("auto", gpus, cpu_flags(), arch="resnet_s2d")
    assert keras.mixed_precision.global_policy().name == hardware.precision
    assert hardware.cpu == cpu_model()
    assert set(hardware.cpu_bf16_flags) == {"amx_bf16", "avx512_bf16"} & cpu_flags()
    assert hardware.replicas == (len(gpus) if len(gpus) > 1 else 1)
    assert hardware.devices == (gpus or ["CPU:0"])
    assert hardware.tags == {"keras.backend": "tensorflow", "devices": ",".join(hardware.devices),
                             "precision": hardware.precision, "strategy": hardware.strategy_name,
                             "cpu": hardware.cpu,
                             "cpu.bf16_flags": ",".join(hardware.cpu_bf16_flags) or "none",
                             "precision.reason": precision_reason("auto", gpus, cpu_flags(), "tensorflow",
                                                                  "resnet_s2d")}
    assert hardware.report == {"model": hardware.cpu, "bf16_flags": list(hardware.cpu_bf16_flags),
                               "precision_reason": hardware.tags["precision.reason"]}
    configure("float32")  # leave the global policy as other tests expect
