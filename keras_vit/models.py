"""The Vision Transformer as a functional Keras model, and its named variants.

    model = keras_vit.ViTB16(num_classes=10)               # 224x224, [0, 255] pixels in, logits out
    features = keras_vit.ViTS16(include_top=False)(images) # pooled features (batch, 384)
"""

import difflib
import inspect
import math

import keras
import numpy as np
from keras import ops

from keras_vit import layers as L
from keras_vit import resnet

POOLINGS = ("token", "gap", "map", None)

# name: (patch_size, hidden_size, num_layers, num_heads, mlp_dim) of the paper and of AugReg
# ("How to train your ViT", Steiner et al., 2021).
VARIANTS = {
    "Ti/16": (16, 192, 12, 3, 768),
    "S/16": (16, 384, 12, 6, 1536),
    "S/32": (32, 384, 12, 6, 1536),
    "B/8": (8, 768, 12, 12, 3072),
    "B/16": (16, 768, 12, 12, 3072),
    "B/32": (32, 768, 12, 12, 3072),
    "L/16": (16, 1024, 24, 16, 4096),
    "L/32": (32, 1024, 24, 16, 4096),
    "H/14": (14, 1280, 32, 16, 5120),
}
ARCHITECTURE_ARGS = ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")
# The paper's hybrids (a ResNet's feature map is the token grid) and AugReg's:
# name: (ViT variant, ResNet block units, patch size on the feature map). The paper's R50 for /16
# drops stage 4 and extends stage 3 to 9 units; /32 keeps ResNet-50's four stages; AugReg's "R"
# is the root alone (stride 4) with 8x8 patches, which makes /16 in pixels and /32 for R26.
HYBRID_VARIANTS = {
    "R50+B/16": ("B/16", (3, 4, 9), 1),
    "R50+B/32": ("B/32", (3, 4, 6, 3), 1),
    "R50+L/16": ("L/16", (3, 4, 9), 1),
    "R50+L/32": ("L/32", (3, 4, 6, 3), 1),
    "R26+S/32": ("S/32", (2, 2, 2, 2), 1),
    "R+Ti/16": ("Ti/16", (), 8),
}

GOOGLE_NORMALIZATION = (0.5, 0.5)  # [0, 255] -> [-1, 1]
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def variant_config(variant):
    """`"B/16"` -> `{"patch_size": 16, "hidden_size": 768, ...}`; a hybrid (`"R50+B/16"`) adds
    `backbone={"block_units": [3, 4, 9]}`. ValueError listing the valid names."""
    if variant in HYBRID_VARIANTS:
        vit, block_units, patch = HYBRID_VARIANTS[variant]
        return {**variant_config(vit), "patch_size": patch,
                "backbone": {"block_units": list(block_units)}}
    if variant not in VARIANTS:
        raise ValueError(f"Unknown ViT variant {variant!r}: expected one of "
                         f"{sorted(VARIANTS) + sorted(HYBRID_VARIANTS)}.")
    return dict(zip(ARCHITECTURE_ARGS, VARIANTS[variant]))


