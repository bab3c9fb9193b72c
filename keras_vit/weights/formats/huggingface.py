"""Hugging Face transformers: ViT (`vit.` prefix, `ViTModel`'s pooler as pre_logits) and DeiT
(`deit.`: a distillation token after the class token, one head or one per token), as
`save_pretrained` writes them (legacy `encoder.layer.N.` names) or as transformers >= 5 names
them in memory. PyTorch Linear weights are (out, in); config.json and preprocessor_config.json
give the heads, depth, normalisation, crop and resampling filter."""

import logging
import re

import numpy as np

from keras_vit import models as M
from keras_vit.weights.checkpoint import (
    Checkpoint,
    Tensors,
    block_count,
    canonical_position_embedding,
    check_declared,
    config_int,
    config_section,
    default_class_names,
    grid_from_config,
    infer_grid,
    infer_heads,
    position_embedding,
    processor_normalization,
    processor_preprocessing,
    torch_linear,
)

logger = logging.getLogger("keras_vit")

EXPECTED = ("Hugging Face keys ('vit.embeddings.patch_embeddings.projection.weight', "
            "'deit.embeddings...', ...)")


def matches(keys, config=None):
    """transformers' patch embedding, under any model prefix (`vit.`, `deit.`, none)."""
    return any(key.endswith("embeddings.patch_embeddings.projection.weight") for key in keys)


# Block sub-module names: the hub's files (and save_pretrained) | transformers >= 5 in memory.
_BLOCK = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "q": ("attention.attention.query", "attention.q_proj"),
    "k": ("attention.attention.key", "attention.k_proj"),
    "v": ("attention.attention.value", "attention.v_proj"),
    "attention/proj": ("attention.output.dense", "attention.o_proj"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "mlp/fc1": ("intermediate.dense", "mlp.fc1"),
    "mlp/fc2": ("output.dense", "mlp.fc2"),
}


