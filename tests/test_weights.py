"""Checkpoint loading: parity with Hugging Face transformers (PyTorch) for every format, resolution
and head changes, the registry (download, cache, hashes; never the network), bad files, real DeiT.

The Google .npz, big_vision and timm files are written here from the HF state dict by conversion
code of the test's own, so every loader is compared against the same independent PyTorch model.
"""

import glob
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import types
import zipfile

import keras
import numpy as np
import PIL.Image
import pytest
from conftest import REPO, TINY, random_images

import keras_vit
from keras_vit import weights as W
from keras_vit.images import load_image
from keras_vit.weights import downloads, formats

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

HEADS, HIDDEN, DEPTH, PATCH = TINY["num_heads"], TINY["hidden_size"], TINY["num_layers"], TINY["patch_size"]
TOLERANCE = 1e-4


def make_hf_model(layer_norm_eps=1e-6, embedding_scale=1.0, seed=0, image_size=32):
    """A random HF ViTForImageClassification of the TINY size; every parameter random."""
    config = transformers.ViTConfig(
        image_size=image_size, patch_size=PATCH, hidden_size=HIDDEN, num_hidden_layers=DEPTH,
        num_attention_heads=HEADS, intermediate_size=TINY["mlp_dim"], num_labels=10,
        hidden_act="gelu", layer_norm_eps=layer_norm_eps)
    torch.manual_seed(seed)
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.normal_(0.0, 0.1)
            if "layernorm" in name and name.endswith("weight"):
                parameter.add_(1.0)
            if "embeddings" in name:
                parameter.mul_(embedding_scale)
    return model


def hf_logits(model, images, interpolate=False):
    x = torch.from_numpy((images.astype("float32") / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(pixel_values=x, interpolate_pos_encoding=interpolate).logits.numpy()


def hf_state(folder):
    """The hub's key layout, as save_pretrained writes it (vit.encoder.layer.N.attention...)."""
    return safetensors_numpy.load_file(os.path.join(folder, "model.safetensors"))


def google_from_hf(sd, block_names=("LayerNorm_0", "MultiHeadDotProductAttention_1", "LayerNorm_2",
                                    "MlpBlock_3")):
    """The vision_transformer .npz layout: q/k/v kernels (D, heads, head_dim), out (heads, head_dim, D)."""
    head_dim = HIDDEN // HEADS
    ln1, attn, ln2, mlp = block_names
    g = {"embedding/kernel": sd["vit.embeddings.patch_embeddings.projection.weight"].transpose(2, 3, 1, 0),
         "embedding/bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "cls": sd["vit.embeddings.cls_token"],
         "Transformer/posembed_input/pos_embedding": sd["vit.embeddings.position_embeddings"],
         "Transformer/encoder_norm/scale": sd["vit.layernorm.weight"],
         "Transformer/encoder_norm/bias": sd["vit.layernorm.bias"],
         "head/kernel": sd["classifier.weight"].T, "head/bias": sd["classifier.bias"]}
    for i in range(DEPTH):
        hf, t = f"vit.encoder.layer.{i}.", f"Transformer/encoderblock_{i}/"
        for src, dst in (("layernorm_before", ln1), ("layernorm_after", ln2)):
            g[f"{t}{dst}/scale"], g[f"{t}{dst}/bias"] = sd[hf + src + ".weight"], sd[hf + src + ".bias"]
        for name in ("query", "key", "value"):
            g[f"{t}{attn}/{name}/kernel"] = sd[f"{hf}attention.attention.{name}.weight"].T.reshape(
                HIDDEN, HEADS, head_dim)
            g[f"{t}{attn}/{name}/bias"] = sd[f"{hf}attention.attention.{name}.bias"].reshape(HEADS, head_dim)
        g[f"{t}{attn}/out/kernel"] = sd[hf + "attention.output.dense.weight"].T.reshape(HEADS, head_dim, HIDDEN)
        g[f"{t}{attn}/out/bias"] = sd[hf + "attention.output.dense.bias"]
        for src, dst in (("intermediate.dense", "Dense_0"), ("output.dense", "Dense_1")):
            g[f"{t}{mlp}/{dst}/kernel"] = sd[hf + src + ".weight"].T
            g[f"{t}{mlp}/{dst}/bias"] = sd[hf + src + ".bias"]
    return g


def timm_from_hf(sd):
    t = {"patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
         "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
         "cls_token": sd["vit.embeddings.cls_token"], "pos_embed": sd["vit.embeddings.position_embeddings"],
         "norm.weight": sd["vit.layernorm.weight"], "norm.bias": sd["vit.layernorm.bias"],
         "head.weight": sd["classifier.weight"], "head.bias": sd["classifier.bias"]}
    for i in range(DEPTH):
        hf, b = f"vit.encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            t[f"{b}attn.qkv.{kind}"] = np.concatenate(
                [sd[f"{hf}attention.attention.{n}.{kind}"] for n in ("query", "key", "value")])
            for src, dst in (("layernorm_before", "norm1"), ("layernorm_after", "norm2"),
                             ("attention.output.dense", "attn.proj"), ("intermediate.dense", "mlp.fc1"),
                             ("output.dense", "mlp.fc2")):
                t[f"{b}{dst}.{kind}"] = sd[f"{hf}{src}.{kind}"]
    return t


def write_timm(folder, tensors, config=None):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.safetensors")
    safetensors_numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)
    if config is not None:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(config, f)
    return path


def posemb(model):
    return keras.ops.convert_to_numpy(model.get_layer("position_embedding").embedding)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """The shared random HF model (LayerNorm eps 1e-6, as Google and timm), saved as HF, npz, timm."""
    folder = tmp_path_factory.mktemp("checkpoints")
    model = make_hf_model()
    model.save_pretrained(folder / "hf")
    sd = hf_state(folder / "hf")
    np.savez(folder / "google.npz", **google_from_hf(sd))
    write_timm(folder / "timm", timm_from_hf(sd))
    images = random_images(2, 32, seed=1)
    return dict(model=model, sd=sd, folder=folder, images=images, logits=hf_logits(model, images))


# ------------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("source", ["hf_folder", "hf_file", "google_npz", "timm"])
def test_logits_match_huggingface(hf, source):
    path = {"hf_folder": hf["folder"] / "hf", "hf_file": hf["folder"] / "hf" / "model.safetensors",
            "google_npz": hf["folder"] / "google.npz", "timm": hf["folder"] / "timm" / "model.safetensors"}[source]
    model = keras_vit.load_pretrained(path, num_heads=HEADS)  # width 64 is no standard width
    assert isinstance(model, keras_vit.VisionTransformer)
    assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim) == (64, 2, 4, 128)
    np.testing.assert_array_equal(np.broadcast_to(model.normalization_mean, 3), 0.5)  # [-1, 1]
    np.testing.assert_array_equal(np.broadcast_to(model.normalization_std, 3), 0.5)
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


def test_huggingface_layer_norm_epsilon_is_honoured(tmp_path):
    # Tiny embeddings make LayerNorm's inputs tiny, so eps 1e-12 vs 1e-6 changes the output a lot.
    model = make_hf_model(layer_norm_eps=1e-12, embedding_scale=1e-4, seed=3)
    model.save_pretrained(tmp_path)
    images = random_images(2, 32, seed=2)
    expected = hf_logits(model, images)
    loaded = keras_vit.load_pretrained(tmp_path)
    assert loaded.layer_norm_epsilon == 1e-12
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=TOLERANCE)
    wrong = keras_vit.load_pretrained(tmp_path, layer_norm_epsilon=1e-6)
    assert np.abs(wrong.predict(images, verbose=0) - expected).max() > 1e-2


