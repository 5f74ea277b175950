import pytest

from ferops.errors import ParamsError
from ferops.hardware import configure, cpu_flags, select_precision, select_strategy, visible_gpus

AMX = {"avx512f", "amx_tile", "amx_bf16"}


def test_precision_policy_follows_the_backend_and_the_device():
    assert select_precision("auto", []) == "float32"
    assert select_precision("auto", [], {"avx512f", "avx512_bf16"}) == "float32"
    assert select_precision("auto", [], AMX) == "mixed_bfloat16"
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
    with pytest.raises(ParamsError, match="train.mixed_precision: 'half' is not one of"):
        select_precision("half", [])


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 amx_bf16 avx2\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "amx_bf16", "avx2"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_data_parallelism_only_across_several_gpus_and_per_backend():
    assert select_strategy([]) == "default"
    assert select_strategy(["GPU:0"]) == "default"
    assert select_strategy(["GPU:0", "GPU:1"]) == "mirrored"
    assert select_strategy(["GPU:0", "GPU:1"], "jax") == "data_parallel"
    assert select_strategy(["GPU:0", "GPU:1"], "torch") == "default"


def test_configure_on_this_machine_uses_what_it_sees():
    import keras

    hardware = configure("auto")
    gpus = visible_gpus("tensorflow")
    assert hardware.backend == keras.backend.backend() == "tensorflow"
    assert hardware.precision == select_precision("auto", gpus, cpu_flags())
    assert hardware.replicas == (len(gpus) if len(gpus) > 1 else 1)
    assert hardware.devices == (gpus or ["CPU:0"])
    assert hardware.tags == {"keras.backend": "tensorflow", "devices": ",".join(hardware.devices),
                             "precision": hardware.precision, "strategy": hardware.strategy_name}
    configure("float32")  # leave the global policy as other tests expect
