"""timm: `vision_transformer.py`'s ViT and DeiT (fused qkv; class, distillation and register
tokens; layer scale; token, average or attention-pool heads) and its hybrids (`patch_embed.backbone`,
a ResNet). PyTorch Linear weights are (out, in); config.json's `model_args` and `pretrained_cfg`
give the heads, depth, normalisation, crop and resampling filter, and a standard model name
(`deit_tiny_patch16_224`) the architecture it must hold."""

import logging
import re

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
    config_floats,
    config_int,
    config_section,
    crop_fraction,
    default_class_names,
    fold_prefix,
    grid_from_config,
    infer_grid,
    infer_heads,
    interpolation_name,
    position_embedding,
    processor_normalization,
    processor_preprocessing,
    torch_linear,
)

logger = logging.getLogger("keras_vit")

EXPECTED = "timm keys ('patch_embed.proj.weight', ...)"


def matches(keys, config=None):
    """timm's patch embedding (a hybrid's too: its ResNet sits under `patch_embed.backbone`)."""
    return "patch_embed.proj.weight" in keys


# timm model names that fix an architecture: family_size_patchN_resolution.
_NAME = re.compile(r"(?:vit|deit|deit3)_(tiny|small|base|large|huge)(_distilled)?_patch(\d+)_\d+")
_SIZES = {"tiny": (192, 12), "small": (384, 12), "base": (768, 12), "large": (1024, 24),
          "huge": (1280, 32)}
# timm's hybrids: vit_{size}_r{resnet}_s{nominal stride}[_p{patch}]_{resolution}, their ResNet
# units per stage (timm's vision_transformer_hybrid.py); the patch is 1 unless `_p` says.
_HYBRID_NAME = re.compile(r"vit_(tiny|small|base|large)_r(\d*)_s(\d+)(?:_p(\d+))?_\d+")
_HYBRID_UNITS = {("", "16"): [], ("26", "32"): [2, 2, 2, 2], ("50", "16"): [3, 4, 9],
                 ("50", "32"): [3, 4, 6, 3]}


def _name_implies(name):
    """The architecture a standard timm model name fixes: `deit_tiny_distilled_patch16_224` ->
    width 192, 12 blocks, patch 16, distilled; `vit_base_r50_s16_224` -> width 768, 12 blocks,
    patch 1 on the feature map of ResNet units [3, 4, 9]. {} for other names."""
    plain, hybrid = _NAME.fullmatch(name), _HYBRID_NAME.fullmatch(name)
    if plain:
        width, depth = _SIZES[plain.group(1)]
        return {"num_layers": depth, "hidden_size": width, "patch_size": int(plain.group(3)),
                "distilled": bool(plain.group(2))}
    if hybrid and (hybrid.group(2), hybrid.group(3)) in _HYBRID_UNITS:
        width, depth = _SIZES[hybrid.group(1)]
        return {"num_layers": depth, "hidden_size": width, "patch_size": int(hybrid.group(4) or 1),
                "distilled": False,
                "block_units": _HYBRID_UNITS[hybrid.group(2), hybrid.group(3)]}
    return {}


def _declared(config, path):
    """The architecture a timm config.json declares: model_args, num_features, num_classes, and
    what a standard model name (`deit_tiny_patch16_224`: width 192, 12 blocks) implies."""
    model_args = config_section(config, "model_args", path)
    declared = {"num_layers": config_int(model_args, "depth", path),
                "hidden_size": (config_int(model_args, "embed_dim", path)
                                or config_int(config, "num_features", path)),
                "patch_size": config_int(model_args, "patch_size", path),
                "num_classes": config_int(config, "num_classes", path)}
    for key, value in _name_implies(str(config.get("architecture", ""))).items():
        if declared.get(key) is not None and declared[key] != value:
            raise ValueError(f"{path!r}: its config.json names the model "
                             f"{config['architecture']!r} but declares {key} {declared[key]}.")
        declared[key] = value
    return declared


