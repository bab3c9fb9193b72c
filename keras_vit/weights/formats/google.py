"""Google `.npz`: the ViT paper's and AugReg's (google-research/vision_transformer), big_vision's
(`params/` prefix, optionally `scan`ned blocks, GAP or MAP heads, a two-tower model's `img/`
tower), and their hybrids (a ResNet before the patch embedding). Flax names: kernels are already
(in, out), q/k/v kernels (hidden, heads, head_dim). The files come without a config."""

import numpy as np

from keras_vit import layers as L
from keras_vit import models as M
from keras_vit import resnet
from keras_vit.weights.checkpoint import (
    Checkpoint,
    Tensors,
    add_backbone,
    block_count,
    canonical_position_embedding,
    check_declared,
    default_class_names,
    infer_grid,
    position_embedding,
)

EXPECTED = ("Flax parameter paths ('embedding/kernel', 'Transformer/encoderblock_0/...', "
            "big_vision's 'params/...')")


def matches(keys, config=None):
    """Flax names its parameters by '/'-separated paths; PyTorch state dicts use '.'."""
    return any("/" in key for key in keys)


def convert(raw, config, processor, path, num_heads=None, image_size=None):
    """The tensors of a Google `.npz` as a `Checkpoint`; `config`, `processor` and `num_heads` are
    unused (the files have no config, and their q/k/v kernels tell the heads)."""
    big_vision = any(k.startswith("params/") for k in raw) or "pos_embedding" in raw
    prefix = "params/" if any(k.startswith("params/") for k in raw) else ""
    if any(k.startswith(prefix + "img/") for k in raw):  # two-tower (LiT / SigLIP): image tower
        prefix += "img/"
    tensors = Tensors({k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}, path)
    _unstack_scanned_blocks(tensors)
    state = {}
    # A hybrid (vit_jax's R50+ViT-B_16, AugReg's R_Ti_16 ...): the ResNet comes first, and
    # `embedding` cuts patches from its feature map.
    backbone, stride = add_backbone(state, resnet.from_npz(tensors.tensors, path))
    kernel = tensors.take("embedding/kernel", "patch_embedding/projection/kernel")
    patch, hidden = (int(kernel.shape[0]), int(kernel.shape[1])), int(kernel.shape[-1])
    state["patch_embedding/projection/kernel"] = kernel
    state["patch_embedding/projection/bias"] = tensors.take("embedding/bias", "patch_embedding")
    has_class = "cls" in tensors
    if has_class:
        state["class_token/token"] = tensors.take("cls", "class_token/token")
    pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding",
                                "Transformer/pos_embedding") if k in tensors), "pos_embedding")
    pos = position_embedding(tensors, pos_key, path)
    grid = infer_grid(pos.shape[-2], int(has_class), (patch[0] * stride, patch[1] * stride),
                      image_size, path)
    class_pos, grid_pos = canonical_position_embedding(pos, grid, int(has_class), path)
    state["position_embedding/embedding"] = np.concatenate([class_pos, grid_pos], axis=1)

    depth = block_count(tensors.tensors, r"Transformer/encoderblock_(\d+)/",
                        "Transformer/encoderblock_{}/", path)
    heads = mlp_dim = None
    for i in range(depth):
        heads, mlp_dim = _block(tensors, f"Transformer/encoderblock_{i}/",
                                f"encoderblock_{i}/", state)
    state["encoder_norm/gamma"] = tensors.take("Transformer/encoder_norm/scale", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("Transformer/encoder_norm/bias", "encoder_norm")
    pooling = "token" if has_class else "gap"
    if "MAPHead_0/probe" in tensors:
        pooling = "map"
        _map_head(tensors, state)
    representation_size = _dense(tensors, "pre_logits", "pre_logits", state)
    num_classes = _dense(tensors, "head", "head", state)
    tensors.check_consumed("Google .npz")
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads, mlp_dim=mlp_dim,
        image_size=(grid[0] * patch[0] * stride, grid[1] * patch[1] * stride),
        num_classes=num_classes, representation_size=representation_size, pooling=pooling,
        class_token=has_class, num_registers=0, layer_scale_init_value=None, backbone=backbone,
        distilled=False, distillation_head=True)
    check_declared(path, {}, architecture)  # Google files come without a config
    # The original evaluation resizes the whole image to the model's size without a crop, bilinear
    # (tf.image.resize's default): google-research/vision_transformer vit_jax/input_pipeline.py,
    # `im = tf.image.resize(im, [crop_size, crop_size])` in test mode; AugReg's fine-tunes were
    # made with it. (big_vision's from-scratch ImageNet configs crop 224 of 256 instead: the file
    # cannot tell, so pass crop_pct=0.875 for those.)
    return Checkpoint(state, architecture, M.GOOGLE_NORMALIZATION, L.LAYER_NORM_EPSILON,
                      default_class_names(num_classes),
                      "big_vision" if big_vision else "google_npz", "bilinear", crop_pct=1.0,
                      interpolation="bilinear")


