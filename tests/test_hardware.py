import pytest

from ferops.errors import ParamsError
from ferops.hardware import configure, cpu_flags, select_precision, select_strategy


def test_precision_policy_follows_the_device():
    assert select_precision("auto", []) == "float32"
    assert select_precision("auto", [], {"avx512f", "avx512_bf16"}) == "float32"
    assert select_precision("auto", [], {"avx512f", "amx_tile", "amx_bf16"}) == "mixed_bfloat16"
    assert select_precision("auto", ["GPU:0"]) == "mixed_float16"
    assert select_precision("auto", ["GPU:0"], {"amx_bf16"}) == "mixed_float16"
    assert select_precision("float32", ["GPU:0"]) == "float32"
    assert select_precision("float32", [], {"amx_bf16"}) == "float32"
    assert select_precision("mixed_bfloat16", []) == "mixed_bfloat16"
    with pytest.raises(ParamsError, match="train.mixed_precision: 'half' is not one of"):
        select_precision("half", [])


def test_cpu_flags_come_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 amx_bf16 avx2\n\n"
                       "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "amx_bf16", "avx2"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_strategy_mirrors_only_across_several_gpus():
    assert select_strategy([]) == "default"
    assert select_strategy(["GPU:0"]) == "default"
    assert select_strategy(["GPU:0", "GPU:1"]) == "mirrored"


def test_configure_on_this_machine_uses_what_it_sees():
    import tensorflow as tf

    hardware = configure("auto")
    gpus = tf.config.list_physical_devices("GPU")
    assert hardware.precision == select_precision("auto", gpus, cpu_flags())
    assert hardware.replicas == (len(gpus) if len(gpus) > 1 else 1)
    assert hardware.devices == ([g.name.replace("/physical_device:", "") for g in gpus] or ["CPU:0"])
    configure("float32")  # leave the global policy as other tests expect
