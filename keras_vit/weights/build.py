"""Building models from checkpoints: `load_pretrained` (the checkpoint's own architecture),
`build_with_weights` (`keras_vit.ViT(weights=...)`: the asked architecture, which the checkpoint
must hold), `.keras` models, and the strict assignment by variable path (no tensor missing or left
over, shapes equal).
"""

import logging
import os
import re
import zipfile

import numpy as np

from keras_vit import layers as L
from keras_vit import models as M
from keras_vit.config import check_keywords, token_grid
from keras_vit.weights import hub
from keras_vit.weights.checkpoint import Checkpoint
from keras_vit.weights.downloads import fetch
from keras_vit.weights.files import check_finite, read_checkpoint
from keras_vit.weights.registry import REGISTRY, display_name, registry_entry

logger = logging.getLogger("keras_vit")


def load_pretrained(path_or_name, image_size=None, num_classes=None, include_top=True,
                    resample_method=None, **kwargs):
    """Builds the architecture a checkpoint holds (`VisionTransformer`) and loads it.

    Args:
        path_or_name: a local checkpoint (Google `.npz`; Hugging Face folder or `.safetensors`;
            timm `.safetensors`, with its config.json beside it; a `.keras` model), a Hub
            repository `"hf://ORG/NAME[@REVISION]"` (`keras_vit.weights.hub`: needs huggingface_hub),
            `"B/16:imagenet21k"`, `"R50+B/16:imagenet21k"`, or a registered file or timm model
            name (`"deit_tiny_distilled_patch16_224"`). Hybrids (a ResNet's feature map as the
            token grid: vit_jax's `R50+ViT-B_16.npz`, AugReg's `R_Ti_16-...`, timm's
            `vit_base_r50_s16_224`) and distilled DeiT (timm's `dist_token` + `head_dist`,
            transformers' DeiT folders) are read from the file like any ViT.
        image_size: None keeps the checkpoint's; another size resamples the position embeddings.
        num_classes: None keeps the checkpoint's head; another count gets a new zero head.
        include_top: False drops the head (and pre_logits) and returns pooled features.
        resample_method: `"bilinear"` / `"bicubic"`; None uses the checkpoint source's own.
        **kwargs: other `VisionTransformer` arguments (dropout_rate, dtype, name, ...); an
            unknown one is a TypeError. Those the checkpoint knows (normalisation, `crop_pct`,
            `interpolation`, ...) follow it unless passed.

    A `.keras` file with none of these arguments is returned as saved (`load_keras_model`); with
    them, a saved `VisionTransformer` is rebuilt like any checkpoint.

    >>> model = keras_vit.load_pretrained("deit_tiny_patch16_224/model.safetensors")
    """
    # The named arguments are valid too: a misspelt `resample=` is told `resample_method`.
    check_keywords(kwargs, _MODEL_ARGS | {"resample_method"}, "load_pretrained")
    _check_load_values(image_size, num_classes, include_top, resample_method)
    _check_preprocessing(kwargs)
    path, variant = _resolve(path_or_name)
    if _is_keras_file(path) and (image_size, num_classes, include_top, resample_method,
                                 kwargs) == (None, None, True, None, {}):
        return load_keras_model(path)
    checkpoint = _read_any(path, kwargs.get("num_heads"), image_size)
    if variant is not None:
        _check_architecture(checkpoint, M.variant_config(variant), display_name(variant),
                            "the registered checkpoint is incomplete or not the one registered")
    config = dict(checkpoint.architecture)
    asked = {k: kwargs[k] for k in (*M.ARCHITECTURE_ARGS, "backbone") if k in kwargs}
    _check_architecture(checkpoint, {**config, **asked}, "the arguments",
                        "leave them out to build the checkpoint's own architecture")
    if num_classes is None and include_top:
        if checkpoint.architecture["num_classes"] is None:
            raise ValueError(f"{path_or_name!r} has no classification head: pass num_classes=N for "
                             f"a new (zero) head, or include_top=False for features.")
        num_classes = checkpoint.architecture["num_classes"]
    config.update(image_size=config["image_size"] if image_size is None else image_size,
                  num_classes=num_classes or 0, include_top=include_top, **kwargs)
    return _build(checkpoint, config, resample_method, given=set(kwargs))


