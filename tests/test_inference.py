"""keras_vit.inference.fast_predictor: its logits against the Keras model's own, over one matrix
of every model option; its choice of forward pass (read from the model's config); precision
choice, snapshot and errors; top-1 on real photos."""

import dataclasses
import glob
import logging
import os

import keras
import numpy as np
import pytest
from conftest import TINY, random_images, randomize_weights

import keras_vit
from keras_vit import inference
from keras_vit.config import DEFAULTS, FIELDS, IMAGENET_NORMALIZATION

# One entry per ModelConfig field (several for a field with several non-default values): the
# options that give the field a non-default value on the tiny ViT, with what it needs beside.
OPTION_MATRIX = [
    ("image_size", {"image_size": (24, 40)}),
    ("patch_size", {"patch_size": (8, 4)}),
    ("hidden_size", {"hidden_size": 32}),
    ("num_layers", {"num_layers": 3}),
    ("num_heads", {"num_heads": 2}),
    ("mlp_dim", {"mlp_dim": 96}),
    ("num_classes", {"num_classes": 7}),
    ("include_top", {"include_top": False}),
    ("pooling", {"pooling": "gap"}),
    ("pooling", {"pooling": "map"}),
    ("pooling", {"pooling": None, "include_top": False}),
    ("representation_size", {"representation_size": 16}),
    ("dropout_rate", {"dropout_rate": 0.5}),
    ("attention_dropout_rate", {"attention_dropout_rate": 0.5}),
    ("drop_path_rate", {"drop_path_rate": 0.5}),
    ("include_preprocessing", {"include_preprocessing": False}),
    ("classifier_activation", {"classifier_activation": "softmax"}),
    ("class_token", {"class_token": True, "pooling": "gap"}),
    ("class_token", {"class_token": False, "pooling": "gap"}),
    ("num_registers", {"num_registers": 2}),
    ("num_registers", {"num_registers": 2, "layer_scale_init_value": 0.1,
                       "representation_size": 16, "pooling": "gap"}),
    ("layer_scale_init_value", {"layer_scale_init_value": 0.1}),
    ("normalization_mean", {"normalization_mean": IMAGENET_NORMALIZATION[0]}),
    ("normalization_std", {"normalization_std": IMAGENET_NORMALIZATION[1]}),
    ("layer_norm_epsilon", {"layer_norm_epsilon": 0.5}),
    ("class_names", {"class_names": [f"class {i}" for i in range(10)]}),
    ("backbone", {"backbone": {"block_units": [1, 1]}, "patch_size": 1}),
    ("distilled", {"distilled": True}),
    ("distillation_head", {"distilled": True, "distillation_head": False}),
    ("crop_pct", {"crop_pct": 0.95}),
    ("interpolation", {"interpolation": "bilinear"}),
]
# The options that the fused forward pass does not implement: the model runs its own layers.
OWN_LAYERS = {"pooling": ("map", None), "backbone": ({"block_units": [1, 1]},),
              "distilled": (True,)}


def _reference(model, images):
    return np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), "float64")


def _inputs(options, batch=8):
    images = random_images(batch, options.get("image_size", TINY["image_size"]), seed=1)
    if options.get("include_preprocessing", True):
        return images
    return images.astype("float32") / 127.5 - 1.0  # the caller normalises


def test_option_matrix_covers_every_config_field():
    """A field added to ModelConfig needs a row here and a class in FUSED_FIELDS."""
    assert sorted({field for field, _ in OPTION_MATRIX}) == sorted(FIELDS)
    assert sorted(inference.FUSED_FIELDS) == sorted(FIELDS)
    for field, options in OPTION_MATRIX:
        assert options[field] != DEFAULTS[field], (field, options)


@pytest.mark.parametrize("field, options", OPTION_MATRIX,
                         ids=[f"{field}={options[field]!r}" for field, options in OPTION_MATRIX])
def test_fast_predictor_matches_the_model_for_every_option(field, options, caplog):
    model = randomize_weights(keras_vit.ViT(**{**TINY, **options}))
    images = _inputs(options)
    reference = _reference(model, images)
    own_layers = {key: options[key] for key in OWN_LAYERS if options.get(key, DEFAULTS[key])
                  in OWN_LAYERS[key]}
    with caplog.at_level(logging.INFO, logger="keras_vit.inference"):
        float32 = inference.fast_predictor(model, precision="float32")(images)
    # The choice of forward pass names the option that made it.
    routed = [r.getMessage() for r in caplog.records if "model's own layers" in r.getMessage()]
    assert bool(routed) == bool(own_layers)
    assert all(f"{key}=" in routed[0] for key in own_layers)
    assert float32.dtype == np.float32 and float32.shape == reference.shape
    np.testing.assert_allclose(float32, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())

    bf16 = inference.fast_predictor(model, precision="bfloat16")(images)
    assert bf16.dtype == np.float32 and bf16.shape == reference.shape
    # bfloat16 has 8 bits of mantissa: a few 1e-3 relative per op, about 1e-2 through the net.
    assert np.linalg.norm(bf16 - reference) / np.linalg.norm(reference) < 3e-2
    if options.get("include_top", True):
        clear = np.sort(reference, axis=-1)
        confident = clear[:, -1] - clear[:, -2] > 0.05 * np.abs(reference).max()
        assert confident.any()
        assert np.array_equal(bf16.argmax(-1)[confident], reference.argmax(-1)[confident])


