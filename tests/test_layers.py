"""Layers: NumPy references written here, serialization of every layer, numerics of the pieces."""

import math

import keras
import numpy as np
import pytest
from conftest import random_images
from harness import run_layer_test

from keras_vit import layers as L
from keras_vit import resnet as R


def np_layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_transformer_block(x, w, heads, eps=1e-6):
    """The paper's pre-LN encoder block in plain NumPy, from the block's weights by name."""
    batch, tokens, dim = x.shape
    head_dim = dim // heads
    y = np_layer_norm(x, w["norm1/gamma"], w["norm1/beta"], eps)
    qkv = y @ w["attention/qkv/kernel"] + w["attention/qkv/bias"]
    q, k, v = (qkv[..., i * dim:(i + 1) * dim].reshape(batch, tokens, heads, head_dim) for i in range(3))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    attention = np_softmax(logits)
    out = np.einsum("bhqk,bkhd->bqhd", attention, v).reshape(batch, tokens, dim)
    x = x + out @ w["attention/proj/kernel"] + w["attention/proj/bias"]
    y = np_layer_norm(x, w["norm2/gamma"], w["norm2/beta"], eps)
    y = np_gelu(y @ w["mlp/fc1/kernel"] + w["mlp/fc1/bias"]) @ w["mlp/fc2/kernel"] + w["mlp/fc2/bias"]
    return x + y, attention


def block_weights(block):
    prefix = block.name + "/"
    return {v.path[len(prefix):]: np.asarray(v.numpy(), "float64") for v in block.weights}


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        value = rng.normal(0, 0.2, v.shape) + (1.0 if v.path.endswith("gamma") else 0.0)
        v.assign(value.astype("float32"))


def test_transformer_block_matches_numpy():
    block = L.TransformerBlock(num_heads=4, mlp_dim=96, name="encoderblock_0")
    x = np.random.default_rng(1).normal(size=(2, 7, 32)).astype("float32")
    block.build(x.shape)
    randomize(block)
    out, scores = block(x, return_attention_scores=True)
    expected, attention = np_transformer_block(x.astype("float64"), block_weights(block), heads=4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), attention, atol=1e-6)
    assert keras.ops.convert_to_numpy(scores).dtype == np.float32
    # The fused dot_product_attention path gives the same result as the explicit one.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(block(x)), expected, atol=2e-5, rtol=1e-4)


def test_transformer_block_layer_scale_numpy():
    block = L.TransformerBlock(num_heads=2, mlp_dim=16, layer_scale_init_value=0.1)
    x = np.random.default_rng(2).normal(size=(1, 3, 8)).astype("float32")
    block.build(x.shape)
    w = {v.path.split("/", 1)[1]: v for v in block.weights}
    np.testing.assert_allclose(w["layer_scale1/gamma"].numpy(), np.full(8, 0.1))
    # With the scales at zero the block is the identity: both residual branches vanish.
    w["layer_scale1/gamma"].assign(np.zeros(8))
    w["layer_scale2/gamma"].assign(np.zeros(8))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(block(x)), x, atol=1e-7)


def test_attention_dropout_only_in_training():
    block = L.TransformerBlock(num_heads=2, mlp_dim=16, attention_dropout_rate=0.5)
    x = np.random.default_rng(3).normal(size=(4, 5, 8)).astype("float32")
    a, b = block(x, training=False), block(x, training=False)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    c = block(x, training=True)
    assert not np.allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(c))


def test_drop_path_drops_whole_samples_and_rescales():
    layer = L.DropPath(rate=0.5, seed=1)
    x = np.ones((400, 3, 2), "float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(400, -1)
    # Each sample is either dropped entirely or scaled by 1 / keep = 2.
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert 0.35 < (per_sample[:, 0] == 0).mean() < 0.65
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_patch_embedding_is_flatten_and_project():
    layer = L.PatchEmbedding(patch_size=(2, 4), hidden_size=5)
    x = np.random.default_rng(4).normal(size=(1, 4, 8, 3)).astype("float32")
    layer.build(x.shape)
    randomize(layer)
    kernel, bias = (np.asarray(v.numpy()) for v in layer.projection.weights)
    out = keras.ops.convert_to_numpy(layer(x))
    assert out.shape == (1, 4, 5)  # a 2x2 grid of patches, row-major
    for index, (row, col) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        patch = x[0, row * 2:(row + 1) * 2, col * 4:(col + 1) * 4]
        expected = patch.reshape(-1) @ kernel.reshape(-1, 5) + bias
        np.testing.assert_allclose(out[0, index], expected, atol=1e-5)


def test_image_normalization_values():
    layer = L.ImageNormalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = np.array([[[[0, 128, 255]]]], "uint8")
    expected = (np.array([0, 128, 255]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x))[0, 0, 0], expected, rtol=1e-5)
    google = L.ImageNormalization(0.5, 0.5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(google(np.array([[[[0.0, 127.5, 255.0]]]])))[0, 0, 0], [-1, 0, 1],
        atol=1e-6)


@pytest.mark.parametrize("bad", [dict(mean=(0.5, 0.5)), dict(std=0.0), dict(std=(1, 1, -1))])
def test_image_normalization_rejects_bad_statistics(bad):
    with pytest.raises(ValueError, match="mean|std"):
        L.ImageNormalization(**bad)