@keras.saving.register_keras_serializable(package=L.PACKAGE)
class VisionTransformer(keras.Model):
    """ViT (Dosovitskiy et al., 2020) as a functional model; build it with `keras_vit.ViT(...)`.

    The graph is a chain of named layers: `images` -> `preprocessing` -> `patch_embedding` ->
    `class_token` -> `position_embedding` -> [`register_tokens`] -> `embedding_dropout` ->
    `encoderblock_0` ... `encoderblock_{L-1}` -> `encoder_norm` -> `pooling` | `map_head` ->
    [`pre_logits`] -> `head`. `get_config()` returns the constructor arguments.

    A hybrid adds `backbone` (a ResNet) before `patch_embedding`. A distilled DeiT adds
    `distillation_token` after `class_token`, and `distillation_pooling` -> `head_dist` beside
    `pooling` -> `head`; its output, `distilled_logits`, is the mean of the two heads (DeiT's
    inference), and both heads' logits stay reachable as those layers' outputs.
    `distillation_head=False` keeps the token but only the class head (transformers'
    `DeiTForImageClassification` on a distilled backbone).
    """

    def __init__(self, image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
                 mlp_dim=3072, num_classes=1000, include_top=True, pooling="token",
                 representation_size=None, dropout_rate=0.0, attention_dropout_rate=0.0,
                 drop_path_rate=0.0, include_preprocessing=True, classifier_activation=None,
                 class_token=None, num_registers=0, layer_scale_init_value=None,
                 normalization_mean=GOOGLE_NORMALIZATION[0], normalization_std=GOOGLE_NORMALIZATION[1],
                 layer_norm_epsilon=L.LAYER_NORM_EPSILON, class_names=None, backbone=None,
                 distilled=False, distillation_head=True, name=None, dtype=None, **kwargs):
        _check_keywords(kwargs, _MODEL_KEYWORDS, "VisionTransformer")
        image_size = L._pair(image_size, "image_size")
        patch_size = L._pair(patch_size, "patch_size")
        _check_numbers(num_layers=num_layers, hidden_size=hidden_size, num_heads=num_heads,
                       mlp_dim=mlp_dim, representation_size=representation_size,
                       num_registers=num_registers, layer_norm_epsilon=layer_norm_epsilon,
                       layer_scale_init_value=layer_scale_init_value,
                       normalization_std=normalization_std)
        if class_token is None:
            # Google's GAP and big_vision's MAP models have no class token; the classic ViT has one.
            class_token = pooling in ("token", None)
        backbone = _backbone_config(backbone)
        stride = resnet.backbone_stride(backbone["block_units"]) if backbone else 1
        _validate(image_size, (patch_size[0] * stride, patch_size[1] * stride), hidden_size,
                  num_heads, pooling, include_top, num_classes, class_token, class_names,
                  dropout_rate, attention_dropout_rate, drop_path_rate)
        if distilled and (pooling != "token" or representation_size):
            raise ValueError(f"distilled=True (DeiT) pools the class and distillation tokens: it "
                             f"needs pooling='token' and no representation_size, got "
                             f"pooling={pooling!r}, representation_size={representation_size!r}.")
        grid = (image_size[0] // (patch_size[0] * stride), image_size[1] // (patch_size[1] * stride))
        num_prefix = int(class_token) + int(bool(distilled))
        policy = keras.dtype_policies.get(dtype) if dtype is not None else None

        images = keras.Input(shape=(image_size[0], image_size[1], 3), name="images")
        x = images
        if include_preprocessing:
            x = L.ImageNormalization(normalization_mean, normalization_std, dtype=policy,
                                     name="preprocessing")(x)
        if backbone:
            # The hybrid: the ResNet's feature map is the image the patches are cut from.
            x = resnet.ResNetBackbone(**backbone, dtype=policy, name="backbone")(x)
        x = L.PatchEmbedding(patch_size, hidden_size, dtype=policy, name="patch_embedding")(x)
        if class_token:
            x = L.ClassToken(dtype=policy, name="class_token")(x)
        if distilled:
            x = L.DistillationToken(dtype=policy, name="distillation_token")(x)
        x = L.PositionEmbedding(grid, num_prefix, dtype=policy, name="position_embedding")(x)
        if num_registers:
            x = L.RegisterTokens(num_registers, num_prefix, dtype=policy,
                                 name="register_tokens")(x)
        x = keras.layers.Dropout(dropout_rate, dtype=policy, name="embedding_dropout")(x)
        for i in range(num_layers):
            # Stochastic depth grows linearly with depth, as in DeiT and timm.
            rate = drop_path_rate * i / max(num_layers - 1, 1)
            x = L.TransformerBlock(num_heads, mlp_dim, dropout_rate, attention_dropout_rate, rate,
                                   layer_scale_init_value, layer_norm_epsilon, dtype=policy,
                                   name=f"encoderblock_{i}")(x)
        x = tokens = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=policy,
                                                     name="encoder_norm")(x)
        if pooling == "map":
            x = L.MAPHead(num_heads, mlp_dim, layer_norm_epsilon, dtype=policy, name="map_head")(x)
        elif pooling is not None:
            x = L.TokenPooling(pooling, num_prefix + num_registers, dtype=policy, name="pooling")(x)
        if representation_size:
            x = keras.layers.Dense(representation_size, activation="tanh", dtype=policy,
                                   name="pre_logits")(x)
        if include_top:
            # Logits in float32 under mixed precision, so the loss and softmax stay stable.
            head_policy = "float32" if _is_mixed(policy) else policy
            two_heads = distilled and distillation_head
            x = keras.layers.Dense(num_classes, activation=None if two_heads else classifier_activation,
                                   kernel_initializer="zeros", dtype=head_policy, name="head")(x)
            if two_heads:
                distillation = L.TokenPooling("token", num_prefix + num_registers, token_index=1,
                                              dtype=policy, name="distillation_pooling")(tokens)
                distillation = keras.layers.Dense(num_classes, kernel_initializer="zeros",
                                                  dtype=head_policy, name="head_dist")(distillation)
                x = keras.layers.Average(dtype=head_policy, name="distilled_logits")([x, distillation])
                if classifier_activation is not None:
                    x = keras.layers.Activation(classifier_activation, dtype=head_policy,
                                                name="predictions")(x)
        super().__init__(inputs=images, outputs=x, name=name or "vit", dtype=dtype, **kwargs)

        self.image_size = image_size
        self.patch_size = patch_size
        self.grid_size = grid
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.num_classes = int(num_classes) if include_top else None
        self.include_top = bool(include_top)
        self.pooling = pooling
        self.representation_size = representation_size
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.include_preprocessing = bool(include_preprocessing)
        self.classifier_activation = classifier_activation
        self.class_token = bool(class_token)
        self.num_registers = int(num_registers)
        self.num_prefix_tokens = num_prefix + self.num_registers
        self.layer_scale_init_value = layer_scale_init_value
        self.normalization_mean = _as_list(normalization_mean)
        self.normalization_std = _as_list(normalization_std)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.class_names = list(class_names) if class_names is not None else None
        self.backbone = backbone
        self.distilled = bool(distilled)
        self.distillation_head = bool(distillation_head)

    @property
    def encoder_blocks(self):
        """The `TransformerBlock` layers, in order (`encoderblock_0`, ...)."""
        return [self.get_layer(f"encoderblock_{i}") for i in range(self.num_layers)]

    def get_config(self):
        return {
            "image_size": list(self.image_size), "patch_size": list(self.patch_size),
            "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "mlp_dim": self.mlp_dim,
            "num_classes": self.num_classes if self.include_top else 0,
            "include_top": self.include_top, "pooling": self.pooling,
            "representation_size": self.representation_size, "dropout_rate": self.dropout_rate,
            "attention_dropout_rate": self.attention_dropout_rate,
            "drop_path_rate": self.drop_path_rate,
            "include_preprocessing": self.include_preprocessing,
            "classifier_activation": keras.activations.serialize(
                keras.activations.get(self.classifier_activation))
            if self.classifier_activation is not None else None,
            "class_token": self.class_token, "num_registers": self.num_registers,
            "layer_scale_init_value": self.layer_scale_init_value,
            "normalization_mean": self.normalization_mean,
            "normalization_std": self.normalization_std,
            "layer_norm_epsilon": self.layer_norm_epsilon, "class_names": self.class_names,
            "backbone": self.backbone, "distilled": self.distilled,
            "distillation_head": self.distillation_head, "name": self.name, "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        activation = config.get("classifier_activation")
        if isinstance(activation, (dict, str)):
            config["classifier_activation"] = keras.activations.deserialize(activation) if isinstance(
                activation, dict) else activation
        return cls(**config)


# The keywords `VisionTransformer` takes: its own arguments, and keras.Model's `trainable`.
_MODEL_KEYWORDS = tuple(p for p in inspect.signature(VisionTransformer.__init__).parameters
                        if p not in ("self", "kwargs")) + ("trainable",)


def _backbone_config(backbone):
    """None, or the hybrid's ResNet as a dict of `ResNetBackbone` arguments (`block_units`, and
    optionally `width_factor` and the numerics of its checkpoint's source)."""
    if backbone is None:
        return None
    if not isinstance(backbone, dict) or "block_units" not in backbone:
        raise ValueError(f"backbone must be None or a dict with 'block_units' (e.g. "
                         f"{{'block_units': [3, 4, 9]}}), got {backbone!r}.")
    valid = ("block_units", "width_factor", "standardization_epsilon", "epsilon_inside_sqrt",
             "norm_epsilon")
    _check_keywords(backbone, valid, "backbone")
    config = dict(backbone)
    config["block_units"] = [int(u) for u in config["block_units"]]
    return config


def _as_list(value):
    return [float(v) for v in np.ravel(value)]


def _is_mixed(policy):
    policy = policy or keras.config.dtype_policy()
    return policy.compute_dtype != policy.variable_dtype


def _check_keywords(kwargs, valid, function_name):
    """TypeError for a keyword `function_name` does not take, naming the nearest valid one."""
    for key in kwargs:
        if key not in valid:
            near = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid: {sorted(valid)}"
            raise TypeError(f"{function_name}() got an unexpected keyword argument {key!r}{hint}")


# Ranges of the architecture's numbers: (smallest allowed, may be None).
_NUMBER_RANGES = {"num_layers": (1, False), "hidden_size": (1, False), "num_heads": (1, False),
                  "mlp_dim": (1, False), "representation_size": (1, True),
                  "num_registers": (0, False)}


def _check_numbers(layer_norm_epsilon, layer_scale_init_value, normalization_std, **integers):
    for key, value in integers.items():
        low, optional = _NUMBER_RANGES[key]
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{key} must be an int >= {low}{' or None' if optional else ''}, "
                             f"got {value!r}.")
    if not (isinstance(layer_norm_epsilon, (int, float)) and math.isfinite(layer_norm_epsilon)
            and layer_norm_epsilon > 0):
        raise ValueError(f"layer_norm_epsilon must be a positive number, got {layer_norm_epsilon!r}.")
    if layer_scale_init_value is not None and not (
            isinstance(layer_scale_init_value, (int, float)) and layer_scale_init_value > 0):
        raise ValueError(f"layer_scale_init_value must be None or > 0, got "
                         f"{layer_scale_init_value!r}.")
    std = np.ravel(np.asarray(normalization_std, dtype="float64"))
    if std.size not in (1, 3) or not np.all(std > 0):
        raise ValueError(f"normalization_std must be one or three positive numbers, got "
                         f"{normalization_std!r}.")


