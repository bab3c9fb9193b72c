"""`keras-vit predict` and `keras_vit.predict.predict` on .keras, SavedModel and .tflite models."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

import keras_vit
from keras_vit import cli, export, predict
from keras_vit.images import load_image
from keras_vit.labels import imagenet_class_names

from conftest import TINY, random_images, randomize_weights
from test_export import assert_cli_error, assert_usage_error

NAMES = [f"name_{i}" for i in range(TINY["num_classes"])]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("predict")
    model = randomize_weights(keras_vit.ViT(**TINY, class_names=NAMES), scale=0.2)
    model.save(str(root / "model.keras"))
    photos = []
    for i, image in enumerate(random_images(3, (48, 40), seed=11)):
        photos.append(str(root / f"photo{i}.png"))
        Image.fromarray(image).save(photos[-1])
    pixels = np.stack([load_image(p, 32) for p in photos]).astype("float32")
    logits = model.predict(pixels, verbose=0).astype("float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)
    return dict(root=root, model=model, photos=photos, probabilities=probabilities)


def _expected(probabilities, names, k=5):
    return [[(names[i], row[i]) for i in np.argsort(-row)[:k]] for row in probabilities]


def _assert_close(results, expected, atol):
    for got_row, want_row in zip(results, expected, strict=True):
        assert [label for label, _ in got_row] == [label for label, _ in want_row]
        np.testing.assert_allclose([p for _, p in got_row], [p for _, p in want_row], atol=atol)


def test_predict_keras_saved_model_and_tflite(setup):
    root, model = setup["root"], setup["model"]
    export.saved_model(model, str(root / "served"))
    tflite_path = str(root / "vit.tflite")
    export.tflite(model, tflite_path, evaluation_data=random_images(4, 32), verbose=False)
    expected = _expected(setup["probabilities"], NAMES)
    _assert_close(predict.predict(str(root / "model.keras"), setup["photos"]), expected, 1e-5)
    _assert_close(predict.predict(str(root / "served"), setup["photos"]), expected, 1e-5)
    # A .tflite file holds no names: indices (10 classes), or the names given.
    _assert_close(predict.predict(tflite_path, setup["photos"], labels=NAMES), expected, 1e-4)
    by_index = predict.predict(tflite_path, setup["photos"][:1], top_k=2)
    assert [label for label, _ in by_index[0]] == [n.split("_")[1] for n, _ in expected[0][:2]]


def test_base_directory_uses_highest_version(setup):
    base = str(setup["root"] / "versions")
    export.saved_model(setup["model"], base, version=3, labels=[f"old_{i}" for i in range(10)])
    export.saved_model(setup["model"], base, version=12, labels=[f"new_{i}" for i in range(10)])
    assert predict.find_saved_model(base) == os.path.join(base, "12")
    (label, _), *_ = predict.predict(base, setup["photos"][:1], top_k=1)[0]
    assert label.startswith("new_")


def test_thousand_class_model_gets_imagenet_names(tmp_path):
    model = randomize_weights(keras_vit.ViT(**{**TINY, "num_classes": 1000}), scale=0.2)
    model.save(str(tmp_path / "m.keras"))
    image = str(tmp_path / "x.png")
    Image.fromarray(random_images(1, 32, seed=2)[0]).save(image)
    logits = model.predict(load_image(image, 32)[None].astype("float32"), verbose=0)[0]
    (label, _), = predict.predict(str(tmp_path / "m.keras"), [image], top_k=1)[0]
    assert label == imagenet_class_names()[int(np.argmax(logits))]


def test_cli_json_and_table(setup, capsys):
    model = str(setup["root"] / "model.keras")
    assert cli.main(["predict", model, *setup["photos"][:2], "--top-k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = _expected(setup["probabilities"][:2], NAMES, 3)
    assert [p["image"] for p in out] == setup["photos"][:2]
    for entry, want in zip(out, expected):
        assert [p["label"] for p in entry["predictions"]] == [label for label, _ in want]
        assert [NAMES[p["index"]] for p in entry["predictions"]] == [label for label, _ in want]
    assert cli.main(["predict", model, setup["photos"][0]]) == 0
    table = capsys.readouterr().out
    assert setup["photos"][0] in table and expected[0][0][0] in table and table.count("%") == 5


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    model = str(setup["root"] / "model.keras")
    photo = setup["photos"][0]
    text = tmp_path / "notes.jpg"
    text.write_text("this is not a picture")
    (tmp_path / "junk.keras").write_text("not a zip")
    (tmp_path / "junk.tflite").write_bytes(b"not a flatbuffer" * 10)
    (tmp_path / "model.pb").write_bytes(b"graph")
    foreign = tmp_path / "foreign"  # a SavedModel, but not one keras_vit wrote
    tf = pytest.importorskip("tensorflow")
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2.0}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(foreign), signatures={"serving_default": module.f})
    assert_usage_error(capsys, ["predict", model, photo, "--top-k", "three"], "invalid int value")
    for argv, pattern in [
        (["predict", model, str(tmp_path / "nope.jpg")], "nope.jpg"),
        (["predict", model, photo, str(text)], "notes.jpg.* not a readable image"),
        (["predict", model, photo, "--top-k", "0"], "top_k must be a positive integer, got 0"),
        (["predict", model, photo, "--top-k", "-2"], "got -2"),
        (["predict", model, photo, "--labels", str(tmp_path / "labels.txt")], "labels.txt"),
        (["predict", str(tmp_path / "missing.keras"), photo], "No model at .*missing.keras"),
        (["predict", str(tmp_path), photo], "saved_model.pb"),  # a directory without a model
        (["predict", str(tmp_path / "junk.keras"), photo], "junk.keras"),
        (["predict", str(tmp_path / "junk.tflite"), photo], "junk.tflite"),
        (["predict", str(tmp_path / "model.pb"), photo], "Unknown model format .*model.pb"),
        (["predict", str(foreign), photo], "not a keras_vit SavedModel"),
    ]:
        assert_cli_error(capsys, argv, pattern)


def test_feature_extractors_are_refused_in_every_format(setup, tmp_path, capsys):
    features = randomize_weights(keras_vit.ViT(**{**TINY, "include_top": False}))
    features.save(str(tmp_path / "features.keras"))
    export.saved_model(features, str(tmp_path / "served"))
    export.tflite(features, str(tmp_path / "features.tflite"), evaluation_data=random_images(2, 32),
                  verbose=False)
    for model in ("features.keras", "served", "features.tflite"):
        assert_cli_error(capsys, ["predict", str(tmp_path / model), setup["photos"][0]],
                         f"{model}.* is a feature extractor .*no classes to predict")


def test_library_arguments(setup):
    model = str(setup["root"] / "model.keras")
    with pytest.raises(TypeError, match="topk"):
        predict.predict(model, setup["photos"], topk=3)
    with pytest.raises(ValueError, match="No image paths"):
        predict.predict(model, [])
    with pytest.warns(UserWarning, match="top_k=12 is more than the model's 10 classes"):
        rows = predict.predict(model, setup["photos"][:1], top_k=12)
    assert len(rows[0]) == 10


def test_predict_and_calibration_read_files_with_load_image(setup, tmp_path, monkeypatch):
    # One decode path: a 16-bit grey PNG gives predict and int8 calibration exactly the pixels
    # images.load_image gives, in batches of any size.
    ramp = (np.arange(48 * 40).reshape(48, 40) * 34).astype("uint16")
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [str(folder / f"{i}.png") for i in range(3)]
    for i, path in enumerate(paths):
        Image.fromarray(np.roll(ramp, 7 * i, axis=1)).save(path)  # mode I;16
    pixels = np.stack([load_image(p, 32) for p in paths]).astype("float32")
    np.testing.assert_array_equal(export.calibration_images(str(folder), (32, 32)), pixels)
    logits = setup["model"].predict(pixels, verbose=0).astype("float64")
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    monkeypatch.setattr(predict, "BATCH_SIZE", 2)
    rows = predict.predict_top_k(str(setup["root"] / "model.keras"), paths, top_k=10)
    got = np.array([[p for _, _, p in sorted(row, key=lambda r: r[1])] for row in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.real_data
def test_predict_deit_tiny_saved_model(shared_data, tmp_path):
    model = keras_vit.load_pretrained(os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors"))
    base = str(tmp_path / "deit")
    export.saved_model(model, base)
    photos = [os.path.join(shared_data, "images", n) for n in ("chelsea.png", "coffee.png")]
    results = predict.predict(base, photos, top_k=1)
    names = imagenet_class_names()
    assert [row[0][0] for row in results] == [names[285], names[967]]  # Egyptian cat, espresso
