"""ONNX export (`keras_vit.export.onnx`), run with ONNX Runtime against the Keras model."""

import json
import math
import os
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import cli, export, predict
from keras_vit.export import common, onnx_format
from keras_vit.images import load_image

from conftest import TINY, disagreeing_runner, random_images, randomize_weights
from test_export import assert_cli_error

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("tf2onnx")
tf = pytest.importorskip("tensorflow")

LABELS = [f"kind_{i}" for i in range(TINY["num_classes"])]


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return randomize_weights(keras_vit.ViT(**TINY, class_names=LABELS), scale=0.2)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "vit.onnx")
    report = export.onnx(tiny_model, path, evaluation_data=random_images(4, 32, seed=1), verbose=False)
    return path, report


def test_onnx_runtime_reproduces_keras_at_any_batch_size(tiny_model, exported):
    path, report = exported
    assert report["format"] == "onnx" and report["evaluated_on"] == "images"
    assert report["top1_agreement"] == 1.0 and report["embedding_cosine"] > 0.99999
    assert report["size_bytes"] == os.path.getsize(path)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (images_input,) = session.get_inputs()
    assert images_input.name == "images" and images_input.shape == ["batch", 32, 32, 3]
    assert {o.name: o.shape for o in session.get_outputs()} == {"logits": ["batch", 10],
                                                               "embeddings": ["batch", 64]}
    kernel, bias = tiny_model.get_layer("head").get_weights()
    for batch in (1, 3, 7):  # one file, any batch: the batch dimension is dynamic
        images = random_images(batch, 32, seed=batch).astype("float32")  # raw pixels, as served
        logits, embeddings = session.run(["logits", "embeddings"], {"images": images})
        expected = tiny_model.predict(images, verbose=0)
        np.testing.assert_allclose(logits, expected, atol=1e-4)
        np.testing.assert_allclose(logits, embeddings @ kernel + bias, atol=1e-4)  # pre-head features
    np.testing.assert_array_equal(export.run_onnx(path, images), logits)
    np.testing.assert_array_equal(export.run_onnx(path, images, output="embeddings"), embeddings)


def test_the_file_is_plain_onnx_without_erfc(exported):
    proto = onnx.load(exported[0])
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert "Erf" in ops and "Erfc" not in ops  # ONNX has no Erfc: ONNX Runtime refuses it
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)  # no contrib ops
    assert proto.opset_import[0].version == onnx_format.DEFAULT_OPSET
    metadata = export.onnx_metadata(exported[0])
    assert metadata["labels"] == LABELS and metadata["task"] == "classification"
    assert metadata["image_size"] == [32, 32] and metadata["preprocessing"]["crop_pct"] == 0.875
    assert set(metadata["outputs"]) == {"logits", "embeddings"}
    assert export.onnx_runner(exported[0]).metadata == metadata  # the session reads the same