def _validate(image_size, patch_size, hidden_size, num_heads, pooling, include_top, num_classes,
              class_token, class_names, *rates):
    for axis, size, patch in zip(("height", "width"), image_size, patch_size):
        if size <= 0 or patch <= 0 or size % patch:
            raise ValueError(
                f"image_size {image_size} is not divisible by patch_size {patch_size}: the image "
                f"{axis} {size} must be a positive multiple of the patch {axis} {patch}."
            )
    if hidden_size <= 0 or num_heads <= 0 or hidden_size % num_heads:
        raise ValueError(
            f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}: each head needs "
            f"hidden_size / num_heads channels."
        )
    if pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}: expected one of {list(POOLINGS)}.")
    if pooling == "token" and not class_token:
        raise ValueError("pooling='token' needs class_token=True: it pools the class token.")
    if include_top and pooling is None:
        raise ValueError("include_top=True needs a pooling ('token', 'gap' or 'map'), not None.")
    if include_top and (not isinstance(num_classes, (int, np.integer)) or num_classes <= 0):
        raise ValueError(f"num_classes must be a positive int with include_top=True, got {num_classes!r}.")
    if class_names is not None and include_top and len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} names but num_classes is {num_classes}."
        )
    for rate in rates:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout and drop-path rates must be in [0, 1), got {rate}.")


