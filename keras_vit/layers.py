"""Keras 3 layers of the Vision Transformer.

Every layer uses `keras.layers` / `keras.ops` only, so it runs on the TensorFlow, JAX and PyTorch
backends; every layer is registered serializable and `get_config()` returns its `__init__` arguments.

Variable paths (what `keras_vit.weights` maps checkpoints onto), for a block `encoderblock_0`:

    patch_embedding/projection/{kernel (p, p, 3, D), bias}
    class_token/token (1, 1, D)            register_tokens/tokens (1, R, D)
    position_embedding/embedding (1, prefix + gh * gw, D)
    encoderblock_0/norm1/{gamma, beta}     encoderblock_0/norm2/{gamma, beta}
    encoderblock_0/attention/qkv/{kernel (D, 3D), bias (3D,)}   q | k | v, each head-major
    encoderblock_0/attention/proj/{kernel (D, D), bias}
    encoderblock_0/mlp/fc1/{kernel (D, M), bias}   encoderblock_0/mlp/fc2/{kernel (M, D), bias}
    encoderblock_0/layer_scale1/gamma, layer_scale2/gamma   (only with LayerScale)
    encoder_norm/{gamma, beta}
    map_head/probe, map_head/attention/..., map_head/norm/..., map_head/mlp/...   (pooling="map")
    pre_logits/{kernel, bias}   head/{kernel, bias}
"""

import math

import keras
import numpy as np
from keras import ops

LAYER_NORM_EPSILON = 1e-6  # the JAX original's; Hugging Face's ViT config says 1e-12, timm 1e-6.
PACKAGE = "keras_vit"

register = keras.saving.register_keras_serializable(package=PACKAGE)


