"""The functional ViT: shapes, exact parameter counts, serialization, compilation, mixed precision."""

import gc

import keras
import numpy as np
import pytest
from conftest import random_images, randomize_weights
from test_layers import np_layer_norm, np_transformer_block

import keras_vit
from keras_vit import layers as L


def hand_count(patch, hidden, depth, mlp, classes=1000, image=224, channels=3):
    """Parameter count of the paper's ViT, from its definition."""
    tokens = (image // patch) ** 2 + 1
    embedding = patch * patch * channels * hidden + hidden + hidden + tokens * hidden
    block = 2 * 2 * hidden + (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) \
        + (hidden * mlp + mlp) + (mlp * hidden + hidden)
    return embedding + depth * block + 2 * hidden + hidden * classes + classes


OFFICIAL = {  # the published counts with 1000 classes at 224 (issue 2)
    "ViTTi16": 5_717_416, "ViTS16": 22_050_664, "ViTB16": 86_567_656, "ViTB32": 88_224_232,
    "ViTL16": 304_326_632, "ViTL32": 306_535_400, "ViTH14": 632_045_800,
}
SIZES = {"ViTTi16": (16, 192, 12, 768), "ViTS16": (16, 384, 12, 1536), "ViTS32": (32, 384, 12, 1536),
         "ViTB8": (8, 768, 12, 3072), "ViTB16": (16, 768, 12, 3072), "ViTB32": (32, 768, 12, 3072),
         "ViTL16": (16, 1024, 24, 4096), "ViTL32": (32, 1024, 24, 4096),
         "ViTH14": (14, 1280, 32, 5120)}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ("ViTL16", "ViTL32", "ViTH14") else n
    for n in SIZES])
def test_variant_parameter_counts_are_exact(name):
    expected = hand_count(*SIZES[name])
    if name in OFFICIAL:
        assert expected == OFFICIAL[name]
    model = getattr(keras_vit, name)()
    assert model.count_params() == expected
    assert model.name == name.lower()
    del model
    gc.collect()


