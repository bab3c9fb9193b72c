"""SavedModel (TF Serving) and TFLite/LiteRT export, checked against the Keras model and NumPy."""

import glob
import importlib.util
import io
import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import zlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_vit
from keras_vit import export
from keras_vit.export import common, image_bytes, tflite_format
from keras_vit.images import load_image, read_image

from conftest import TINY, disagreeing_runner, random_images, randomize_weights

LABELS = [f"class_{i}" for i in range(TINY["num_classes"])]


@pytest.fixture(scope="module")
def tiny_model():
    keras.utils.set_random_seed(0)
    return randomize_weights(keras_vit.ViT(**TINY), scale=0.2)


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved") / "vit"
    return str(base), export.saved_model(tiny_model, str(base), labels=LABELS, source="ckpt.npz")


@pytest.fixture(scope="module")
def bytes_signature(exported):
    return tf.saved_model.load(exported[1]).signatures["serve_image_bytes"]


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
        ours = image_bytes.resize_and_crop(tf.io.decode_png(open(path, "rb").read()), 32, 32, crop_pct, "bicubic")
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


def _encoded(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _blank_png(width, height):
    """A valid, all-black 8-bit grey PNG written with zlib: 23000x23000 (just under TF's own PNG
    limit of 2^29 pixels) takes 0.5 MB on disk and 1.6 GB decoded as RGB."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor = zlib.compressobj(9)
    rows = [compressor.compress(b"\0" * ((width + 1) * 1000)) for _ in range(height // 1000)]
    rows += [compressor.compress(b"\0" * ((width + 1) * (height % 1000))), compressor.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(rows))
            + chunk(b"IEND", b""))


def _many_frame_gif(frames, size):
    """A GIF whose one blank size x size frame is repeated `frames` times (4 KB a frame)."""
    data = _encoded(np.zeros((size, size), "uint8"), "GIF")
    blocks = 13 + (3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0)  # after the colour table
    return data[:blocks] + data[blocks:-1] * frames + b";"


def _reset_peak_rss():
    """Resets this process's resident-memory high-water mark (VmHWM), so the next reading is the
    peak of what runs after it, not of an earlier test (ru_maxrss never goes down)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs to measure a peak in-process")
    return _peak_rss_mb()


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


GOOD_PNG = _png_bytes(np.full((40, 50, 3), 7, "uint8"))
GOOD_JPEG = _encoded(np.full((40, 50, 3), 7, "uint8"), "JPEG")
GOOD_GIF = _encoded(np.full((40, 50, 3), 7, "uint8"), "GIF")


BAD_BYTES_REQUESTS = [
    ([b"not an image at all"], "image 0 of the batch is not an encoded JPEG / PNG"),
    ([GOOD_PNG, b"II*\0" + bytes(100)], "image 1 of the batch is not an encoded"),  # TIFF
    ([GOOD_PNG, b"\xff\x0a" + bytes(100)], "image 1 of the batch is not an encoded"),  # JPEG XL
    ([GOOD_PNG, GOOD_PNG, GOOD_PNG[:40]], "image 2 of the batch could not be decoded as PNG"),
    ([GOOD_PNG[:20], GOOD_PNG], "image 0 of the batch could not be decoded as PNG"),  # no IHDR
    ([GOOD_PNG, GOOD_JPEG[:120]], "image 1 of the batch could not be decoded as JPEG"),
    ([GOOD_PNG, GOOD_JPEG[:4]], "image 1 of the batch could not be decoded as JPEG"),
    ([GOOD_GIF[:-30], GOOD_PNG], "image 0 of the batch could not be decoded as GIF"),
    ([GOOD_GIF[:11]], "image 0 of the batch could not be decoded as GIF"),
    ([GOOD_PNG, b"BM" + bytes(10)], "image 1 of the batch could not be decoded as BMP"),
    ([GOOD_PNG, b"RIFF\0\0\0\0WEBPVP8 "], "image 1 of the batch could not be decoded as WebP"),
    ([], "empty batch"),
]


def test_bad_bytes_requests_raise_clear_errors(bytes_signature):
    # One test, not one per case: each test's random-seed reset makes TF rebuild the signature's
    # functions (about a second), which a server does once.
    for bad, message in BAD_BYTES_REQUESTS:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            bytes_signature(image_bytes=tf.constant(bad, tf.string))


def test_serving_refuses_a_decompression_bomb_before_decoding(bytes_signature):
    bomb = _blank_png(23000, 23000)
    assert len(bomb) < 1_000_000
    with pytest.raises(Image.DecompressionBombError, match="529000000 pixels"):  # Pillow agrees
        Image.open(io.BytesIO(bomb))
    signature = bytes_signature
    signature(image_bytes=tf.constant([GOOD_PNG]))  # traced and warm: growth below is the bomb's
    before = _reset_peak_rss()
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image 2 of the batch declares 23000x23000 = 529000000 pixels, over "
                             r"the serving limit of 50000000 pixels \(max_pixels"):
        signature(image_bytes=tf.constant([GOOD_PNG, GOOD_PNG, bomb]))
    assert _peak_rss_mb() - before < 500  # decoding it takes 1.6 GB