def build_with_weights(config, weights, resample_method=None, given=None):
    """`keras_vit.ViT(weights=...)`: builds `config` (ViT kwargs) and loads `weights` into it.

    `weights` is a registered name (found from config's patch/width/depth, e.g. `"imagenet21k"`
    for ViT-B/16), a local checkpoint path, a `.keras` model or `"hf://ORG/NAME[@REVISION]"`.
    The checkpoint's architecture must equal config's (a hybrid's ResNet units too). `given`
    names the config keys the caller chose (None: all of config's); the others that a checkpoint
    knows (pooling, representation_size, class_token, distilled, normalisation, crop_pct and
    interpolation, LayerNorm epsilon, a ResNet's numerics, class names, ...) come from the
    checkpoint. A chosen pooling the checkpoint cannot give ('token' without a class token, 'map'
    without a MAP head) is a ValueError. With `distilled=True`, a registered name that has a
    distilled checkpoint too (`"imagenet1k"` for DeiT) means that one.
    """
    check_keywords(config, _MODEL_ARGS, "build_with_weights")
    given = set(config) if given is None else set(given)
    _check_preprocessing(config)
    path = os.fspath(weights)
    # Registered names ("imagenet21k", "augreg_in21k_ft_in1k") have no slash and no file suffix.
    if not os.path.exists(path) and not re.search(r"[/\\]|\.(npz|safetensors|keras)$", path):
        variant = _variant_of(config)
        if variant is None:
            raise ValueError(
                f"weights={weights!r} is not a local file, and the architecture (patch_size "
                f"{config.get('patch_size')}, hidden_size {config.get('hidden_size')}, num_layers "
                f"{config.get('num_layers')}, backbone {config.get('backbone')}) is none of the "
                f"registered variants {sorted(M.VARIANTS) + sorted(M.HYBRID_VARIANTS)}: pass a "
                f"checkpoint path."
            )
        if config.get("distilled") and (variant, path + "_distilled") in REGISTRY:
            path += "_distilled"
        path = fetch(registry_entry(variant, path))
    path, _ = _resolve(path)
    checkpoint = _read_any(path, config.get("num_heads"), config.get("image_size"))
    _check_architecture(checkpoint, {**M.MODEL_DEFAULTS, **config}, "the model",
                        "use keras_vit.load_pretrained(...) to build the checkpoint's own "
                        "architecture")
    return _build(checkpoint, dict(config), resample_method, given)


def load_model_or_checkpoint(path):
    """What `keras-vit info / explain / export` load: a `.keras` model as saved, or a checkpoint
    built as `load_pretrained(path)` builds it."""
    return load_pretrained(path)


def load_keras_model(path):
    """A `.keras` model file, loaded with safe_mode on (no code from the file runs) and
    compile=False: the weights and the architecture, not the training state. A model trained with
    a user's own loss or schedule thus loads anywhere; `model.compile(...)` to train it again."""
    return _load_keras(path)[0]


def _load_keras(path):
    """`load_keras_model(path)` and its variables as NumPy arrays, converted once."""
    import keras

    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path!r} is not a complete .keras file (a zip archive): it is truncated "
                         f"or corrupt ({os.path.getsize(path)} bytes).")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, TypeError, OSError, KeyError, ...
        raise ValueError(f"Could not load the Keras model {path!r}: {type(error).__name__}: "
                         f"{error}") from error
    variables = _variables(model)
    check_finite(variables, path)
    return model, variables


def _variables(model):
    import keras

    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _is_keras_file(path):
    return os.path.isfile(path) and path.endswith(".keras")


