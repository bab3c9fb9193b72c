"""SavedModel (TF Serving) and TFLite/LiteRT export, checked against the Keras model and NumPy."""

import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_vit
from keras_vit import export
from keras_vit.images import load_image

from conftest import TINY, random_images, randomize_weights

LABELS = [f"class_{i}" for i in range(TINY["num_classes"])]


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return randomize_weights(keras_vit.ViT(**TINY), scale=0.2)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved") / "vit"
    return str(base), export.saved_model(tiny_model, str(base), labels=LABELS, source="ckpt.npz")


def _png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_saved_model_layout_versions_and_metadata(tiny_model, exported, tmp_path):
    base, path = exported
    assert path == os.path.join(base, "1")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    metadata = json.load(open(os.path.join(path, "metadata.json")))
    assert metadata["labels"] == LABELS
    assert metadata["image_size"] == [32, 32]
    assert metadata["preprocessing"]["crop_pct"] == 0.875
    assert metadata["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    assert metadata["source"] == "ckpt.npz"
    assert metadata["keras_vit_version"] == keras_vit.__version__
    assert "class_names" not in metadata["architecture"]
    assert metadata["architecture"]["hidden_size"] == TINY["hidden_size"]
    # Next free version, an explicit one, and no overwriting of an existing version.
    other = str(tmp_path / "vit")
    assert export.saved_model(tiny_model, other) == os.path.join(other, "1")
    assert export.saved_model(tiny_model, other, version=7) == os.path.join(other, "7")
    assert export.saved_model(tiny_model, other) == os.path.join(other, "8")
    with pytest.raises(FileExistsError, match="already exists"):
        export.saved_model(tiny_model, other, version=7)
    assert sorted(os.listdir(other)) == ["1", "7", "8"]  # no staging directories left behind
    # Without labels or class names, the labels are the indices.
    assert json.load(open(os.path.join(other, "1", "metadata.json")))["labels"] == [str(i) for i in range(10)]


def test_saved_model_cli_lists_both_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run([cli, "show", "--all", "--dir", exported[1]], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "signature_def['serving_default']" in out and "signature_def['serve_image_bytes']" in out
    for name in ("images", "image_bytes", "logits", "probabilities", "top_k_indices", "top_k_labels"):
        assert f"['{name}'] tensor_info" in out
    assert "shape: (-1, 32, 32, 3)" in out


# Runs in a fresh interpreter that can import neither keras nor keras_vit, as TF Serving would:
# builds PredictRequest protos, parses them back and feeds them to the loaded signatures.
TF_ONLY_SCRIPT = textwrap.dedent("""
    import sys
    sys.modules["keras"] = None
    sys.modules["keras_vit"] = None
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    export_dir, inputs_file, outputs_file = sys.argv[1:]
    inputs = np.load(inputs_file, allow_pickle=False)
    loaded = tf.saved_model.load(export_dir)
    results = {}
    for signature, name, value in (("serving_default", "images", inputs["images"]),
                                   ("serve_image_bytes", "image_bytes", inputs["image_bytes"])):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "vit"
        request.model_spec.signature_name = signature
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
        fed = tf.make_ndarray(request.inputs[name])
        outputs = loaded.signatures[request.model_spec.signature_name](**{name: tf.constant(fed)})
        for key, tensor in outputs.items():
            results[f"{signature}/{key}"] = tensor.numpy().astype(str) if tensor.dtype == tf.string else tensor.numpy()
    np.savez(outputs_file, **results)
    print("modules:", [m for m in ("keras_vit",) if sys.modules.get(m) is not None])
""")


def test_tf_only_process_serves_predict_request_protos(tiny_model, exported, tmp_path):
    images = random_images(3, 32, seed=5).astype("float32")
    files = [random_images(1, (40, 56), seed=6)[0], random_images(1, (48, 36), seed=7)[0]]
    encoded = [_png_bytes(f) for f in files]
    np.savez(tmp_path / "inputs.npz", images=images, image_bytes=np.array(encoded, dtype=object).astype(bytes))
    script = tmp_path / "serve.py"
    script.write_text(TF_ONLY_SCRIPT)
    env = dict(os.environ, PYTHONPATH="")  # keras_vit must not be importable
    result = subprocess.run([sys.executable, str(script), exported[1], str(tmp_path / "inputs.npz"),
                             str(tmp_path / "outputs.npz")], capture_output=True, text=True,
                            cwd=str(tmp_path), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "modules: []" in result.stdout
    out = np.load(tmp_path / "outputs.npz")

    expected = tiny_model.predict(images, verbose=0)
    np.testing.assert_allclose(out["serving_default/logits"], expected, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(out["serving_default/probabilities"], _softmax(expected), atol=1e-5)
    top = np.argsort(-expected, axis=-1)[:, :5]
    np.testing.assert_array_equal(out["serving_default/top_k_indices"], top)
    np.testing.assert_array_equal(out["serving_default/top_k_labels"], np.array(LABELS)[top])

    # The bytes signature decodes, resizes and crops like images.load_image (Pillow): the same
    # pixels up to resampling rounding, hence close logits and the same ranking.
    paths = []
    for i, f in enumerate(files):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(f).save(paths[-1])
    pixels = np.stack([load_image(p, 32) for p in paths]).astype("float32")
    expected = tiny_model.predict(pixels, verbose=0)
    np.testing.assert_allclose(out["serve_image_bytes/logits"], expected, atol=0.1 * np.abs(expected).max())
    np.testing.assert_array_equal(out["serve_image_bytes/top_k_indices"][:, 0], expected.argmax(-1))


def test_bytes_preprocessing_matches_load_image_pixels(tmp_path):
    # The in-graph decode/resize/crop against Pillow on a smooth photo-like image.
    y, x = np.mgrid[0:90, 0:120]
    array = np.stack([x * 2, y * 2.5, (x + y)], -1).clip(0, 255).astype("uint8")
    path = str(tmp_path / "smooth.png")
    Image.fromarray(array).save(path)
    for crop_pct in (0.875, 1.0):
        ours = export._decode_and_crop(tf.constant(open(path, "rb").read()), 32, 32, crop_pct, "bicubic")
        reference = load_image(path, 32, crop_pct=crop_pct).astype("float32")
        assert np.abs(ours.numpy() - reference).mean() < 1.0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 16, 16, 3), "float32"), "must have shape"),
    (np.zeros((2, 32, 32, 1), "float32"), "must have shape"),
    (np.zeros((0, 32, 32, 3), "float32"), "empty batch"),
    (np.full((1, 32, 32, 3), 300.0, "float32"), r"\[0, 255\]"),
    (np.full((1, 32, 32, 3), np.nan, "float32"), "NaN"),
    (np.zeros((1, 32, 32, 3), "int32"), "float"),
])
def test_bad_image_requests_raise_clear_errors(exported, bad, message):
    signature = tf.saved_model.load(exported[1]).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signature(images=tf.constant(bad))


