"""The model families beside the plain ViT (ResNet hybrids, distilled DeiT) go through export and
explain like a ViT: SavedModel and TFLite give the model's logits, attention maps cover the
feature-map grid and both DeiT tokens."""

import os

import keras
import numpy as np
import pytest
from conftest import random_images, randomize_weights

import keras_vit
from keras_vit import explain, export

tf = pytest.importorskip("tensorflow")

FAMILIES = {
    "hybrid": dict(patch_size=1, backbone={"block_units": [1, 1]}),  # stride 8: a 4x4 grid
    "deit": dict(patch_size=8, distilled=True),                       # 4x4 grid, 2 prefix tokens
}


def _model(family):
    return randomize_weights(keras_vit.ViT(image_size=32, hidden_size=32, num_layers=1,
                                           num_heads=2, mlp_dim=32, num_classes=3,
                                           **FAMILIES[family]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_saved_model_and_tflite_give_the_models_logits(family, tmp_path):
    model = _model(family)
    images = random_images(3, 32)
    expected = keras.ops.convert_to_numpy(model(images))
    version_dir = export.saved_model(model, str(tmp_path / "served"))
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    served = signature(images=tf.constant(images.astype("float32")))
    np.testing.assert_allclose(served["logits"].numpy(), expected, atol=1e-4)
    path = str(tmp_path / f"{family}.tflite")
    report = export.tflite(model, path, evaluation_data=images)
    assert os.path.getsize(path) > 0 and report["top1_agreement"] == 1.0
    np.testing.assert_allclose(export.run_tflite(path, images.astype("float32")), expected,
                               atol=1e-4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_attention_covers_the_grid_and_every_prefix_token(family):
    model = _model(family)
    prefix = 2 if family == "deit" else 1
    tokens = prefix + 4 * 4
    maps = explain.attention_maps(model, random_images(1, 32)[0])
    assert maps.shape == (1, 2, tokens, tokens)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)  # each row is a distribution
    assert explain.attention_rollout(model, random_images(1, 32)[0]).shape == (4, 4)


def test_a_distiller_exports_its_student_with_the_checkpoints_preprocessing(tmp_path):
    from keras_vit import training

    student = _model("deit")
    teacher = randomize_weights(keras_vit.ViT(image_size=32, patch_size=8, hidden_size=16,
                                              num_layers=1, num_heads=2, mlp_dim=16,
                                              num_classes=3), seed=1)
    distiller = training.Distiller(student, teacher)
    images = random_images(2, 32)
    version_dir = export.saved_model(distiller, str(tmp_path / "served"))
    served = tf.saved_model.load(version_dir).signatures["serving_default"](
        images=tf.constant(images.astype("float32")))
    np.testing.assert_allclose(served["logits"].numpy(),
                               keras.ops.convert_to_numpy(student(images)), atol=1e-4)
    bilinear = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=16, num_layers=1,
                             num_heads=2, mlp_dim=16, num_classes=3, crop_pct=1.0,
                             interpolation="bilinear")
    metadata = export.saved_model(bilinear, str(tmp_path / "bilinear"))
    import json

    preprocessing = json.load(open(os.path.join(metadata, "metadata.json")))["preprocessing"]
    assert (preprocessing["crop_pct"], preprocessing["interpolation"]) == (1.0, "bilinear")
