"""The zoo against oneDNN's strided 1x1 convolution bug (see ferops.models.pointwise_conv).

On an AMD EPYC (avx512_bf16, no AMX) training a 1x1 convolution with stride 2 on fewer than 16
input channels corrupts the heap inside oneDNN (exit 134/139); on other CPUs the same kernel runs
and merely may not crash. These tests therefore check what holds on every CPU kind: the fixed
nets never ask oneDNN for that kernel (read from ONEDNN_VERBOSE in a child process, so a crash
fails the test instead of killing the test worker), and the fixed layer computes the same thing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ferops.errors import ParamsError
from ferops.io import load_arrays
from ferops.models import (
    ARCHITECTURES,
    ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS,
    build_model,
    pointwise_conv,
    unsafe_strided_pointwise_convolutions,
)

# A oneDNN convolution problem descriptor, e.g. mb16_ic8oc16_ih48oh24kh1sh2dh0ph0_iw48ow24kw1sw2dw0pw0.
DESCRIPTOR = re.compile(r"mb\d+_ic(?P<ic>\d+)oc\d+_ih\d+oh\d+kh(?P<kh>\d+)sh(?P<sh>\d+)\S*?"
                        r"_iw\d+ow\d+kw(?P<kw>\d+)sw(?P<sw>\d+)")

# The minimal model of the bug: a 3x3 convolution to 8 channels, then a 1x1 convolution with
# stride 2 to 16 channels (raw: a plain Conv2D; safe: ferops.models.pointwise_conv), trained with
# fit on 16 real faces. Prints the first and last training loss.
CHILD = textwrap.dedent("""
    import sys
    import keras
    import numpy as np
    from keras import layers
    from ferops.models import pointwise_conv

    variant, faces = sys.argv[1], np.load(sys.argv[2])
    keras.utils.set_random_seed(0)
    images = faces["images"][:16, ..., None].astype("float32") / 255.0
    targets = np.eye(7, dtype="float32")[faces["label"][:16]]
    inputs = keras.Input((48, 48, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    if variant == "raw":
        x = layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False)(x)
    else:
        x = pointwise_conv(x, 16, strides=2)
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
    model = keras.Model(inputs, layers.Dense(7, activation="softmax")(x))
    if variant == "raw":
        model.predict(images, verbose=0)  # forward only: the crash is in the backward pass
        print("FORWARD DONE", flush=True)
    else:
        model.compile(keras.optimizers.Adam(1e-2), "categorical_crossentropy")
        losses = model.fit(images, targets, batch_size=16, epochs=30, verbose=0).history["loss"]
        print(f"LOSSES {losses[0]} {losses[-1]}", flush=True)
""")


def narrow_strided_pointwise_primitives(verbose: str) -> list[str]:
    """The executed oneDNN convolutions that are 1x1, strided and narrower than 16 channels."""
    found = []
    for line in verbose.splitlines():
        if ",exec," not in line or ",convolution," not in line:
            continue
        match = DESCRIPTOR.search(line)
        if match is None:
            continue
        kernel = (int(match["kh"]), int(match["kw"]))
        stride = (int(match["sh"]), int(match["sw"]))
        if (kernel == (1, 1) and stride != (1, 1)
                and int(match["ic"]) < ONEDNN_MIN_STRIDED_POINTWISE_CHANNELS):
            found.append(line)
    return found


def run_child(variant: str, faces_path, tmp_path) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    return subprocess.run([sys.executable, str(script), variant, str(faces_path)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_descriptor_parser_finds_the_crashing_shape():
    line = ("onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_strided:avx512_core,backward_data,"
            "src:f32::blocked:acdb::f0 wei:f32:a:blocked:Acdb16a::f0 bia:undef::undef::: "
            "dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,"
            "mb16_ic8oc16_ih48oh24kh1sh2dh0ph0_iw48ow24kw1sw2dw0pw0,0.05")
    assert narrow_strided_pointwise_primitives(line) == [line]
    assert narrow_strided_pointwise_primitives(line.replace("_ic8oc16", "_ic16oc16")) == []
    unstrided = line.replace("kh1sh2", "kh1sh1").replace("kw1sw2", "kw1sw1")
    three_by_three = line.replace("kh1sh2", "kh3sh2").replace("kw1sw2", "kw3sw2")
    assert narrow_strided_pointwise_primitives(unstrided) == []
    assert narrow_strided_pointwise_primitives(three_by_three) == []
    assert narrow_strided_pointwise_primitives(line.replace(",exec,", ",create:cache_miss,")) == []


@pytest.mark.slow
def test_safe_pointwise_conv_trains_without_onednns_strided_1x1_kernel_on_any_cpu(prepared_dir, tmp_path):
    faces = prepared_dir / "public_test.npz"
    # Control: the raw layer's forward pass does reach the kernel, so the check below can fail.
    raw = run_child("raw", faces, tmp_path)
    assert raw.returncode == 0, raw.stderr[-3000:]
    if "onednn_verbose" not in raw.stdout:
        pytest.skip("TensorFlow runs without oneDNN on this CPU: nothing to check")
    assert narrow_strided_pointwise_primitives(raw.stdout), "the raw strided 1x1 conv ran no such kernel"

    safe = run_child("safe", faces, tmp_path)
    # A crash here (exit -6/-11, 134/139) is the bug this guards against.
    assert safe.returncode == 0, f"training crashed (exit {safe.returncode}): {safe.stderr[-3000:]}"
    assert narrow_strided_pointwise_primitives(safe.stdout) == []
    first, last = (float(value) for value in re.search(r"LOSSES (\S+) (\S+)", safe.stdout).groups())
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"  # it trained


def test_safe_pointwise_conv_computes_what_the_strided_conv_computes(faces):
    import keras
    from keras import layers

    images = faces["images"][:8, ..., None].astype(np.float32) / 255.0
    inputs = keras.Input((48, 48, 1))
    narrow = layers.Conv2D(8, 3, padding="same")(inputs)
    for padding in ("same", "valid"):
        raw = keras.Model(inputs, layers.Conv2D(16, 1, strides=2, padding=padding, use_bias=False)(narrow))
        safe = keras.Model(inputs, pointwise_conv(narrow, 16, strides=2, padding=padding))
        assert any(isinstance(layer, layers.MaxPooling2D) for layer in safe.layers)
        safe.set_weights(raw.get_weights())
        expected, actual = raw.predict(images, verbose=0), safe.predict(images, verbose=0)
        assert actual.shape == expected.shape == (8, 24, 24, 16)
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    # Wide inputs keep the plain strided convolution (no extra layer).
    wide = keras.Model(inputs, pointwise_conv(layers.Conv2D(16, 3, padding="same")(inputs), 32, strides=2))
    assert not any(isinstance(layer, layers.MaxPooling2D) for layer in wide.layers)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_no_net_of_the_zoo_has_a_narrow_strided_1x1_convolution(arch):
    model = build_model(arch, augmentation=None)
    assert unsafe_strided_pointwise_convolutions(model) == []


def test_a_net_that_bypasses_pointwise_conv_is_refused(monkeypatch):
    from keras import layers

    def careless(x):
        x = layers.Conv2D(8, 3, padding="same")(x)
        x = layers.Conv2D(16, 1, strides=2, name="careless_shortcut")(x)
        return layers.GlobalAveragePooling2D()(x)

    monkeypatch.setitem(ARCHITECTURES, "careless", careless)
    with pytest.raises(ParamsError, match=r"model.arch: 'careless' has strided 1x1 convolutions .*"
                                          r"careless_shortcut \(1x1, stride \(2, 2\), 8 input channels\)"):
        build_model("careless", augmentation=None)


@pytest.fixture(scope="module")
def faces(prepared_dir):
    return load_arrays(prepared_dir / "public_test.npz")