def convert(raw, config, processor, path, num_heads=None, image_size=None):
    """ViT (`vit.` prefix) and DeiT (`deit.`: a distillation token after the class token, with
    `cls_classifier` + `distillation_classifier` in DeiTForImageClassificationWithTeacher, or one
    `classifier` on the class token in DeiTForImageClassification)."""
    prefix = next((p for p in ("vit.", "deit.") if any(k.startswith(p) for k in raw)), "")
    tensors = Tensors({(k[len(prefix):] if k.startswith(prefix) else k): v
                       for k, v in raw.items()}, path)
    state = {}
    weight = tensors.take("embeddings.patch_embeddings.projection.weight", "patch_embedding")
    state["patch_embedding/projection/kernel"] = weight.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    state["patch_embedding/projection/bias"] = tensors.take(
        "embeddings.patch_embeddings.projection.bias", "patch_embedding/projection/bias")
    hidden, patch = int(weight.shape[0]), (int(weight.shape[2]), int(weight.shape[3]))
    state["class_token/token"] = tensors.take("embeddings.cls_token", "class_token/token")
    distilled = "embeddings.distillation_token" in tensors
    if distilled:
        state["distillation_token/tokens"] = tensors.take("embeddings.distillation_token",
                                                          "distillation_token/tokens")
    num_prefix = 1 + int(distilled)
    pos = position_embedding(tensors, "embeddings.position_embeddings", path)
    grid = (grid_from_config(config, "image_size", patch, path)
            or infer_grid(pos.shape[-2], num_prefix, patch, image_size, path))
    prefix_pos, grid_pos = canonical_position_embedding(pos, grid, num_prefix, path)
    state["position_embedding/embedding"] = np.concatenate([prefix_pos, grid_pos], axis=1)

    legacy = any(k.startswith("encoder.layer.") for k in tensors.tensors)
    block_prefix = "encoder.layer." if legacy else "layers."
    depth = block_count(tensors.tensors, re.escape(block_prefix) + r"(\d+)\.",
                        block_prefix + "{}.", path)
    for i in range(depth):
        src, dst = f"{block_prefix}{i}.", f"encoderblock_{i}/"
        names = {key: src + pair[0 if legacy else 1] for key, pair in _BLOCK.items()}
        for norm in ("norm1", "norm2"):
            state[dst + norm + "/gamma"] = tensors.take(names[norm] + ".weight", dst + norm)
            state[dst + norm + "/beta"] = tensors.take(names[norm] + ".bias", dst + norm)
        qkv = [torch_linear(tensors, names[p], dst + "attention/qkv") for p in "qkv"]
        state[dst + "attention/qkv/kernel"] = np.concatenate([k for k, _ in qkv], axis=1)
        state[dst + "attention/qkv/bias"] = np.concatenate([b for _, b in qkv])
        for name in ("attention/proj", "mlp/fc1", "mlp/fc2"):
            state[dst + name + "/kernel"], state[dst + name + "/bias"] = torch_linear(
                tensors, names[name], dst + name)
    state["encoder_norm/gamma"] = tensors.take("layernorm.weight", "encoder_norm")
    state["encoder_norm/beta"] = tensors.take("layernorm.bias", "encoder_norm")
    representation_size = num_classes = None
    if "pooler.dense.weight" in tensors:  # ViTModel's pooler: tanh(Dense(class token)) = pre_logits
        state["pre_logits/kernel"], state["pre_logits/bias"] = torch_linear(
            tensors, "pooler.dense", "pre_logits")
        representation_size = int(state["pre_logits/kernel"].shape[1])
    if distilled and "cls_classifier.weight" in tensors:  # ...WithTeacher: a head on each token
        heads = (("head", "cls_classifier"), ("head_dist", "distillation_classifier"))
    else:
        heads = (("head", "classifier"),) if "classifier.weight" in tensors else ()
    for name, source in heads:
        state[name + "/kernel"], state[name + "/bias"] = torch_linear(tensors, source, name)
    if heads:
        num_classes = int(state["head/kernel"].shape[1])
    tensors.check_consumed("Hugging Face DeiT" if prefix == "deit." else "Hugging Face ViT")
    if config.get("hidden_act", "gelu") != "gelu":
        logger.warning("%s: hidden_act is %r; keras_vit computes the exact GELU, so outputs will "
                       "differ slightly from the source model.", path, config["hidden_act"])
    heads = infer_heads(config_int(config, "num_attention_heads", path) or num_heads, hidden, path)
    architecture = dict(
        patch_size=patch, hidden_size=hidden, num_layers=depth, num_heads=heads,
        mlp_dim=int(state["encoderblock_0/mlp/fc1/kernel"].shape[1]),
        image_size=(grid[0] * patch[0], grid[1] * patch[1]), num_classes=num_classes,
        representation_size=representation_size, pooling="token", class_token=True,
        num_registers=0, layer_scale_init_value=None, backbone=None, distilled=distilled,
        distillation_head=not distilled or "head_dist/kernel" in state)
    check_declared(path, {"num_layers": config_int(config, "num_hidden_layers", path),
                          "hidden_size": config_int(config, "hidden_size", path),
                          "patch_size": config_int(config, "patch_size", path),
                          "mlp_dim": config_int(config, "intermediate_size", path)}, architecture)
    statistics = processor_normalization(processor, path)
    normalization = statistics or M.GOOGLE_NORMALIZATION  # ViTImageProcessor's default: 0.5, 0.5
    if statistics is None and prefix == "deit.":
        # DeiT trains on ImageNet mean/std (facebook/deit-* ship them in preprocessor_config.json;
        # DeiTImageProcessor's own default would be 0.5).
        logger.info("%s: a DeiT checkpoint without preprocessor_config.json: assuming DeiT's "
                    "ImageNet mean/std.", path)
        normalization = M.IMAGENET_NORMALIZATION
    epsilon = config.get("layer_norm_eps", 1e-12)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        raise ValueError(f"{path!r}: 'layer_norm_eps' in its config.json must be a positive "
                         f"number, got {epsilon!r:.100}.")
    # What the file does not say is its processor class's default: DeiTImageProcessor resizes to
    # 256 and crops 224, bicubic; ViTImageProcessor resizes to the model's size, bilinear.
    crop_pct, interpolation = processor_preprocessing(
        processor, (224 / 256, "bicubic") if prefix == "deit." else (1.0, "bilinear"), path)
    return Checkpoint(state, architecture, normalization, float(epsilon),
                      _class_names(config, num_classes, path), "huggingface", "bicubic",
                      antialias=False,  # HF's interpolate_pos_encoding has no antialias
                      crop_pct=crop_pct, interpolation=interpolation)


def _class_names(config, num_classes, path):
    labels = config_section(config, "id2label", path)
    names = [labels.get(str(i), labels.get(i)) for i in range(num_classes or 0)]
    # transformers fills id2label with LABEL_0, LABEL_1, ... when a model has no names.
    if num_classes and all(names) and names != [f"LABEL_{i}" for i in range(num_classes)]:
        return names
    return default_class_names(num_classes)
