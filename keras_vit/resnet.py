"""The ResNet of the hybrid ViTs (Dosovitskiy et al., 2020, section 3.1), as vit_jax's
`models_resnet.py` and `models_vit.py` build it: a ResNet v1.5 with weight-standardised
convolutions, GroupNorm (32 groups) after every convolution and TF "SAME" padding.

    backbone = ResNetBackbone(block_units=(3, 4, 9), name="backbone")  # R50 for /16 hybrids
    features = backbone(images)                     # (batch, H / 16, W / 16, 1024)

`block_units` is units per stage: (3, 4, 9) is the paper's R50 for /16 (stage 4 removed, stage 3
extended), (3, 4, 6, 3) the full R50 for /32, (2, 2, 2, 2) AugReg's R26, () AugReg's "R" (the
root alone). Variable paths, relative to the backbone layer (`npz_name` maps them to the official
names, `timm_name` and `transformers_name` to PyTorch's):

    conv_root/kernel (7, 7, 3, 64w)    gn_root/{gamma, beta}
    block{i}/unit{j}/conv1/kernel, gn1/{gamma, beta}, conv2, gn2, conv3, gn3
    block{i}/unit1/conv_proj/kernel, gn_proj/{gamma, beta}        (first unit of every stage)

Numerics differ slightly between the sources, so they are arguments: vit_jax standardises a kernel
as (w - mean) / (std + 1e-5) and its GroupNorm uses epsilon 1e-6 (`VIT_JAX_NUMERICS`, the
default); timm's hybrids and transformers' BiT use (w - mean) / sqrt(var + 1e-8) and epsilon 1e-5
(`TIMM_NUMERICS`). The converters return the numerics of their source in the backbone config.
"""

import re

import keras
import numpy as np
from keras import ops

from keras_vit.layers import PACKAGE, _pair

register = keras.saving.register_keras_serializable(package=PACKAGE)

NUM_GROUPS = 32
ROOT_WIDTH = 64
VIT_JAX_NUMERICS = dict(standardization_epsilon=1e-5, epsilon_inside_sqrt=False, norm_epsilon=1e-6)
TIMM_NUMERICS = dict(standardization_epsilon=1e-8, epsilon_inside_sqrt=True, norm_epsilon=1e-5)


def _check_architecture(block_units, width_factor):
    """Validated `(tuple of units per stage, width factor)`."""
    if (not isinstance(block_units, (tuple, list))
            or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0
                       for n in block_units)):
        raise ValueError(f"`block_units` must be a list of positive ints (units per stage, e.g. "
                         f"[3, 4, 9]; [] for the root alone), got {block_units!r}.")
    if (isinstance(width_factor, bool) or not isinstance(width_factor, (int, np.integer))
            or width_factor < 1):
        raise ValueError(f"`width_factor` must be a positive int, got {width_factor!r}.")
    return tuple(int(n) for n in block_units), int(width_factor)


def backbone_stride(block_units):
    """Image pixels per feature-map pixel: 4 for the root (conv and max-pool, stride 2 each), times
    2 for every stage after the first. `(3, 4, 9)` -> 16, `(3, 4, 6, 3)` -> 32."""
    block_units, _ = _check_architecture(block_units, 1)
    return 4 * 2 ** max(len(block_units) - 1, 0)


def backbone_channels(block_units, width_factor=1):
    """Channels of the feature map: 64w for the root, 4 * 64w * 2^(stage) for a stage's units."""
    block_units, width_factor = _check_architecture(block_units, width_factor)
    width = ROOT_WIDTH * width_factor
    return width if not block_units else 4 * width * 2 ** (len(block_units) - 1)


