"""The model config: the one place that names, defaults and validates every option of a ViT.

`VisionTransformer(**kwargs)`, its `get_config()`, `keras_vit.ViT(...)` and the variant builders
all go through `ModelConfig`; a new option is one field here (and its use in the graph). The
preprocessing fields (`PREPROCESSING_FIELDS`) travel with the model and its `.keras` file, so
predict, export and the data pipelines read a checkpoint's own crop and statistics.

    >>> ModelConfig(image_size=32, patch_size=4).grid_size
    (8, 8)
"""

import dataclasses
import difflib
import math

import numpy as np

from keras_vit.images import DEFAULT_CROP_PCT, check_crop_pct
from keras_vit.layers import LAYER_NORM_EPSILON, _pair

POOLINGS = ("token", "gap", "map", None)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
GOOGLE_NORMALIZATION = (0.5, 0.5)  # [0, 255] -> [-1, 1]
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BACKBONE_KEYS = ("block_units", "width_factor", "standardization_epsilon", "epsilon_inside_sqrt",
                 "norm_epsilon")


@dataclasses.dataclass
class ModelConfig:
    """Every option of `keras_vit.ViT`; see its docstring for what each means."""

    image_size: tuple = 224
    patch_size: tuple = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000
    include_top: bool = True
    pooling: str = "token"
    representation_size: int = None
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    include_preprocessing: bool = True
    classifier_activation: object = None
    class_token: bool = None
    num_registers: int = 0
    layer_scale_init_value: float = None
    normalization_mean: object = GOOGLE_NORMALIZATION[0]
    normalization_std: object = GOOGLE_NORMALIZATION[1]
    layer_norm_epsilon: float = LAYER_NORM_EPSILON
    class_names: list = None
    backbone: dict = None
    distilled: bool = False
    distillation_head: bool = True
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = "bicubic"

    @classmethod
    def from_kwargs(cls, kwargs, function_name="ViT"):
        """The config of keyword arguments; TypeError naming an unknown one and the nearest."""
        check_keywords(kwargs, FIELDS, function_name)
        return cls(**kwargs)

    def __post_init__(self):
        self.image_size = _pair(self.image_size, "image_size")
        self.patch_size = _pair(self.patch_size, "patch_size")
        if self.class_token is None:
            # Google's GAP and big_vision's MAP models have no class token; the classic ViT has one.
            self.class_token = self.pooling in ("token", None)
        self.backbone = _backbone(self.backbone)
        _check_numbers(self)
        _check_combinations(self)
        self.normalization_mean = _per_channel(self.normalization_mean, "normalization_mean")
        self.normalization_std = _per_channel(self.normalization_std, "normalization_std")
        self.num_classes = int(self.num_classes) if self.include_top else None
        self.class_names = list(self.class_names) if self.class_names is not None else None
        for key in ("include_top", "include_preprocessing", "class_token", "distilled",
                    "distillation_head"):
            setattr(self, key, bool(getattr(self, key)))
        for key in ("dropout_rate", "attention_dropout_rate", "drop_path_rate",
                    "layer_norm_epsilon", "crop_pct"):
            setattr(self, key, float(getattr(self, key)))
        for key in ("hidden_size", "num_layers", "num_heads", "mlp_dim", "num_registers"):
            setattr(self, key, int(getattr(self, key)))

    @property
    def stride(self):
        """Pixels per feature-map cell: 1, or the hybrid ResNet's stride."""
        return backbone_stride(self.backbone)

    @property
    def grid_size(self):
        return token_grid(self.image_size, self.patch_size, self.backbone)

    @property
    def num_prefix_tokens(self):
        """Tokens before the patches: class, distillation and register tokens."""
        return int(self.class_token) + int(self.distilled) + self.num_registers

    def to_dict(self):
        """The JSON-able form that `get_config()` returns and `ModelConfig(**d)` reads back."""
        config = dataclasses.asdict(self)
        config["image_size"], config["patch_size"] = list(self.image_size), list(self.patch_size)
        config["num_classes"] = self.num_classes if self.include_top else 0
        return config

    def preprocessing(self):
        """What an image needs before the model: `PREPROCESSING_FIELDS` as a dict."""
        return {key: getattr(self, key) for key in PREPROCESSING_FIELDS}


FIELDS = tuple(field.name for field in dataclasses.fields(ModelConfig))
ARCHITECTURE_FIELDS = ("patch_size", "hidden_size", "num_layers", "num_heads", "mlp_dim")
PREPROCESSING_FIELDS = ("image_size", "include_preprocessing", "normalization_mean",
                        "normalization_std", "crop_pct", "interpolation")
DEFAULTS = {field.name: field.default for field in dataclasses.fields(ModelConfig)}


def backbone_stride(backbone):
    """Pixels per feature-map cell: 1 without a backbone, else the hybrid ResNet's stride."""
    if not backbone:
        return 1
    from keras_vit import resnet

    return resnet.backbone_stride(backbone["block_units"])