def convert(raw, config, processor, path, num_heads=None, image_size=None):
    """A timm state dict as a `Checkpoint`: `config` is its config.json ({} without one),
    `processor` a preprocessor_config.json beside it (None without one)."""
    tensors = Tensors(raw, path)
    if "fc_norm.weight" in tensors:
        raise ValueError(
            f"Checkpoint {path!r} normalises after pooling (timm's fc_norm, with global_pool='avg'); "
            f"keras_vit's ViT normalises before pooling (encoder_norm), so it cannot hold it."
        )
    state = {}
    # A hybrid (vit_base_r50_s16_224 ...): `patch_embed.backbone` is the ResNet, `patch_embed.proj`
    # cuts patches from its feature map.
    backbone, stride = add_backbone(state, resnet.from_timm(tensors.tensors, source=path))
    weight = tensors.take("patch_embed.proj.weight", "patch_embedding/projection/kernel")
    state["patch_embedding/projection/kernel"] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    state["patch_embedding/projection/bias"] = tensors.take("patch_embed.proj.bias", "patch_embedding")
    hidden, patch = int(weight.shape[0]), (int(weight.shape[2]), int(weight.shape[3]))
    pixel_patch = (patch[0] * stride, patch[1] * stride)
    has_class, distilled = "cls_token" in tensors, "dist_token" in tensors
    if distilled and (not has_class or "reg_token" in tensors):
        raise ValueError(f"Checkpoint {path!r} has a distillation token (dist_token) "
                         f"{'without a class token' if not has_class else 'and register tokens'}: "
                         f"timm's distilled DeiT puts it right after the class token, and "
                         f"keras_vit holds only that layout.")
    if has_class:
        state["class_token/token"] = tensors.take("cls_token", "class_token/token")
    if distilled:
        state["distillation_token/tokens"] = tensors.take("dist_token", "distillation_token/tokens")
    num_registers = 0
    if "reg_token" in tensors:
        state["register_tokens/tokens"] = tensors.take("reg_token", "register_tokens/tokens")
        num_registers = int(state["register_tokens/tokens"].shape[1])
    pretrained = config_section(config, "pretrained_cfg", path)
    model_args = config_section(config, "model_args", path)
    input_size = pretrained.get("input_size")
    if input_size is not None and not (isinstance(input_size, list) and len(input_size) == 3):
        raise ValueError(f"{path!r}: 'pretrained_cfg.input_size' in its config.json must be "
                         f"[channels, height, width], got {input_size!r:.100}.")
    pretrained_size = {"input_size": None if input_size is None or None in input_size else input_size[1:]}
    pos = position_embedding(tensors, "pos_embed", path)
    num_prefix = int(has_class) + int(distilled) + num_registers
    grid = (grid_from_config(model_args, "img_size", pixel_patch, path)
            or grid_from_config(pretrained_size, "input_size", pixel_patch, path)
            or infer_grid(pos.shape[-2], num_prefix, pixel_patch, image_size, path))
    prefix_pos, grid_pos = canonical_position_embedding(pos, grid, num_prefix, path)
    class_pos = fold_prefix(state, prefix_pos, int(has_class) + int(distilled), num_registers)
    state["position_embedding/embedding"] = np.concatenate([class_pos, grid_pos], axis=1)

    depth = block_count(tensors.tensors, r"blocks\.(\d+)\.", "blocks.{}.", path)
    layer_scale = None
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoderblock_{i}/"
        for norm in ("norm1", "norm2"):
            state[dst + norm + "/gamma"] = tensors.take(src + norm + ".weight", dst + norm)
            state[dst + norm + "/beta"] = tensors.take(src + norm + ".bias", dst + norm)
        for src_name, name in (("attn.qkv", "attention/qkv"), ("attn.proj", "attention/proj"),
                               ("mlp.fc1", "mlp/fc1"), ("mlp.fc2", "mlp/fc2")):
            state[dst + name + "/kernel"], state[dst + name + "/bias"] = torch_linear(
                tensors, src + src_name, dst + name)
        for j in (1, 2):
            if f"{src}ls{j}.gamma" in tensors:
                layer_scale = 1e-5  # the value is replaced by the loaded gamma
                state[f"{dst}layer_scale{j}/gamma"] = tensors.take(
                    f"{src}ls{j}.gamma", f"{dst}layer_scale{j}/gamma")
    state["encoder_norm/gamma"] = tensors.take("norm.weight", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("norm.bias", "encoder_norm")
    global_pool = config.get("global_pool", "token" if has_class else "avg")
    pooling = {"token": "token", "avg": "gap", "map": "map"}.get(global_pool) \
        if isinstance(global_pool, str) else None
    heads = infer_heads(config_int(model_args, "num_heads", path) or num_heads, hidden, path)
    if "attn_pool.latent" in tensors:
        pooling = "map"
        _map_head(tensors, state, heads)
    if pooling is None:
        raise ValueError(f"Checkpoint {path!r}: timm global_pool {global_pool!r} is not supported; "
                         f"expected 'token', 'avg' or 'map'.")
    num_classes = None
    for name in ("head", "head_dist") if distilled else ("head",):  # head_dist: the dist token's
        if name + ".weight" in tensors:
            state[name + "/kernel"], state[name + "/bias"] = torch_linear(tensors, name, name)
            num_classes = num_classes or int(state[name + "/kernel"].shape[1])
    tensors.check_consumed("timm")
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads,
        mlp_dim=int(state["encoderblock_0/mlp/fc1/kernel"].shape[1]),
        image_size=(grid[0] * pixel_patch[0], grid[1] * pixel_patch[1]), num_classes=num_classes,
        representation_size=None, pooling=pooling, class_token=has_class,
        num_registers=num_registers, layer_scale_init_value=layer_scale, backbone=backbone,
        distilled=distilled, distillation_head=not distilled or "head_dist/kernel" in state)
    check_declared(path, _declared(config, path), architecture)
    normalization = pretrained if "mean" in pretrained else config
    statistics = processor_normalization(processor, path)
    if normalization.get("mean") is not None and normalization.get("std") is not None:
        mean, std = (config_floats(normalization, key, path) for key in ("mean", "std"))
    elif statistics is not None:
        mean, std = statistics
    else:
        logger.info("%s has no mean/std in a config.json or preprocessor_config.json: assuming "
                    "[-1, 1] inputs (mean = std = 0.5, timm's default for Google-trained ViTs).",
                    path)
        mean, std = M.GOOGLE_NORMALIZATION
    names = config.get("label_names")
    if num_classes and names is not None and not (
            isinstance(names, list) and len(names) == num_classes
            and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path!r}: 'label_names' in its config.json must be a list of "
                         f"{num_classes} strings (one per head output), got {names!r:.100}.")
    # timm's data config: pretrained_cfg's crop_pct and interpolation, else its defaults (0.875,
    # bicubic); a preprocessor_config.json beside the file fills what the config.json lacks.
    crop_pct, interpolation = processor_preprocessing(processor, (0.875, "bicubic"), path)
    for section, where in ((config, ""), (pretrained, "pretrained_cfg.")):  # pretrained_cfg wins
        if section.get("crop_pct") is not None:
            crop_pct = crop_fraction(section["crop_pct"], where + "crop_pct", path, "config.json")
        if section.get("interpolation") is not None:
            interpolation = interpolation_name(section["interpolation"], where + "interpolation", path,
                                               "config.json")
    return Checkpoint(state, architecture, (mean, std), L.LAYER_NORM_EPSILON,
                      list(names) if num_classes and names else default_class_names(num_classes), "timm",
                      "bicubic", antialias=True, crop_pct=crop_pct, interpolation=interpolation)