def feature_map_size(image_size, block_units):
    """`(height, width)` of the feature map: every stride-2 step with SAME padding rounds up."""
    height, width = _pair(image_size, "image_size")
    stride = backbone_stride(block_units)
    return -(-height // stride), -(-width // stride)


def weight_shapes(block_units, width_factor=1):
    """`{variable path relative to the backbone: shape}`, in `ResNetBackbone.weights` order."""
    block_units, width_factor = _check_architecture(block_units, width_factor)
    width = ROOT_WIDTH * width_factor
    shapes = {"conv_root/kernel": (7, 7, 3, width),
              "gn_root/gamma": (width,), "gn_root/beta": (width,)}
    channels = width
    for i, units in enumerate(block_units):
        features = width * 2 ** i
        for j in range(units):
            unit = f"block{i + 1}/unit{j + 1}/"
            for k, kernel in ((1, (1, 1, channels, features)), (2, (3, 3, features, features)),
                              (3, (1, 1, features, 4 * features))):
                shapes[unit + f"conv{k}/kernel"] = kernel
                shapes[unit + f"gn{k}/gamma"] = shapes[unit + f"gn{k}/beta"] = kernel[-1:]
            if j == 0:  # the channels change (and the stride from stage 2 on): project
                shapes[unit + "conv_proj/kernel"] = (1, 1, channels, 4 * features)
                shapes[unit + "gn_proj/gamma"] = shapes[unit + "gn_proj/beta"] = (4 * features,)
            channels = 4 * features
    return shapes


def count_params(block_units, width_factor=1):
    """Parameters of the backbone, without building it: R50 (3, 4, 9) has 11,894,848."""
    return sum(int(np.prod(shape)) for shape in weight_shapes(block_units, width_factor).values())


def backbone_flops(image_size, block_units, width_factor=1):
    """Forward FLOPs of one image through the backbone's convolutions, a multiply-add counting 2
    (as `benchmark.vit_flops`); GroupNorm, ReLU, max-pool and additions are left out.

    >>> round(backbone_flops(224, (3, 4, 6, 3)) / 2e9, 2)  # GMACs of ResNet-50 without its head
    4.09
    """
    height, width = _pair(image_size, "image_size")
    block_units, width_factor = _check_architecture(block_units, width_factor)
    shapes = weight_shapes(block_units, width_factor)

    def macs(path, size):  # output pixels x kernel size
        return size[0] * size[1] * int(np.prod(shapes[path]))

    half = lambda size: (-(-size[0] // 2), -(-size[1] // 2))  # noqa: E731 (SAME, stride 2)
    size = half((height, width))
    total = macs("conv_root/kernel", size)
    size = half(size)  # the max-pool
    for i, units in enumerate(block_units):
        out = size if i == 0 else half(size)
        for j in range(units):
            unit = f"block{i + 1}/unit{j + 1}/"
            total += macs(unit + "conv1/kernel", size if j == 0 else out)  # before the stride
            total += macs(unit + "conv2/kernel", out) + macs(unit + "conv3/kernel", out)
            if j == 0:
                total += macs(unit + "conv_proj/kernel", out)
        size = out
    return 2 * total


def _same_padding(size, kernel, stride, layer):
    """TF "SAME": `(before, after)`, the odd pixel after (bottom / right), as TF and JAX pad."""
    if stride == 1 or kernel == 1:  # independent of the size: k - 1 in all, or nothing
        total = kernel - 1 if stride == 1 else 0
    elif size is None:
        raise ValueError(
            f"Layer {layer!r} needs a known image height and width: TF 'SAME' padding of a "
            f"stride-{stride} {kernel}x{kernel} window depends on them. Build the model with a "
            f"fixed image size.")
    else:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x, kernel_size, strides, layer):
    pads = [_same_padding(x.shape[axis + 1], kernel_size[axis], strides[axis], layer)
            for axis in (0, 1)]
    if pads == [(0, 0), (0, 0)]:
        return x
    return ops.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])