def test_preprocessor_config_and_labels(tmp_path):
    model = make_hf_model()
    model.config.id2label = {i: f"class {i}" for i in range(10)}
    model.save_pretrained(tmp_path)
    with open(tmp_path / "preprocessor_config.json", "w") as f:
        json.dump({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, f)
    loaded = keras_vit.load_pretrained(tmp_path)
    assert loaded.class_names == [f"class {i}" for i in range(10)]
    np.testing.assert_allclose(loaded.normalization_mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(loaded.normalization_std, [0.229, 0.224, 0.225])


def test_preprocessor_without_normalisation_and_beside_timm_files(hf, tmp_path):
    """do_normalize false: the model saw pixels / 255 as they are (transformers' processor is the
    reference); a timm file whose config.json has no mean/std takes preprocessor_config.json's."""
    hf["model"].save_pretrained(tmp_path / "hf")
    with open(tmp_path / "hf" / "preprocessor_config.json", "w") as f:
        json.dump({"do_normalize": False, "image_mean": [0.485, 0.456, 0.406],
                   "image_std": [0.229, 0.224, 0.225]}, f)
    processor = transformers.ViTImageProcessor.from_pretrained(tmp_path / "hf", do_resize=False)
    pixels = processor(list(hf["images"]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = hf["model"](pixel_values=pixels).logits.numpy()
    loaded = keras_vit.load_pretrained(tmp_path / "hf", num_heads=HEADS)
    np.testing.assert_allclose(loaded.predict(hf["images"], verbose=0), expected, atol=TOLERANCE)

    write_timm(tmp_path / "timm", timm_from_hf(hf["sd"]))
    with open(tmp_path / "timm" / "preprocessor_config.json", "w") as f:
        json.dump({"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}, f)
    loaded = keras_vit.load_pretrained(tmp_path / "timm", num_heads=HEADS)
    np.testing.assert_allclose(loaded.normalization_mean, [0.485, 0.456, 0.406])
    np.testing.assert_allclose(loaded.normalization_std, [0.229, 0.224, 0.225])


def test_big_vision_layout_folds_class_token_position(hf, tmp_path):
    """big_vision: params/ prefix, LayerNorm_0/1 names, posemb without a class entry (the class
    token gets none: its old entry is folded into the token), blocks stacked by scan=True."""
    g = google_from_hf(hf["sd"], ("LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1",
                                  "MlpBlock_0"))
    pos = g.pop("Transformer/posembed_input/pos_embedding")
    g["cls"] = g["cls"] + pos[:, :1]
    g["pos_embedding"] = pos[:, 1:]
    blocks = [k for k in g if k.startswith("Transformer/encoderblock_0/")]
    for key in blocks:  # scan=True layout: one `encoderblock` with a leading depth axis
        rest = key[len("Transformer/encoderblock_0/"):]
        g["Transformer/encoderblock/" + rest] = np.stack(
            [g.pop(f"Transformer/encoderblock_{i}/{rest}") for i in range(DEPTH)])
    np.savez(tmp_path / "bv.npz", **{"params/" + k: v for k, v in g.items()})
    checkpoint = W.read_checkpoint(tmp_path / "bv.npz")
    assert checkpoint.source_format == "big_vision"
    np.testing.assert_array_equal(checkpoint.state["position_embedding/embedding"][0, 0], 0.0)
    model = keras_vit.load_pretrained(tmp_path / "bv.npz")
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


def _layer_norm(x, gamma, beta, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x):
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def random_map_head(seed=5):
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    p = {"probe": rng.normal(0, 0.5, (1, 1, HIDDEN)),
         "ln_scale": 1 + rng.normal(0, 0.1, HIDDEN), "ln_bias": rng.normal(0, 0.1, HIDDEN),
         "fc1": rng.normal(0, 0.1, (HIDDEN, 128)), "fc1_b": rng.normal(0, 0.1, 128),
         "fc2": rng.normal(0, 0.1, (128, HIDDEN)), "fc2_b": rng.normal(0, 0.1, HIDDEN),
         "out": rng.normal(0, 0.2, (HEADS, head_dim, HIDDEN)), "out_b": rng.normal(0, 0.1, HIDDEN)}
    for name in ("query", "key", "value"):
        p[name] = rng.normal(0, 0.2, (HIDDEN, HEADS, head_dim))
        p[name + "_b"] = rng.normal(0, 0.1, (HEADS, head_dim))
    return {k: v.astype("float32") for k, v in p.items()}


def numpy_map_head(tokens, p):
    """The probe attends to the tokens (big_vision's MAPHead), then a pre-LN MLP with a residual."""
    q = np.einsum("d,dhk->hk", p["probe"][0, 0], p["query"]) + p["query_b"]
    k = np.einsum("btd,dhk->bthk", tokens, p["key"]) + p["key_b"]
    v = np.einsum("btd,dhk->bthk", tokens, p["value"]) + p["value_b"]
    logits = np.einsum("hk,bthk->bht", q, k) / np.sqrt(HIDDEN // HEADS)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("bhk,hkd->bd", np.einsum("bht,bthk->bhk", weights, v), p["out"]) + p["out_b"]
    return y + _gelu(_layer_norm(y, p["ln_scale"], p["ln_bias"]) @ p["fc1"] + p["fc1_b"]) @ p["fc2"] + p["fc2_b"]


def check_map_model(model, images, p, head_kernel, head_bias):
    assert model.pooling == "map" and not model.class_token
    tokens = keras.Model(model.input, model.get_layer("encoder_norm").output).predict(
        images, verbose=0).astype("float64")
    expected = numpy_map_head(tokens, p) @ head_kernel + head_bias
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=TOLERANCE)


def test_big_vision_map_head(hf, tmp_path):
    """A gap-style big_vision model (no class token) with a MAPHead_0, against NumPy."""
    g = google_from_hf(hf["sd"])
    del g["cls"]
    g["pos_embedding"] = g.pop("Transformer/posembed_input/pos_embedding")[:, 1:]
    p = random_map_head()
    m = "MAPHead_0/"
    g.update({m + "probe": p["probe"], m + "LayerNorm_0/scale": p["ln_scale"],
              m + "LayerNorm_0/bias": p["ln_bias"], m + "MlpBlock_0/Dense_0/kernel": p["fc1"],
              m + "MlpBlock_0/Dense_0/bias": p["fc1_b"], m + "MlpBlock_0/Dense_1/kernel": p["fc2"],
              m + "MlpBlock_0/Dense_1/bias": p["fc2_b"]})
    for name in ("query", "key", "value", "out"):
        g[f"{m}MultiHeadDotProductAttention_0/{name}/kernel"] = p[name]
        g[f"{m}MultiHeadDotProductAttention_0/{name}/bias"] = p[name + "_b"]
    np.savez(tmp_path / "map.npz", **{"params/" + k: v for k, v in g.items()})
    model = keras_vit.load_pretrained(tmp_path / "map.npz")
    np.testing.assert_array_equal(posemb(model), g["pos_embedding"])
    check_map_model(model, hf["images"], p, g["head/kernel"], g["head/bias"])


def test_timm_map_head(hf, tmp_path):
    """timm's AttentionPoolLatent (q, fused kv, proj Linears) on a model without class token."""
    t = timm_from_hf(hf["sd"])
    del t["cls_token"]
    t["pos_embed"] = t["pos_embed"][:, 1:]
    p = random_map_head(seed=6)
    flat = {name: p[name].reshape(HIDDEN, HIDDEN) for name in ("query", "key", "value")}
    t.update({"attn_pool.latent": p["probe"], "attn_pool.q.weight": flat["query"].T,
              "attn_pool.q.bias": p["query_b"].ravel(),
              "attn_pool.kv.weight": np.concatenate([flat["key"].T, flat["value"].T]),
              "attn_pool.kv.bias": np.concatenate([p["key_b"].ravel(), p["value_b"].ravel()]),
              "attn_pool.proj.weight": p["out"].reshape(HIDDEN, HIDDEN).T, "attn_pool.proj.bias": p["out_b"],
              "attn_pool.norm.weight": p["ln_scale"], "attn_pool.norm.bias": p["ln_bias"],
              "attn_pool.mlp.fc1.weight": p["fc1"].T, "attn_pool.mlp.fc1.bias": p["fc1_b"],
              "attn_pool.mlp.fc2.weight": p["fc2"].T, "attn_pool.mlp.fc2.bias": p["fc2_b"]})
    path = write_timm(tmp_path, t, {"global_pool": "map", "model_args": {"num_heads": HEADS}})
    model = keras_vit.load_pretrained(path)
    check_map_model(model, hf["images"], p, t["head.weight"].T, t["head.bias"])


def test_timm_layer_scale_and_position_without_class_entry(hf, tmp_path):
    """ls1/ls2 gammas that the test compensates in proj/fc2 (same function as HF's model), and
    timm's no_embed_class position embedding (class entry folded into the class token)."""
    rng = np.random.default_rng(7)
    t = timm_from_hf(hf["sd"])
    t["cls_token"] = t["cls_token"] + t["pos_embed"][:, :1]
    t["pos_embed"] = t["pos_embed"][:, 1:]
    for i in range(DEPTH):
        for j, layer in ((1, "attn.proj"), (2, "mlp.fc2")):
            gamma = rng.uniform(0.5, 2.0, HIDDEN).astype("float32")
            t[f"blocks.{i}.ls{j}.gamma"] = gamma
            t[f"blocks.{i}.{layer}.weight"] = t[f"blocks.{i}.{layer}.weight"] / gamma[:, None]
            t[f"blocks.{i}.{layer}.bias"] = t[f"blocks.{i}.{layer}.bias"] / gamma
    config = {"global_pool": "token", "model_args": {"num_heads": HEADS},
              "pretrained_cfg": {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.5] * 3}}
    model = keras_vit.load_pretrained(write_timm(tmp_path, t, config))
    assert model.layer_scale_init_value is not None
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


def test_timm_register_tokens_take_their_position_entries(hf, tmp_path):
    t = timm_from_hf(hf["sd"])
    registers = np.random.default_rng(8).normal(0, 0.1, (1, 2, HIDDEN)).astype("float32")
    pos = np.random.default_rng(9).normal(0, 0.1, (1, 1 + 2 + 64, HIDDEN)).astype("float32")
    t["reg_token"], t["pos_embed"] = registers, pos
    config = {"global_pool": "avg", "model_args": {"num_heads": HEADS}}
    checkpoint = W.read_checkpoint(write_timm(tmp_path, t, config))
    assert checkpoint.architecture["num_registers"] == 2 and checkpoint.architecture["pooling"] == "gap"
    np.testing.assert_array_equal(checkpoint.state["register_tokens/tokens"], registers + pos[:, 1:3])
    np.testing.assert_array_equal(checkpoint.state["position_embedding/embedding"],
                                  np.concatenate([pos[:, :1], pos[:, 3:]], axis=1))
    model = keras_vit.load_pretrained(tmp_path / "model.safetensors")
    assert model.num_registers == 2 and model.predict(hf["images"], verbose=0).shape == (2, 10)


# ------------------------------------------------------------------------------------------------
# Resolution, head and pooling changes


def test_resolution_change_huggingface_matches_interpolate_pos_encoding(hf):
    images = random_images(2, (48, 32), seed=4)
    model = keras_vit.load_pretrained(hf["folder"] / "hf", image_size=(48, 32))
    assert model.grid_size == (12, 8)
    expected = hf_logits(hf["model"], images, interpolate=True)  # HF's own bicubic resampling
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=TOLERANCE)


def test_resolution_change_google_is_bilinear_zoom(hf):
    from scipy.ndimage import zoom

    model = keras_vit.load_pretrained(hf["folder"] / "google.npz", image_size=(48, 32))
    pos = hf["sd"]["vit.embeddings.position_embeddings"]
    grid = zoom(pos[0, 1:].reshape(8, 8, HIDDEN).astype("float64"), (12 / 8, 8 / 8, 1), order=1)
    expected = np.concatenate([pos[:, :1], grid.reshape(1, 96, HIDDEN)], axis=1)
    np.testing.assert_allclose(posemb(model), expected, atol=1e-6)


def test_resolution_change_timm_is_antialiased_bicubic_and_method_selectable(hf):
    import torch.nn.functional as F

    pos = hf["sd"]["vit.embeddings.position_embeddings"]
    grid = torch.from_numpy(pos[:, 1:].reshape(1, 8, 8, HIDDEN)).permute(0, 3, 1, 2)
    shrunk = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False, antialias=True)
    expected = np.concatenate([pos[:, :1], shrunk.permute(0, 2, 3, 1).reshape(1, 30, HIDDEN).numpy()], 1)
    path = hf["folder"] / "timm" / "model.safetensors"
    model = keras_vit.load_pretrained(path, image_size=(24, 20), num_heads=HEADS)
    np.testing.assert_allclose(posemb(model), expected, atol=1e-5)

    from scipy.ndimage import zoom

    bilinear = keras_vit.load_pretrained(path, image_size=(24, 20), num_heads=HEADS,
                                         resample_method="bilinear")
    grid = zoom(pos[0, 1:].reshape(8, 8, HIDDEN).astype("float64"), (6 / 8, 5 / 8, 1), order=1)
    np.testing.assert_allclose(posemb(bilinear)[0, 1:], grid.reshape(30, HIDDEN), atol=1e-6)


def test_same_size_is_an_exact_copy(hf):
    model = keras_vit.load_pretrained(hf["folder"] / "hf", image_size=32)
    np.testing.assert_array_equal(posemb(model), hf["sd"]["vit.embeddings.position_embeddings"])


def test_class_count_change_reinitialises_head(hf, caplog):
    with caplog.at_level(logging.INFO, logger="keras_vit"):
        model = keras_vit.load_pretrained(hf["folder"] / "hf", num_classes=5)
    head = model.get_layer("head")
    assert head.kernel.shape == (HIDDEN, 5)
    assert not np.any(keras.ops.convert_to_numpy(head.kernel))
    assert not np.any(keras.ops.convert_to_numpy(head.bias))
    assert "re-initialised" in caplog.text and "10 classes" in caplog.text
    np.testing.assert_array_equal(posemb(model), hf["sd"]["vit.embeddings.position_embeddings"])


def test_include_top_false_gives_huggingface_features(hf, caplog):
    with caplog.at_level(logging.INFO, logger="keras_vit"):
        model = keras_vit.load_pretrained(hf["folder"] / "google.npz", include_top=False)
    assert "include_top=False" in caplog.text
    x = torch.from_numpy((hf["images"].astype("float32") / 255.0 - 0.5) / 0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = hf["model"].vit(pixel_values=x).last_hidden_state[:, 0].numpy()
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), expected, atol=TOLERANCE)


def test_in21k_zero_head_warns_and_pre_logits_follow_the_head(hf, tmp_path, caplog):
    g = google_from_hf(hf["sd"])
    rng = np.random.default_rng(0)
    g["pre_logits/kernel"], g["pre_logits/bias"] = rng.normal(0, 0.1, (HIDDEN, 32)), np.zeros(32)
    g["head/kernel"], g["head/bias"] = np.zeros((32, 21843), "float32"), np.zeros(21843, "float32")
    np.savez(tmp_path / "in21k.npz", **g)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        kept = keras_vit.load_pretrained(tmp_path / "in21k.npz")
    assert "all zeros" in caplog.text
    assert kept.representation_size == 32 and kept.num_classes == 21843
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        tuned = keras_vit.load_pretrained(tmp_path / "in21k.npz", num_classes=10)
    assert tuned.representation_size is None  # the paper fine-tunes without pre_logits
    assert "all zeros" not in caplog.text and "pre_logits dropped" in caplog.text


def test_vit_weights_path_checks_architecture(hf):
    with pytest.raises(ValueError, match="num_heads 2 asked, 4 in the checkpoint"):
        keras_vit.ViT(**{**TINY, "num_heads": 2}, weights=str(hf["folder"] / "google.npz"))
    with pytest.raises(ValueError, match="num_heads"):
        keras_vit.load_pretrained(hf["folder"] / "google.npz", num_heads=2)  # tensors say 4
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        keras_vit.ViT(**TINY, weights="no_such_folder/")
    model = keras_vit.ViT(**TINY, weights=str(hf["folder"] / "google.npz"))
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


def test_load_model_or_checkpoint(hf, tmp_path):
    model = W.load_model_or_checkpoint(hf["folder"] / "google.npz")
    model.save(tmp_path / "m.keras")
    reloaded = W.load_model_or_checkpoint(str(tmp_path / "m.keras"))
    np.testing.assert_allclose(reloaded.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


# ------------------------------------------------------------------------------------------------
# Registry: names, downloads, hashes (never the network)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    """Every test's downloads land in its own cache folder, never in ~/.keras."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    return tmp_path / "keras_home" / "keras_vit"


@pytest.fixture
def tiny_registered(hf, monkeypatch, cache_in_tmp):
    """A pretend TINY variant "T/4" with a registered checkpoint: the test's own .npz, fetched
    from a file:// URL (the download code runs in full, without network)."""
    monkeypatch.setitem(keras_vit.models.VARIANTS, "T/4", (PATCH, HIDDEN, DEPTH, HEADS, 128))
    path = str(hf["folder"] / "google.npz")
    entry = W.WeightsEntry("file://" + path, 32, 10, "test checkpoint")
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), entry)
    with open(path, "rb") as f:
        data = f.read()
    return dict(path=path, entry=entry, data=data, digest=hashlib.sha256(data).hexdigest(),
                cached=cache_in_tmp / entry.fname, pin=cache_in_tmp / (entry.fname + ".sha256"))


def test_registered_name_downloads_pins_and_caches(hf, tiny_registered, monkeypatch, caplog):
    reg = tiny_registered
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.ViT(**TINY, weights="imagenet21k")
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)
    assert reg["cached"].read_bytes() == reg["data"]
    assert reg["pin"].read_text().strip() == reg["digest"]
    assert "pinned the downloaded file's SHA-256" in caplog.text and reg["digest"] in caplog.text
    assert os.stat(reg["cached"]).st_mode & 0o044  # readable like any file the user writes

    def no_network(url, destination):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(downloads, "_fetch", no_network)
    keras_vit.load_pretrained("T/4:imagenet21k")  # cached and verified against the pin
    with pytest.raises(ValueError, match=r"'imagenet21k'\]"):
        keras_vit.ViT(**TINY, weights="imagenet42k")


