"""The Vision Transformer as a functional Keras model, and its named variants.

    model = keras_vit.ViTB16(num_classes=10)               # 224x224, [0, 255] pixels in, logits out
    features = keras_vit.ViTS16(include_top=False)(images) # pooled features (batch, 384)
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_vit import layers as L
from keras_vit import resnet
from keras_vit.config import (  # noqa: F401 - re-exported: keras_vit.models.POOLINGS etc.
    ARCHITECTURE_FIELDS,
    DEFAULTS,
    FIELDS,
    GOOGLE_NORMALIZATION,
    IMAGENET_NORMALIZATION,
    POOLINGS,
    ModelConfig,
    check_keywords,
)

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
ARCHITECTURE_ARGS = ARCHITECTURE_FIELDS
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

    def __init__(self, name=None, dtype=None, trainable=True, **kwargs):
        config = ModelConfig.from_kwargs(kwargs, "VisionTransformer")
        c = config
        grid, num_prefix = c.grid_size, int(c.class_token) + int(c.distilled)
        policy = keras.dtype_policies.get(dtype) if dtype is not None else None

        images = keras.Input(shape=(c.image_size[0], c.image_size[1], 3), name="images")
        x = images
        if c.include_preprocessing:
            x = L.ImageNormalization(c.normalization_mean, c.normalization_std, dtype=policy,
                                     name="preprocessing")(x)
        if c.backbone:
            # The hybrid: the ResNet's feature map is the image the patches are cut from.
            x = resnet.ResNetBackbone(**c.backbone, dtype=policy, name="backbone")(x)
        x = L.PatchEmbedding(c.patch_size, c.hidden_size, dtype=policy, name="patch_embedding")(x)
        if c.class_token:
            x = L.ClassToken(dtype=policy, name="class_token")(x)
        if c.distilled:
            x = L.DistillationToken(dtype=policy, name="distillation_token")(x)
        x = L.PositionEmbedding(grid, num_prefix, dtype=policy, name="position_embedding")(x)
        if c.num_registers:
            x = L.RegisterTokens(c.num_registers, num_prefix, dtype=policy,
                                 name="register_tokens")(x)
        x = keras.layers.Dropout(c.dropout_rate, dtype=policy, name="embedding_dropout")(x)
        for i in range(c.num_layers):
            # Stochastic depth grows linearly with depth, as in DeiT and timm.
            rate = c.drop_path_rate * i / max(c.num_layers - 1, 1)
            x = L.TransformerBlock(c.num_heads, c.mlp_dim, c.dropout_rate, c.attention_dropout_rate,
                                   rate, c.layer_scale_init_value, c.layer_norm_epsilon,
                                   dtype=policy, name=f"encoderblock_{i}")(x)
        x = tokens = keras.layers.LayerNormalization(epsilon=c.layer_norm_epsilon, dtype=policy,
                                                     name="encoder_norm")(x)
        if c.pooling == "map":
            x = L.MAPHead(c.num_heads, c.mlp_dim, c.layer_norm_epsilon, dtype=policy,
                          name="map_head")(x)
        elif c.pooling is not None:
            x = L.TokenPooling(c.pooling, c.num_prefix_tokens, dtype=policy, name="pooling")(x)
        if c.representation_size:
            x = keras.layers.Dense(c.representation_size, activation="tanh", dtype=policy,
                                   name="pre_logits")(x)
        # DeiT's two-head model reads the distillation token beside the class token.
        distillation = (L.TokenPooling("token", c.num_prefix_tokens, token_index=1, dtype=policy,
                                       name="distillation_pooling")(tokens)
                        if c.distilled and c.distillation_head else None)
        if c.include_top:
            x = _heads(c, x, distillation, policy)
        elif distillation is not None:
            # A feature extractor: the mean of the two tokens the heads read, timm's
            # `forward_head(pre_logits=True)` and the classifier's exported `embeddings`.
            # (distillation_head=False reads the class token alone, as HF's.)
            x = keras.layers.Average(dtype=policy, name="features")([x, distillation])
        super().__init__(inputs=images, outputs=x, name=name or "vit", dtype=dtype,
                         trainable=trainable)
        self.config = config
        # A functional Model keeps no dtype policy of its own (its dtype_policy reads float32):
        # remember the one the layers were built with, so get_config / .keras keep it.
        self._layers_policy = policy
        # Every field is an attribute too (`model.image_size`, `model.pooling`, ...).
        for key in FIELDS:
            setattr(self, key, getattr(config, key))
        self.grid_size = grid
        self.num_prefix_tokens = config.num_prefix_tokens

    @property
    def encoder_blocks(self):
        """The `TransformerBlock` layers, in order (`encoderblock_0`, ...)."""
        return [self.get_layer(f"encoderblock_{i}") for i in range(self.num_layers)]

    @property
    def preprocessing_config(self):
        """Image size, crop, interpolation and normalisation, as the checkpoint's source uses them."""
        return self.config.preprocessing()

    def get_config(self):
        config = self.config.to_dict()
        if config["classifier_activation"] is not None:
            config["classifier_activation"] = keras.activations.serialize(
                keras.activations.get(config["classifier_activation"]))
        return {**config, "name": self.name, "trainable": self.trainable,
                "dtype": keras.dtype_policies.serialize(self._layers_policy or self.dtype_policy)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        if isinstance(config.get("classifier_activation"), dict):
            config["classifier_activation"] = keras.activations.deserialize(
                config["classifier_activation"])
        return cls(**config)


def with_dtype(model, dtype):
    """A copy of `model` (a VisionTransformer) computing under the dtype policy `dtype`, with the
    same weights."""
    copy = type(model).from_config({**model.get_config(), "dtype": dtype})
    copy.set_weights(model.get_weights())
    return copy


def _heads(c, pooled, distillation, policy):
    """The classifier: `head`, or, given the pooled distillation token, DeiT's `head` and
    `head_dist` averaged."""
    # Logits in float32 under mixed precision, so the loss and softmax stay stable.
    head_policy = "float32" if _is_mixed(policy) else policy
    two_heads = distillation is not None
    x = keras.layers.Dense(c.num_classes, activation=None if two_heads else c.classifier_activation,
                           kernel_initializer="zeros", dtype=head_policy, name="head")(pooled)
    if not two_heads:
        return x
    distillation = keras.layers.Dense(c.num_classes, kernel_initializer="zeros", dtype=head_policy,
                                      name="head_dist")(distillation)
    x = keras.layers.Average(dtype=head_policy, name="distilled_logits")([x, distillation])
    if c.classifier_activation is not None:
        x = keras.layers.Activation(c.classifier_activation, dtype=head_policy,
                                    name="predictions")(x)
    return x


# The keywords `VisionTransformer` takes: the config's fields, and keras.Model's. Its signature
# shows them with their defaults (help(), inspect).
MODEL_DEFAULTS = {**DEFAULTS, "name": None, "dtype": None, "trainable": True}
_MODEL_KEYWORDS = tuple(MODEL_DEFAULTS)
VisionTransformer.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
       for k, v in MODEL_DEFAULTS.items()])