def test_parameter_count_at_other_resolution_and_classes():
    model = keras_vit.ViTTi16(image_size=(160, 96), num_classes=10)
    tokens = (160 // 16) * (96 // 16) + 1
    assert model.count_params() == hand_count(16, 192, 12, 768, classes=10) - (197 - tokens) * 192


def np_vit(model, images):
    """The whole classifier in NumPy from the model's variables, for a token-pooled model."""
    w = {v.path: np.asarray(v.numpy(), "float64") for v in model.weights}
    x = (images / 255.0 - 0.5) / 0.5
    p = model.patch_size[0]
    batch, height, width, _ = x.shape
    patches = x.reshape(batch, height // p, p, width // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, -1, p * p * 3)
    tokens = patches @ w["patch_embedding/projection/kernel"].reshape(-1, model.hidden_size)
    tokens = tokens + w["patch_embedding/projection/bias"]
    cls = np.broadcast_to(w["class_token/token"], (batch, 1, model.hidden_size))
    tokens = np.concatenate([cls, tokens], 1) + w["position_embedding/embedding"]
    for i in range(model.num_layers):
        prefix = f"encoderblock_{i}/"
        block = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
        tokens, _ = np_transformer_block(tokens, block, model.num_heads)
    tokens = np_layer_norm(tokens, w["encoder_norm/gamma"], w["encoder_norm/beta"], 1e-6)
    return tokens[:, 0] @ w["head/kernel"] + w["head/bias"]


def test_whole_model_matches_numpy_reference(tiny_config):
    model = randomize_weights(keras_vit.ViT(**tiny_config))
    images = random_images(3, 32)
    logits = keras.ops.convert_to_numpy(model(images))
    np.testing.assert_allclose(logits, np_vit(model, images.astype("float64")), atol=1e-4)


@pytest.mark.parametrize("size", [32, (32, 48), (48, 16)])
def test_shapes_square_and_rectangular(tiny_config, size):
    tiny_config["image_size"] = size
    model = keras_vit.ViT(**tiny_config)
    h, w = (size, size) if np.isscalar(size) else size
    images = random_images(2, (h, w))
    assert model(images).shape == (2, 10)
    assert model.grid_size == (h // 4, w // 4)
    features = keras_vit.ViT(**{**tiny_config, "include_top": False})
    assert features(images).shape == (2, 64)
    sequence = keras_vit.ViT(**{**tiny_config, "include_top": False, "pooling": None})
    assert sequence(images).shape == (2, (h // 4) * (w // 4) + 1, 64)


def test_pretrained_features_shape():
    features = keras_vit.ViTTi16(include_top=False)
    assert features(random_images(2, 224)).shape == (2, 192)


@pytest.mark.parametrize("options", [
    dict(pooling="gap"), dict(pooling="map"), dict(representation_size=32),
    dict(num_registers=4), dict(pooling="gap", num_registers=2, class_token=False),
    dict(layer_scale_init_value=1e-5), dict(classifier_activation="softmax"),
    dict(dropout_rate=0.1, attention_dropout_rate=0.1, drop_path_rate=0.1),
    dict(normalization_mean=(0.485, 0.456, 0.406), normalization_std=(0.229, 0.224, 0.225)),
])
def test_options_build_run_and_round_trip(tiny_config, options, tmp_path):
    model = randomize_weights(keras_vit.ViT(**tiny_config, **options))
    images = random_images(2, 32)
    out = keras.ops.convert_to_numpy(model(images))
    assert out.shape == (2, 10) and np.all(np.isfinite(out))
    if options.get("classifier_activation") == "softmax":
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode on, no custom_objects
    assert isinstance(loaded, keras_vit.VisionTransformer)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), out)


def test_gap_excludes_prefix_tokens(tiny_config):
    model = keras_vit.ViT(**tiny_config, pooling="gap", num_registers=2, include_top=False)
    assert model.num_prefix_tokens == 2  # GAP models have no class token by default
    with_class = keras_vit.ViT(**tiny_config, pooling="gap", num_registers=2, class_token=True)
    assert with_class.get_layer("pooling").num_prefix_tokens == 3
    # The average covers the patch tokens only: zeroing the prefix tokens' values changes nothing.
    x = np.random.default_rng(0).normal(size=(1, 11, 4)).astype("float32")
    pooled = keras.ops.convert_to_numpy(with_class.get_layer("pooling")(x))
    np.testing.assert_allclose(pooled, x[:, 3:].mean(1), atol=1e-6)
    assert model.get_layer("register_tokens").tokens.shape == (1, 2, 64)


def test_keras_round_trip_identical_outputs_and_class_names(tiny_config, tmp_path):
    names = [f"class {i}" for i in range(10)]
    model = randomize_weights(keras_vit.ViT(**tiny_config, class_names=names))
    images = random_images(4, 32)
    path = tmp_path / "vit.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)),
                                  keras.ops.convert_to_numpy(model(images)))
    assert loaded.class_names == names
    assert [layer.name for layer in loaded.encoder_blocks] == ["encoderblock_0", "encoderblock_1"]


def test_initialisation_matches_reference_code(tiny_config):
    model = keras_vit.ViT(**tiny_config)
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("class_token").token.numpy(), 0.0)
    # Untrained, the zero head gives zero logits: the paper's choice for fine-tuning starts.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(random_images(1, 32))), 0.0)
    rates = [block.drop_path_rate for block in keras_vit.ViT(**{**tiny_config, "num_layers": 5},
                                                             drop_path_rate=0.2).encoder_blocks]
    np.testing.assert_allclose(rates, [0.0, 0.05, 0.1, 0.15, 0.2])


def test_uint8_and_float_pixels_and_outside_preprocessing(tiny_config):
    model = randomize_weights(keras_vit.ViT(**tiny_config))
    images = random_images(2, 32)
    a = keras.ops.convert_to_numpy(model(images))
    b = keras.ops.convert_to_numpy(model(images.astype("float32")))
    np.testing.assert_allclose(a, b, atol=1e-6)
    outside = keras_vit.ViT(**tiny_config, include_preprocessing=False)
    outside.set_weights(model.get_weights())
    c = keras.ops.convert_to_numpy(outside(keras_vit.preprocess_inputs(images)))
    np.testing.assert_allclose(c, a, atol=1e-5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(keras_vit.preprocess_inputs(np.array([0.0, 127.5, 255.0]))),
        [-1.0, 0.0, 1.0], atol=1e-6)


def test_eager_and_jit_compiled_agree(tiny_config):
    model = randomize_weights(keras_vit.ViT(**tiny_config))
    images = random_images(4, 32)
    eager = keras.ops.convert_to_numpy(model(images))
    model.compile(jit_compile=True)
    compiled = model.predict(images, verbose=0)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward_and_backward(tiny_config, policy):
    if policy == "mixed_float16" and keras.backend.backend() == "jax":
        pytest.skip("XLA on CPU has no float16 dot_general (F16_F16_F32); runs on GPU under JAX")
    keras.config.set_dtype_policy(policy)
    model = keras_vit.ViT(**tiny_config, dropout_rate=0.1, drop_path_rate=0.1)
    assert model.get_layer("encoderblock_0").compute_dtype == policy.split("_")[1]
    assert model.get_layer("head").compute_dtype == "float32"
    assert all(v.dtype == "float32" for v in model.weights)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = random_images(8, 32), np.arange(8) % 10
    before = [w.copy() for w in model.get_weights()]
    losses = [float(model.train_on_batch(images, labels)) for _ in range(3)]
    assert all(np.isfinite(losses))
    assert keras.backend.standardize_dtype(model(images).dtype) == "float32"
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed), "every variable gets a gradient update"