def test_fast_predictor_refuses_a_config_field_it_does_not_classify():
    """A model option that FUSED_FIELDS does not know is an error, not a silent fused answer."""

    @dataclasses.dataclass
    class NewOption(keras_vit.ModelConfig):
        rotary_position_embedding: bool = False

    model = keras_vit.ViT(**TINY)
    model.config = NewOption(**dataclasses.asdict(model.config))
    with pytest.raises(NotImplementedError, match="'rotary_position_embedding'.*FUSED_FIELDS"):
        inference.fast_predictor(model, precision="float32")


def test_fast_predictor_refuses_keras_quantised_layers():
    # An int8 kernel read without its scale gave logits off by hundreds: refuse instead.
    model = keras_vit.ViT(**TINY)
    model.get_layer("encoderblock_0").mlp.fc1.quantize("int8")
    with pytest.raises(ValueError, match=r"quantised \(int8\): \['fc1'\]"):
        inference.fast_predictor(model, precision="float32")


def test_unfused_options_reads_the_config():
    config = keras_vit.ModelConfig(**TINY)
    assert inference.unfused_options(config) == {}
    config = keras_vit.ModelConfig(**TINY, pooling="map", backbone={"block_units": [1, 1]})
    assert inference.unfused_options(config) == {"pooling": "map",
                                                 "backbone": {"block_units": [1, 1]}}


X86_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
flags\t\t: fpu avx512_bf16
"""
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_cpu_info_reads_x86_and_arm_flags(tmp_path):
    (tmp_path / "x86").write_text(X86_ZEN3)
    (tmp_path / "arm").write_text(ARM_BF16)
    x86 = inference.cpu_info(str(tmp_path / "x86"))
    assert x86["model name"] == "AMD EPYC 7B13" and x86["cpu family"] == "25"
    assert "avx2" in x86["flags"] and "avx512_bf16" not in x86["flags"]  # first processor only
    assert "bf16" in inference.cpu_info(str(tmp_path / "arm"))["flags"]
    assert inference.cpu_info(str(tmp_path / "missing")) == {}


def test_fast_predictor_auto_precision_follows_the_hardware(monkeypatch, tmp_path):
    """precision="auto": float32 on a CPU without native bfloat16, bfloat16 where it is native."""
    model = randomize_weights(keras_vit.ViT(**TINY))
    images = random_images(4, 32, seed=2)
    float32 = inference.fast_predictor(model, precision="float32")(images)
    bf16 = inference.fast_predictor(model, precision="bfloat16")(images)
    assert np.abs(float32 - bf16).max() > 1e-4  # the two precisions are distinguishable
    monkeypatch.setattr(inference, "on_accelerator", lambda: False)
    (tmp_path / "cpuinfo").write_text(X86_ZEN3)  # a CPU without native bfloat16 (AMD Zen 3)
    zen3 = inference.cpu_info(str(tmp_path / "cpuinfo"))
    monkeypatch.setattr(inference, "cpu_info", lambda path=None: zen3)
    assert not inference.native_bfloat16()
    np.testing.assert_array_equal(inference.fast_predictor(model)(images), float32)
    monkeypatch.setattr(inference, "_warned_emulated_bfloat16", False)
    with pytest.warns(UserWarning, match="without native bfloat16"):
        inference.fast_predictor(model, precision="bfloat16")
    monkeypatch.setattr(inference, "cpu_info", lambda path=None: {"flags": {"avx2", "avx512_bf16"}})
    assert inference.native_bfloat16()
    np.testing.assert_array_equal(inference.fast_predictor(model)(images), bf16)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        inference.fast_predictor(model, precision="fp8")


def test_fast_predictor_snapshot_and_errors():
    model = randomize_weights(keras_vit.ViT(**TINY))
    images = random_images(2, 32)
    predict = inference.fast_predictor(model, precision="float32")
    before = predict(images)
    randomize_weights(model, seed=1)
    # The predictor keeps the weights it was built with.
    np.testing.assert_array_equal(predict(images), before)
    assert np.abs(_reference(model, images) - before).max() > 1e-3
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\)"):
        predict(np.zeros((1, 64, 64, 3)))
    with pytest.raises(ValueError, match="Unknown precision 'int4'"):
        inference.fast_predictor(model, precision="int4")
    with pytest.raises(ValueError, match="Unknown backend_hint 'fast'"):
        inference.fast_predictor(model, backend_hint="fast")
    with pytest.raises(ValueError, match="needs a keras_vit VisionTransformer, got Sequential"):
        inference.fast_predictor(keras.Sequential([keras.layers.Dense(2)]))


def test_fast_predictor_keeps_top1_on_real_photos(shared_data):
    from keras_vit import weights
    from keras_vit.images import load_image

    model = weights.load_pretrained(os.path.join(shared_data, "deit_tiny_patch16_224"))
    paths = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "*.jpg")))
    images = np.stack([load_image(p, 224) for p in paths]).astype("float32")
    reference = np.asarray(model.predict_on_batch(images))
    fast = inference.fast_predictor(model, precision="bfloat16")(images)
    assert np.array_equal(fast.argmax(-1), reference.argmax(-1))
    # bfloat16 keeps ~3 significant digits; over 12 blocks the logits move by a few percent.
    # Measured: 2.1e-2 on Zen 5 (native avx512_bf16), 3.7e-2 on Zen 3 (no native bfloat16).
    assert np.linalg.norm(fast - reference) / np.linalg.norm(reference) < 5e-2