def _read_any(path, num_heads, image_size):
    """A `Checkpoint` from a checkpoint file or folder, or from a `.keras` VisionTransformer."""
    if not _is_keras_file(path):
        return read_checkpoint(path, num_heads, image_size)
    model, variables = _load_keras(path)
    if not isinstance(model, M.VisionTransformer):
        raise ValueError(f"{path!r} holds a {type(model).__name__}, not a keras_vit "
                         f"VisionTransformer: load it with keras_vit.load_pretrained({path!r}) "
                         f"and no other arguments.")
    architecture = {key: getattr(model, key) for key in (
        "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "image_size",
        "num_classes", "representation_size", "pooling", "class_token", "num_registers",
        "layer_scale_init_value", "backbone", "distilled", "distillation_head")}
    # Trained models carry no record of their weights' source: bicubic, as timm and HF resample.
    return Checkpoint(variables, architecture,
                      (model.normalization_mean, model.normalization_std),
                      model.layer_norm_epsilon, model.class_names, "keras", "bicubic", path=path,
                      include_preprocessing=model.include_preprocessing,
                      crop_pct=model.crop_pct, interpolation=model.interpolation)


# The arguments of `VisionTransformer`: what a model config may hold, and their defaults.
_MODEL_ARGS = set(M.MODEL_DEFAULTS)


def _check_load_values(image_size, num_classes, include_top, resample_method):
    """Bad values fail before a (possibly large) checkpoint is read."""
    if image_size is not None:
        size = L._pair(image_size, "image_size")
        if min(size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size!r}.")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, (int, np.integer)) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive int or None (the checkpoint's head), got "
                         f"{num_classes!r}; include_top=False drops the head.")
    if not isinstance(include_top, bool):
        raise ValueError(f"include_top must be True or False, got {include_top!r}.")
    if resample_method not in (None, "bilinear", "bicubic"):
        raise ValueError(f"resample_method must be 'bilinear', 'bicubic' or None (the checkpoint "
                         f"source's own), got {resample_method!r}.")


def _check_preprocessing(config):
    """A bad crop_pct or interpolation fails before a (possibly large) checkpoint is read, with the
    model config's own message."""
    M.ModelConfig(**{key: config[key] for key in ("crop_pct", "interpolation") if key in config})


def _check_architecture(checkpoint, wanted, asker, advice):
    """The checkpoint must hold the architecture `wanted` (a ViT config) asks for; the depth is
    named on its own, since a file that lost its last blocks differs only there."""
    found = checkpoint.architecture
    differ = {k: (wanted.get(k), found[k]) for k in M.ARCHITECTURE_ARGS
              if (L._pair(wanted.get(k), k) if k == "patch_size" else wanted.get(k)) != found[k]}
    if _backbone_shape(wanted.get("backbone")) != _backbone_shape(found["backbone"]):
        differ["backbone"] = (_backbone_shape(wanted.get("backbone")),
                              _backbone_shape(found["backbone"]))
    if not differ:
        return
    depth = ""
    if "num_layers" in differ:
        depth = (f" It has {found['num_layers']} encoder blocks where {asker} has "
                 f"{wanted.get('num_layers')}.")
    listed = "; ".join(f"{k} {asked} asked, {held} in the checkpoint"
                       for k, (asked, held) in differ.items())
    raise ValueError(f"The checkpoint {checkpoint.path!r} does not hold the architecture of "
                     f"{asker} ({listed}).{depth} {advice[0].upper()}{advice[1:]}.")