def test_exact_gelu_through_onnx_matches_erf_in_float64():
    # TensorFlow's exact GELU is 0.5 x erfc(-x / sqrt 2); the ONNX file computes it with Erf.
    import tf2onnx

    spec = [tf.TensorSpec([None], tf.float32, name="x")]
    gelu = tf.function(lambda x: {"y": tf.nn.gelu(x, approximate=False)}, input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(gelu, input_signature=spec, opset=17, custom_op_handlers={
        "Erfc": (onnx_format._erfc_as_erf, [])})
    x = np.concatenate([np.linspace(-12, 12, 2401), [-30.0, -5.5, 0.0, 1e-4, 40.0]]).astype("float32")
    (y,) = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    reference = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x.astype("float64")])
    np.testing.assert_allclose(y, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("family, config", [
    ("hybrid", dict(patch_size=1, backbone={"block_units": [1, 1]})),
    ("deit", dict(patch_size=8, distilled=True)),
    ("features", dict(patch_size=8, include_top=False, pooling="gap")),
])
def test_hybrids_deit_and_feature_extractors_export(family, config, tmp_path):
    model = randomize_weights(keras_vit.ViT(image_size=32, hidden_size=32, num_layers=1, num_heads=2,
                                            mlp_dim=32, num_classes=3, **config), scale=0.2)
    images = random_images(3, 32, seed=2)
    path = str(tmp_path / f"{family}.onnx")
    report = export.onnx(model, path, evaluation_data=images, verbose=False)
    outputs = export.onnx_runner(path)(images)
    expected = common.reference_outputs(model, images.astype("float32"))
    assert sorted(outputs) == sorted(expected)
    if family == "features":
        assert sorted(outputs) == ["embeddings"] and report["top1_agreement"] is None
        np.testing.assert_allclose(outputs["embeddings"], model.predict(images, verbose=0), atol=1e-4)
    else:
        np.testing.assert_allclose(outputs["logits"], model.predict(images, verbose=0), atol=1e-4)
    np.testing.assert_allclose(outputs["embeddings"], expected["embeddings"], atol=1e-4)


def test_mixed_precision_model_exports_a_float32_copy(tiny_model, tmp_path):
    mixed = keras_vit.ViT(**TINY, dtype="mixed_bfloat16")  # ONNX Runtime refuses its bf16 graph
    mixed.set_weights(tiny_model.get_weights())
    images = random_images(3, 32, seed=5)
    with pytest.warns(UserWarning, match="computes in bfloat16 .*float32 copy"):
        export.onnx(mixed, str(tmp_path / "mixed.onnx"), evaluation_data=images, verbose=False)
    np.testing.assert_allclose(export.run_onnx(str(tmp_path / "mixed.onnx"), images),
                               tiny_model.predict(images.astype("float32"), verbose=0), atol=1e-4)


def test_gate_keeps_the_previous_file_and_only_warns_on_noise(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "vit.onnx"
    path.write_bytes(b"the previous, good export")
    monkeypatch.setattr(onnx_format, "onnx_runner", disagreeing_runner(tiny_model))
    with pytest.raises(export.ExportAccuracyError,
                       match=r"ONNX export .*top-1 agreement 0\.0% < minimum 99\.0%.*mean embedding "
                             r"cosine similarity -1\.000000 < minimum 0\.9999.*existing .*vit.onnx was left"):
        export.onnx(tiny_model, str(path), evaluation_data=random_images(4, 32, seed=3), verbose=False)
    assert path.read_bytes() == b"the previous, good export"
    assert os.listdir(tmp_path) == ["vit.onnx"]  # no temporary file left
    with pytest.warns(UserWarning, match=r"random-noise images only \(top-1 agreement 0\.0%"):
        report = export.onnx(tiny_model, str(path), verbose=False)
    assert report["evaluated_on"] == "random noise" and os.path.getsize(path) == report["size_bytes"]


def test_bad_arguments_and_missing_packages(tiny_model, tmp_path, monkeypatch):
    features = keras_vit.ViT(**{**TINY, "include_top": False})
    for call, error, message in [
        (lambda: export.onnx(tiny_model, str(tmp_path / "a.onnx"), opset=9), ValueError,
         "opset must be an integer from 13 to 18.*got 9"),
        (lambda: export.onnx(tiny_model, str(tmp_path)), IsADirectoryError, "is a directory"),
        (lambda: export.onnx(tiny_model, str(tmp_path / "a.onnx"), min_embedding_cosine=1.5),
         ValueError, r"min_embedding_cosine must be a fraction in \[0, 1\], got 1.5"),
        (lambda: export.onnx(features, str(tmp_path / "a.onnx"), labels=["x"]), ValueError,
         "Only classifiers take labels"),
        (lambda: export.onnx(tiny_model, str(tmp_path / "a.onnx"), oppset=17), TypeError, "oppset"),
    ]:
        with pytest.raises(error, match=message):
            call()
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "keras-vision-transformer\[onnx\]"'):
        export.onnx(tiny_model, str(tmp_path / "a.onnx"))
    assert os.listdir(tmp_path) == []


def test_cli_export_and_predict_onnx(tiny_model, tmp_path, capsys):
    model_path = str(tmp_path / "model.keras")
    tiny_model.save(model_path)
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = []
    for i, image in enumerate(random_images(3, (40, 48), seed=4)):
        photos.append(str(folder / f"{i}.png"))
        Image.fromarray(image).save(photos[-1])
    output = str(tmp_path / "vit.onnx")
    assert cli.main(["export", model_path, "--format", "onnx", "--output", output,
                     "--evaluation-data", str(folder)]) == 0
    assert "ONNX model written to" in capsys.readouterr().out
    pixels = np.stack([load_image(p, 32) for p in photos]).astype("float32")
    logits = tiny_model.predict(pixels, verbose=0)
    assert cli.main(["predict", output, *photos, "--json", "--top-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    for row, want in zip(results, logits):
        assert [p["index"] for p in row["predictions"]] == list(np.argsort(-want)[:2])
        assert row["predictions"][0]["label"] == LABELS[int(want.argmax())]  # from the file's metadata
    for argv, pattern in [
        (["export", model_path, "--format", "onnx", "--quantize", "int8"],
         "--quantize applies only to --format tflite, not to --format onnx"),
        (["export", model_path, "--opset", "17"], "--opset applies only to --format onnx"),
        (["export", model_path, "--format", "onnx", "--output", output, "--opset", "99"], "opset"),
        (["predict", str(tmp_path / "model.keras.onnx"), photos[0]], "No model at"),
    ]:
        assert_cli_error(capsys, argv, pattern)
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf" * 10)
    assert_cli_error(capsys, ["predict", str(tmp_path / "junk.onnx"), photos[0]], "junk.onnx")


def test_predict_refuses_a_feature_extractor(tmp_path):
    features = randomize_weights(keras_vit.ViT(**{**TINY, "include_top": False}))
    path = str(tmp_path / "features.onnx")
    export.onnx(features, path, evaluation_data=random_images(2, 32), verbose=False)
    image = str(tmp_path / "x.png")
    Image.fromarray(random_images(1, 32)[0]).save(image)
    with pytest.raises(ValueError, match="is a feature extractor .*no classes to predict"):
        predict.predict(path, [image])


@pytest.mark.slow
@pytest.mark.real_data
def test_deit_tiny_onnx_reproduces_keras_on_real_photos(shared_data, tmp_path):
    checkpoint = os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors")
    model = keras_vit.load_pretrained(checkpoint)
    folder = os.path.join(shared_data, "imagenet20")
    paths = [os.path.join(folder, f) for f in sorted(os.listdir(folder))][:8] + [
        os.path.join(shared_data, "images", n) for n in ("chelsea.png", "coffee.png")]
    pixels = np.stack([load_image(p, 224) for p in paths]).astype("float32")
    path = str(tmp_path / "deit.onnx")
    report = export.onnx(model, path, evaluation_data=pixels, labels="imagenet", verbose=False)
    assert report["evaluated_on"] == "images" and report["top1_agreement"] == 1.0
    outputs = export.onnx_runner(path)(pixels)
    expected = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(outputs["logits"], expected, atol=1e-3)
    np.testing.assert_array_equal(outputs["logits"].argmax(-1)[-2:], [285, 967])  # cat, espresso
    # The embeddings are the include_top=False model's features of the same checkpoint.
    features = keras_vit.load_pretrained(checkpoint, include_top=False).predict(pixels, verbose=0)
    np.testing.assert_allclose(outputs["embeddings"], features, atol=1e-3)