def token_grid(image_size, patch_size, backbone=None):
    """The patch grid `(rows, columns)`: a hybrid's patches are cut from the ResNet's feature map."""
    stride = backbone_stride(backbone)
    return tuple(size // (patch * stride) for size, patch in zip(image_size, patch_size))


def check_keywords(kwargs, valid, function_name):
    """TypeError for the keywords `function_name` does not take, all of them at once, each with the
    nearest valid one (a misspelt `imagesize=384` would otherwise be swallowed by `**kwargs`):

        ViT(imagesize=384, dropout=0.1)  # TypeError: ViT() got unexpected keyword arguments
        # ['dropout', 'imagesize']; did you mean 'dropout_rate' for 'dropout'? did you mean
        # 'image_size' for 'imagesize'?
    """
    unknown = sorted(key for key in kwargs if key not in valid)
    if not unknown:
        return
    valid = sorted(valid)
    near = {key: difflib.get_close_matches(key, valid, n=1) for key in unknown}
    listing = [] if all(near.values()) else [f"valid: {valid}"]
    if len(unknown) == 1:
        hint = near[unknown[0]]
        raise TypeError(f"{function_name}() got an unexpected keyword argument {unknown[0]!r}; "
                        + (f"did you mean {hint[0]!r}?" if hint else listing[0]))
    hints = [f"did you mean {hint[0]!r} for {key!r}?" for key, hint in near.items() if hint]
    raise TypeError(f"{function_name}() got unexpected keyword arguments {unknown}; "
                    + " ".join(hints + listing))


def _backbone(backbone):
    """None, or the hybrid's ResNet as a dict of `ResNetBackbone` arguments (`block_units`, and
    optionally `width_factor` and the numerics of its checkpoint's source)."""
    if backbone is None:
        return None
    if not isinstance(backbone, dict) or "block_units" not in backbone:
        raise ValueError(f"backbone must be None or a dict with 'block_units' (e.g. "
                         f"{{'block_units': [3, 4, 9]}}), got {backbone!r}.")
    check_keywords(backbone, BACKBONE_KEYS, "backbone")
    return {**backbone, "block_units": [int(u) for u in backbone["block_units"]]}


def _per_channel(value, name):
    values = np.ravel(np.asarray(value, dtype="float64"))
    if values.size not in (1, 3) or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be one or three finite numbers, got {value!r}.")
    return [float(v) for v in values]


# Ranges of the architecture's integers: (smallest allowed, may be None).
_INTEGER_RANGES = {"num_layers": (1, False), "hidden_size": (1, False), "num_heads": (1, False),
                   "mlp_dim": (1, False), "representation_size": (1, True),
                   "num_registers": (0, False)}


def _check_numbers(config):
    for key, (low, optional) in _INTEGER_RANGES.items():
        value = getattr(config, key)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{key} must be an int >= {low}{' or None' if optional else ''}, "
                             f"got {value!r}.")
    epsilon = config.layer_norm_epsilon
    if not (isinstance(epsilon, (int, float, np.floating)) and math.isfinite(epsilon)
            and epsilon > 0):
        raise ValueError(f"layer_norm_epsilon must be a positive number, got {epsilon!r}.")
    scale = config.layer_scale_init_value
    if scale is not None and not (isinstance(scale, (int, float, np.floating)) and scale > 0):
        raise ValueError(f"layer_scale_init_value must be None or > 0, got {scale!r}.")
    std = np.ravel(np.asarray(config.normalization_std, dtype="float64"))
    if std.size not in (1, 3) or not np.all(std > 0):
        raise ValueError(f"normalization_std must be one or three positive numbers, got "
                         f"{config.normalization_std!r}.")
    for key in ("dropout_rate", "attention_dropout_rate", "drop_path_rate"):
        if not 0.0 <= getattr(config, key) < 1.0:
            raise ValueError(f"Dropout and drop-path rates must be in [0, 1), got {key}="
                             f"{getattr(config, key)}.")
    check_crop_pct(config.crop_pct)
    if config.interpolation not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {config.interpolation!r}: expected one of "
                         f"{list(INTERPOLATIONS)}.")


def _check_combinations(config):
    stride = config.stride
    for axis, size, patch in zip(("height", "width"), config.image_size, config.patch_size):
        if size <= 0 or patch <= 0 or size % (patch * stride):
            raise ValueError(
                f"image_size {config.image_size} is not divisible by patch_size "
                f"{(config.patch_size[0] * stride, config.patch_size[1] * stride)}: the image "
                f"{axis} {size} must be a positive multiple of the patch {axis} {patch * stride}"
                + (f" (patch {patch} on the ResNet's stride-{stride} feature map)." if stride > 1
                   else "."))
    if config.hidden_size % config.num_heads:
        raise ValueError(
            f"hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}: "
            f"each head needs hidden_size / num_heads channels.")
    if config.pooling not in POOLINGS:
        raise ValueError(f"Unknown pooling {config.pooling!r}: expected one of {list(POOLINGS)}.")
    if config.pooling == "token" and not config.class_token:
        raise ValueError("pooling='token' needs class_token=True: it pools the class token.")
    if config.include_top and config.pooling is None:
        raise ValueError("include_top=True needs a pooling ('token', 'gap' or 'map'), not None.")
    if config.include_top and (isinstance(config.num_classes, bool) or not isinstance(
            config.num_classes, (int, np.integer)) or config.num_classes <= 0):
        raise ValueError(f"num_classes must be a positive int with include_top=True, got "
                         f"{config.num_classes!r}.")
    if config.class_names is not None and config.include_top and (
            len(config.class_names) != config.num_classes):
        raise ValueError(f"class_names has {len(config.class_names)} names but num_classes is "
                         f"{config.num_classes}.")
    if config.distilled and (config.pooling != "token" or config.representation_size):
        raise ValueError(f"distilled=True (DeiT) pools the class and distillation tokens: it needs "
                         f"pooling='token' and no representation_size, got "
                         f"pooling={config.pooling!r}, "
                         f"representation_size={config.representation_size!r}.")