def _build(checkpoint, config, resample_method, given):
    """Builds `VisionTransformer(**config)` and assigns the checkpoint, adapting what the config
    changes: image size (position embeddings resampled), heads (kept, new or dropped), pooling.

    `given`: the config keys the caller chose; the checkpoint sets the others it knows."""
    state = dict(checkpoint.state)
    arch = checkpoint.architecture
    source = checkpoint.path
    for key, value in (("class_token", arch["class_token"]), ("num_registers", arch["num_registers"]),
                       ("layer_scale_init_value", arch["layer_scale_init_value"]),
                       ("pooling", arch["pooling"]), ("distilled", arch["distilled"]),
                       ("distillation_head", arch["distillation_head"]),
                       ("normalization_mean", checkpoint.normalization[0]),
                       ("normalization_std", checkpoint.normalization[1]),
                       ("layer_norm_epsilon", checkpoint.layer_norm_epsilon),
                       ("include_preprocessing", checkpoint.include_preprocessing),
                       ("crop_pct", checkpoint.crop_pct),
                       ("interpolation", checkpoint.interpolation)):
        if key not in given:
            config[key] = value
    if arch["backbone"]:  # the units were checked; the numerics are the source's unless chosen
        config["backbone"] = {**arch["backbone"], **(config.get("backbone") or {})}
    if bool(config["distilled"]) != arch["distilled"]:
        raise ValueError(f"distilled={config['distilled']!r} was asked, but {source!r} "
                         f"{'is' if arch['distilled'] else 'is not'} a distilled DeiT checkpoint "
                         f"(a distillation token after the class token): leave distilled unset to "
                         f"follow the checkpoint.")
    if config["pooling"] == "token" and not arch["class_token"]:
        raise ValueError(f"pooling='token' pools the class token, and {source!r} has none (its "
                         f"pooling is {arch['pooling']!r}): pass pooling={arch['pooling']!r}, or "
                         f"leave pooling unset to use the checkpoint's.")
    if config["pooling"] == "map" and "map_head/probe" not in state:
        raise ValueError(f"pooling='map' needs a MAP head, and {source!r} has none (its pooling is "
                         f"{arch['pooling']!r}).")
    if config["pooling"] != "map" and "map_head/probe" in state:
        logger.info("%s: pooling=%r, so the checkpoint's MAP head is not used.", source,
                    config["pooling"])
        state = {k: v for k, v in state.items() if not k.startswith("map_head/")}

    include_top = config.get("include_top", True)
    keep_head = include_top and arch["num_classes"] == config.get("num_classes")
    two_heads = config["distilled"] and config["distillation_head"]
    if keep_head and config["distilled"] and two_heads != arch["distillation_head"]:
        if two_heads:
            raise ValueError(f"{source!r} has no distillation head (a distilled backbone with the "
                             f"class token's head alone, as transformers' "
                             f"DeiTForImageClassification): pass distillation_head=False, or "
                             f"leave it unset to follow the checkpoint.")
        logger.warning("%s: distillation_head=False, so the checkpoint's distillation head is not "
                       "loaded: the model predicts with the class token's head alone.", source)
        state = {k: v for k, v in state.items() if not k.startswith("head_dist/")}
    if keep_head and config["pooling"] != arch["pooling"]:
        logger.warning("%s: its head was trained on %r pooling, the model pools with %r: the kept "
                       "head's predictions are not the checkpoint's until it is fine-tuned.",
                       source, arch["pooling"], config["pooling"])
    heads = ("head/", "head_dist/", "pre_logits/")
    if not keep_head:
        dropped = [k for k in state if k.startswith(heads)]
        state = {k: v for k, v in state.items() if k not in dropped}
        if "representation_size" not in given:  # the paper fine-tunes without the pre-logits layer
            config["representation_size"] = None
        if include_top:
            held = f"{arch['num_classes']} classes" if arch["num_classes"] else "no head"
            logger.warning("%s has %s, the model %d classes: the head%s re-initialised (zeros, "
                           "as the ViT paper does for fine-tuning)%s.", source, held,
                           config["num_classes"], "s are" if two_heads else " is",
                           ", pre_logits dropped" if arch["representation_size"] else "")
        elif dropped:
            logger.info("include_top=False: the checkpoint's %s not loaded.",
                        "head and pre_logits are" if arch["representation_size"] else "head is")
    elif "representation_size" not in given:
        config["representation_size"] = arch["representation_size"]
    if keep_head and "class_names" not in given:
        config["class_names"] = checkpoint.class_names

    model = M.VisionTransformer(**config)
    old_grid = token_grid(arch["image_size"], arch["patch_size"], arch.get("backbone"))
    if old_grid != tuple(model.grid_size):
        method = resample_method or checkpoint.resample_method
        logger.warning("%s: position embeddings resampled from a %dx%d to a %dx%d grid (%s), for "
                       "image size %s.", source, *old_grid, *model.grid_size, method,
                       model.image_size)
        state["position_embedding/embedding"] = L.resample_position_embeddings(
            state["position_embedding/embedding"], old_grid, model.grid_size,
            model.get_layer("position_embedding").num_prefix_tokens, method, checkpoint.antialias)
    new = ()
    if include_top and not keep_head:
        new = heads if config.get("representation_size") else heads[:2]
    assign_state(model, state, reinitialise=new, source=source)
    if new:  # a new head starts at zeros, as the paper's fine-tuning
        for variable in model.weights:
            if variable.path.startswith(heads[:2]):
                variable.assign(np.zeros(variable.shape, variable.dtype))
    if keep_head and not np.any(state["head/kernel"]):
        logger.warning("%s: the classification head is all zeros (an ImageNet-21k pre-training "
                       "checkpoint): its predictions are meaningless. Fine-tune it, e.g. with "
                       "num_classes=N.", source)
    return model