@pytest.mark.parametrize("bad, message", [
    ([b"not an image at all"], "JPEG, PNG, GIF or BMP"),
    ([_png_bytes(np.zeros((8, 8, 3), "uint8"))[:40]], "PNG"),
    ([], "empty batch"),
])
def test_bad_bytes_requests_raise_clear_errors(exported, bad, message):
    signature = tf.saved_model.load(exported[1]).signatures["serve_image_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        signature(image_bytes=tf.constant(bad, tf.string))


def test_export_needs_tensorflow_backend(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export.saved_model(tiny_model, str(tmp_path / "x"))


def test_feature_extractor_and_label_count_are_rejected(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="include_top=True"):
        export.saved_model(keras_vit.ViT(**{**TINY, "include_top": False}), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="3 labels"):
        export.saved_model(tiny_model, str(tmp_path / "b"), labels=["a", "b", "c"])


def _litert_logits(path, images):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    outputs = []
    for image in images:  # batch 1, the interpreter's default shape
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, image[None].astype("float32"))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    return np.stack(outputs)


@pytest.mark.parametrize("quantization, atol", [(None, 1e-4), ("float16", 0.05), ("dynamic", None),
                                                ("int8", None)])
def test_tflite_modes_against_keras(tiny_model, tmp_path, quantization, atol):
    calibration = random_images(16, 32, seed=1)
    path = str(tmp_path / f"vit_{quantization}.tflite")
    report = export.tflite(tiny_model, path, quantization=quantization, calibration_data=calibration,
                           verbose=False)
    assert report["size_bytes"] == os.path.getsize(path)
    assert report["num_images"] == 16
    expected = tiny_model.predict(calibration.astype("float32"), verbose=0)
    logits = _litert_logits(path, calibration)
    assert report["max_abs_logit_diff"] == pytest.approx(np.abs(logits - expected).max(), rel=0.05, abs=1e-4)
    agreement = np.mean(logits.argmax(-1) == expected.argmax(-1))
    assert report["top1_agreement"] == pytest.approx(agreement)
    assert agreement >= export.MIN_TOP1_AGREEMENT[quantization]
    if atol is not None:
        np.testing.assert_allclose(logits, expected, atol=atol)
    else:  # quantised: near, not equal
        assert 0 < report["max_abs_logit_diff"] < 0.2 * np.abs(expected).max()


def test_tflite_sizes_shrink_with_quantization(tiny_model, tmp_path):
    sizes = {q: export.tflite(tiny_model, str(tmp_path / f"{q}.tflite"), quantization=q,
                              verbose=False)["size_bytes"] for q in (None, "float16", "dynamic")}
    assert sizes[None] > sizes["float16"] > sizes["dynamic"]
    n_params = tiny_model.count_params()
    assert sizes[None] > 4 * n_params and sizes["float16"] < 3 * n_params


def test_tflite_accuracy_gate_raises_and_removes_file(tiny_model, tmp_path):
    path = str(tmp_path / "gate.tflite")
    with pytest.raises(export.ExportAccuracyError, match="top-1") as info:
        export.tflite(tiny_model, path, quantization="dynamic", min_top1_agreement=1.01, verbose=False)
    assert info.value.report["quantization"] == "dynamic"
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="calibration_data"):
        export.tflite(tiny_model, path, quantization="int8")
    with pytest.raises(ValueError, match="Unknown quantization"):
        export.tflite(tiny_model, path, quantization="int4")


