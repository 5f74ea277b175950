"""`ferops export --format onnx`: the ONNX model gives Keras's probabilities on real faces."""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import pytest

from conftest import ckplus_faces
from ferops.cli import main
from ferops.export import INPUT_NAME, ExportError, export_onnx, parity
from ferops.inference import load_classifier, preprocess
from ferops.models import save_class_names
from test_inference import tiny_model


def test_onnx_parity_on_100_real_faces(onnx_model, usage_model, raw_dir):
    model = keras.saving.load_model(usage_model, compile=False)
    pixels = preprocess(ckplus_faces(raw_dir, 100))
    difference = parity(model, onnx_model, pixels)
    assert difference <= 1e-4, f"ONNX Runtime vs Keras: max abs difference {difference:.2e}"
    # One face at a time too: the batch dimension is dynamic.
    assert parity(model, onnx_model, pixels[:1]) <= 1e-4


def test_exported_graph_is_inference_only(onnx_model):
    graph = onnx.load(str(onnx_model)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [48, 48, 1] and not dims[0].dim_value  # batch is dynamic
    # Augmentation (random flips/rotations) must not be in the exported graph.
    ops = {node.op_type for node in graph.node}
    assert not any("Random" in op for op in ops), ops


def test_export_refuses_bad_requests(onnx_model, usage_model, tmp_path, caplog):
    assert main(["export", "--model", str(onnx_model), "-o", str(tmp_path / "again.onnx")]) == 1
    assert "already an ONNX model" in caplog.text
    assert not (tmp_path / "again.onnx").exists()
    assert main(["export", "--model", str(usage_model), "-o", str(tmp_path / "model.txt")]) == 1
    assert "must end in .onnx" in caplog.text


def test_export_from_the_registry(usage_registry, tmp_path, capsys):
    uri, name = usage_registry
    out = tmp_path / "champion.onnx"
    assert main(["export", "--format", "onnx", "--model", f"models:/{name}@champion", "--tracking-uri", uri,
                 "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.stat().st_size > 10_000
    assert not list(tmp_path.glob(".*partial"))
    np.testing.assert_equal(onnx.load(str(out)).graph.input[0].name, INPUT_NAME)


def test_mixed_precision_model_exports_in_float32(tmp_path, raw_dir):
    """Models trained with mixed_bfloat16 (CPUs with AMX) export and run in float32."""
    from ferops.export import export_onnx
    from ferops.inference import float32_model

    layers = keras.layers
    inputs = keras.Input((48, 48, 1), name="pixels")
    x = layers.Rescaling(1 / 255, dtype="mixed_bfloat16")(inputs)
    x = layers.Conv2D(8, 3, activation="relu", dtype="mixed_bfloat16")(x)
    x = layers.GlobalAveragePooling2D(dtype="mixed_bfloat16")(x)
    outputs = layers.Dense(7, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    converted = float32_model(model)
    assert {layer.dtype_policy.name for layer in converted.layers} == {"float32"}
    assert float32_model(converted) is converted  # already float32: no copy
    pixels = preprocess(ckplus_faces(raw_dir, 20))
    path = export_onnx(model, tmp_path / "mixed.onnx")
    assert parity(model, path, pixels) <= 1e-4
    # The 16-bit original agrees with its float32 copy up to bfloat16 rounding only.
    bf16 = np.asarray(model(pixels, training=False))
    assert np.abs(bf16 - np.asarray(converted(pixels, training=False))).max() < 2e-2


def test_exported_file_carries_the_class_names(tmp_path, capsys):
    """`ferops export` copies the names a .keras file carries into the ONNX metadata; none are invented."""
    names = ["calm", "cross", "glad"]
    model = tiny_model(3)
    model.save(tmp_path / "named.keras")
    save_class_names(tmp_path / "named.keras", names)
    assert main(["export", "--model", str(tmp_path / "named.keras"), "-o", str(tmp_path / "named.onnx")]) == 0
    properties = {p.key: p.value for p in onnx.load(str(tmp_path / "named.onnx")).metadata_props}
    assert json.loads(properties["classes"]) == names
    assert load_classifier(tmp_path / "named.onnx").classes == tuple(names)

    tiny_model(7).save(tmp_path / "old.keras")  # saved before models carried names
    assert main(["export", "--model", str(tmp_path / "old.keras"), "-o", str(tmp_path / "old.onnx")]) == 0
    assert "classes" not in {p.key for p in onnx.load(str(tmp_path / "old.onnx")).metadata_props}
    with pytest.raises(ExportError, match="2 class names for a model with 3 outputs"):
        export_onnx(model, tmp_path / "bad.onnx", classes=names[:2])
    assert not (tmp_path / "bad.onnx").exists()



def test_flip_tta_is_in_the_exported_graph_unless_turned_off(usage_model, onnx_model, tmp_path, raw_dir,
                                                             caplog):
    from ferops.inference import ModelLoadError, OnnxClassifier

    model = keras.saving.load_model(usage_model, compile=False)
    plain_path = export_onnx(model, tmp_path / "plain.onnx", tta="none")
    metadata = {prop.key: prop.value for prop in onnx.load(str(onnx_model)).metadata_props}
    assert metadata["tta"] == "flip"
    assert {prop.key: prop.value for prop in onnx.load(str(plain_path)).metadata_props}["tta"] == "none"
    faces = ckplus_faces(raw_dir, 12)
    in_graph, plain = OnnxClassifier(onnx_model), OnnxClassifier(plain_path, tta="none")
    assert in_graph.tta_in_graph and not plain.tta_in_graph
    pixels = preprocess(faces)
    expected = (plain.classify(faces) + plain.predict(pixels[:, :, ::-1])) / 2
    np.testing.assert_allclose(in_graph.classify(faces), expected, atol=1e-5)
    # A plain file gets the mirror view from Python instead: the same answer, by default.
    np.testing.assert_allclose(OnnxClassifier(plain_path).classify(faces), expected, atol=1e-5)
    # ... and the mirror view changes the answer (by far more than the tolerances above).
    assert np.abs(plain.classify(faces) - expected).max() > 1e-4
    assert parity(model, plain_path, pixels) <= 1e-4
    with pytest.raises(ModelLoadError, match="averages each face with its mirror image in its graph"):
        OnnxClassifier(onnx_model, tta="none")
    # The CLI: --no-tta exports the plain graph; predicting with a flip file and --no-tta is refused.
    out = tmp_path / "cli-plain.onnx"
    assert main(["export", "--model", str(usage_model), "-o", str(out), "--no-tta"]) == 0
    assert {prop.key: prop.value for prop in onnx.load(str(out)).metadata_props}["tta"] == "none"
    assert main(["predict", str(tmp_path), "--model", str(onnx_model), "--no-tta"]) == 1
    assert "export again with `ferops export --no-tta`" in caplog.text