def _pair(value, name):
    """`16` or `(16, 16)` -> `(16, 16)`, with an error that names `name` otherwise."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, (int, np.integer)) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"`{name}` must be an int or a (height, width) pair of ints, got {value!r}.")


@register
class ImageNormalization(keras.layers.Layer):
    """Maps raw pixels in [0, 255] (uint8 or float) to `(x / 255 - mean) / std`, per channel.

    `mean=0.5, std=0.5` gives the [-1, 1] range of Google's checkpoints; ImageNet statistics
    (`mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)`) are those of DeiT and most timm weights.
    It also checks that images have `num_channels` channels, so a wrong input fails here clearly.

    >>> ImageNormalization(mean=0.5, std=0.5)(np.full((1, 2, 2, 3), 255.0))[0, 0, 0]  # [1., 1., 1.]
    """

    def __init__(self, mean=0.5, std=0.5, num_channels=3, **kwargs):
        super().__init__(**kwargs)
        self.num_channels = int(num_channels)
        self.mean = self._per_channel(mean, "mean")
        self.std = self._per_channel(std, "std")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"`std` must be positive, got {self.std}.")

    def _per_channel(self, value, name):
        values = [float(v) for v in np.ravel(value)]
        if len(values) == 1:
            values = values * self.num_channels
        if len(values) != self.num_channels:
            raise ValueError(
                f"`{name}` must be one number or {self.num_channels} (one per channel), got {value!r}."
            )
        return tuple(values)

    def build(self, input_shape):
        check_image_shape(input_shape, self.num_channels)
        self.built = True

    def call(self, inputs):
        check_image_shape(inputs.shape, self.num_channels)
        x = ops.cast(inputs, self.compute_dtype)
        # One multiply-add: (x / 255 - mean) / std == x * scale + offset.
        scale = np.array([1.0 / (255.0 * s) for s in self.std], dtype="float32")
        offset = np.array([-m / s for m, s in zip(self.mean, self.std)], dtype="float32")
        return x * ops.cast(scale, self.compute_dtype) + ops.cast(offset, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean), std=list(self.std), num_channels=self.num_channels)
        return config


def check_image_shape(shape, num_channels=3, image_size=None):
    """Raises a ValueError naming the bad dimension when `shape` is not `(batch, H, W, C)`."""
    shape = tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"Expected images of shape (batch, height, width, {num_channels}), got a tensor of rank "
            f"{len(shape)} with shape {shape}. A single image needs a batch axis: image[None]."
        )
    if shape[-1] is not None and shape[-1] != num_channels:
        raise ValueError(
            f"Expected images with {num_channels} channels (RGB, channels last), got {shape[-1]} "
            f"channels in shape {shape}. Grayscale images: repeat them to 3 channels."
        )
    if image_size is not None and None not in shape[1:3] and tuple(shape[1:3]) != tuple(image_size):
        raise ValueError(
            f"Expected images of height x width {image_size[0]}x{image_size[1]}, got "
            f"{shape[1]}x{shape[2]} (shape {shape}). Resize them first, or build the model with "
            f"image_size=({shape[1]}, {shape[2]})."
        )


@register
class PatchEmbedding(keras.layers.Layer):
    """Cuts images into non-overlapping patches and projects each to `hidden_size`.

    A Conv2D with kernel = stride = patch is the same linear map as the paper's flatten-and-project,
    and is the layout of every published checkpoint. Output: `(batch, grid_h * grid_w, hidden_size)`.
    """

    def __init__(self, patch_size, hidden_size, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = _pair(patch_size, "patch_size")
        self.hidden_size = int(hidden_size)
        self.projection = keras.layers.Conv2D(
            self.hidden_size,
            kernel_size=self.patch_size,
            strides=self.patch_size,
            padding="valid",
            # Lecun-normal on the flattened patch, as in the JAX original.
            kernel_initializer=keras.initializers.LecunNormal(),
            dtype=self.dtype_policy,
            name="projection",
        )

    def build(self, input_shape):
        self.projection.build(input_shape)
        self.built = True

    def call(self, images):
        x = self.projection(images)
        grid_h, grid_w = x.shape[1], x.shape[2]
        return ops.reshape(x, (-1, grid_h * grid_w, self.hidden_size))

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else (h // self.patch_size[0]) * (w // self.patch_size[1])
        return (input_shape[0], n, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=list(self.patch_size), hidden_size=self.hidden_size)
        return config


@register
class ClassToken(keras.layers.Layer):
    """Prepends a learned class token (initialised to zeros, as the reference code does)."""

    def build(self, input_shape):
        self.token = self.add_weight(
            shape=(1, 1, input_shape[-1]), initializer="zeros", name="token"
        )
        self.built = True

    def call(self, x):
        token = ops.broadcast_to(ops.cast(self.token, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([token, x], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + 1
        return (input_shape[0], n, input_shape[2])


@register
class RegisterTokens(keras.layers.Layer):
    """Inserts `num_registers` learned tokens after the prefix tokens (Darcet et al., 2023).

    They are added after the position embedding, so they carry no position, as in the paper.
    """

    def __init__(self, num_registers, num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        self.num_registers = int(num_registers)
        self.num_prefix_tokens = int(num_prefix_tokens)

    def build(self, input_shape):
        self.tokens = self.add_weight(
            shape=(1, self.num_registers, input_shape[-1]),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            name="tokens",
        )
        self.built = True

    def call(self, x):
        registers = ops.broadcast_to(
            ops.cast(self.tokens, x.dtype), (ops.shape(x)[0], self.num_registers, x.shape[-1])
        )
        prefix, patches = x[:, : self.num_prefix_tokens], x[:, self.num_prefix_tokens :]
        return ops.concatenate([prefix, registers, patches], axis=1)

    def compute_output_shape(self, input_shape):
        n = None if input_shape[1] is None else input_shape[1] + self.num_registers
        return (input_shape[0], n, input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(num_registers=self.num_registers, num_prefix_tokens=self.num_prefix_tokens)
        return config


@register
class DistillationToken(RegisterTokens):
    """DeiT's distillation token (Touvron et al., 2020): one learned token after the class token.

    Unlike register tokens it comes before the position embedding, which has an entry for it, as
    in DeiT and timm; its output feeds the second head (`head_dist`).
    """

    def __init__(self, **kwargs):
        super().__init__(num_registers=1, num_prefix_tokens=1, **kwargs)

    def get_config(self):
        config = super().get_config()
        del config["num_registers"], config["num_prefix_tokens"]
        return config


def resample_position_embeddings(embedding, old_grid, new_grid, num_prefix_tokens=1, method="bicubic",
                                 antialias=True):
    """Resamples a `(1, prefix + gh * gw, D)` position embedding onto `new_grid`, in NumPy.

    The prefix entries (class token) are kept as they are; the grid is resampled separably.
    `method="bilinear"` matches the JAX original (`scipy.ndimage.zoom(order=1)`: corners aligned);
    `method="bicubic"` matches timm (`F.interpolate(mode="bicubic", align_corners=False)`, with
    `antialias` when shrinking). Resampling onto the same grid returns an exact copy.
    """
    embedding = np.asarray(embedding)
    old_grid, new_grid = _pair(tuple(old_grid), "old_grid"), _pair(tuple(new_grid), "new_grid")
    expected = num_prefix_tokens + old_grid[0] * old_grid[1]
    if embedding.ndim != 3 or embedding.shape[0] != 1 or embedding.shape[1] != expected:
        raise ValueError(
            f"Position embedding of shape {embedding.shape} does not fit a {old_grid[0]}x{old_grid[1]} "
            f"grid with {num_prefix_tokens} prefix token(s): expected (1, {expected}, hidden)."
        )
    if old_grid == new_grid:
        return embedding.copy()
    if method not in ("bilinear", "bicubic"):
        raise ValueError(f"Unknown resampling `method` {method!r}: expected 'bilinear' or 'bicubic'.")
    dim = embedding.shape[-1]
    prefix, grid = embedding[:, :num_prefix_tokens], embedding[0, num_prefix_tokens:]
    grid = grid.reshape(old_grid[0], old_grid[1], dim).astype("float64")
    rows = _resampling_matrix(old_grid[0], new_grid[0], method, antialias)
    cols = _resampling_matrix(old_grid[1], new_grid[1], method, antialias)
    grid = np.einsum("ih,jw,hwd->ijd", rows, cols, grid)
    grid = grid.reshape(1, new_grid[0] * new_grid[1], dim).astype(embedding.dtype)
    return np.concatenate([prefix, grid], axis=1)


def _cubic(x, a):
    """Keys' cubic convolution kernel: a = -0.75 in PyTorch's plain bicubic, -0.5 with antialias."""
    x = np.abs(x)
    return np.where(
        x <= 1,
        ((a + 2) * x - (a + 3)) * x * x + 1,
        np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


def _resampling_matrix(size_in, size_out, method, antialias):
    """(size_out, size_in) matrix whose rows are the 1-D interpolation weights."""
    matrix = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    if method == "bilinear":
        # Corners aligned, as scipy.ndimage.zoom(order=1) with its default grid_mode=False.
        step = 0.0 if size_out == 1 else (size_in - 1) / (size_out - 1)
        positions = rows * step
        low = np.clip(np.floor(positions).astype(int), 0, size_in - 1)
        high = np.minimum(low + 1, size_in - 1)
        np.add.at(matrix, (rows, low), 1 - (positions - low))
        np.add.at(matrix, (rows, high), positions - low)
        return matrix
    scale = size_in / size_out
    centers = (rows + 0.5) * scale  # half-pixel centres (align_corners=False), in input pixels
    if not antialias:
        # PyTorch's plain bicubic: 4 taps around the centre, indices clamped at the border.
        base = np.floor(centers - 0.5).astype(int)
        for tap in range(-1, 3):
            weights = _cubic(centers - 0.5 - (base + tap), a=-0.75)
            np.add.at(matrix, (rows, np.clip(base + tap, 0, size_in - 1)), weights)
        return matrix
    # PyTorch's (and PIL's) antialiased bicubic: the kernel is stretched by the scale when
    # shrinking, taps outside the image are dropped and the rest re-normalised.
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    for i, center in enumerate(centers):
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        taps = np.arange(lo, hi)
        weights = _cubic((taps - center + 0.5) / stretch, a=-0.5)
        matrix[i, taps] = weights / weights.sum()
    return matrix


@register
class PositionEmbedding(keras.layers.Layer):
    """Adds learned position embeddings, initialised N(0, 0.02) as in the reference code.

    It knows its patch grid, so `resample(new_grid)` can move the embedding to another resolution.
    `num_prefix_tokens` is how many leading tokens (the class token) have an entry of their own:
    1 for the classic ViT, 0 for models without a class token.
    """

    def __init__(self, grid_size, num_prefix_tokens=1, **kwargs):
        super().__init__(**kwargs)
        self.grid_size = _pair(grid_size, "grid_size")
        self.num_prefix_tokens = int(num_prefix_tokens)

    @property
    def sequence_length(self):
        return self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]

    def build(self, input_shape):
        if input_shape[1] is not None and input_shape[1] != self.sequence_length:
            raise ValueError(
                f"PositionEmbedding for a {self.grid_size[0]}x{self.grid_size[1]} grid with "
                f"{self.num_prefix_tokens} prefix token(s) expects {self.sequence_length} tokens, "
                f"got {input_shape[1]}."
            )
        self.embedding = self.add_weight(
            shape=(1, self.sequence_length, input_shape[-1]),
            initializer=keras.initializers.RandomNormal(stddev=0.02),
            name="embedding",
        )
        self.built = True

    def call(self, x):
        return x + ops.cast(self.embedding, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def resample(self, new_grid, method="bicubic", antialias=True):
        """Returns this layer's embedding resampled onto `new_grid` (NumPy), class entry kept."""
        return resample_position_embeddings(
            ops.convert_to_numpy(self.embedding), self.grid_size, new_grid,
            self.num_prefix_tokens, method, antialias,
        )

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=list(self.grid_size), num_prefix_tokens=self.num_prefix_tokens)
        return config