def _is_mixed(policy):
    policy = policy or keras.config.dtype_policy()
    return policy.compute_dtype != policy.variable_dtype


# With `weights`, these options keep their defaults when the caller does not pass them (the size,
# head and training options a user gets are the ones the docs promise); every other option a
# caller does not pass follows the checkpoint (pooling, tokens, normalisation, epsilon, ...).
_DEFAULTS_KEPT_WITH_WEIGHTS = (
    "image_size", "patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim",
    "num_classes", "include_top", "dropout_rate", "attention_dropout_rate", "drop_path_rate",
    "include_preprocessing", "classifier_activation", "name")


def ViT(weights=None, resample_method=None, **kwargs):
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
        **kwargs: the other fields of `keras_vit.config.ModelConfig` (`class_token`,
            `num_registers`, `layer_scale_init_value`, `normalization_mean`, `normalization_std`,
            `layer_norm_epsilon`, `class_names`, `backbone`, `distilled`, `crop_pct`,
            `interpolation`, ...), and `name`, `dtype`.

    Example:
        >>> model = keras_vit.ViT(image_size=32, patch_size=4, hidden_size=64, num_layers=2,
        ...                       num_heads=4, mlp_dim=128, num_classes=10)
    """
    check_keywords(kwargs, _MODEL_KEYWORDS, "ViT")
    config = {**DEFAULTS, "name": None, **kwargs}
    if weights is None:
        return VisionTransformer(**config)
    from keras_vit import weights as weights_lib

    given = set(kwargs) | set(_DEFAULTS_KEPT_WITH_WEIGHTS)
    return weights_lib.build_with_weights(config, weights, resample_method=resample_method,
                                          given=given)


ViT.__signature__ = inspect.Signature(
    [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in
     [("weights", None), ("resample_method", None), *DEFAULTS.items(), ("name", None),
      ("dtype", None)]])
_VIT_KEYWORDS = _MODEL_KEYWORDS + ("weights", "resample_method")


def _variant_builder(variant, function_name, defaults=None):
    """A builder with `variant`'s architecture fixed and `defaults` for the other arguments."""
    architecture = variant_config(variant)
    fixed = set(ARCHITECTURE_ARGS) | set(architecture)
    defaults = {"name": function_name.lower(), **(defaults or {})}

    def builder(image_size=224, num_classes=1000, include_top=True, weights=None, **kwargs):
        check_keywords(kwargs, _VIT_KEYWORDS, function_name)
        clash = sorted(set(kwargs) & fixed)
        if clash:
            raise ValueError(
                f"{function_name} fixes {clash}; use keras_vit.ViT(...) for another architecture."
            )
        # With weights, the checkpoint decides what the defaults would (DeiT's statistics and
        # distillation token); only the name stays.
        chosen = defaults if weights is None else {"name": defaults["name"]}
        return ViT(image_size=image_size, num_classes=num_classes, include_top=include_top,
                   weights=weights, **architecture, **{**chosen, **kwargs})

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