def test_published_hash_is_verified(hf, tiny_registered, monkeypatch):
    reg = tiny_registered
    entry = W.WeightsEntry(reg["entry"].url, 32, 10, "", reg["digest"])
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), entry)
    model = keras_vit.load_pretrained("T/4:imagenet21k")
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)
    assert reg["cached"].read_bytes() == reg["data"] and not reg["pin"].exists()
    reg["cached"].write_bytes(reg["data"][:1000])  # corrupted in the cache
    with pytest.raises(ValueError, match=f"cached checkpoint {reg['cached']} has SHA-256 .*registry "
                                         f"publishes {reg['digest']}.*Delete {reg['cached']}"):
        keras_vit.load_pretrained("T/4:imagenet21k")
    reg["cached"].unlink()
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), W.WeightsEntry(entry.url, 32, 10, "", "0" * 64))
    with pytest.raises(ValueError, match="downloaded from file://.* has SHA-256 .*publishes 0000"):
        keras_vit.load_pretrained("T/4:imagenet21k")
    assert os.listdir(reg["cached"].parent) == []  # nothing cached, no partial left


def test_changed_cached_file_names_the_file_and_its_pin(tiny_registered):
    reg = tiny_registered
    keras_vit.load_pretrained("T/4:imagenet21k")
    reg["cached"].write_bytes(reg["data"][:-10])  # truncated in the cache
    with pytest.raises(ValueError) as error:
        keras_vit.load_pretrained("T/4:imagenet21k")
    message = str(error.value)
    assert f"cached checkpoint {reg['cached']} has SHA-256" in message
    assert f"{reg['digest']} was pinned in {reg['pin']}" in message
    assert f"Delete {reg['cached']}" in message