def test_token_pooling_and_registers():
    x = np.arange(2 * 5 * 3, dtype="float32").reshape(2, 5, 3)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(L.TokenPooling("token")(x)), x[:, 0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(L.TokenPooling("gap", 2)(x)),
                               x[:, 2:].mean(1))
    registers = L.RegisterTokens(num_registers=2, num_prefix_tokens=1)
    y = keras.ops.convert_to_numpy(registers(x))
    assert y.shape == (2, 7, 3)
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    np.testing.assert_array_equal(y[:, 3:], x[:, 1:])
    np.testing.assert_allclose(y[0, 1:3], registers.tokens.numpy()[0])


def test_position_embedding_resample_keeps_class_entry_and_matches_references():
    torch = pytest.importorskip("torch")
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    layer = L.PositionEmbedding(grid_size=(4, 6), num_prefix_tokens=1)
    layer.build((None, 25, 8))
    table = layer.embedding.numpy()
    np.testing.assert_array_equal(layer.resample((4, 6)), table)  # same grid: exact copy
    grid = table[0, 1:].reshape(4, 6, 8)
    for new_grid in [(8, 9), (2, 3)]:
        for antialias in (True, False):
            ours = layer.resample(new_grid, "bicubic", antialias)
            reference = torch.nn.functional.interpolate(
                torch.tensor(grid).permute(2, 0, 1)[None], size=new_grid, mode="bicubic",
                antialias=antialias, align_corners=False)[0].permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(ours[:, :1], table[:, :1])
            np.testing.assert_allclose(ours[0, 1:], reference.reshape(-1, 8), atol=1e-5)
        zoom = scipy_ndimage.zoom(grid, (new_grid[0] / 4, new_grid[1] / 6, 1), order=1)
        np.testing.assert_allclose(layer.resample(new_grid, "bilinear")[0, 1:], zoom.reshape(-1, 8),
                                   atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        layer.resample((5, 5), "nearest")
    with pytest.raises(ValueError, match="does not fit"):
        L.resample_position_embeddings(table, (5, 5), (6, 6))


def test_class_token_and_position_embedding_initialisation():
    token = L.ClassToken()
    token.build((None, 16, 64))
    np.testing.assert_array_equal(token.token.numpy(), 0.0)
    posemb = L.PositionEmbedding(grid_size=32)
    posemb.build((None, 1025, 64))
    assert abs(posemb.embedding.numpy().std() - 0.02) < 0.001


LAYERS = [
    (lambda: L.ImageNormalization((0.4, 0.5, 0.6), (0.2, 0.3, 0.4)), (2, 8, 8, 3)),
    (lambda: L.PatchEmbedding((2, 4), 16), (2, 8, 8, 3)),
    (lambda: L.ClassToken(), (2, 5, 16)),
    (lambda: L.RegisterTokens(3, 1), (2, 5, 16)),
    (lambda: L.DistillationToken(), (2, 5, 16)),
    (lambda: L.PositionEmbedding((2, 2), 1), (2, 5, 16)),
    (lambda: L.MultiHeadSelfAttention(4, 0.1), (2, 5, 16)),
    (lambda: L.MLPBlock(32, 0.1), (2, 5, 16)),
    (lambda: L.LayerScale(0.5), (2, 5, 16)),
    (lambda: L.DropPath(0.2, seed=3), (2, 5, 16)),
    (lambda: L.TransformerBlock(4, 32, 0.1, 0.1, 0.1, 1e-4, 1e-5), (2, 5, 16)),
    (lambda: L.TokenPooling("gap", 2), (2, 5, 16)),
    (lambda: L.TokenPooling("token", 2, token_index=1), (2, 5, 16)),
    (lambda: L.MAPHead(4, 32), (2, 5, 16)),
    (lambda: R.StdConv2D(8, (3, 5), 2, 1e-3, True), (2, 9, 10, 3)),
    (lambda: R.BottleneckUnit(32, 2, 1e-8, True, 1e-5), (2, 8, 8, 16)),
    (lambda: R.ResNetStage(2, 32, 1), (2, 8, 8, 128)),
    (lambda: R.ResNetBackbone([1, 1], 1, **R.TIMM_NUMERICS), (2, 32, 48, 3)),
    (lambda: R.ResNetBackbone([]), (2, 16, 16, 3)),
]


@pytest.mark.parametrize("make, shape", LAYERS, ids=[type(m()).__name__ for m, _ in LAYERS])
def test_every_layer_goes_through_the_harness(make, shape, tmp_path):
    run_layer_test(make, shape, tmp_path)


def test_every_registered_layer_is_in_the_harness():
    import inspect

    covered = {type(make()) for make, _ in LAYERS}
    for module in (L, R):
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, keras.layers.Layer)
                    and value.__module__ == module.__name__):
                assert value in covered, f"{name} is not in the layer harness (LAYERS)"


def test_mixed_precision_attention_weights_are_float32():
    block = L.TransformerBlock(2, 16, dtype="mixed_bfloat16")
    x = random_images(1, 4).reshape(1, 12, 4).astype("float32") / 255
    block.build((1, 12, 8))
    out, scores = block(np.concatenate([x, x], -1), return_attention_scores=True)
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(scores.dtype) == "float32"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.sum(scores, -1)), 1.0, atol=1e-5)