class _Default:
    """A `ViT()` default the caller did not choose: with `weights`, the checkpoint's value wins."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return repr(self.value)


def ViT(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072,
        num_classes=1000, include_top=True, pooling=_Default("token"),
        representation_size=_Default(None),
        dropout_rate=0.0, attention_dropout_rate=0.0, drop_path_rate=0.0,
        include_preprocessing=True, classifier_activation=None, weights=None, name=None,
        resample_method=None, **kwargs):
    """Builds a Vision Transformer; returns a functional `keras.Model` (`VisionTransformer`).

    Args:
        image_size: int or `(height, width)`, divisible by `patch_size`.
        num_classes: size of the classification head (zeros-initialised, as the paper does).
        include_top: False returns the pooled features (or all tokens with `pooling=None`).
        pooling: `"token"` (class token), `"gap"` (mean of the patch tokens), `"map"` (attention
            pooling, as big_vision) or None. With `weights`, a pooling and `representation_size`
            you do not pass follow the checkpoint; one you pass that it cannot give is an error.
        include_preprocessing: True takes raw pixels in [0, 255] and normalises in the graph.
        weights: None, a registered name (`"imagenet21k"`, `"imagenet21k+imagenet2012"`, ...) or a
            local checkpoint (Google `.npz`, Hugging Face directory or `.safetensors`, timm
            `.safetensors`). Another `image_size` resamples the position embeddings; another
            `num_classes` re-initialises the head.
        resample_method: `"bilinear"` or `"bicubic"` for position-embedding resampling when
            loading `weights` at another size; None uses the checkpoint source's own method.
        **kwargs: `class_token`, `num_registers`, `layer_scale_init_value`, `normalization_mean`,
            `normalization_std`, `layer_norm_epsilon`, `class_names`, `dtype`.

    Example:
        >>> model = keras_vit.ViT(image_size=32, patch_size=4, hidden_size=64, num_layers=2,
        ...                       num_heads=4, mlp_dim=128, num_classes=10)
    """
    _check_keywords(kwargs, _MODEL_KEYWORDS, "ViT")
    config = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                  num_layers=num_layers, num_heads=num_heads, mlp_dim=mlp_dim,
                  num_classes=num_classes, include_top=include_top, pooling=pooling,
                  representation_size=representation_size, dropout_rate=dropout_rate,
                  attention_dropout_rate=attention_dropout_rate, drop_path_rate=drop_path_rate,
                  include_preprocessing=include_preprocessing,
                  classifier_activation=classifier_activation, name=name, **kwargs)
    given = {key for key, value in config.items() if not isinstance(value, _Default)}
    config = {key: value.value if isinstance(value, _Default) else value
              for key, value in config.items()}
    if weights is None:
        return VisionTransformer(**config)
    from keras_vit import weights as weights_lib

    return weights_lib.build_with_weights(config, weights, resample_method=resample_method,
                                          given=given)


_VIT_KEYWORDS = tuple(p for p in inspect.signature(ViT).parameters if p != "kwargs") + tuple(
    p for p in _MODEL_KEYWORDS if p not in inspect.signature(ViT).parameters)


def _variant_builder(variant, function_name, defaults=None):
    """A builder with `variant`'s architecture fixed and `defaults` for the other arguments."""
    architecture = variant_config(variant)
    fixed = set(ARCHITECTURE_ARGS) | set(architecture)
    defaults = {"name": function_name.lower(), **(defaults or {})}

    def builder(image_size=224, num_classes=1000, include_top=True, weights=None, **kwargs):
        _check_keywords(kwargs, _VIT_KEYWORDS, function_name)
        clash = sorted(set(kwargs) & fixed)
        if clash:
            raise ValueError(
                f"{function_name} fixes {clash}; use keras_vit.ViT(...) for another architecture."
            )
        return ViT(image_size=image_size, num_classes=num_classes, include_top=include_top,
                   weights=weights, **architecture, **{**defaults, **kwargs})

    builder.__name__ = builder.__qualname__ = function_name
    if function_name.startswith("DeiT"):
        patch, hidden, depth, heads, mlp = VARIANTS[variant]
        summary = (f"DeiT-{variant} (Touvron et al., 2020): the ViT-{variant} architecture with "
                   f"ImageNet mean/std inside the model; `distilled=True` adds the distillation "
                   f"token and its head (the output is the mean of both heads).")
    elif variant in HYBRID_VARIANTS:
        vit, block_units, patch = HYBRID_VARIANTS[variant]
        resnet_name = f"ResNet units {list(block_units)}" if block_units else "the ResNet root alone"
        summary = (f"Hybrid {variant}: {resnet_name} (stride {resnet.backbone_stride(block_units)}), "
                   f"then ViT-{vit} on {patch}x{patch} patches of its feature map.")
    else:
        patch, hidden, depth, heads, mlp = VARIANTS[variant]
        summary = f"ViT-{variant}: patch {patch}, width {hidden}, {depth} blocks, {heads} heads, MLP {mlp}."
    builder.__doc__ = (
        f"{summary}\n\n"
        f"Takes the keyword arguments of `keras_vit.ViT` except the architecture ones.\n\n"
        f"    model = keras_vit.{function_name}(num_classes=10, weights=None)\n"
    )
    return builder