def assign_state(model, state, reinitialise=(), source="checkpoint"):
    """Assigns `{variable path: array}` to `model` by `variable.path`, strictly: every variable
    (except paths starting with `reinitialise`) must be filled, no tensor left over, shapes equal."""
    variables = {v.path: v for v in model.weights}
    missing = [p for p in variables if p not in state and not p.startswith(tuple(reinitialise))]
    unexpected = [p for p in state if p not in variables]
    if missing or unexpected:
        raise ValueError(
            f"{source!r} does not fit the model: "
            + (f"missing {[(p, tuple(variables[p].shape)) for p in missing]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {[(p, tuple(np.shape(state[p]))) for p in unexpected]}" if unexpected else "")
            + "."
        )
    mismatched = [(p, tuple(variables[p].shape), tuple(np.shape(v))) for p, v in state.items()
                  if tuple(variables[p].shape) != tuple(np.shape(v))]
    if mismatched:
        raise ValueError(f"{source!r} does not fit the model: shape mismatches (variable, expected, "
                         f"checkpoint): {mismatched}.")
    for path, value in state.items():
        variables[path].assign(np.asarray(value, dtype=variables[path].dtype))


def _variant_of(config):
    """`"B/16"` for a ViT kwargs dict with that patch, width and depth (`"R50+B/16"` with the
    hybrid's backbone too); None otherwise."""
    patch = L._pair(config.get("patch_size", 16), "patch_size")
    for variant in (*M.VARIANTS, *M.HYBRID_VARIANTS):
        wanted = M.variant_config(variant)
        if (patch == L._pair(wanted["patch_size"], "patch_size")
                and (config.get("hidden_size"), config.get("num_layers"))
                == (wanted["hidden_size"], wanted["num_layers"])
                and _backbone_shape(config.get("backbone")) == _backbone_shape(wanted.get("backbone"))):
            return variant
    return None


def _backbone_shape(backbone):
    """A hybrid's backbone config without its numerics (which follow the checkpoint's source):
    `{"block_units": [...], "width_factor": w}`; None without a backbone."""
    if not isinstance(backbone, dict):
        return backbone  # None, or a bad value the model names when it is built
    return {"block_units": list(backbone.get("block_units", ())),
            "width_factor": backbone.get("width_factor", 1)}


def _resolve(path_or_name):
    """`(path, variant)`: a local path as it is (variant None); `"hf://ORG/NAME[@REVISION]"` -> its
    folder in the Hugging Face cache (variant None); `"B/16:imagenet21k"` or a registered file name
    -> the downloaded path and the variant it is registered for."""
    path = os.fspath(path_or_name)
    if hub.is_hub_id(path):
        return hub.snapshot(path), None
    if os.path.exists(path):
        return path, None
    if ":" in path:
        variant, name = path.split(":", 1)
        if variant in M.VARIANTS or variant in M.HYBRID_VARIANTS:
            return fetch(registry_entry(variant, name)), variant
    for (variant, _), entry in REGISTRY.items():
        if path in entry.names:
            return fetch(entry), variant
    raise FileNotFoundError(
        f"No checkpoint at {path!r}: expected a local file or folder (Google .npz, Hugging Face "
        f"folder or .safetensors, timm .safetensors, a .keras model), 'hf://ORG/NAME[@REVISION]' "
        f"(the Hugging Face Hub), 'VARIANT:NAME' such as 'B/16:imagenet21k', or a registered file "
        f"or timm model name (keras_vit.weights.describe_registry() lists them)."
    )