def _spatial_output_shape(input_shape, strides, channels):
    h, w = (None if size is None else -(-size // stride)
            for size, stride in zip(input_shape[1:3], strides))
    return (input_shape[0], h, w, channels)


def _check_feature_map_shape(shape, layer):
    if len(shape) != 4 or shape[-1] is None:
        raise ValueError(f"Layer {layer!r} expects (batch, height, width, channels) with known "
                         f"channels, got shape {tuple(shape)}.")


@register
class StdConv2D(keras.layers.Layer):
    """Convolution with a weight-standardised kernel, TF "SAME" padding and no bias.

    Each output channel's kernel is standardised over (height, width, input channels) on every call:
    `(w - mean) / (std + epsilon)` as vit_jax, or `(w - mean) / sqrt(var + epsilon)` with
    `epsilon_inside_sqrt=True` as timm and transformers. The standardisation runs in float32 under
    mixed precision (the kernel variable is not autocast). Padding is explicit, so all backends
    pad as TensorFlow does (stride 2, even size: the extra row and column go bottom and right).

    >>> StdConv2D(8, 3, strides=2)(np.ones((1, 6, 6, 3))).shape  # (1, 3, 3, 8)
    """

    def __init__(self, filters, kernel_size, strides=1, epsilon=1e-5, epsilon_inside_sqrt=False,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.epsilon = float(epsilon)
        self.epsilon_inside_sqrt = bool(epsilon_inside_sqrt)
        if self.filters < 1 or min(self.kernel_size + self.strides) < 1 or self.epsilon < 0:
            raise ValueError(f"StdConv2D needs positive filters, kernel_size and strides and a "
                             f"non-negative epsilon, got filters={filters!r}, kernel_size="
                             f"{kernel_size!r}, strides={strides!r}, epsilon={epsilon!r}.")

    def build(self, input_shape):
        _check_feature_map_shape(input_shape, self.name)
        self.kernel = self.add_weight(
            shape=self.kernel_size + (input_shape[-1], self.filters), name="kernel",
            initializer=keras.initializers.LecunNormal(), autocast=False)  # flax's default
        self.built = True

    def standardized_kernel(self):
        """The kernel the convolution applies, in float32."""
        w = ops.cast(self.kernel, "float32")
        w = w - ops.mean(w, axis=(0, 1, 2), keepdims=True)
        variance = ops.mean(ops.square(w), axis=(0, 1, 2), keepdims=True)
        if self.epsilon_inside_sqrt:
            return w * ops.rsqrt(variance + self.epsilon)
        return w / (ops.sqrt(variance) + self.epsilon)

    def call(self, x):
        x = _pad_same(x, self.kernel_size, self.strides, self.name)
        kernel = ops.cast(self.standardized_kernel(), self.compute_dtype)
        return ops.conv(x, kernel, strides=self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        return _spatial_output_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size),
                      strides=list(self.strides), epsilon=self.epsilon,
                      epsilon_inside_sqrt=self.epsilon_inside_sqrt)
        return config


def _group_norm(epsilon, policy, name, zero_scale=False):
    # vit_jax initialises a unit's last GroupNorm with zero scale: each unit starts as identity.
    return keras.layers.GroupNormalization(
        groups=NUM_GROUPS, epsilon=epsilon, gamma_initializer="zeros" if zero_scale else "ones",
        dtype=policy, name=name)


@register
class BottleneckUnit(keras.layers.Layer):
    """vit_jax's `ResidualUnit`: conv 1x1 -> GN -> ReLU -> conv 3x3 (stride) -> GN -> ReLU ->
    conv 1x1 (4 * features) -> GN, plus the shortcut, then ReLU. The shortcut is projected (conv
    1x1 with the stride, GN) when the channels or the resolution change. Normalisation after each
    convolution (v1.5), not BiT's pre-activation order.
    """

    def __init__(self, features, strides=1, standardization_epsilon=1e-5, epsilon_inside_sqrt=False,
                 norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.features = int(features)
        self.strides = _pair(strides, "strides")
        self.standardization_epsilon = float(standardization_epsilon)
        self.epsilon_inside_sqrt = bool(epsilon_inside_sqrt)
        self.norm_epsilon = float(norm_epsilon)
        if self.features < 1 or self.features % NUM_GROUPS:
            raise ValueError(f"`features` must be a positive multiple of {NUM_GROUPS} (the "
                             f"GroupNorm groups), got {features!r}.")

    def _conv(self, filters, kernel, strides, name):
        return StdConv2D(filters, kernel, strides, self.standardization_epsilon,
                         self.epsilon_inside_sqrt, dtype=self.dtype_policy, name=name)

    def build(self, input_shape):
        _check_feature_map_shape(input_shape, self.name)
        out = 4 * self.features
        policy, eps = self.dtype_policy, self.norm_epsilon
        self.conv1 = self._conv(self.features, 1, 1, "conv1")
        self.gn1 = _group_norm(eps, policy, "gn1")
        self.conv2 = self._conv(self.features, 3, self.strides, "conv2")
        self.gn2 = _group_norm(eps, policy, "gn2")
        self.conv3 = self._conv(out, 1, 1, "conv3")
        self.gn3 = _group_norm(eps, policy, "gn3", zero_scale=True)
        self.conv_proj = self.gn_proj = None
        if input_shape[-1] != out or self.strides != (1, 1):
            self.conv_proj = self._conv(out, 1, self.strides, "conv_proj")
            self.gn_proj = _group_norm(eps, policy, "gn_proj")
        shape = tuple(input_shape)
        for conv, norm in ((self.conv1, self.gn1), (self.conv2, self.gn2), (self.conv3, self.gn3)):
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            norm.build(shape)
        if self.conv_proj is not None:
            self.conv_proj.build(input_shape)
            self.gn_proj.build(self.conv_proj.compute_output_shape(input_shape))
        self.built = True

    def call(self, x):
        shortcut = x if self.conv_proj is None else self.gn_proj(self.conv_proj(x))
        y = ops.relu(self.gn1(self.conv1(x)))
        y = ops.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return ops.relu(y + shortcut)

    def compute_output_shape(self, input_shape):
        return _spatial_output_shape(input_shape, self.strides, 4 * self.features)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, strides=list(self.strides),
                      standardization_epsilon=self.standardization_epsilon,
                      epsilon_inside_sqrt=self.epsilon_inside_sqrt, norm_epsilon=self.norm_epsilon)
        return config


@register
class ResNetStage(keras.layers.Layer):
    """`num_units` bottleneck units named `unit1` ... (vit_jax's `ResNetStage`); the first one
    has the stride."""

    def __init__(self, num_units, features, first_stride=1, standardization_epsilon=1e-5,
                 epsilon_inside_sqrt=False, norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_units = int(num_units)
        self.features = int(features)
        self.first_stride = _pair(first_stride, "first_stride")
        self.numerics = dict(standardization_epsilon=float(standardization_epsilon),
                             epsilon_inside_sqrt=bool(epsilon_inside_sqrt),
                             norm_epsilon=float(norm_epsilon))
        if self.num_units < 1:
            raise ValueError(f"`num_units` must be a positive int, got {num_units!r}.")
        self.units = [
            BottleneckUnit(self.features, self.first_stride if j == 0 else 1, **self.numerics,
                           dtype=self.dtype_policy, name=f"unit{j + 1}")
            for j in range(self.num_units)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for unit in self.units:
            unit.build(shape)
            shape = unit.compute_output_shape(shape)
        self.built = True

    def call(self, x):
        for unit in self.units:
            x = unit(x)
        return x

    def compute_output_shape(self, input_shape):
        return _spatial_output_shape(input_shape, self.first_stride, 4 * self.features)

    def get_config(self):
        config = super().get_config()
        config.update(num_units=self.num_units, features=self.features,
                      first_stride=list(self.first_stride), **self.numerics)
        return config


@register
class ResNetBackbone(keras.layers.Layer):
    """The hybrids' ResNet: root (StdConv 7x7 stride 2 -> GN -> ReLU -> max-pool 3x3 stride 2,
    SAME) and `len(block_units)` stages (`block1` ...). Stage i has units of width 64w * 2^(i-1)
    with 4x as many output channels; every stage after the first halves the resolution.

    Input: normalised images `(batch, H, W, C)` with a known H and W. Output: the feature map
    `(batch, ceil(H / s), ceil(W / s), backbone_channels(block_units, width_factor))`,
    `s = backbone_stride(block_units)`.

    >>> ResNetBackbone([3, 4, 9])(np.zeros((1, 224, 224, 3))).shape  # (1, 14, 14, 1024)
    """

    def __init__(self, block_units, width_factor=1, standardization_epsilon=1e-5,
                 epsilon_inside_sqrt=False, norm_epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.block_units, self.width_factor = _check_architecture(block_units, width_factor)
        self.numerics = dict(standardization_epsilon=float(standardization_epsilon),
                             epsilon_inside_sqrt=bool(epsilon_inside_sqrt),
                             norm_epsilon=float(norm_epsilon))
        width = ROOT_WIDTH * self.width_factor
        policy = self.dtype_policy
        self.conv_root = StdConv2D(width, 7, 2, self.numerics["standardization_epsilon"],
                                   self.numerics["epsilon_inside_sqrt"], dtype=policy,
                                   name="conv_root")
        self.gn_root = _group_norm(self.numerics["norm_epsilon"], policy, "gn_root")
        self.stages = [
            ResNetStage(units, width * 2 ** i, 1 if i == 0 else 2, **self.numerics, dtype=policy,
                        name=f"block{i + 1}")
            for i, units in enumerate(self.block_units)]

    def build(self, input_shape):
        _check_feature_map_shape(input_shape, self.name)
        self.conv_root.build(input_shape)
        shape = self.conv_root.compute_output_shape(input_shape)
        self.gn_root.build(shape)
        shape = _spatial_output_shape(shape, (2, 2), shape[-1])
        for stage in self.stages:
            stage.build(shape)
            shape = stage.compute_output_shape(shape)
        self.built = True

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)  # integer pixels too
        x = ops.relu(self.gn_root(self.conv_root(images)))
        # Zero padding is TF's SAME max-pool here: the inputs are ReLU outputs, never below zero.
        x = ops.max_pool(_pad_same(x, (3, 3), (2, 2), self.name), 3, strides=2, padding="valid")
        for stage in self.stages:
            x = stage(x)
        return x

    def compute_output_shape(self, input_shape):
        h, w = (None if size is None else -(-size // backbone_stride(self.block_units))
                for size in input_shape[1:3])
        return (input_shape[0], h, w, backbone_channels(self.block_units, self.width_factor))

    def get_config(self):
        config = super().get_config()
        config.update(block_units=list(self.block_units), width_factor=self.width_factor,
                      **self.numerics)
        return config


def ordered_weights(backbone, state):
    """`{path relative to the backbone: array}` -> list for `backbone.set_weights`, strictly (every
    variable filled, nothing left over, shapes equal)."""
    def relative(path):  # the backbone may sit inside another layer: cut after its own name
        parts = path.split("/")
        return "/".join(parts[parts.index(backbone.name) + 1:]) if backbone.name in parts else path

    variables = [(relative(v.path), v) for v in backbone.weights]
    names = {name for name, _ in variables}
    missing = [name for name, _ in variables if name not in state]
    unexpected = sorted(set(state) - names)
    if missing or unexpected:
        raise ValueError(f"The weights do not fit the backbone {backbone.name!r}: missing "
                         f"{missing}, unexpected {unexpected}.")
    wrong = [(name, tuple(v.shape), np.shape(state[name])) for name, v in variables
             if tuple(v.shape) != np.shape(state[name])]
    if wrong:
        raise ValueError(f"The weights do not fit the backbone {backbone.name!r}: shape mismatches "
                         f"(variable, expected, given): {wrong}.")
    return [np.asarray(state[name]) for name, _ in variables]


# ----------------------------------------------------------------------------------------------
# Checkpoint names. Every converter takes the checkpoint's tensors as a dict (a plain dict, not an
# NpzFile), reads the architecture from the names and returns `(state, config)`: `state` maps
# variable paths relative to the backbone to arrays (HWIO kernels), `config` is the
# `ResNetBackbone` arguments with the numerics of the source. On success it REMOVES the backbone's
# tensors from the dict, so what is left is the ViT's; on an error the dict is untouched.

_TORCH_PARTS = {"gamma": "weight", "beta": "bias", "kernel": "weight"}


def npz_name(path):
    """Variable path -> official vit_jax .npz name: `gn_root/gamma` -> `gn_root/scale`, kernels
    as they are (HWIO in both)."""
    module, variable = path.rsplit("/", 1)
    return f"{module}/{ {'gamma': 'scale', 'beta': 'bias'}.get(variable, variable)}"


def _torch_module(path, stem, stage, unit):
    """`block2/unit1/conv_proj/kernel` -> `stage.1.unit.0.downsample.conv.weight` (with the
    layout's words for stage and unit); the root -> `stem` + `conv` / `norm`."""
    module, variable = path.rsplit("/", 1)
    parts = module.split("/")
    if parts[0] in ("conv_root", "gn_root"):
        name = stem + ("conv" if parts[0] == "conv_root" else "norm")
    else:
        block, unit_index, layer = int(parts[0][5:]), int(parts[1][4:]), parts[2]
        layer = {"conv_proj": "downsample.conv", "gn_proj": "downsample.norm"}.get(
            layer, layer.replace("gn", "norm"))
        name = f"{stage}.{block - 1}.{unit}.{unit_index - 1}.{layer}"
    return f"{name}.{_TORCH_PARTS[variable]}"


def timm_name(path, stem_only=False, prefix="patch_embed.backbone."):
    """Variable path -> timm hub name: `patch_embed.backbone.stem.conv.weight`,
    `...stages.0.blocks.0.norm1.weight`, `...downsample.conv.weight`. timm's root-only backbone
    ("R") is the stem itself: `patch_embed.backbone.conv.weight`."""
    return _torch_module(path, prefix + ("" if stem_only else "stem."), prefix + "stages", "blocks")


def transformers_name(path, prefix="bit."):
    """Variable path -> transformers `BitBackbone` name: `bit.embedder.convolution.weight`,
    `bit.embedder.norm.weight`, `bit.encoder.stages.0.layers.0.conv1.weight`, ...; ViTHybrid
    files use the prefix `vit.embeddings.patch_embeddings.backbone.bit.`."""
    name = _torch_module(path, prefix + "embedder.", prefix + "encoder.stages", "layers")
    return name.replace("embedder.conv.", "embedder.convolution.")


def _count(keys, pattern, first, what, source):
    """Number of indices `pattern` finds in `keys`, which must run `first`, `first + 1`, ..."""
    found = sorted({int(m.group(1)) for m in map(re.compile(pattern).match, keys) if m})
    if found and found != list(range(first, first + len(found))):
        raise ValueError(f"Checkpoint {source!r}: the {what} indices are {found}, expected "
                         f"{first}..{first + len(found) - 1} without gaps.")
    return len(found)


def _convert(tensors, block_units, width_factor, name_of, transpose, in_namespace, source,
             numerics):
    """Every tensor `weight_shapes` asks for, shapes checked; removed from `tensors` on success."""
    architecture = f"block_units={list(block_units)}, width_factor={width_factor}"
    state, keys = {}, {}
    for path, shape in weight_shapes(block_units, width_factor).items():
        key = keys[path] = name_of(path)
        if key not in tensors:
            raise ValueError(f"Checkpoint {source!r} lacks the tensor {key!r} (needed for the "
                             f"ResNet backbone's {path}, {architecture}).")
        value = np.asarray(tensors[key])
        if transpose and path.endswith("kernel") and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # PyTorch OIHW -> HWIO
        if value.shape != shape:
            raise ValueError(f"Checkpoint {source!r}: tensor {key!r} has shape {value.shape} "
                             f"(after conversion), expected {shape} for the ResNet backbone's "
                             f"{path} ({architecture}).")
        state[path] = value
    used = set(keys.values())
    extra = sorted(k for k in tensors if in_namespace(k) and k not in used)
    if extra:
        raise ValueError(f"Checkpoint {source!r} has {len(extra)} backbone tensor(s) that the "
                         f"ResNet with {architecture} has no place for: {extra[:10]}"
                         f"{' ...' if len(extra) > 10 else ''}.")
    for key in used:
        del tensors[key]
    return state, dict(block_units=list(block_units), width_factor=width_factor, **numerics)


def _width_factor(kernel_shape, out_axis, key, source):
    channels = int(kernel_shape[out_axis]) if len(kernel_shape) == 4 else 0
    if channels < ROOT_WIDTH or channels % ROOT_WIDTH:
        raise ValueError(f"Checkpoint {source!r}: the root convolution {key!r} has shape "
                         f"{tuple(kernel_shape)}; expected a 7x7 kernel with 64 * width_factor "
                         f"output channels.")
    return channels // ROOT_WIDTH


def _units(keys, block_pattern, unit_pattern, first, source):
    """Units per stage from the names: `block_pattern` finds stage indices, `unit_pattern`
    (formatted with the stage index) unit indices; both count from `first`."""
    return [_count(keys, unit_pattern.format(i), first, f"unit (stage {i})", source)
            for i in range(first, first + _count(keys, block_pattern, first, "stage", source))]


def from_npz(tensors, source="checkpoint"):
    """Official vit_jax .npz names (`conv_root/kernel`, `gn_root/scale`,
    `block1/unit1/conv1/kernel`, `block1/unit1/gn1/scale`, ...; HWIO kernels) -> `(state, config)`
    with vit_jax numerics; `(None, None)` when the file has no ResNet (a plain ViT).

    >>> state, config = from_npz(dict(np.load("R50+ViT-B_16.npz")))  # block_units [3, 4, 9]
    """
    if "conv_root/kernel" not in tensors:
        return None, None
    keys = list(tensors)
    units = _units(keys, r"block(\d+)/", r"block{}/unit(\d+)/", 1, source)
    width_factor = _width_factor(np.shape(tensors["conv_root/kernel"]), -1, "conv_root/kernel",
                                 source)
    return _convert(tensors, units, width_factor, npz_name, False,
                    lambda k: re.match(r"(conv_root|gn_root|block\d+)/", k) is not None, source,
                    VIT_JAX_NUMERICS)


def from_timm(tensors, prefix="patch_embed.backbone.", source="checkpoint"):
    """timm hub names (`patch_embed.backbone.stem.conv.weight`, `...stem.norm.{weight,bias}`,
    `...stages.{i}.blocks.{j}.{conv,norm}{1,2,3}`, `...downsample.{conv,norm}`; OIHW kernels) ->
    `(state, config)`, timm numerics. Returns `(None, None)` without a backbone."""
    stem_only = prefix + "conv.weight" in tensors
    root = prefix + ("conv.weight" if stem_only else "stem.conv.weight")
    if root not in tensors:
        return None, None
    keys = [k[len(prefix):] for k in tensors if k.startswith(prefix)]
    units = [] if stem_only else _units(keys, r"stages\.(\d+)\.",
                                        r"stages\.{}\.blocks\.(\d+)\.", 0, source)
    width_factor = _width_factor(np.shape(tensors[root]), 0, root, source)
    return _convert(tensors, units, width_factor, lambda p: timm_name(p, stem_only, prefix), True,
                    lambda k: k.startswith(prefix), source, TIMM_NUMERICS)


def from_transformers(tensors, prefix="bit.", source="checkpoint"):
    """transformers `BitBackbone` / `BitModel` names (`bit.embedder.convolution.weight`,
    `bit.encoder.stages.{i}.layers.{j}.conv1.weight`, ...) with `layer_type="bottleneck"` ->
    `(state, config)`, timm numerics (transformers' are the same)."""
    root = prefix + "embedder.convolution.weight"
    if root not in tensors:
        return None, None
    keys = [k[len(prefix):] for k in tensors if k.startswith(prefix)]
    units = _units(keys, r"encoder\.stages\.(\d+)\.", r"encoder\.stages\.{}\.layers\.(\d+)\.",
                   0, source)
    width_factor = _width_factor(np.shape(tensors[root]), 0, root, source)
    return _convert(tensors, units, width_factor, lambda p: transformers_name(p, prefix), True,
                    lambda k: k.startswith(prefix), source, TIMM_NUMERICS)