def _map_head(tensors, state, heads):
    """timm's AttentionPoolLatent: q and fused kv PyTorch Linears -> keras MultiHeadAttention."""
    latent = tensors.take("attn_pool.latent", "map_head/probe")
    hidden = latent.shape[-1]
    state["map_head/probe"] = latent
    q_kernel, q_bias = torch_linear(tensors, "attn_pool.q", "map_head/attention/query")
    kv_kernel, kv_bias = torch_linear(tensors, "attn_pool.kv", "map_head/attention/key")
    for name, kernel, bias in (("query", q_kernel, q_bias),
                               ("key", kv_kernel[:, :hidden], kv_bias[:hidden]),
                               ("value", kv_kernel[:, hidden:], kv_bias[hidden:])):
        state[f"map_head/attention/{name}/kernel"] = kernel.reshape(hidden, heads, -1)
        state[f"map_head/attention/{name}/bias"] = bias.reshape(heads, -1)
    kernel, bias = torch_linear(tensors, "attn_pool.proj", "map_head/attention/attention_output")
    state["map_head/attention/attention_output/kernel"] = kernel.reshape(heads, -1, hidden)
    state["map_head/attention/attention_output/bias"] = bias
    state["map_head/norm/gamma"] = tensors.take("attn_pool.norm.weight", "map_head/norm")
    state["map_head/norm/beta"] = tensors.take("attn_pool.norm.bias", "map_head/norm")
    for name in ("fc1", "fc2"):
        state[f"map_head/mlp/{name}/kernel"], state[f"map_head/mlp/{name}/bias"] = torch_linear(
            tensors, f"attn_pool.mlp.{name}", f"map_head/mlp/{name}")