def test_killed_download_is_never_pinned(hf, tiny_registered, monkeypatch):
    """Each kill window: mid-transfer (the exception path, and a real SIGKILL that runs no
    clean-up), between the pin and the move into place, and a partial file that an older version
    (keras.utils.get_file downloads in place) left at the final path without a pin."""
    reg, real_fetch = tiny_registered, downloads._fetch

    def dies_mid_transfer(url, destination):
        with open(destination, "wb") as f:
            f.write(reg["data"][:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(downloads, "_fetch", dies_mid_transfer)
    with pytest.raises(KeyboardInterrupt):
        keras_vit.load_pretrained("T/4:imagenet21k")
    assert os.listdir(reg["cached"].parent) == []

    # A real SIGKILL mid-transfer: no clean-up runs; the partial file keeps its temporary name.
    started = reg["cached"].parent / "started"
    script = (f"from keras_vit.weights import downloads, registry\n"
              f"def slow(url, destination):\n"
              f"    open(destination, 'wb').write(b'x' * 1000)\n"
              f"    open({str(started)!r}, 'w').close()\n"
              f"    import time; time.sleep(60)\n"
              f"downloads._fetch = slow\n"
              f"downloads.download(registry.WeightsEntry({reg['entry'].url!r}, 32, 10, ''))\n")
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=REPO)
    process = subprocess.Popen([sys.executable, "-c", script], env=env)
    for _ in range(600):
        if started.exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    started.unlink()
    left = os.listdir(reg["cached"].parent)
    assert len(left) == 1 and left[0].startswith(reg["entry"].fname + ".") and left[0].endswith(".part")

    # Killed after the pin was written, before the file moved into place.
    real_replace = os.replace

    def dies_before_move(source, destination):
        if os.fspath(destination) == str(reg["cached"]):
            raise KeyboardInterrupt
        real_replace(source, destination)

    monkeypatch.setattr(downloads, "_fetch", real_fetch)
    monkeypatch.setattr(os, "replace", dies_before_move)
    with pytest.raises(KeyboardInterrupt):
        keras_vit.load_pretrained("T/4:imagenet21k")
    monkeypatch.setattr(os, "replace", real_replace)
    assert reg["pin"].read_text().strip() == reg["digest"] and not reg["cached"].exists()
    keras_vit.load_pretrained("T/4:imagenet21k")  # downloads again, verified against that pin
    assert reg["cached"].read_bytes() == reg["data"]

    # A partial file at the final path without its pin: downloaded again, not pinned as it is.
    reg["cached"].write_bytes(reg["data"][:1000])
    reg["pin"].unlink()
    model = keras_vit.load_pretrained("T/4:imagenet21k")
    assert reg["cached"].read_bytes() == reg["data"]
    assert reg["pin"].read_text().strip() == reg["digest"]
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)


def test_upstream_change_after_pinning_names_the_pin(tiny_registered, monkeypatch):
    reg = tiny_registered
    keras_vit.load_pretrained("T/4:imagenet21k")
    reg["cached"].unlink()
    monkeypatch.setattr(downloads, "_fetch", lambda url, destination: open(destination, "wb").write(b"new"))
    with pytest.raises(ValueError, match=f"changed upstream.*Delete {reg['pin']} to trust"):
        keras_vit.load_pretrained("T/4:imagenet21k")
    assert not reg["cached"].exists()


def test_short_transfer_is_an_error(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        headers = {"Content-Length": "10"}

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response(b"12345"))
    with pytest.raises(ConnectionError, match="after 5 of 10 bytes"):
        downloads._fetch("https://example/x.npz", str(tmp_path / "x.part"))


def test_offline_error_names_url_and_local_alternative(monkeypatch):
    def offline(url, destination):
        raise OSError("[Errno -3] no network")

    monkeypatch.setattr(downloads, "_fetch", offline)
    with pytest.raises(ConnectionError) as error:
        keras_vit.ViTB16(weights="imagenet21k")  # B/16 found from the architecture, no model built
    assert "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz" in str(error.value)
    assert "local path" in str(error.value)
    with pytest.raises(ConnectionError, match="imagenet21k%2Bimagenet2012/ViT-L_16.npz"):
        keras_vit.ViTL16(weights="imagenet21k+imagenet2012")
    augreg = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224.npz"
    with pytest.raises(ConnectionError, match="augreg/" + augreg.replace(".", r"\.")):
        keras_vit.load_pretrained(augreg)
    with pytest.raises(ValueError, match="augreg_in21k"):
        keras_vit.ViTTi16(weights="nonexistent")


def test_registry_is_consistent():
    """Every entry's file is its variant's: the names of vit_jax's bucket (ViT-B_16, R50+ViT-B_16,
    AugReg's R_Ti_16-..., S_16-...) and timm's DeiT repositories (deit_tiny_..._patch16_224)."""
    lines = W.describe_registry()
    assert any("B/16" in line and "imagenet21k" in line for line in lines)
    assert any("R50+B/16" in line and "R50%2BViT-B_16.npz" in line for line in lines)
    deit_sizes = {"Ti/16": "tiny", "S/16": "small", "B/16": "base"}
    fnames = {}
    for (variant, name), entry in W.REGISTRY.items():
        hybrid = variant in keras_vit.models.HYBRID_VARIANTS
        assert hybrid or variant in keras_vit.models.VARIANTS
        assert entry.sha256 is None or len(entry.sha256) == 64
        tag = os.path.basename(entry.url).replace("%2B", "+")
        if entry.on_hub:  # DeiT: safetensors on the Hub, never the .pth pickles
            distilled = "_distilled" if name.endswith("_distilled") else ""
            assert entry.url == (f"hf://timm/deit_{deit_sizes[variant]}{distilled}_patch16_"
                                 f"{entry.resolution}.fb_in1k")
            assert name.startswith("imagenet1k") and entry.num_classes == 1000
            continue
        assert entry.url.startswith("https://storage.googleapis.com/vit_models/")
        assert fnames.setdefault(entry.fname, entry.url) == entry.url  # one cache file per URL
        resnet, _, vit = variant.rpartition("+")
        paper = f"{resnet}+ViT-{vit.replace('/', '_')}" if hybrid else f"ViT-{vit.replace('/', '_')}"
        augreg = variant.replace("+", "_").replace("/", "_") + "-"
        assert tag.startswith(augreg if "/augreg/" in entry.url else paper), (variant, tag)
        if "res_" in tag:
            assert f"res_{entry.resolution}" in tag
    assert W.REGISTRY["R50+B/16", "imagenet21k+imagenet2012"].fname == \
        "imagenet21k+imagenet2012_R50+ViT-B_16.npz"


# ------------------------------------------------------------------------------------------------
# Bad input


def test_missing_unexpected_and_misshaped_tensors(hf, tmp_path):
    tensors = timm_from_hf(hf["sd"])
    missing = dict(tensors)
    del missing["blocks.1.mlp.fc2.bias"]
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc2\.bias.*encoderblock_1/mlp/fc2/bias"):
        keras_vit.load_pretrained(write_timm(tmp_path / "a", missing), num_heads=HEADS)
    extra = dict(tensors, **{"blocks.0.attn.q_norm.weight": np.ones(16, "float32")})
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q_norm\.weight"):
        keras_vit.load_pretrained(write_timm(tmp_path / "b", extra), num_heads=HEADS)
    g = google_from_hf(hf["sd"])
    g["head/bias"] = np.zeros(11, "float32")
    np.savez(tmp_path / "bad.npz", **g)
    with pytest.raises(ValueError, match=r"'head/bias', \(10,\), \(11,\)"):
        keras_vit.load_pretrained(tmp_path / "bad.npz")