def _unstack_scanned_blocks(tensors):
    """big_vision's `scan=True` stores all blocks as one `encoderblock` with a leading depth axis."""
    scanned = [k for k in tensors.tensors if k.startswith("Transformer/encoderblock/")]
    for key in scanned:
        stacked = tensors.tensors.pop(key)
        rest = key[len("Transformer/encoderblock/"):]
        for i, value in enumerate(stacked):
            tensors.tensors[f"Transformer/encoderblock_{i}/{rest}"] = value


def _block(tensors, src, dst, state):
    """One encoder block. The vision_transformer code names its modules LayerNorm_0,
    MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3; big_vision LayerNorm_0/1,
    MultiHeadDotProductAttention_0, MlpBlock_0: the order of the indices is what counts."""
    names = {k[len(src):].split("/")[0] for k in tensors.tensors if k.startswith(src)}

    def modules(kind):
        return sorted((n for n in names if n.startswith(kind + "_")), key=lambda n: int(n.split("_")[-1]))

    norms, attention, mlp = (modules("LayerNorm"), modules("MultiHeadDotProductAttention"),
                             modules("MlpBlock"))
    if len(norms) != 2 or len(attention) != 1 or len(mlp) != 1:
        raise ValueError(f"Checkpoint {tensors.path!r}: block {src!r} should hold 2 LayerNorm, 1 "
                         f"MultiHeadDotProductAttention and 1 MlpBlock modules, found {sorted(names)}.")
    for norm, name in zip(norms, ("norm1", "norm2")):
        state[dst + name + "/gamma"] = tensors.take(f"{src}{norm}/scale", dst + name)
        state[dst + name + "/beta"] = tensors.take(f"{src}{norm}/bias", dst + name)
    attn = f"{src}{attention[0]}/"
    # q/k/v kernels are (hidden, heads, head_dim): flattening the last two axes is head-major.
    kernels, biases = [], []
    for part in ("query", "key", "value"):
        kernel = tensors.take(attn + part + "/kernel", dst + "attention/qkv/kernel")
        kernels.append(kernel.reshape(kernel.shape[0], -1))
        biases.append(tensors.take(attn + part + "/bias", dst + "attention/qkv/bias").reshape(-1))
    heads = int(kernel.shape[1])
    state[dst + "attention/qkv/kernel"] = np.concatenate(kernels, axis=1)
    state[dst + "attention/qkv/bias"] = np.concatenate(biases)
    out = tensors.take(attn + "out/kernel", dst + "attention/proj/kernel")  # (heads, head_dim, D)
    state[dst + "attention/proj/kernel"] = out.reshape(-1, out.shape[-1])
    state[dst + "attention/proj/bias"] = tensors.take(attn + "out/bias", dst + "attention/proj")
    _dense(tensors, f"{src}{mlp[0]}/Dense_0", dst + "mlp/fc1", state)
    _dense(tensors, f"{src}{mlp[0]}/Dense_1", dst + "mlp/fc2", state)
    return heads, int(state[dst + "mlp/fc1/kernel"].shape[1])


def _map_head(tensors, state):
    """big_vision's MAPHead_0 maps one-to-one onto keras' MultiHeadAttention layout."""
    src = "MAPHead_0/"
    state["map_head/probe"] = tensors.take(src + "probe", "map_head/probe")
    attn = src + "MultiHeadDotProductAttention_0/"
    for part, name in (("query", "query"), ("key", "key"), ("value", "value"),
                       ("out", "attention_output")):
        for kind in ("kernel", "bias"):
            state[f"map_head/attention/{name}/{kind}"] = tensors.take(
                f"{attn}{part}/{kind}", f"map_head/attention/{name}/{kind}")
    state["map_head/norm/gamma"] = tensors.take(src + "LayerNorm_0/scale", "map_head/norm")
    state["map_head/norm/beta"] = tensors.take(src + "LayerNorm_0/bias", "map_head/norm")
    _dense(tensors, src + "MlpBlock_0/Dense_0", "map_head/mlp/fc1", state)
    _dense(tensors, src + "MlpBlock_0/Dense_1", "map_head/mlp/fc2", state)


def _dense(tensors, src, dst, state):
    """Flax Dense (kernel is already (in, out)); returns its width, or None when absent."""
    if src + "/kernel" not in tensors:
        return None
    state[dst + "/kernel"] = tensors.take(src + "/kernel", dst + "/kernel")
    state[dst + "/bias"] = tensors.take(src + "/bias", dst + "/bias")
    return int(state[dst + "/kernel"].shape[1])