def test_a_model_built_with_a_mixed_dtype_keeps_it_through_config_and_keras_file(tiny_config, tmp_path):
    model = keras_vit.ViT(**tiny_config, dtype="mixed_bfloat16")  # the global policy stays float32
    assert model.get_config()["dtype"]["config"]["name"] == "mixed_bfloat16"
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for name in ("patch_embedding", "encoderblock_1", "encoder_norm"):
        assert loaded.get_layer(name).compute_dtype == "bfloat16", name
    assert loaded.get_layer("head").compute_dtype == "float32"
    images = random_images(2, 32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)),
                                  keras.ops.convert_to_numpy(model(images)))


def test_blocks_can_be_tapped(tiny_config):
    model = keras_vit.ViT(**tiny_config)
    taps = keras.Model(model.input, [model.get_layer(f"encoderblock_{i}").output for i in range(2)])
    outputs = taps(random_images(1, 32))
    assert [o.shape for o in outputs] == [(1, 65, 64)] * 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_size=30), r"image_size \(30, 30\) is not divisible by patch_size \(4, 4\)"),
    (dict(image_size=(32, 30)), "divisible by patch_size"),
    (dict(num_heads=5), "hidden_size 64 is not divisible by num_heads 5"),
    (dict(pooling="max"), "Unknown pooling 'max'"),
    (dict(pooling="token", class_token=False), "class_token"),
    (dict(pooling=None), "include_top=True needs a pooling"),
    (dict(num_classes=0), "num_classes"),
    (dict(class_names=["a", "b"]), "class_names has 2 names but num_classes is 10"),
    (dict(dropout_rate=1.5), r"\[0, 1\)"),
    (dict(image_size="big"), "image_size"),
])
def test_bad_configuration_is_named(tiny_config, kwargs, message):
    with pytest.raises(ValueError, match=message):
        keras_vit.ViT(**{**tiny_config, **kwargs})


def test_variant_rejects_architecture_arguments():
    with pytest.raises(ValueError, match="ViTB16 fixes"):
        keras_vit.ViTB16(hidden_size=512)


@pytest.mark.parametrize("shape, message", [
    ((2, 32, 32, 1), "Expected images with 3 channels.*got 1"),
    ((2, 40, 40, 3), r"expected shape=\(None, 32, 32, 3\), found shape=\(2, 40, 40, 3\)"),
    ((32, 32, 3), "expected shape"),
])
def test_bad_images_are_named(tiny_config, shape, message):
    model = keras_vit.ViT(**tiny_config)
    with pytest.raises(ValueError, match=message):
        model(np.zeros(shape, "float32"))


def test_check_image_shape_messages():
    with pytest.raises(ValueError, match="rank 3"):
        L.check_image_shape((32, 32, 3))
    with pytest.raises(ValueError, match="height x width 32x32, got 40x40"):
        L.check_image_shape((1, 40, 40, 3), image_size=(32, 32))