ViTTi16 = _variant_builder("Ti/16", "ViTTi16")
ViTS16 = _variant_builder("S/16", "ViTS16")
ViTS32 = _variant_builder("S/32", "ViTS32")
ViTB8 = _variant_builder("B/8", "ViTB8")
ViTB16 = _variant_builder("B/16", "ViTB16")
ViTB32 = _variant_builder("B/32", "ViTB32")
ViTL16 = _variant_builder("L/16", "ViTL16")
ViTL32 = _variant_builder("L/32", "ViTL32")
ViTH14 = _variant_builder("H/14", "ViTH14")
R50ViTB16 = _variant_builder("R50+B/16", "R50ViTB16")
R50ViTB32 = _variant_builder("R50+B/32", "R50ViTB32")
R50ViTL16 = _variant_builder("R50+L/16", "R50ViTL16")
R50ViTL32 = _variant_builder("R50+L/32", "R50ViTL32")
R26ViTS32 = _variant_builder("R26+S/32", "R26ViTS32")
RViTTi16 = _variant_builder("R+Ti/16", "RViTTi16")
_DEIT = {"normalization_mean": IMAGENET_NORMALIZATION[0],
         "normalization_std": IMAGENET_NORMALIZATION[1], "distilled": False}
DeiTTi16 = _variant_builder("Ti/16", "DeiTTi16", _DEIT)
DeiTS16 = _variant_builder("S/16", "DeiTS16", _DEIT)
DeiTB16 = _variant_builder("B/16", "DeiTB16", _DEIT)
VARIANT_BUILDERS = {
    "ViTTi16": ViTTi16, "ViTS16": ViTS16, "ViTS32": ViTS32, "ViTB8": ViTB8, "ViTB16": ViTB16,
    "ViTB32": ViTB32, "ViTL16": ViTL16, "ViTL32": ViTL32, "ViTH14": ViTH14,
    "R50ViTB16": R50ViTB16, "R50ViTB32": R50ViTB32, "R50ViTL16": R50ViTL16,
    "R50ViTL32": R50ViTL32, "R26ViTS32": R26ViTS32, "RViTTi16": RViTTi16,
    "DeiTTi16": DeiTTi16, "DeiTS16": DeiTS16, "DeiTB16": DeiTB16,
}


def preprocess_inputs(images, mean=GOOGLE_NORMALIZATION[0], std=GOOGLE_NORMALIZATION[1]):
    """What `include_preprocessing=True` does inside the model, for pipelines that normalise outside.

    `images`: pixels in [0, 255], `(..., 3)`. Returns float32 `(images / 255 - mean) / std`.

    >>> keras_vit.preprocess_inputs(np.array([[[0, 255, 127.5]]]))  # [-1, 1, 0] per channel
    """
    mean = ops.convert_to_tensor(np.broadcast_to(np.asarray(mean, "float32"), (3,)))
    std = ops.convert_to_tensor(np.broadcast_to(np.asarray(std, "float32"), (3,)))
    return (ops.cast(images, "float32") / 255.0 - mean) / std