@pytest.fixture(scope="module")
def limited(tiny_model, tmp_path_factory):
    """The tiny model exported with max_pixels=2000: 50x40 images pass, 50x41 do not."""
    path = export.saved_model(tiny_model, str(tmp_path_factory.mktemp("limited") / "vit"), max_pixels=2000)
    return tf.saved_model.load(path).signatures["serve_image_bytes"]


def test_max_pixels_reads_the_size_of_every_format(limited):
    def encoded(height, fmt, mode, **options):
        image = Image.fromarray(random_images(1, (height, 50), seed=height)[0]).convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        return buffer.getvalue()

    for fmt, options, mode in [
        ("PNG", {}, "RGB"), ("PNG", {}, "I;16"), ("JPEG", {}, "RGB"), ("JPEG", {"progressive": True}, "L"),
        ("GIF", {}, "RGB"), ("BMP", {}, "RGB"), ("WEBP", {"lossless": True}, "RGB"),
        ("WEBP", {"quality": 80}, "RGB"), ("WEBP", {"quality": 80}, "RGBA"),
    ]:
        fits, over = encoded(40, fmt, mode, **options), encoded(41, fmt, mode, **options)
        assert limited(image_bytes=tf.constant([fits]))["logits"].shape == (1, 10)
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"image 1 of the batch declares 50x41 = 2050 pixels, over the "
                                 r"serving limit of 2000 pixels"):
            limited(image_bytes=tf.constant([fits, over]))


def test_gif_frame_larger_than_its_canvas_is_refused(limited):
    data = bytearray(_encoded(np.zeros((10, 10), "uint8"), "GIF"))
    descriptor = data.index(b"\x2c\x00\x00\x00\x00")  # image separator, left 0, top 0
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", 60000, 60000)  # frame width, height
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image 0 .* 60000x60000 = 3600000000"):
        limited(image_bytes=tf.constant([bytes(data)]))


def test_animated_gif_decodes_its_first_frame_only(bytes_signature):
    signature = bytes_signature
    first, second = random_images(2, (36, 44), seed=8)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    out = signature(image_bytes=tf.constant([buffer.getvalue(), _encoded(first, "GIF")]))["logits"]
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)
    # 500 frames of 2000x2000 in 2 MB: TF's decoder reads every frame it is given (2 GB).
    bomb = _many_frame_gif(500, 2000)
    assert len(bomb) < 3_000_000 and Image.open(io.BytesIO(bomb)).n_frames == 500
    before = _reset_peak_rss()
    signature(image_bytes=tf.constant([bomb]))
    assert _peak_rss_mb() - before < 500