def test_calibration_data_forms_agree(tmp_path):
    images = random_images(5, 32, seed=3)
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    from_folder = export.calibration_images(str(folder), (32, 32), crop_pct=1.0)
    np.testing.assert_array_equal(from_folder, images.astype("float32"))
    labels = np.arange(5)
    batched = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    np.testing.assert_array_equal(export.calibration_images(batched, (32, 32), limit=4), images[:4])
    unbatched = tf.data.Dataset.from_tensor_slices(images)
    np.testing.assert_array_equal(export.calibration_images(unbatched, (32, 32)), images)
    np.testing.assert_array_equal(export.calibration_images(images, (32, 32), limit=2), images[:2])
    with pytest.raises(ValueError, match=r"\(n, 32, 32, 3\)"):
        export.calibration_images(random_images(2, 16), (32, 32))
    with pytest.raises(FileNotFoundError):
        export.calibration_images(str(tmp_path / "missing"), (32, 32))


def test_cli_export_saved_model_and_tflite(tiny_model, tmp_path, monkeypatch):
    from keras_vit import cli

    model_path = str(tmp_path / "model.keras")
    tiny_model.save(model_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS))
    base = str(tmp_path / "served")
    assert cli.main(["export", model_path, "--format", "saved_model", "--output", base,
                     "--labels", str(labels)]) == 0
    metadata = json.load(open(os.path.join(base, "1", "metadata.json")))
    assert metadata["labels"] == LABELS and metadata["source"] == model_path
    assert cli.main(["export", model_path, "--output", base, "--version", "1"]) == 1  # exists
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(random_images(4, 40, seed=9)):
        Image.fromarray(image).save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", model_path, "--format", "tflite", "--quantize", "int8",
                     "--calibration-data", str(folder)]) == 0
    assert os.path.isfile(tmp_path / "saved_models" / f"{tiny_model.name}_int8.tflite")
    assert cli.main(["export", str(tmp_path / "missing.keras")]) == 1


@pytest.mark.slow
@pytest.mark.real_data
def test_deit_tiny_saved_model_and_float16_keep_top1(shared_data, tmp_path):
    checkpoint = os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors")
    model = keras_vit.load_pretrained(checkpoint)
    names = ["images/chelsea.png", "images/coffee.png"] + [
        f"imagenet20/{f}" for f in sorted(os.listdir(os.path.join(shared_data, "imagenet20")))[:6]]
    paths = [os.path.join(shared_data, n) for n in names]
    pixels = np.stack([load_image(p, 224) for p in paths]).astype("float32")
    keras_top1 = model.predict(pixels, verbose=0).argmax(-1)
    assert keras_top1[0] == 285 and keras_top1[1] == 967  # Egyptian cat, espresso

    path = export.saved_model(model, str(tmp_path / "deit"), labels="imagenet")
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](images=tf.constant(pixels))
    np.testing.assert_array_equal(out["top_k_indices"].numpy()[:, 0], keras_top1)
    from keras_vit.labels import imagenet_class_names

    assert out["top_k_labels"].numpy()[0, 0].decode() == imagenet_class_names()[285]
    encoded = tf.constant([open(p, "rb").read() for p in paths[:2]])
    out = loaded.signatures["serve_image_bytes"](image_bytes=encoded)
    np.testing.assert_array_equal(out["top_k_indices"].numpy()[:, 0], [285, 967])

    report = export.tflite(model, str(tmp_path / "deit_fp16.tflite"), quantization="float16",
                           evaluation_data=pixels, verbose=False)
    np.testing.assert_array_equal(_litert_logits(report["path"], pixels).argmax(-1), keras_top1)
    assert report["top1_agreement"] == 1.0


def test_serving_client_requests_run_against_the_signatures(tiny_model, exported, tmp_path, capsys):
    import importlib.util

    from tensorflow_serving.apis import predict_pb2

    spec = importlib.util.spec_from_file_location(
        "serving_client", os.path.join(os.path.dirname(__file__), "..", "examples", "serving_client.py"))
    client = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(client)
    loaded = tf.saved_model.load(exported[1])

    class Stub:  # what TF Serving does with a PredictRequest
        def Predict(self, request, timeout):
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
            response = predict_pb2.PredictResponse()
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    path = str(tmp_path / "photo.png")
    Image.fromarray(random_images(1, 32, seed=4)[0]).save(path)
    expected = tiny_model.predict(load_image(path, 32)[None].astype("float32"), verbose=0)[0]
    for response in (client.request_bytes(Stub(), "vit", [path], 5.0),
                     client.request_pixels(Stub(), "vit", [path], 32, 0.875, 5.0)):
        client.print_response("check", [path], response)
        assert tf.make_ndarray(response.outputs["top_k_indices"])[0, 0] == expected.argmax()
    assert capsys.readouterr().out.count(LABELS[int(expected.argmax())]) == 2
