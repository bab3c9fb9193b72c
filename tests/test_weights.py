"""Checkpoint loading: parity with Hugging Face transformers (PyTorch) for every format, resolution
and head changes, the registry (download, cache, hashes; never the network), bad files, real DeiT.

The Google .npz, big_vision and timm files are written here from the HF state dict by conversion
code of the test's own, so every loader is compared against the same independent PyTorch model.
"""

import glob
import hashlib
import json
import logging
import os
import pickle

import keras
import numpy as np
import pytest
from conftest import TINY, random_images

import keras_vit
from keras_vit import weights as W

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

HEADS, HIDDEN, DEPTH, PATCH = TINY["num_heads"], TINY["hidden_size"], TINY["num_layers"], TINY["patch_size"]
TOLERANCE = 1e-4


def make_hf_model(layer_norm_eps=1e-6, embedding_scale=1.0, seed=0):
    """A random HF ViTForImageClassification of the TINY size; every parameter random."""
    config = transformers.ViTConfig(
        image_size=32, patch_size=PATCH, hidden_size=HIDDEN, num_hidden_layers=DEPTH,
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
    with pytest.raises(ValueError, match="'num_heads': 2.*'num_heads': 4|'num_heads': 4.*'num_heads': 2"):
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


@pytest.fixture
def tiny_registered(hf, monkeypatch):
    """A pretend TINY variant "T/4" with a registered checkpoint: the test's own .npz."""
    monkeypatch.setitem(keras_vit.models.VARIANTS, "T/4", (PATCH, HIDDEN, DEPTH, HEADS, 128))
    path = str(hf["folder"] / "google.npz")
    entry = W.WeightsEntry("file://" + path, 32, 10, "test checkpoint")
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), entry)
    return path, entry


def test_registered_name_routes_through_get_file(hf, tiny_registered, monkeypatch, caplog):
    path, entry = tiny_registered
    calls = []

    def fake_get_file(fname, origin, **kwargs):
        calls.append(dict(fname=fname, origin=origin, **kwargs))
        return path

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.ViT(**TINY, weights="imagenet21k")
    assert calls == [dict(fname=entry.fname, origin=entry.url, file_hash=None, cache_subdir="keras_vit")]
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() in caplog.text  # unpinned: hash logged
    assert "pinned the downloaded file's SHA-256" in caplog.text
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)
    with pytest.raises(ValueError, match=r"'imagenet21k'\]"):
        keras_vit.ViT(**TINY, weights="imagenet42k")


def test_hash_is_verified(hf, tiny_registered, monkeypatch, tmp_path):
    path, entry = tiny_registered
    real_get_file = keras.utils.get_file
    monkeypatch.setattr(keras.utils, "get_file",
                        lambda *a, **k: real_get_file(*a, cache_dir=str(tmp_path), **k))
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), W.WeightsEntry(entry.url, 32, 10, "", digest))
    model = keras_vit.load_pretrained("T/4:imagenet21k")
    np.testing.assert_allclose(model.predict(hf["images"], verbose=0), hf["logits"], atol=TOLERANCE)
    assert os.path.isfile(tmp_path / "keras_vit" / entry.fname)  # cached
    wrong = "0" * 64
    monkeypatch.setitem(W.REGISTRY, ("T/4", "imagenet21k"), W.WeightsEntry(entry.url, 32, 10, "", wrong))
    with pytest.raises(ValueError, match="SHA-256"):
        keras_vit.load_pretrained("T/4:imagenet21k")


def test_unpublished_hash_is_pinned_on_first_download(tmp_path, caplog):
    cached = tmp_path / "ViT-T_4.npz"
    cached.write_bytes(b"the first download")
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        digest = W.verify_local_pin(str(cached), "https://example/ViT-T_4.npz")
    assert digest == hashlib.sha256(b"the first download").hexdigest()
    assert (tmp_path / "ViT-T_4.npz.sha256").read_text().strip() == digest
    assert digest in caplog.text
    assert W.verify_local_pin(str(cached), "https://example/ViT-T_4.npz") == digest  # unchanged: fine
    cached.write_bytes(b"the first downl")  # truncated in the cache
    with pytest.raises(ValueError, match=r"ViT-T_4\.npz has SHA-256 .* was pinned .*Delete both files"):
        W.verify_local_pin(str(cached), "https://example/ViT-T_4.npz")


def test_offline_error_names_url_and_local_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://...: None -- [Errno -3] no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
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
    lines = W.describe_registry()
    assert any("B/16" in line and "imagenet21k" in line for line in lines)
    fnames = {}
    for (variant, name), entry in W.REGISTRY.items():
        assert variant in keras_vit.models.VARIANTS
        assert entry.url.startswith("https://storage.googleapis.com/vit_models/")
        assert entry.sha256 is None or len(entry.sha256) == 64
        assert fnames.setdefault(entry.fname, entry.url) == entry.url  # one cache file per URL
        tag = os.path.basename(entry.url)
        if "res_" in tag:
            assert f"res_{entry.resolution}" in tag


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


# ------------------------------------------------------------------------------------------------
# Real weights


@pytest.mark.real_data
def test_real_deit_tiny(shared_data):
    from keras_vit.images import load_image

    model = keras_vit.load_pretrained(os.path.join(shared_data, "deit_tiny_patch16_224", "model.safetensors"))
    assert model.count_params() == 5_717_416
    np.testing.assert_allclose(model.normalization_mean, [0.485, 0.456, 0.406])
    files = sorted(glob.glob(os.path.join(shared_data, "imagenet20", "imagenet_*.jpg")))
    files += [os.path.join(shared_data, "images", n) for n in ("chelsea.png", "coffee.png")]
    images = np.stack([load_image(f, 224, crop_pct=0.875, interpolation="bicubic") for f in files])
    predicted = model.predict(images, verbose=0).argmax(-1)
    truth = [int(os.path.basename(f).split("_")[2].split(".")[0]) for f in files[:-2]]
    assert len(truth) == 20
    assert sum(int(p == t) for p, t in zip(predicted, truth)) >= 17  # measured: 18 of 20
    assert list(predicted[-2:]) == [285, 967]  # Egyptian cat, espresso
    assert model.class_names[285] == "Egyptian_cat"  # 1000 classes: ImageNet's names