@register
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head self-attention with q/k/v biases, q/k/v computed by one fused matmul.

    The fast path is `keras.ops.dot_product_attention` on `(batch, tokens, heads, head_dim)`
    tensors on JAX and PyTorch (flash/cuDNN/SDPA kernels where the device has them). TensorFlow
    has no fused attention kernel, so there plain batched matmuls are used, which are faster than
    Keras' TF `dot_product_attention`. The explicit softmax path (float32 weights) runs only when
    the attention weights are asked for or attention dropout is active.
    """

    def __init__(self, num_heads, attention_dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.dropout = keras.layers.Dropout(self.attention_dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        hidden = input_shape[-1]
        if hidden % self.num_heads:
            raise ValueError(
                f"hidden_size {hidden} is not divisible by num_heads {self.num_heads}."
            )
        self.head_dim = hidden // self.num_heads
        init = keras.initializers.GlorotUniform()
        self.qkv = keras.layers.Dense(3 * hidden, kernel_initializer=init, dtype=self.dtype_policy,
                                      name="qkv")
        self.proj = keras.layers.Dense(hidden, kernel_initializer=init, dtype=self.dtype_policy,
                                       name="proj")
        self.qkv.build(input_shape)
        self.proj.build(input_shape)
        self.built = True

    def call(self, x, training=None, return_attention_scores=False):
        tokens, hidden = x.shape[1], x.shape[-1]
        tokens = tokens if tokens is not None else ops.shape(x)[1]
        # One (D, 3D) matmul, then a split along channels (kernel ordered q | k | v, head-major).
        # A split back-propagates as a concat; slicing a rank-5 tensor scattered into zeros three
        # times per block (measured 26% slower training, benchmarks/RESULTS.md).
        q, k, v = (ops.reshape(t, (-1, tokens, self.num_heads, self.head_dim))
                   for t in ops.split(self.qkv(x), 3, axis=-1))
        use_dropout = training and self.attention_dropout_rate > 0
        if return_attention_scores or use_dropout:
            out, scores = self._explicit_attention(q, k, v, training)
        elif keras.backend.backend() == "tensorflow":
            out, scores = self._matmul_attention(q, k, v), None
        else:
            # JAX / PyTorch: fused (flash / cuDNN / SDPA) kernels where the device has them.
            out, scores = ops.dot_product_attention(q, k, v), None
        out = self.proj(ops.reshape(out, (-1, tokens, hidden)))
        return (out, scores) if return_attention_scores else out

    def _matmul_attention(self, q, k, v):
        # TensorFlow has no fused attention kernel: Keras' TF dot_product_attention is two einsums
        # with internal transposes and float32 casts. Batched matmuls on (B, H, T, d) are faster
        # (-22% ViT-S/16 inference, benchmarks/RESULTS.md); oneDNN's softmax accumulates in
        # float32, and 1/sqrt(head_dim) is exact for the usual power-of-two head sizes.
        q, k, v = (ops.transpose(t, (0, 2, 1, 3)) for t in (q, k, v))
        logits = ops.matmul(q * ops.cast(1.0 / math.sqrt(self.head_dim), q.dtype),
                            ops.transpose(k, (0, 1, 3, 2)))
        return ops.transpose(ops.matmul(ops.softmax(logits, axis=-1), v), (0, 2, 1, 3))

    def _explicit_attention(self, q, k, v, training):
        logits = ops.einsum("bqhd,bkhd->bhqk", q, k) * ops.cast(1.0 / math.sqrt(self.head_dim), q.dtype)
        weights = ops.softmax(ops.cast(logits, "float32"), axis=-1)  # float32 under mixed precision
        dropped = ops.cast(self.dropout(weights, training=training), v.dtype)
        return ops.einsum("bhqk,bkhd->bqhd", dropped, v), weights

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, x, training=None, return_attention_scores=False):
        out = keras.KerasTensor(x.shape, dtype=self.compute_dtype)
        if not return_attention_scores:
            return out
        tokens = x.shape[1]
        return out, keras.KerasTensor((x.shape[0], self.num_heads, tokens, tokens), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, attention_dropout_rate=self.attention_dropout_rate)
        return config


@register
class MLPBlock(keras.layers.Layer):
    """Dense(mlp_dim) -> exact GELU -> dropout -> Dense(hidden) -> dropout."""

    def __init__(self, mlp_dim, dropout_rate=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        # Xavier-uniform kernels and N(0, 1e-6) biases, as the JAX original's MlpBlock.
        init = dict(kernel_initializer=keras.initializers.GlorotUniform(),
                    bias_initializer=keras.initializers.RandomNormal(stddev=1e-6),
                    dtype=self.dtype_policy)
        self.fc1 = keras.layers.Dense(self.mlp_dim, name="fc1", **init)
        self.fc2 = keras.layers.Dense(input_shape[-1], name="fc2", **init)
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.mlp_dim,))
        self.built = True

    def call(self, x, training=None):
        h = self.fc1(x)
        # Exact GELU in float32 under 16-bit policies: more accurate, and TF's bfloat16 erf is
        # slower on CPU than the cast round trip (benchmarks/RESULTS.md, "Numbers behind the code").
        x = ops.cast(keras.activations.gelu(ops.cast(h, "float32"), approximate=False), h.dtype)
        x = self.dropout(x, training=training)
        return self.dropout(self.fc2(x), training=training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate)
        return config


@register
class LayerScale(keras.layers.Layer):
    """Per-channel learned scale of a residual branch (Touvron et al., 2021, CaiT)."""

    def __init__(self, init_value=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.init_value = float(init_value)

    def build(self, input_shape):
        self.gamma = self.add_weight(
            shape=(input_shape[-1],),
            initializer=keras.initializers.Constant(self.init_value),
            name="gamma",
        )
        self.built = True

    def call(self, x):
        return x * ops.cast(self.gamma, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(init_value=self.init_value)
        return config


@register
class DropPath(keras.layers.Layer):
    """Stochastic depth: drops a whole residual branch per sample while training, rescales the rest."""

    def __init__(self, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator, dtype=x.dtype))
        return x / ops.cast(keep, x.dtype) * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config


@register
class TransformerBlock(keras.layers.Layer):
    """Pre-LayerNorm encoder block: x + MHSA(LN(x)), then x + MLP(LN(x)).

    `call(x, return_attention_scores=True)` returns `(x, weights)` with weights of shape
    `(batch, heads, tokens, tokens)` in float32; the normal call is unchanged by that option.
    """

    def __init__(self, num_heads, mlp_dim, dropout_rate=0.0, attention_dropout_rate=0.0,
                 drop_path_rate=0.0, layer_scale_init_value=None,
                 layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_scale_init_value = (
            None if layer_scale_init_value is None else float(layer_scale_init_value)
        )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        policy = self.dtype_policy
        self.norm1 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy,
                                                     name="norm1")
        self.attention = MultiHeadSelfAttention(self.num_heads, self.attention_dropout_rate,
                                                dtype=policy, name="attention")
        self.attention_output_dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy)
        self.norm2 = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy,
                                                     name="norm2")
        self.mlp = MLPBlock(self.mlp_dim, self.dropout_rate, dtype=policy, name="mlp")
        self.drop_path = DropPath(self.drop_path_rate, dtype=policy)
        self.layer_scale1 = self.layer_scale2 = None
        if self.layer_scale_init_value is not None:
            self.layer_scale1 = LayerScale(self.layer_scale_init_value, dtype=policy,
                                           name="layer_scale1")
            self.layer_scale2 = LayerScale(self.layer_scale_init_value, dtype=policy,
                                           name="layer_scale2")

    def build(self, input_shape):
        if input_shape[-1] % self.num_heads:
            raise ValueError(
                f"hidden_size {input_shape[-1]} is not divisible by num_heads {self.num_heads}: "
                f"each head needs hidden_size / num_heads channels."
            )
        for layer in (self.norm1, self.attention, self.norm2, self.mlp, self.layer_scale1,
                      self.layer_scale2):
            if layer is not None:
                layer.build(input_shape)
        self.built = True

    def call(self, x, training=None, return_attention_scores=False):
        y = self.attention(self.norm1(x), training=training,
                           return_attention_scores=return_attention_scores)
        y, scores = y if return_attention_scores else (y, None)
        y = self.attention_output_dropout(y, training=training)
        if self.layer_scale1 is not None:
            y = self.layer_scale1(y)
        x = x + self.drop_path(y, training=training)
        y = self.mlp(self.norm2(x), training=training)
        if self.layer_scale2 is not None:
            y = self.layer_scale2(y)
        x = x + self.drop_path(y, training=training)
        return (x, scores) if return_attention_scores else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, x, training=None, return_attention_scores=False):
        # Lets a symbolic call with return_attention_scores=True give two tensors (explain.py).
        return self.attention.compute_output_spec(
            x, return_attention_scores=return_attention_scores)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, drop_path_rate=self.drop_path_rate,
            layer_scale_init_value=self.layer_scale_init_value,
            layer_norm_epsilon=self.layer_norm_epsilon,
        )
        return config


@register
class TokenPooling(keras.layers.Layer):
    """Pools the encoder output: `"token"` takes the token at `token_index` (0: the class token;
    1: DeiT's distillation token), `"gap"` averages the patch tokens.

    `num_prefix_tokens` (class, distillation and register tokens) are left out of the average.
    """

    def __init__(self, mode="token", num_prefix_tokens=1, token_index=0, **kwargs):
        super().__init__(**kwargs)
        if mode not in ("token", "gap"):
            raise ValueError(f"Unknown pooling mode {mode!r}: expected 'token' or 'gap'.")
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.token_index = int(token_index)

    def call(self, x):
        if self.mode == "token":
            return x[:, self.token_index]
        return ops.mean(x[:, self.num_prefix_tokens :], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, num_prefix_tokens=self.num_prefix_tokens,
                      token_index=self.token_index)
        return config


@register
class MAPHead(keras.layers.Layer):
    """Multi-head attention pooling (big_vision's `MAPHead`): a learned probe attends to the tokens,
    then a pre-LN MLP with a residual. Output: `(batch, hidden)`.
    """

    def __init__(self, num_heads, mlp_dim, layer_norm_epsilon=LAYER_NORM_EPSILON, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.layer_norm_epsilon = float(layer_norm_epsilon)

    def build(self, input_shape):
        hidden = input_shape[-1]
        policy = self.dtype_policy
        self.probe = self.add_weight(shape=(1, 1, hidden), name="probe",
                                     initializer=keras.initializers.GlorotUniform())
        self.attention = keras.layers.MultiHeadAttention(
            self.num_heads, hidden // self.num_heads, dtype=policy, name="attention")
        self.norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon, dtype=policy,
                                                    name="norm")
        self.mlp = MLPBlock(self.mlp_dim, dtype=policy, name="mlp")
        self.attention.build((input_shape[0], 1, hidden), input_shape)
        self.norm.build((input_shape[0], 1, hidden))
        self.mlp.build((input_shape[0], 1, hidden))
        self.built = True

    def call(self, x):
        probe = ops.broadcast_to(ops.cast(self.probe, x.dtype), (ops.shape(x)[0], 1, x.shape[-1]))
        y = self.attention(probe, x)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                      layer_norm_epsilon=self.layer_norm_epsilon)
        return config