def test_heads_needed_for_nonstandard_width_without_config(hf):
    with pytest.raises(ValueError, match="num_heads"):
        keras_vit.load_pretrained(hf["folder"] / "timm" / "model.safetensors")


def test_truncated_text_and_pickle_files_are_refused(hf, tmp_path, monkeypatch):
    for name in ("google.npz", "timm/model.safetensors"):
        data = (hf["folder"] / name).read_bytes()
        for size in (len(data) // 2, 50):
            cut = tmp_path / f"cut{size}_{os.path.basename(name)}"
            cut.write_bytes(data[:size])
            with pytest.raises(ValueError, match="truncated") as error:
                W.read_checkpoint(cut)
            assert str(cut) in str(error.value)
    text = tmp_path / "notes.txt"
    text.write_text("not weights\n")
    with pytest.raises(ValueError, match="not a checkpoint"):
        W.read_checkpoint(text)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("a checkpoint was unpickled")

    torch.save(hf["model"].state_dict(), tmp_path / "model.pth")
    (tmp_path / "hf_bin").mkdir()
    (tmp_path / "hf_bin" / "pytorch_model.bin").write_bytes(pickle.dumps({"a": 1}))
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    monkeypatch.setattr(torch, "load", no_unpickling)
    for path in (tmp_path / "model.pth", tmp_path / "hf_bin"):
        with pytest.raises(ValueError, match="never unpickles.*safetensors"):
            keras_vit.load_pretrained(path)
    with pytest.raises(FileNotFoundError, match="B/16:imagenet21k"):
        keras_vit.load_pretrained(tmp_path / "absent.npz")


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    # The first byte of a safetensors file is the low byte of its header length; 0x80 is also a
    # pickle's first opcode. Pad the header (safetensors pads to 8 bytes with spaces) to 128 bytes.
    path = tmp_path / "model.safetensors"
    for pad in range(300):
        safetensors_numpy.save_file({"w" * (pad + 1): np.ones((1,), "float32")}, path)
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[:1] == b"\x80" and path.read_bytes()[8:9] == b"{"
    with pytest.raises(ValueError, match="none of the formats tried"):
        W.read_checkpoint(path)  # read as safetensors: only its tensor names are wrong


def test_formats_are_tried_in_order_and_a_new_one_is_one_entry(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    safetensors_numpy.save_file({"stem.w": np.ones((2, 3), "float32")}, folder / "model.safetensors")
    (folder / "config.json").write_text('{"width": 3}')
    with pytest.raises(ValueError, match=r"mine/model\.safetensors'.*none of the formats tried "
                                         r"\(google, huggingface, timm\).*\['stem\.w'\]"):
        W.read_checkpoint(folder)
    calls = []

    def convert(raw, config, processor, path, num_heads=None, image_size=None):
        calls.append((sorted(raw), config, processor, path, num_heads, image_size))
        return W.Checkpoint(dict(raw), {}, (0.0, 1.0), 1e-6, None, "mine", "bicubic")

    mine = types.ModuleType("mine")
    mine.matches, mine.convert = (lambda keys, config=None: "stem.w" in keys), convert
    mine.EXPECTED = "'stem.w'"
    monkeypatch.setattr(formats, "FORMATS", [*formats.FORMATS, mine])
    checkpoint = W.read_checkpoint(folder, num_heads=3, image_size=8)
    assert calls == [(["stem.w"], {"width": 3}, None, str(folder / "model.safetensors"), 3, 8)]
    assert checkpoint.source_format == "mine" and checkpoint.path == str(folder)
    np.testing.assert_array_equal(checkpoint.state["stem.w"], np.ones((2, 3)))
    timm_file = write_timm(tmp_path / "timm", random_timm(16, 1, 4, 2), {"model_args": {"num_heads": 2}})
    mine.matches = lambda keys, config=None: True  # matches every file: the order decides
    assert W.read_checkpoint(timm_file).source_format == "timm"
    monkeypatch.setattr(formats, "FORMATS", [mine, *formats.FORMATS[:-1]])
    assert W.read_checkpoint(timm_file).source_format == "mine"


# ------------------------------------------------------------------------------------------------
# Checkpoint gaps, broken configs and indexes, non-finite weights


def test_block_gap_is_named(hf, tmp_path):
    tensors = {k: v for k, v in timm_from_hf(hf["sd"]).items() if not k.startswith("blocks.0.")}
    with pytest.raises(ValueError, match=r"lacks encoder block\(s\) \[0\]: no \['blocks\.0\.\*'\]"):
        keras_vit.load_pretrained(write_timm(tmp_path / "timm", tensors), num_heads=HEADS)
    g = {k: v for k, v in google_from_hf(hf["sd"]).items()
         if not k.startswith("Transformer/encoderblock_0/")}
    np.savez(tmp_path / "gap.npz", **g)
    with pytest.raises(ValueError, match=r"lacks encoder block\(s\) \[0\].*encoderblock_0/"):
        keras_vit.load_pretrained(tmp_path / "gap.npz")


def test_missing_last_block_is_caught_where_the_depth_is_known(hf, tiny_registered, monkeypatch,
                                                                tmp_path, caplog):
    tensors = {k: v for k, v in timm_from_hf(hf["sd"]).items() if not k.startswith("blocks.1.")}
    path = write_timm(tmp_path / "plain", tensors)
    with caplog.at_level(logging.INFO, logger="keras_vit"):  # no config: what the file holds
        assert keras_vit.load_pretrained(path, num_heads=HEADS).num_layers == 1
    assert "inferred 1 encoder blocks" in caplog.text
    with pytest.raises(ValueError, match="It has 1 encoder blocks where the model has 2"):
        keras_vit.ViT(**TINY, weights=path)  # the architecture asked for says 2
    declared = write_timm(tmp_path / "declared", tensors, {"model_args": {"depth": 2, "num_heads": HEADS}})
    with pytest.raises(ValueError, match="encoder blocks: 2 declared, 1 in the tensors"):
        keras_vit.load_pretrained(declared)
    hf_folder = tmp_path / "hf"
    hf["model"].save_pretrained(hf_folder)
    state = {k: v for k, v in hf_state(hf_folder).items() if ".layer.1." not in k}
    safetensors_numpy.save_file(state, hf_folder / "model.safetensors")
    with pytest.raises(ValueError, match="encoder blocks: 2 declared, 1 in the tensors"):
        keras_vit.load_pretrained(hf_folder)  # HF config.json: num_hidden_layers 2
    g = {k: v for k, v in google_from_hf(hf["sd"]).items()
         if not k.startswith("Transformer/encoderblock_1/")}
    np.savez(tmp_path / "short.npz", **g)
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"),
                        W.WeightsEntry(f"file://{tmp_path / 'short.npz'}", 32, 10, ""))
    with pytest.raises(ValueError, match="has 1 encoder blocks where ViT-T/4 has 2"):
        keras_vit.load_pretrained("T/4:imagenet21k")  # registered: the variant says 2


def random_timm(width, depth, patch, grid, mlp=32, seed=0):
    rng = np.random.default_rng(seed)
    t = {"patch_embed.proj.weight": rng.normal(0, 0.1, (width, 3, patch, patch)),
         "patch_embed.proj.bias": np.zeros(width), "cls_token": rng.normal(0, 0.1, (1, 1, width)),
         "pos_embed": rng.normal(0, 0.1, (1, 1 + grid * grid, width)), "norm.weight": np.ones(width),
         "norm.bias": np.zeros(width), "head.weight": rng.normal(0, 0.1, (10, width)),
         "head.bias": np.zeros(10)}
    for i in range(depth):
        for name, shape in (("norm1", (width,)), ("norm2", (width,)), ("attn.qkv", (3 * width, width)),
                            ("attn.proj", (width, width)), ("mlp.fc1", (mlp, width)),
                            ("mlp.fc2", (width, mlp))):
            t[f"blocks.{i}.{name}.weight"] = rng.normal(0, 0.1, shape)
            t[f"blocks.{i}.{name}.bias"] = np.zeros(shape[0])
    return {k: v.astype("float32") for k, v in t.items()}


def test_standard_width_with_missing_blocks(tmp_path, caplog):
    """A DeiT-Tiny-wide file (width 192) holding 1 block: named by its config, else warned."""
    tensors = random_timm(192, 1, 16, 2)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.load_pretrained(write_timm(tmp_path / "bare", tensors))
    assert model.num_layers == 1
    assert "holds 1 encoder blocks of width 192, where the standard ViT of that width has 12" in caplog.text
    named = write_timm(tmp_path / "named", tensors, {"architecture": "deit_tiny_patch16_224",
                                                     "num_classes": 10, "num_features": 192})
    with pytest.raises(ValueError, match="encoder blocks: 12 declared, 1 in the tensors"):
        keras_vit.load_pretrained(named)
    wrong_head = write_timm(tmp_path / "head", tensors, {"num_classes": 1000})
    with pytest.raises(ValueError, match="classes in the head: 1000 declared, 10 in the tensors"):
        keras_vit.load_pretrained(wrong_head)


@pytest.mark.parametrize("content", ["[1, 2]", "{not json", '"a string"', '{"pretrained_cfg": [3]}',
                                     '{"model_args": {"depth": "twelve"}}',
                                     '{"pretrained_cfg": {"input_size": 224}}',
                                     '{"pretrained_cfg": {"mean": "imagenet", "std": [1, 1, 1]}}',
                                     '{"global_pool": ["token"]}'])
def test_broken_timm_config_is_a_clear_error(hf, tmp_path, content):
    path = write_timm(tmp_path, timm_from_hf(hf["sd"]))
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(ValueError, match="config.json|global_pool") as error:
        keras_vit.load_pretrained(path, num_heads=HEADS)
    assert str(tmp_path) in str(error.value)


def test_broken_huggingface_config_is_a_clear_error(hf, tmp_path):
    hf["model"].save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for broken in ([config], dict(config, id2label=["cat"]), dict(config, image_size="big"),
                   dict(config, layer_norm_eps="tiny"), dict(config, num_attention_heads=-4)):
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match="config.json"):
            keras_vit.load_pretrained(tmp_path)