# ----------------------------------------------------------------------------- hybrids
# The totals (224 px, 1000 classes), and the parts they add up from, by hand: the ResNet
# backbone (tests/test_resnet.py counts it layer by layer), a 1x1 (or 8x8 for R+Ti) patch
# embedding of its C channels, and the ViT with (224 / stride / patch)^2 + 1 tokens.
HYBRIDS = {
    "R50ViTB16": (98_659_112, 11_894_848, 1024, 1, 14, (768, 12, 3072)),
    "R50ViTB32": (110_945_832, 23_508_032, 2048, 1, 7, (768, 12, 3072)),
    "R50ViTL16": (316_483_624, 11_894_848, 1024, 1, 14, (1024, 24, 4096)),
    "R50ViTL32": (328_994_856, 23_508_032, 2048, 1, 7, (1024, 24, 4096)),
    "R26ViTS32": (36_431_912, 13_946_176, 2048, 1, 7, (384, 12, 1536)),
    "RViTTi16": (6_337_704, 9_536, 64, 8, 7, (192, 12, 768)),
}


def _hybrid_hand_count(backbone, channels, patch, grid, width, depth, mlp, classes=1000):
    vit_with_16px_patches = hand_count(16, width, depth, mlp, classes=classes)
    pixel_patch_embedding = 16 * 16 * 3 * width + width
    tokens_difference = (197 - (grid * grid + 1)) * width
    return (backbone + vit_with_16px_patches - pixel_patch_embedding - tokens_difference
            + patch * patch * channels * width + width)


@pytest.mark.parametrize("name", list(HYBRIDS))
def test_hybrid_parameter_counts_are_exact(name):
    total, backbone, channels, patch, grid, (width, depth, mlp) = HYBRIDS[name]
    assert _hybrid_hand_count(backbone, channels, patch, grid, width, depth, mlp) == total
    model = getattr(keras_vit, name)()
    assert model.count_params() == total
    assert model.grid_size == (grid, grid) and model.get_layer("backbone") is not None
    del model
    gc.collect()


TINY_HYBRID = dict(image_size=32, patch_size=1, hidden_size=32, num_layers=1, num_heads=2,
                   mlp_dim=32, num_classes=3, backbone={"block_units": [1, 1]})


@pytest.mark.parametrize("options", [dict(), dict(image_size=(32, 48)), dict(pooling="gap"),
                                     dict(include_top=False)])
def test_hybrid_options_round_trip_in_safe_mode(options, tmp_path):
    model = randomize_weights(keras_vit.ViT(**{**TINY_HYBRID, **options}))
    height, width = model.image_size
    assert model.grid_size == (height // 8, width // 8)  # root stride 4, one more stage: 8
    images = random_images(2, (height, width))
    out = keras.ops.convert_to_numpy(model(images))
    assert np.all(np.isfinite(out))
    model.save(tmp_path / "hybrid.keras")
    loaded = keras.models.load_model(tmp_path / "hybrid.keras")
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), out)


def test_hybrid_checks_its_size_and_backbone():
    with pytest.raises(ValueError, match="image_size.*patch_size"):
        keras_vit.ViT(**{**TINY_HYBRID, "image_size": 36})  # not a multiple of stride 8
    with pytest.raises(ValueError, match="block_units"):
        keras_vit.ViT(**{**TINY_HYBRID, "backbone": {"units": [1]}})
    with pytest.raises(TypeError, match="'width'.*width_factor"):
        keras_vit.ViT(**{**TINY_HYBRID, "backbone": {"block_units": [1], "width": 2}})
    with pytest.raises(ValueError, match="fixes"):
        keras_vit.R50ViTB16(backbone=None)


def test_hybrid_mixed_precision_and_fast_predictor():
    from keras_vit import inference

    model = randomize_weights(keras_vit.ViT(**TINY_HYBRID))
    images = random_images(2, 32)
    expected = keras.ops.convert_to_numpy(model(images))
    predict = inference.fast_predictor(model, precision="float32")
    np.testing.assert_allclose(np.asarray(predict(images)), expected, atol=1e-4)
    keras.config.set_dtype_policy("mixed_bfloat16")
    mixed = keras_vit.ViT(**TINY_HYBRID)
    mixed.set_weights(model.get_weights())
    out = keras.ops.convert_to_numpy(mixed(images))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    np.testing.assert_allclose(out, expected, atol=0.1)