def test_animated_webp_is_refused_without_crashing(bytes_signature):
    # Decoded with the file's channels, TF aborts the process on it ("corrupted double-linked list").
    frames = [Image.new("RGB", (30, 20), (i * 60, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image 1 of the batch could not be decoded as WebP"):
        bytes_signature(image_bytes=tf.constant([GOOD_PNG, buffer.getvalue()]))


def test_serving_decodes_every_format_of_the_shared_list_like_load_image(tmp_path):
    # Every extension folders and predict read is one the signature reads, and no other.
    assert export.serving_formats() == ["JPEG", "PNG", "BMP", "GIF", "WebP"]
    with pytest.raises(ValueError, match=r"\.tiff"):
        export.serving_formats([".png", ".tiff"])
    y, x = np.mgrid[0:45, 0:60]
    smooth = np.stack([x * 4, y * 5, (x + y) * 2], -1).clip(0, 255).astype("uint8")
    rgba = np.concatenate([smooth, np.full((45, 60, 1), 128, "uint8")], -1)
    cases = [("png", smooth, {}), ("png", (smooth[..., 0].astype("uint16") * 257), {}),
             ("bmp", smooth, {}), ("bmp", rgba, {}), ("bmp", smooth[..., 0], {}), ("gif", smooth[..., 0], {}),
             ("webp", smooth, {"lossless": True}), ("webp", rgba, {"lossless": True}),
             ("jpg", smooth, {"quality": 95}), ("jpg", smooth[..., 1], {"quality": 95})]
    paths = [str(tmp_path / f"{i}.{extension}") for i, (extension, _, _) in enumerate(cases)]
    for path, (_, array, options) in zip(paths, cases):
        Image.fromarray(array).save(path, **options)
    # At the images' own size the resize is the identity: the decoded pixels themselves, which
    # must be Pillow's (images.read_image) exactly.
    decode = tf.function(lambda data: image_bytes.decode_batch(data, 45, 60, 1.0, "bicubic", 10 ** 6))
    ours = decode(tf.constant([open(path, "rb").read() for path in paths])).numpy()
    for image, path in zip(ours, paths):
        np.testing.assert_array_equal(image, read_image(path), err_msg=path)
    # A palette BMP: TF would give the palette indices as grey levels, a wrong picture.
    palette = str(tmp_path / "palette.bmp")
    Image.fromarray(smooth).convert("P").save(palette)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image 1 of the batch could not be decoded as BMP"):
        decode(tf.constant([open(paths[0], "rb").read(), open(palette, "rb").read()]))


def test_export_needs_tensorflow_backend(tiny_model, monkeypatch, tmp_path):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=tensorflow"):
        export.saved_model(tiny_model, str(tmp_path / "x"))


def test_saved_model_version_appears_whole_or_not_at_all(tiny_model, tmp_path, monkeypatch):
    base = tmp_path / "vit"

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed halfway through writing

    monkeypatch.setattr(tf.saved_model, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        export.saved_model(tiny_model, str(base))
    assert os.listdir(base) == []  # no version, no staging directory
    monkeypatch.undo()
    path = export.saved_model(tiny_model, str(base), max_pixels=1234)
    assert os.stat(path).st_mode & 0o777 == 0o755  # readable by a server running as another user
    assert json.load(open(os.path.join(path, "metadata.json")))["preprocessing"]["max_pixels"] == 1234


def test_saved_model_bad_arguments(tiny_model, tmp_path):
    base = str(tmp_path / "vit")
    for kwargs, message in [(dict(max_pixels=0), "max_pixels must be a positive integer, got 0"),
                            (dict(max_pixels=2.5), "max_pixels"), (dict(crop_pct=1.5), "crop_pct"),
                            (dict(top_k=0), "top_k"), (dict(version=-1), "version"),
                            (dict(version="2"), "version"), (dict(interpolation="area"), "area")]:
        with pytest.raises(ValueError, match=message):
            export.saved_model(tiny_model, base, **kwargs)
    with pytest.raises(TypeError, match="maxpixels"):
        export.saved_model(tiny_model, base, maxpixels=10)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        export.saved_model(tiny_model, str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="top_k=20 is more than the model's 10 classes"):
        path = export.saved_model(tiny_model, base, top_k=20)
    assert json.load(open(os.path.join(path, "metadata.json")))["top_k"] == 10


def test_token_sequences_and_label_count_are_rejected(tiny_model, tmp_path):
    tokens = keras_vit.ViT(**{**TINY, "include_top": False, "pooling": None})  # (batch, 65, 64)
    with pytest.raises(ValueError, match=r"got output shape \(None, 65, 64\).*pooling=None returns every token"):
        export.saved_model(tokens, str(tmp_path / "a"))
    with pytest.raises(ValueError, match="3 labels"):
        export.saved_model(tiny_model, str(tmp_path / "b"), labels=["a", "b", "c"])


# --------------------------------------------------------------------------------------------------
# Embeddings: a classifier's pre-head features beside its logits; a feature extractor's alone.


@pytest.fixture(scope="module")
def feature_extractor(tiny_model):
    """The tiny model's layers without the head: include_top=False with the same weights."""
    model = keras_vit.ViT(**{**TINY, "include_top": False})
    model.set_weights(tiny_model.get_weights()[:-2])  # all but the head's kernel and bias
    return model


def _head(model):
    kernel, bias = model.get_layer("head").get_weights()
    return kernel, bias


def test_classifier_export_returns_its_pre_head_features(tiny_model, feature_extractor, exported):
    images = random_images(3, 32, seed=12).astype("float32")
    served = tf.saved_model.load(exported[1]).signatures["serving_default"](images=tf.constant(images))
    # The same features as the model built without a head, and the logits are their affine map
    # through the head's own weights.
    embeddings = served["embeddings"].numpy()
    assert embeddings.dtype == np.float32 and embeddings.shape == (3, TINY["hidden_size"])
    np.testing.assert_allclose(embeddings, feature_extractor.predict(images, verbose=0), atol=1e-4)
    kernel, bias = _head(tiny_model)
    np.testing.assert_allclose(served["logits"].numpy(), embeddings @ kernel + bias, atol=1e-4)
    metadata = json.load(open(os.path.join(exported[1], "metadata.json")))
    assert metadata["task"] == "classification" and metadata["embedding_size"] == 64
    assert metadata["signatures"]["serving_default"]["outputs"] == [
        "logits", "probabilities", "top_k_indices", "top_k_labels", "embeddings"]
    assert metadata["outputs"]["embeddings"].startswith("float32 (batch, 64): the pre-head features")


def test_feature_extractor_saved_model_serves_embeddings_in_both_signatures(feature_extractor, tmp_path):
    path = export.saved_model(feature_extractor, str(tmp_path / "features"))
    loaded = tf.saved_model.load(path)
    images = random_images(2, 32, seed=13).astype("float32")
    served = loaded.signatures["serving_default"](images=tf.constant(images))
    assert sorted(served) == ["embeddings"]
    np.testing.assert_allclose(served["embeddings"].numpy(), feature_extractor.predict(images, verbose=0),
                               atol=1e-4)
    photos = [random_images(1, (40, 52), seed=14)[0], random_images(1, (36, 30), seed=15)[0]]
    files = [str(tmp_path / f"{i}.png") for i in range(2)]
    for file, photo in zip(files, photos):
        Image.fromarray(photo).save(file)
    out = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([_png_bytes(p) for p in photos]))
    pixels = np.stack([load_image(f, 32) for f in files]).astype("float32")
    expected = feature_extractor.predict(pixels, verbose=0)
    cosine = np.sum(out["embeddings"].numpy() * expected, -1) / (
        np.linalg.norm(out["embeddings"].numpy(), axis=-1) * np.linalg.norm(expected, axis=-1))
    assert sorted(out) == ["embeddings"] and cosine.min() > 0.999  # resampling rounding only
    metadata = json.load(open(os.path.join(path, "metadata.json")))
    assert metadata["task"] == "feature_extraction" and metadata["labels"] == []
    assert metadata["top_k"] is None and metadata["embedding_size"] == 64
    assert metadata["signatures"]["serve_image_bytes"]["outputs"] == ["embeddings"]
    for kwargs, message in [(dict(labels=["a"]), "Only classifiers take labels;"),
                            (dict(top_k=3), "Only classifiers take top_k;"),
                            (dict(labels=["a"], top_k=3), "Only classifiers take labels or top_k;")]:
        with pytest.raises(ValueError, match=message):
            export.saved_model(feature_extractor, str(tmp_path / "refused"), **kwargs)


def test_tflite_feature_extractor_and_classifier_embeddings(tiny_model, feature_extractor, tmp_path):
    images = random_images(6, 32, seed=16)
    expected = feature_extractor.predict(images.astype("float32"), verbose=0)
    path = str(tmp_path / "features.tflite")
    report = export.tflite(feature_extractor, path, evaluation_data=images, verbose=False)
    assert report["top1_agreement"] is None and report["min_top1_agreement"] is None
    assert report["embedding_cosine"] > 0.99999 and report["min_embedding_cosine"] == 0.9999
    assert report["lowest_embedding_cosine"] <= report["embedding_cosine"]
    np.testing.assert_allclose(export.run_tflite(path, images), expected, atol=1e-4)
    assert report["max_abs_embedding_diff"] == pytest.approx(
        np.abs(export.run_tflite(path, images) - expected).max(), abs=1e-6)
    with pytest.raises(ValueError, match="no output 'logits'; it has \\['embeddings'\\]"):
        export.run_tflite(path, images, output="logits")
    with pytest.raises(ValueError, match="Only classifiers take min_top1_agreement"):
        export.tflite(feature_extractor, path, evaluation_data=images, min_top1_agreement=0.9)
    # The classifier's file gives both, by name, whatever order the interpreter lists them in.
    path = str(tmp_path / "classifier.tflite")
    report = export.tflite(tiny_model, path, evaluation_data=images, verbose=False)
    outputs = export.tflite_runner(path)(images)
    kernel, bias = _head(tiny_model)
    np.testing.assert_allclose(outputs["embeddings"], expected, atol=1e-4)
    np.testing.assert_allclose(outputs["logits"], expected @ kernel + bias, atol=1e-4)
    np.testing.assert_array_equal(export.run_tflite(path, images), outputs["logits"])
    assert report["top1_agreement"] == 1.0 and report["embedding_cosine"] > 0.99999


def test_embedding_gate_on_real_images_and_noise(feature_extractor, tmp_path, monkeypatch):
    path = tmp_path / "features.tflite"
    path.write_bytes(b"the previous, good export")
    monkeypatch.setattr(tflite_format, "tflite_runner", disagreeing_runner(feature_extractor))
    with pytest.raises(export.ExportAccuracyError,
                       match=r"mean embedding cosine similarity -1\.000000 < minimum 0\.98.*existing") as info:
        export.tflite(feature_extractor, str(path), quantization="dynamic",
                      evaluation_data=random_images(4, 32, seed=17), verbose=False)
    assert info.value.report["lowest_embedding_cosine"] == pytest.approx(-1.0)
    assert path.read_bytes() == b"the previous, good export" and os.listdir(tmp_path) == ["features.tflite"]
    with pytest.warns(UserWarning, match=r"random-noise images only \(mean embedding cosine -1\.0"):
        report = export.tflite(feature_extractor, str(path), verbose=False)
    assert report["evaluated_on"] == "random noise" and os.path.getsize(path) == report["size_bytes"]


@pytest.mark.parametrize("family", ["hybrid", "deit", "deit_one_head", "map_representation"])
def test_embeddings_of_every_family_are_its_head_inputs(family):
    config = {"hybrid": dict(patch_size=1, backbone={"block_units": [1, 1]}),
              "deit": dict(patch_size=8, distilled=True),
              "deit_one_head": dict(patch_size=8, distilled=True, distillation_head=False),
              "map_representation": dict(patch_size=8, pooling="map", representation_size=24)}[family]
    model = randomize_weights(keras_vit.ViT(image_size=32, hidden_size=32, num_layers=1, num_heads=2,
                                            mlp_dim=32, num_classes=3, **config), scale=0.2)
    images = random_images(2, 32, seed=18).astype("float32")
    outputs = {k: v.numpy() for k, v in common.outputs_fn(model)(tf.constant(images)).items()}
    np.testing.assert_allclose(outputs["logits"], model.predict(images, verbose=0), atol=1e-5)
    # The features each head reads, taken from the named layers' own outputs.
    names = {"hybrid": ["pooling"], "deit": ["pooling", "distillation_pooling"],
             "deit_one_head": ["pooling"], "map_representation": ["pre_logits"]}[family]
    features = keras.Model(model.inputs, [model.get_layer(n).output for n in names]).predict(images, verbose=0)
    features = features if isinstance(features, list) else [features]
    np.testing.assert_allclose(outputs["embeddings"], np.mean(features, axis=0), atol=1e-5)
    heads = [model.get_layer(n) for n in ("head", "head_dist") if n in [layer.name for layer in model.layers]]
    logits = np.mean([f @ h.get_weights()[0] + h.get_weights()[1] for f, h in zip(features, heads)], axis=0)
    np.testing.assert_allclose(outputs["logits"], logits, atol=1e-4)  # DeiT: the mean of its two heads


def test_mixed_precision_model_exports_a_float32_copy(tiny_model, tmp_path):
    # TFLite's converter cannot translate the mixed graph (nor ONNX Runtime run it): the export
    # is the float32 function of the same weights, said so in a warning.
    mixed = keras_vit.ViT(**TINY, dtype="mixed_bfloat16")
    mixed.set_weights(tiny_model.get_weights())
    images = random_images(4, 32, seed=19)
    with pytest.warns(UserWarning, match="computes in bfloat16 .*float32 copy"):
        report = export.tflite(mixed, str(tmp_path / "mixed.tflite"), evaluation_data=images, verbose=False)
    assert report["top1_agreement"] == 1.0
    np.testing.assert_allclose(export.run_tflite(report["path"], images),
                               tiny_model.predict(images.astype("float32"), verbose=0), atol=1e-4)


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


def _op_dtypes(path):
    """[(op name, input dtype, weight dtype)] of a .tflite file's dense and convolution ops."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    producers = {op["outputs"][0]: op for op in interpreter._get_ops_details()}

    def weight_dtype(index):  # a weight read through a DEQUANTIZE op is stored in its input's type
        op = producers.get(index)
        return weight_dtype(op["inputs"][0]) if op and op["op_name"] == "DEQUANTIZE" else tensors[index]["dtype"]

    return [(op["op_name"], np.dtype(tensors[op["inputs"][0]]["dtype"]).name,
             np.dtype(weight_dtype(op["inputs"][1])).name)
            for op in interpreter._get_ops_details() if op["op_name"] in ("FULLY_CONNECTED", "CONV_2D")]


def test_int8_recipe_quantises_the_dense_layers_and_keeps_the_head_float(tiny_model, tmp_path):
    calibration = random_images(8, 32, seed=4)
    path = str(tmp_path / "int8.tflite")
    export.tflite(tiny_model, path, quantization="int8", calibration_data=calibration, verbose=False)
    ops = _op_dtypes(path)
    dense = [op for op in ops if op[0] == "FULLY_CONNECTED"]
    # TINY: 2 blocks x (qkv, attention output, fc1, fc2), then the head.
    assert len(dense) == 2 * 4 + 1
    assert dense[:-1] == [("FULLY_CONNECTED", "int16", "int8")] * 8  # "16x8"
    assert dense[-1] == ("FULLY_CONNECTED", "float32", "float32")  # the head
    assert ops[0] == ("CONV_2D", "float32", "int8")  # patch embedding, inputs quantised at run time
    float_size = export.tflite(tiny_model, str(tmp_path / "float.tflite"), evaluation_data=calibration,
                               verbose=False)["size_bytes"]
    assert os.path.getsize(path) < 0.5 * float_size


@pytest.mark.parametrize("options", [dict(classifier_activation="softmax"), dict(distilled=True),
                                     dict(representation_size=16)])
def test_int8_keeps_every_head_float_and_the_outputs_float32(tmp_path, options):
    # The head is found by where its output goes: through DeiT's mean of two heads, a softmax or
    # pre_logits' tanh; quantising it would also turn the `embeddings` output into int16.
    model = keras_vit.ViT(**{**TINY, **options})
    randomize_weights(model, seed=3)
    path = str(tmp_path / "int8.tflite")
    export.tflite(model, path, quantization="int8", calibration_data=random_images(8, 32, seed=4),
                  min_top1_agreement=0, verbose=False)
    dense = [op for op in _op_dtypes(path) if op[0] == "FULLY_CONNECTED"]
    heads = 2 if options.get("distilled") or options.get("representation_size") else 1
    assert dense[-heads:] == [("FULLY_CONNECTED", "float32", "float32")] * heads
    assert dense[:-heads] == [("FULLY_CONNECTED", "int16", "int8")] * 8
    runner = export.tflite_runner(path)
    outputs = runner(random_images(2, 32, seed=5).astype("float32"))
    assert sorted(outputs) == ["embeddings", "logits"]
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=path).get_signature_runner("serving_default").get_output_details()
    assert {name: np.dtype(d["dtype"]).name for name, d in details.items()} == {
        "embeddings": "float32", "logits": "float32"}


def test_int8_without_ai_edge_quantizer_says_what_to_install(tiny_model, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "ai_edge_quantizer" else real(name, *a))
    with pytest.raises(ImportError, match=r"needs ai-edge-quantizer: pip install "
                                          r"'keras-vision-transformer\[quantize\]'"):
        export.tflite(tiny_model, str(tmp_path / "x.tflite"), quantization="int8",
                      calibration_data=random_images(2, 32))
    assert os.listdir(tmp_path) == []


def test_tflite_sizes_shrink_with_quantization(tiny_model, tmp_path):
    with pytest.warns(UserWarning, match="random-noise"):
        sizes = {q: export.tflite(tiny_model, str(tmp_path / f"{q}.tflite"), quantization=q,
                                  verbose=False)["size_bytes"] for q in (None, "float16", "dynamic")}
    assert sizes[None] > sizes["float16"] > sizes["dynamic"]
    n_params = tiny_model.count_params()
    assert sizes[None] > 4 * n_params and sizes["float16"] < 3 * n_params


def test_tflite_accuracy_gate_on_real_images_keeps_the_previous_file(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "gate.tflite"
    path.write_bytes(b"the previous, good export")
    monkeypatch.setattr(tflite_format, "tflite_runner", disagreeing_runner(tiny_model))
    with pytest.raises(export.ExportAccuracyError, match="top-1.*existing .*gate.tflite was left") as info:
        export.tflite(tiny_model, str(path), quantization="dynamic",
                      evaluation_data=random_images(8, 32, seed=2), verbose=False)
    assert info.value.report["top1_agreement"] == 0.0 and info.value.report["evaluated_on"] == "images"
    assert path.read_bytes() == b"the previous, good export"
    assert os.listdir(tmp_path) == ["gate.tflite"]  # no temporary file left
    with pytest.raises(export.ExportAccuracyError, match="nothing was written"):
        export.tflite(tiny_model, str(tmp_path / "new.tflite"), calibration_data=random_images(4, 32),
                      verbose=False)
    assert os.listdir(tmp_path) == ["gate.tflite"]


def test_tflite_agreement_on_noise_warns_and_keeps_the_file(tiny_model, tmp_path, monkeypatch):
    # Without images the check runs on noise: it is reported and warned about, never enforced.
    monkeypatch.setattr(tflite_format, "tflite_runner", disagreeing_runner(tiny_model))
    path = str(tmp_path / "noise.tflite")
    with pytest.warns(UserWarning, match=r"random-noise images only \(top-1 agreement 0\.0%"):
        report = export.tflite(tiny_model, path, quantization="dynamic", verbose=False)
    assert report["evaluated_on"] == "random noise" and report["top1_agreement"] == 0.0
    assert os.path.getsize(path) == report["size_bytes"] > 0


def test_tflite_bad_arguments(tiny_model, tmp_path):
    path = str(tmp_path / "x.tflite")
    with pytest.raises(ValueError, match="calibration_data"):
        export.tflite(tiny_model, path, quantization="int8")
    with pytest.raises(ValueError, match="Unknown quantization"):
        export.tflite(tiny_model, path, quantization="int4")
    with pytest.raises(ValueError, match=r"min_top1_agreement must be a fraction in \[0, 1\], got 1.01"):
        export.tflite(tiny_model, path, min_top1_agreement=1.01)
    with pytest.raises(ValueError, match="crop_pct"):
        export.tflite(tiny_model, path, crop_pct=0.0)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        export.tflite(tiny_model, str(tmp_path))
    with pytest.raises(TypeError, match="quantisation"):
        export.tflite(tiny_model, path, quantisation="int8")
    assert os.listdir(tmp_path) == []


def test_calibration_data_forms_agree(tmp_path):
    images = random_images(5, 32, seed=3)
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 1 entries .*notes\.txt"):
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


def test_cli_export_saved_model_and_tflite(tiny_model, tmp_path, monkeypatch, capsys):
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
    assert cli.main(["export", model_path, "--output", base, "--version", "1"]) == 2  # exists
    assert "already exists" in "".join(capsys.readouterr())
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, image in enumerate(random_images(4, 40, seed=9)):
        Image.fromarray(image).save(folder / f"{i}.jpg")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["export", model_path, "--format", "tflite", "--quantize", "int8",
                     "--calibration-data", str(folder)]) == 0
    assert os.path.isfile(tmp_path / "saved_models" / f"{tiny_model.name}_int8.tflite")
    assert cli.main(["export", model_path, "--output", base, "--max-pixels", "2000"]) == 0
    assert json.load(open(os.path.join(base, "2", "metadata.json")))["preprocessing"]["max_pixels"] == 2000


def assert_cli_error(capsys, argv, pattern):
    """`keras-vit ARGV` exits with status 2 and prints one line `error: ...` matching `pattern`."""
    from keras_vit import cli

    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert len(lines) == 1 and "error: " in lines[0], lines
    assert re.search(pattern, lines[0]), lines[0]


def assert_usage_error(capsys, argv, pattern):
    """argparse's own errors: `keras-vit COMMAND: error: ...`, status 2."""
    from keras_vit import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"keras-vit {argv[0]}: error: ") and re.search(pattern, last), last


def test_cli_export_errors_are_one_line(tiny_model, tmp_path, capsys):
    model = str(tmp_path / "model.keras")
    tiny_model.save(model)
    (tmp_path / "file").write_text("x")
    (tmp_path / "junk.keras").write_text("not a zip")
    import zipfile

    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("other.txt", "no config.json")
    out = str(tmp_path / "out")
    assert_usage_error(capsys, ["export", model, "--format", "pb"], "invalid choice: 'pb'")
    assert_usage_error(capsys, ["export", model, "--format", "tflite", "--quantize", "int4"], "'int4'")
    assert_usage_error(capsys, ["export", model, "--max-pixels", "many"], "invalid int value")
    for argv, pattern in [
        (["export", str(tmp_path / "missing.keras")], "No model at .*missing.keras"),
        (["export", str(tmp_path / "junk.keras"), "--output", out], "junk.keras"),
        (["export", str(tmp_path / "empty.keras"), "--output", out],
         "(load|read).*empty.keras"),
        (["export", str(tmp_path / "file"), "--output", out], "not a checkpoint"),
        (["export", model, "--output", str(tmp_path / "file")], "is a file"),
        (["export", model, "--format", "tflite", "--output", str(tmp_path)], "is a directory"),
        (["export", model, "--output", out, "--crop-pct", "0"], r"crop_pct must be a number in \(0, 1\]"),
        (["export", model, "--output", out, "--crop-pct", "1.5"], "got 1.5"),
        (["export", model, "--output", out, "--max-pixels", "0"],
         "max_pixels must be a positive integer, got 0"),
        (["export", model, "--output", out, "--max-pixels", "-5"], "got -5"),
        (["export", model, "--output", out, "--top-k", "0"], "top_k"),
        (["export", model, "--format", "tflite", "--max-pixels", "10"],
         "--max-pixels applies only to --format saved_model, not to --format tflite"),
        (["export", model, "--quantize", "int8"],
         "--quantize applies only to --format tflite, not to --format saved_model"),
        (["export", model, "--format", "tflite", "--output", str(tmp_path / "x.tflite"),
          "--min-top1-agreement", "2"], "min_top1_agreement"),
        (["export", model, "--format", "tflite", "--output", str(tmp_path / "x.tflite"),
          "--calibration-data", str(tmp_path / "nowhere")], "nowhere.*not a folder"),
        (["export", model, "--format", "tflite", "--output", str(tmp_path / "x.tflite"),
          "--quantize", "int8"], "--quantize int8 needs --calibration-data"),
    ]:
        assert_cli_error(capsys, argv, pattern)
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "x.tflite")


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
    # Without images the check runs on noise (about 78% agreement for "dynamic" here): a warning,
    # not an error that deletes a good file.
    with pytest.warns(UserWarning, match="random-noise"):
        report = export.tflite(model, str(tmp_path / "deit_dynamic.tflite"), quantization="dynamic",
                               verbose=False)
    assert os.path.getsize(report["path"]) == report["size_bytes"]


@pytest.mark.slow
@pytest.mark.real_data
def test_deit_tiny_feature_extractor_round_trips_with_embeddings(shared_data, tmp_path):
    checkpoint = os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors")
    features = keras_vit.load_pretrained(checkpoint, include_top=False)
    folder = os.path.join(shared_data, "imagenet20")
    paths = [os.path.join(shared_data, "images", n) for n in ("chelsea.png", "coffee.png")] + [
        os.path.join(folder, f) for f in sorted(os.listdir(folder))[:6]]
    pixels = np.stack([load_image(p, 224) for p in paths]).astype("float32")
    expected = features.predict(pixels, verbose=0)
    assert expected.shape == (8, 192)

    loaded = tf.saved_model.load(export.saved_model(features, str(tmp_path / "features")))
    served = loaded.signatures["serving_default"](images=tf.constant(pixels))["embeddings"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-3)
    encoded = tf.constant([open(p, "rb").read() for p in paths[:2]])
    from_bytes = loaded.signatures["serve_image_bytes"](image_bytes=encoded)["embeddings"].numpy()
    cosine = np.sum(from_bytes * expected[:2], -1) / (
        np.linalg.norm(from_bytes, axis=-1) * np.linalg.norm(expected[:2], axis=-1))
    assert cosine.min() > 0.99  # TF's and Pillow's resize differ by rounding

    report = export.tflite(features, str(tmp_path / "features_fp16.tflite"), quantization="float16",
                           evaluation_data=pixels, verbose=False)
    assert report["embedding_cosine"] > 0.9999 and report["evaluated_on"] == "images"
    np.testing.assert_allclose(export.run_tflite(report["path"], pixels), expected, atol=0.05)
    # The classifier's file gives the same features beside its logits.
    classifier = keras_vit.load_pretrained(checkpoint)
    path = str(tmp_path / "deit.tflite")
    export.tflite(classifier, path, evaluation_data=pixels, verbose=False)
    outputs = export.tflite_runner(path)(pixels)
    np.testing.assert_allclose(outputs["embeddings"], expected, atol=1e-3)
    np.testing.assert_array_equal(outputs["logits"].argmax(-1)[:2], [285, 967])  # cat, espresso


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


@pytest.mark.slow
@pytest.mark.real_data
def test_deit_tiny_int8_keeps_top1_on_held_out_photos(shared_data, tmp_path):
    # Calibrated on half of the shared photos (and their mirror images), judged on the other half:
    # 14 of 15 keep the float top-1 (the one flip, horse.png, has its two best logits 0.035 apart
    # and flips under any int8 weights; the previous recipe kept 89.7% of the photos in
    # benchmarks/int8_study.py) and the embeddings stay close to Keras's (it: mean cosine 0.86).
    checkpoint = os.path.join(shared_data, "deit_tiny_patch16_224")
    model = keras_vit.load_pretrained(checkpoint)
    photos = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "*.jpg"))) + sorted(
        glob.glob(os.path.join(shared_data, "images", "*")))
    pixels = np.stack([load_image(p, 224) for p in photos])
    calibration, held_out = pixels[1::2], pixels[0::2].astype("float32")
    calibration = np.concatenate([calibration, calibration[:, :, ::-1]])
    report = export.tflite(model, str(tmp_path / "deit_int8.tflite"), quantization="int8",
                           calibration_data=calibration, evaluation_data=held_out, verbose=False)
    assert report["num_images"] == len(held_out) == 15 and report["evaluated_on"] == "images"
    litert = _litert_logits(report["path"], held_out).argmax(-1)
    keras_top1 = model.predict(held_out, verbose=0).argmax(-1)
    assert np.sum(litert == keras_top1) >= 14
    assert report["embedding_cosine"] > 0.995 and report["lowest_embedding_cosine"] > 0.98
    labelled = [i for i, p in enumerate(photos[0::2]) if "imagenet20" in p]
    truth = [int(os.path.splitext(os.path.basename(photos[0::2][i]))[0].split("_")[2]) for i in labelled]
    assert np.sum(litert[labelled] == truth) >= np.sum(keras_top1[labelled] == truth)  # accuracy kept