def write_shards(folder, state, weight_map):
    """Splits `state` into the shard files `weight_map` names, and writes the index."""
    os.makedirs(folder, exist_ok=True)
    for shard in sorted(set(weight_map.values())):
        safetensors_numpy.save_file({k: state[k] for k, s in weight_map.items() if s == shard and k in state},
                                    os.path.join(folder, shard))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


def test_sharded_checkpoint_and_bad_indexes(hf, tmp_path):
    hf["model"].save_pretrained(tmp_path / "src")
    state = hf_state(tmp_path / "src")
    config = (tmp_path / "src" / "config.json").read_text()
    names = sorted(state)
    good = {k: "model-0000{}-of-00002.safetensors".format(1 + (i % 2)) for i, k in enumerate(names)}

    def folder(name, weight_map, index=None, shards_from=None):
        path = tmp_path / name
        write_shards(path, state, shards_from or weight_map)
        (path / "config.json").write_text(config)
        if index is not None:
            (path / "model.safetensors.index.json").write_text(index)
        elif shards_from:
            (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        return path

    model = keras_vit.load_pretrained(folder("good", good))
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)
    for index, message in (('{"weight_map": {}}', "non-empty object"), ("{}", "non-empty object"),
                           ('{"weight_map": [1]}', "non-empty object"), ("[]", "JSON object")):
        with pytest.raises(ValueError, match=message) as error:
            keras_vit.load_pretrained(folder("empty", good, index=index))
        assert "model.safetensors.index.json" in str(error.value)
    outside = tmp_path / "outside.safetensors"
    safetensors_numpy.save_file({"x": np.zeros(1, "float32")}, outside)
    for shard in ("../outside.safetensors", str(outside), "sub/../../outside.safetensors"):
        with pytest.raises(ValueError, match="outside the folder") as error:
            keras_vit.load_pretrained(folder("escape", dict(good, **{names[0]: shard}), shards_from=good))
        assert repr(shard) in str(error.value)
    with pytest.raises(FileNotFoundError, match="model-00003-of-00002.safetensors"):
        keras_vit.load_pretrained(folder("absent", dict(good, **{names[0]: "model-00003-of-00002.safetensors"}),
                                         shards_from=good))
    moved = {k: "model-00001-of-00002.safetensors" for k in names}  # index says one shard holds all
    with pytest.raises(ValueError, match="do not match their index.*not in the shard the index names"):
        keras_vit.load_pretrained(folder("moved", moved, shards_from=good))
    with pytest.raises(ValueError, match="do not match their index.*the index does not list"):
        keras_vit.load_pretrained(folder("unlisted", {k: good[k] for k in names[1:]}, shards_from=good))


def test_non_finite_weights_are_refused(hf, tmp_path):
    tensors = timm_from_hf(hf["sd"])
    tensors["blocks.0.mlp.fc1.weight"] = tensors["blocks.0.mlp.fc1.weight"].copy()
    tensors["blocks.0.mlp.fc1.weight"][0, :3] = np.nan
    tensors["norm.bias"] = tensors["norm.bias"].copy()
    tensors["norm.bias"][5] = np.inf
    with pytest.raises(ValueError, match=r"non-finite .* 2 tensor\(s\).*blocks\.0\.mlp\.fc1\.weight "
                                         r"\(3 of 8192\), norm\.bias \(1 of 64\)"):
        keras_vit.load_pretrained(write_timm(tmp_path, tensors), num_heads=HEADS)
    g = google_from_hf(hf["sd"])
    g["head/bias"] = np.full(10, np.nan, "float32")
    np.savez(tmp_path / "nan.npz", **g)
    with pytest.raises(ValueError, match=r"head/bias \(10 of 10\)"):
        keras_vit.load_pretrained(tmp_path / "nan.npz")


def test_rectangular_checkpoint_loads_at_the_grid_asked_for(tmp_path, caplog):
    """97 position entries: class token + an 8x12 grid (32x48 images, patch 4), no config. HF's
    own rectangular model is the reference."""
    reference = make_hf_model(seed=11, image_size=(32, 48))
    reference.save_pretrained(tmp_path / "hf")
    images = random_images(2, (32, 48), seed=5)
    expected = hf_logits(reference, images)
    path = write_timm(tmp_path / "timm", timm_from_hf(hf_state(tmp_path / "hf")))
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.load_pretrained(path, image_size=(32, 48), num_heads=HEADS)
    assert model.grid_size == (8, 12) and "resampled" not in caplog.text
    np.testing.assert_allclose(model.predict(images, verbose=0), expected, atol=TOLERANCE)
    same = keras_vit.ViT(**dict(TINY, image_size=(32, 48)), weights=path)
    np.testing.assert_allclose(same.predict(images, verbose=0), expected, atol=TOLERANCE)
    with pytest.raises(ValueError, match=r"97 entries \(96 after 1 class/register entries\), not a "
                                         r"square grid\. Pass image_size"):
        keras_vit.load_pretrained(path, num_heads=HEADS)
    with pytest.raises(ValueError, match=r"requested image_size \(32, 32\) gives a 8x8 grid \(64 "):
        keras_vit.load_pretrained(path, image_size=(32, 32), num_heads=HEADS)
    g = google_from_hf(hf_state(tmp_path / "hf"))  # Google's layout too
    np.savez(tmp_path / "rect.npz", **g)
    google = keras_vit.load_pretrained(tmp_path / "rect.npz", image_size=(32, 48))
    np.testing.assert_allclose(google.predict(images, verbose=0), expected, atol=TOLERANCE)


# ------------------------------------------------------------------------------------------------
# Arguments, pooling, .keras models


def test_unknown_keywords_and_bad_values(hf, tmp_path):
    path = hf["folder"] / "google.npz"
    with pytest.raises(TypeError, match=r"load_pretrained\(\) got an unexpected keyword argument "
                                        r"'imagesize'; did you mean 'image_size'\?"):
        keras_vit.load_pretrained(path, imagesize=48)
    with pytest.raises(TypeError, match=r"'resample'; did you mean 'resample_method'\?"):
        keras_vit.load_pretrained(path, resample="bilinear")
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['dropout', 'imagesize', "
                                        r"'xyzzy'\]; did you mean 'dropout_rate' for 'dropout'\? did "
                                        r"you mean 'image_size' for 'imagesize'\? valid: \[.*"
                                        r"'resample_method'"):
        keras_vit.load_pretrained(path, imagesize=48, xyzzy=1, dropout=0.1)  # all named at once
    with pytest.raises(TypeError, match=r"build_with_weights\(\).*'dropuot_rate'.*'dropout_rate'"):
        W.build_with_weights(dict(TINY, dropuot_rate=0.1), str(path))
    absent = tmp_path / "absent.npz"  # the values are checked before the file is looked for
    for bad, message in ((dict(image_size=0), "image_size must be positive"),
                         (dict(image_size=(32, -4)), "image_size must be positive"),
                         (dict(image_size="big"), "image_size"),
                         (dict(num_classes=-1), "num_classes must be a positive int"),
                         (dict(num_classes=0), "num_classes must be a positive int"),
                         (dict(num_classes=2.5), "num_classes must be a positive int"),
                         (dict(include_top="no"), "include_top must be True or False"),
                         (dict(resample_method="nearest"), "resample_method")):
        with pytest.raises(ValueError, match=message):
            keras_vit.load_pretrained(absent, **bad)


@pytest.fixture(scope="module")
def gap_npz(hf):
    """A Google GAP checkpoint: no class token, position embedding for the patches only."""
    g = google_from_hf(hf["sd"])
    del g["cls"]
    g["Transformer/posembed_input/pos_embedding"] = g["Transformer/posembed_input/pos_embedding"][:, 1:]
    path = hf["folder"] / "gap.npz"
    np.savez(path, **g)
    return str(path)