# ----------------------------------------------------------------------------- DeiT
@pytest.mark.parametrize("name, expected", [("DeiTTi16", 5_910_800), ("DeiTS16", 22_436_432),
                                            ("DeiTB16", 87_338_192)])
def test_distilled_deit_parameter_counts_are_exact(name, expected):
    # The plain ViT plus, by hand: the distillation token, its position entry, a second head.
    width = {"DeiTTi16": 192, "DeiTS16": 384, "DeiTB16": 768}[name]
    plain = OFFICIAL.get(name.replace("DeiT", "ViT")) or hand_count(*SIZES[name.replace("DeiT", "ViT")])
    assert plain + width + width + width * 1000 + 1000 == expected
    assert getattr(keras_vit, name)(distilled=True).count_params() == expected
    assert getattr(keras_vit, name)().count_params() == plain


def _hf_deit_state(hf_model):
    return {k: v.detach().numpy().astype("float64") for k, v in hf_model.state_dict().items()}


def _deit_weights_from_hf(model, state):
    """The test's own mapping of transformers' DeiT names to ours (not the library's)."""
    prefix = "deit."
    values = {
        "patch_embedding/projection/kernel":
            state[prefix + "embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
        "patch_embedding/projection/bias": state[prefix + "embeddings.patch_embeddings.projection.bias"],
        "class_token/token": state[prefix + "embeddings.cls_token"],
        "position_embedding/embedding": state[prefix + "embeddings.position_embeddings"],
        "encoder_norm/gamma": state[prefix + "layernorm.weight"],
        "encoder_norm/beta": state[prefix + "layernorm.bias"],
    }
    values["distillation_token/tokens"] = state[prefix + "embeddings.distillation_token"]
    values["head/kernel"] = state["cls_classifier.weight"].T
    values["head/bias"] = state["cls_classifier.bias"]
    values["head_dist/kernel"] = state["distillation_classifier.weight"].T
    values["head_dist/bias"] = state["distillation_classifier.bias"]
    for i in range(model.num_layers):  # transformers 5's module names
        hf, ours = f"{prefix}layers.{i}.", f"encoderblock_{i}/"
        values[ours + "attention/qkv/kernel"] = np.concatenate(
            [state[hf + f"attention.{n}_proj.weight"].T for n in "qkv"], axis=1)
        values[ours + "attention/qkv/bias"] = np.concatenate(
            [state[hf + f"attention.{n}_proj.bias"] for n in "qkv"])
        values[ours + "attention/proj/kernel"] = state[hf + "attention.o_proj.weight"].T
        values[ours + "attention/proj/bias"] = state[hf + "attention.o_proj.bias"]
        for norm, hf_norm in (("norm1", "layernorm_before"), ("norm2", "layernorm_after")):
            values[ours + f"{norm}/gamma"] = state[hf + f"{hf_norm}.weight"]
            values[ours + f"{norm}/beta"] = state[hf + f"{hf_norm}.bias"]
        for fc in ("fc1", "fc2"):
            values[ours + f"mlp/{fc}/kernel"] = state[hf + f"mlp.{fc}.weight"].T
            values[ours + f"mlp/{fc}/bias"] = state[hf + f"mlp.{fc}.bias"]
    assert sorted(values) == sorted(v.path for v in model.weights)
    for variable in model.weights:
        variable.assign(values[variable.path].astype("float32"))


def test_distilled_deit_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(image_size=32, patch_size=4, hidden_size=64,
                                     num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, num_labels=10, layer_norm_eps=1e-12)
    torch.manual_seed(0)
    hf_model = transformers.DeiTForImageClassificationWithTeacher(config).eval()
    with torch.no_grad():  # every tensor away from its init (zeros, ones) so nothing hides
        for parameter in hf_model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    mean, std = keras_vit.models.IMAGENET_NORMALIZATION
    model = keras_vit.ViT(image_size=32, patch_size=4, hidden_size=64, num_layers=2, num_heads=4,
                          mlp_dim=128, num_classes=10, distilled=True, layer_norm_epsilon=1e-12,
                          normalization_mean=mean, normalization_std=std)
    _deit_weights_from_hf(model, _hf_deit_state(hf_model))
    images = random_images(3, 32)
    pixels = (images / 255.0 - np.array(mean)) / np.array(std)
    with torch.no_grad():
        expected = hf_model(torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32)).logits
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(images)), expected.numpy(), atol=1e-4)
    # Both heads stay reachable, for training with a teacher.
    heads = keras.Model(model.input, [model.get_layer("head").output,
                                      model.get_layer("head_dist").output])
    class_logits, distillation_logits = (keras.ops.convert_to_numpy(t) for t in heads(images))
    hf_heads = hf_model(torch.tensor(pixels.transpose(0, 3, 1, 2), dtype=torch.float32))
    np.testing.assert_allclose(class_logits, hf_heads.cls_logits.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(distillation_logits,
                               hf_heads.distillation_logits.detach().numpy(), atol=1e-4)


def test_distilled_options_round_trip_and_refusals(tmp_path):
    from keras_vit import inference

    config = dict(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2,
                  mlp_dim=32, num_classes=3, distilled=True)
    model = randomize_weights(keras_vit.ViT(**config))
    images = random_images(2, 32)
    out = keras.ops.convert_to_numpy(model(images))
    model.save(tmp_path / "deit.keras")
    loaded = keras.models.load_model(tmp_path / "deit.keras")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(images)), out)
    assert loaded.num_prefix_tokens == 2 and loaded.distilled
    np.testing.assert_allclose(np.asarray(inference.fast_predictor(model, precision="float32")(images)),
                               out, atol=1e-4)
    softmax = keras_vit.ViT(**config, classifier_activation="softmax")
    softmax.set_weights(model.get_weights())
    probabilities = keras.ops.convert_to_numpy(softmax(images))
    np.testing.assert_allclose(probabilities, np.exp(out) / np.exp(out).sum(-1, keepdims=True),
                               atol=1e-5)
    with pytest.raises(ValueError, match="distilled=True.*pooling='token'"):
        keras_vit.ViT(**{**config, "pooling": "gap"})
    # The token without its head: the class head alone gives the output.
    single = keras_vit.ViT(**config, distillation_head=False)
    assert [layer.name for layer in single.layers if layer.name.startswith("head")] == ["head"]
    single.set_weights([w for v, w in zip(model.weights, model.get_weights())
                        if not v.path.startswith("head_dist")])
    class_head = keras.Model(model.input, model.get_layer("head").output)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(single(images)),
                               keras.ops.convert_to_numpy(class_head(images)), atol=1e-6)


# ----------------------------------------------------------------------------- the model config
def test_the_model_config_is_the_one_source_of_options(tmp_path):
    model = keras_vit.ViT(image_size=(32, 48), patch_size=8, hidden_size=16, num_layers=1,
                          num_heads=2, mlp_dim=16, num_classes=3, crop_pct=1.0,
                          interpolation="bilinear", normalization_mean=(0.485, 0.456, 0.406),
                          normalization_std=(0.229, 0.224, 0.225))
    config = model.get_config()
    fields = set(keras_vit.config.FIELDS)
    assert set(config) == fields | {"name", "trainable", "dtype"}
    assert model.preprocessing_config == {
        "image_size": (32, 48), "include_preprocessing": True,
        "normalization_mean": [0.485, 0.456, 0.406], "normalization_std": [0.229, 0.224, 0.225],
        "crop_pct": 1.0, "interpolation": "bilinear"}
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.preprocessing_config == model.preprocessing_config  # travels in the file
    assert (loaded.crop_pct, loaded.grid_size, loaded.num_prefix_tokens) == (1.0, (4, 6), 1)
    with pytest.raises(ValueError, match="crop_pct must be a number in"):
        keras_vit.ViT(image_size=32, patch_size=8, crop_pct=0.0)
    with pytest.raises(ValueError, match="interpolation"):
        keras_vit.ViT(image_size=32, patch_size=8, interpolation="lanczos")
    import inspect

    assert "crop_pct" in inspect.signature(keras_vit.ViT).parameters  # help() shows every option