def test_pooling_the_checkpoint_cannot_give_is_an_error(hf, gap_npz, caplog):
    with pytest.raises(ValueError, match=r"pooling='token' pools the class token, and .*gap\.npz' has "
                                         r"none \(its pooling is 'gap'\)"):
        keras_vit.load_pretrained(gap_npz, pooling="token")
    with pytest.raises(ValueError, match="pooling='token' pools the class token"):
        W.build_with_weights(dict(TINY, pooling="token"), gap_npz)  # a plain dict: all chosen
    model = W.build_with_weights(dict(TINY, pooling="token"), gap_npz, given=set(TINY))
    assert model.pooling == "gap" and not model.class_token
    assert keras_vit.load_pretrained(gap_npz).pooling == "gap"
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        other = keras_vit.load_pretrained(hf["folder"] / "google.npz", pooling="gap")
    assert other.pooling == "gap" and "head was trained on 'token' pooling" in caplog.text


def test_vit_pooling_default_follows_the_checkpoint_and_explicit_token_contradicts(gap_npz):
    """Needs models.ViT to tell build_with_weights which arguments the caller gave (`given`)."""
    assert keras_vit.ViT(**TINY, weights=gap_npz).pooling == "gap"
    with pytest.raises(ValueError, match="pooling='token' pools the class token"):
        keras_vit.ViT(**TINY, pooling="token", weights=gap_npz)


class UnregisteredSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A user's own schedule, not registered: only the training state refers to it."""

    def __call__(self, step):
        return 1e-3

    def get_config(self):
        return {}


@pytest.fixture(scope="module")
def trained_keras(hf, tmp_path_factory):
    """A model compiled with an unregistered schedule, trained one step and saved as .keras."""
    model = keras_vit.load_pretrained(hf["folder"] / "google.npz")
    model.compile(optimizer=keras.optimizers.AdamW(UnregisteredSchedule()),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(hf["images"], np.array([1, 2]), epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("trained") / "model.keras"
    model.save(path)
    return dict(path=str(path), logits=model.predict(hf["images"], verbose=0),
                weights={v.path: keras.ops.convert_to_numpy(v) for v in model.weights})


def test_keras_file_loads_safely_as_saved(hf, trained_keras):
    for loader in (keras_vit.load_pretrained, W.load_model_or_checkpoint):
        model = loader(trained_keras["path"])
        assert isinstance(model, keras_vit.VisionTransformer)
        np.testing.assert_allclose(model.predict(hf["images"], verbose=0), trained_keras["logits"], atol=1e-5)
    with pytest.raises(Exception):  # Keras' own way compiles, and needs the unregistered schedule
        keras.models.load_model(trained_keras["path"])


def test_keras_file_rebuilt_at_another_size_and_head(hf, trained_keras, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.load_pretrained(trained_keras["path"], image_size=48, num_classes=3)
    assert model.grid_size == (12, 12) and model.num_classes == 3 and "resampled" in caplog.text
    for variable in model.weights:
        if variable.path.startswith("encoderblock_"):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable),
                                          trained_keras["weights"][variable.path])
    same = keras_vit.ViT(**TINY, weights=trained_keras["path"])
    np.testing.assert_allclose(same.predict(hf["images"], verbose=0), trained_keras["logits"], atol=1e-5)


def test_broken_keras_files_are_named(trained_keras, tmp_path):
    data = open(trained_keras["path"], "rb").read()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    for loader in (keras_vit.load_pretrained, W.load_model_or_checkpoint):
        with pytest.raises(ValueError, match=f"{cut}.*not a complete .keras file"):
            loader(cut)
    corrupt = tmp_path / "corrupt.keras"  # a valid zip whose weights file is garbage
    with zipfile.ZipFile(trained_keras["path"]) as source, zipfile.ZipFile(corrupt, "w") as target:
        for name in source.namelist():
            target.writestr(name, b"garbage" if name.endswith(".h5") else source.read(name))
    with pytest.raises(ValueError, match=f"Could not load the Keras model '{corrupt}'"):
        keras_vit.load_pretrained(corrupt)
    renamed = tmp_path / "model.zip"
    renamed.write_bytes(data)
    with pytest.raises(ValueError, match="Keras model archive.*ending in .keras"):
        keras_vit.load_pretrained(renamed)


def test_keras_file_with_nan_weights_is_refused(hf, tmp_path):
    model = keras_vit.load_pretrained(hf["folder"] / "google.npz")
    kernel = model.get_layer("head").kernel
    kernel.assign(np.where(np.arange(kernel.shape[1]) < 2, np.nan, keras.ops.convert_to_numpy(kernel)))
    model.save(tmp_path / "diverged.keras")
    with pytest.raises(ValueError, match=rf"non-finite.*head/kernel \({2 * HIDDEN} of {10 * HIDDEN}\)"):
        keras_vit.load_pretrained(tmp_path / "diverged.keras")


# ------------------------------------------------------------------------------------------------
# Preprocessing config (crop_pct, interpolation) from the checkpoint

IMAGENET_STATS = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
# preprocessor_config.json in the Hub's legacy (feature-extractor) form: google/vit-base-patch16-224's
# as published; DeiT's with DeiTImageProcessor's values (resize 256, crop 224, bicubic).
VIT_BASE_PROCESSOR = {"do_normalize": True, "do_resize": True, "feature_extractor_type":
                      "ViTFeatureExtractor", "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                      "resample": 2, "size": 224}
DEIT_PROCESSOR = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                  "feature_extractor_type": "DeiTFeatureExtractor", **IMAGENET_STATS,
                  "resample": 3, "size": 256}
TIMM_CONFIG = {"architecture": "vit_test", "num_classes": 10,
               "model_args": {"embed_dim": HIDDEN, "depth": DEPTH, "num_heads": HEADS}}


def hf_with_processor(hf, folder, processor):
    """The shared HF model's folder with `processor` as its preprocessor_config.json (a dict, or
    an image processor whose save_pretrained writes it)."""
    shutil.copytree(hf["folder"] / "hf", folder)
    if isinstance(processor, dict):
        (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    else:
        processor.save_pretrained(folder)
    return folder


def timm_with_pretrained_cfg(hf, folder, pretrained_cfg):
    pretrained_cfg = {"input_size": [3, 32, 32], **pretrained_cfg}
    return write_timm(folder, timm_from_hf(hf["sd"]), {**TIMM_CONFIG, "pretrained_cfg": pretrained_cfg})


# layout: (how to write it, (crop_pct, interpolation) its source evaluates with)
PREPROCESSING_LAYOUTS = {
    # vit_jax's input pipeline: tf.image.resize of the whole image (bilinear), no crop.
    "google_npz": (lambda hf, tmp: hf["folder"] / "google.npz", (1.0, "bilinear")),
    # No preprocessor_config.json: ViTImageProcessor's defaults (224x224 bilinear, no crop).
    "hf_without_processor": (lambda hf, tmp: hf["folder"] / "hf", (1.0, "bilinear")),
    "hf_vit_base_processor": (lambda hf, tmp: hf_with_processor(hf, tmp / "m", VIT_BASE_PROCESSOR),
                              (1.0, "bilinear")),
    "hf_deit_processor": (lambda hf, tmp: hf_with_processor(hf, tmp / "m", DEIT_PROCESSOR),
                          (0.875, "bicubic")),
    "hf_shortest_edge_nearest": (lambda hf, tmp: hf_with_processor(hf, tmp / "m", {
        "size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32},
        "do_center_crop": True, "resample": 0}), (0.8, "nearest")),
    "hf_list_sizes": (lambda hf, tmp: hf_with_processor(hf, tmp / "m", {
        "size": [40, 40], "crop_size": [32, 32], "do_center_crop": True, "resample": 2}),
        (0.8, "bilinear")),
    "hf_crop_pct": (lambda hf, tmp: hf_with_processor(hf, tmp / "m", {
        "crop_pct": 0.95, "size": {"shortest_edge": 32}, "resample": 2}), (0.95, "bilinear")),
    # timm's pretrained_cfg: AugReg fine-tunes 0.9 bicubic; some 1.0.
    "timm_augreg": (lambda hf, tmp: timm_with_pretrained_cfg(
        hf, tmp, {"crop_pct": 0.9, "interpolation": "bicubic"}), (0.9, "bicubic")),
    "timm_full_image_bilinear": (lambda hf, tmp: timm_with_pretrained_cfg(
        hf, tmp, {"crop_pct": 1.0, "interpolation": "bilinear"}), (1.0, "bilinear")),
    # A timm file alone: timm's data-config defaults (crop_pct 0.875, bicubic).
    "timm_without_config": (lambda hf, tmp: hf["folder"] / "timm" / "model.safetensors",
                            (0.875, "bicubic")),
}


@pytest.mark.parametrize("layout", list(PREPROCESSING_LAYOUTS))
def test_preprocessing_follows_the_checkpoint(hf, tmp_path, layout):
    write, expected = PREPROCESSING_LAYOUTS[layout]
    model = keras_vit.load_pretrained(write(hf, tmp_path), num_heads=HEADS)
    assert (model.crop_pct, model.interpolation) == expected
    assert model.preprocessing_config["crop_pct"] == expected[0]
    assert model.preprocessing_config["interpolation"] == expected[1]
    same = keras_vit.ViT(**TINY, weights=write(hf, tmp_path / "again"))  # not passed: follows
    assert (same.crop_pct, same.interpolation) == expected


def image_processor(name, **kwargs):
    """transformers' PIL-based processor (transformers 5 names it ...Pil; 4 has only that one)."""
    return (getattr(transformers, name + "Pil", None) or getattr(transformers, name))(**kwargs)


@pytest.mark.parametrize("processor", ["vit", "deit", "clip"])
def test_processor_pixels_are_what_the_model_config_reproduces(hf, tmp_path, processor):
    """The crop and filter read from a processor's file, given to keras_vit.images.load_image,
    give the pixels transformers' processor gives (a square image: HF's DeiT resize squashes)."""
    processor = {
        "vit": lambda: image_processor("ViTImageProcessor", size={"height": 32, "width": 32}),
        "deit": lambda: image_processor("DeiTImageProcessor", size={"height": 40, "width": 40},
                                        crop_size={"height": 32, "width": 32}),
        "clip": lambda: image_processor("CLIPImageProcessor", size={"shortest_edge": 36},
                                        crop_size={"height": 32, "width": 32}, resample=0),
    }[processor]()
    model = keras_vit.load_pretrained(hf_with_processor(hf, tmp_path / "m", processor))
    file = tmp_path / "image.png"
    PIL.Image.fromarray(random_images(1, 61, seed=4)[0]).save(file)
    expected = processor(PIL.Image.open(file), do_rescale=False, do_normalize=False,
                         return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = load_image(file, model.image_size, model.crop_pct, model.interpolation)
    np.testing.assert_array_equal(ours, expected)


def test_explicit_preprocessing_wins(hf, tmp_path):
    path = timm_with_pretrained_cfg(hf, tmp_path, {"crop_pct": 0.9, "interpolation": "bilinear"})
    model = keras_vit.load_pretrained(path, crop_pct=0.75, interpolation="nearest")
    assert (model.crop_pct, model.interpolation) == (0.75, "nearest")
    model = keras_vit.ViT(**TINY, weights=path, crop_pct=1.0)  # the other follows the file
    assert (model.crop_pct, model.interpolation) == (1.0, "bilinear")
    model = keras_vit.ViT(**TINY, weights=hf["folder"] / "google.npz", interpolation="bicubic")
    assert (model.crop_pct, model.interpolation) == (1.0, "bicubic")


def test_preprocessing_survives_keras_files(hf, tmp_path):
    path = timm_with_pretrained_cfg(hf, tmp_path, {"crop_pct": 0.9, "interpolation": "bilinear"})
    keras_vit.load_pretrained(path).save(tmp_path / "model.keras")
    for model in (keras_vit.load_pretrained(tmp_path / "model.keras"),  # as saved
                  keras_vit.load_pretrained(tmp_path / "model.keras", num_classes=3),  # rebuilt
                  keras_vit.ViT(**TINY, weights=tmp_path / "model.keras")):
        assert (model.crop_pct, model.interpolation) == (0.9, "bilinear")
    model = keras_vit.load_pretrained(tmp_path / "model.keras", crop_pct=0.8)
    assert (model.crop_pct, model.interpolation) == (0.8, "bilinear")
    model.save(tmp_path / "chosen.keras")
    loaded = keras_vit.load_pretrained(tmp_path / "chosen.keras")
    assert (loaded.crop_pct, loaded.interpolation) == (0.8, "bilinear")


@pytest.mark.parametrize("pretrained_cfg, match", [
    ({"crop_pct": 1.5},
     r"'pretrained_cfg.crop_pct' in its config.json must be a number in \(0, 1\], got 1.5"),
    ({"crop_pct": "0.9"}, r"'pretrained_cfg.crop_pct'.*got '0.9'"),
    ({"crop_pct": True}, r"'pretrained_cfg.crop_pct'.*got True"),
    ({"crop_pct": 0}, r"'pretrained_cfg.crop_pct'.*got 0"),
    ({"interpolation": "cubic"},
     r"'pretrained_cfg.interpolation' in its config.json must be one of \['bicubic', 'bilinear', "
     r"'nearest', 'lanczos', 'box', 'hamming'\], got 'cubic'"),
    ({"interpolation": 3}, r"'pretrained_cfg.interpolation'.*got 3"),  # timm writes names
])
def test_bad_timm_preprocessing_is_a_clear_error(hf, tmp_path, pretrained_cfg, match):
    with pytest.raises(ValueError, match=match):
        keras_vit.load_pretrained(timm_with_pretrained_cfg(hf, tmp_path, pretrained_cfg))


@pytest.mark.parametrize("processor, match", [
    ({"resample": 9}, r"'resample' in its preprocessor_config.json must be a PIL resampling code "
                      r"0-5, got 9"),
    ({"resample": True}, r"'resample'.*got True"),
    ({"resample": "bicubic"}, r"'resample'.*got 'bicubic'"),
    ({"crop_pct": -1}, r"'crop_pct' in its preprocessor_config.json must be a number in \(0, 1\]"),
    ({"do_center_crop": True, "size": {"longest": 40}, "crop_size": 32},
     r"'size' in its preprocessor_config.json must be a positive int.*got \{'longest': 40\}"),
    ({"do_center_crop": True, "size": 40, "crop_size": {"height": 32, "width": -1}},
     r"'crop_size'.*got \{'height': 32, 'width': -1\}"),
])
def test_bad_processor_preprocessing_is_a_clear_error(hf, tmp_path, processor, match):
    with pytest.raises(ValueError, match=match):
        keras_vit.load_pretrained(hf_with_processor(hf, tmp_path / "m", processor))


def test_filters_keras_vit_lacks_and_odd_crops_are_warned_about(hf, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.load_pretrained(hf_with_processor(hf, tmp_path / "a", {"resample": 1}))
    assert model.interpolation == "bicubic"
    assert "lanczos filter (resample 1)" in caplog.text and "using bicubic" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.load_pretrained(timm_with_pretrained_cfg(hf, tmp_path / "b", {
            "interpolation": "box"}))
    assert model.interpolation == "bilinear" and "box filter" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keras_vit"):  # crop larger than the resize
        model = keras_vit.load_pretrained(hf_with_processor(hf, tmp_path / "c", {
            "do_center_crop": True, "size": 32, "crop_size": 40}))
    assert model.crop_pct == 1.0 and "crops 40 pixels from images resized to 32" in caplog.text


def test_bad_preprocessing_arguments_fail_before_the_file_is_read(tmp_path):
    missing = tmp_path / "absent.safetensors"  # never read: the values are refused first
    with pytest.raises(ValueError, match=r"crop_pct must be a number in \(0, 1\], got 1.2"):
        keras_vit.load_pretrained(missing, crop_pct=1.2)
    with pytest.raises(ValueError, match="Unknown interpolation 'area'"):
        keras_vit.ViT(**TINY, weights=missing, interpolation="area")
    with pytest.raises(ValueError, match=r"crop_pct must be a number in \(0, 1\], got '0.9'"):
        keras_vit.ViT(**TINY, weights=missing, crop_pct="0.9")


# ------------------------------------------------------------------------------------------------
# Real weights


@pytest.mark.real_data
def test_real_deit_tiny(shared_data):
    model = keras_vit.load_pretrained(os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors"))
    assert model.count_params() == 5_717_416
    np.testing.assert_allclose(model.normalization_mean, [0.485, 0.456, 0.406])
    # DeiT's evaluation (its config.json's pretrained_cfg): short side to 256, centre 224, bicubic.
    assert (model.crop_pct, model.interpolation) == (0.875, "bicubic")
    files = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "imagenet_*.jpg")))
    files += [os.path.join(shared_data, "images", n) for n in ("chelsea.png", "coffee.png")]
    images = np.stack([load_image(f, 224, model.crop_pct, model.interpolation) for f in files])
    predicted = model.predict(images, verbose=0).argmax(-1)
    truth = [int(os.path.basename(f).split("_")[2].split(".")[0]) for f in files[:-2]]
    assert len(truth) == 20
    assert sum(int(p == t) for p, t in zip(predicted, truth)) >= 17  # measured: 18 of 20
    assert list(predicted[-2:]) == [285, 967]  # Egyptian cat, espresso
    assert model.class_names[285] == "Egyptian_cat"  # 1000 classes: ImageNet's names
